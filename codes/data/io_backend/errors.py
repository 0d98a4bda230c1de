"""The errors of the LMDB readers: each names the database and, where there is one, the key."""
from __future__ import annotations

from codes.utils.errors import UserError

__all__ = ['LmdbError', 'LmdbFormatError', 'CorruptValueError', 'MissingKeyError']


class LmdbError(UserError):
    """Base class of the LMDB errors; ``db`` and ``key`` name the database and the key (None if not one key)."""

    def __init__(self, db: str, message: str, key: str | None = None) -> None:
        self.db, self.key, self.message = db, key, message
        where = f'{db} [key {key!r}]' if key is not None else db
        super().__init__(f'{where}: {message}')

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0]


class LmdbFormatError(LmdbError, ValueError):
    """Not an LMDB, a database of another format or layout, an incomplete build, an inconsistent meta_info."""


class CorruptValueError(LmdbError, ValueError):
    """A value whose length, CRC-32 or decoded shape/dtype does not match its meta_info entry."""


class MissingKeyError(LmdbError, KeyError):
    """A key absent from meta_info, or listed there but absent from the database."""
