"""Our LMDB backend (written by ``codes.scripts.create_lmdb``), finding an LMDB folder, and opening an LMDB of
any supported format."""
from __future__ import annotations

import os
import zlib
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from codes.data.io_backend.errors import LmdbFormatError
from codes.data.io_backend.foreign_lmdb import BasicSRLmdbBackend, DclsLmdbBackend
from codes.data.io_backend.format import (FORMAT_KEY, ValueInfo, check_layout, decode_value, parse_format_record,
                                          read_meta_txt)
from codes.data.io_backend.lmdb_env import DEFAULT_MAX_READERS, LmdbReader

__all__ = ['LmdbBackend', 'is_lmdb', 'resolve_lmdb_path', 'open_lmdb']


class LmdbBackend(LmdbReader):
    """A database written by ``codes.scripts.create_lmdb`` (format record, meta_info.txt with shape/dtype/CRC).

    Args:
        path: the ``.lmdb`` folder.
        max_readers, readahead: passed to ``lmdb.open`` (always ``readonly=True, lock=False, meminit=False``).
        check_crc: compare every value's CRC-32 with meta_info (about 1 ms per MB).
        layout: accepted layout(s); None accepts any.
    """

    def __init__(self, path: str | os.PathLike, max_readers: int = DEFAULT_MAX_READERS, check_crc: bool = True,
                 readahead: bool = False, layout: str | Sequence[str] | None = None) -> None:
        super().__init__(os.fspath(path), max_readers, readahead)
        self.check_crc = check_crc
        env = self._open()
        try:
            with env.begin() as txn:
                raw = txn.get(FORMAT_KEY.encode())
        finally:
            self.close()
        if raw is None:
            raise LmdbFormatError(self.path, f'no {FORMAT_KEY!r} record: not a database written by create_lmdb')
        self.record = parse_format_record(self.path, raw)
        self.layout = self.record['layout']
        check_layout(self.path, self.layout, layout)
        meta = Path(self.path) / 'meta_info.txt'
        if not meta.is_file():
            raise LmdbFormatError(self.path, 'meta_info.txt is missing')
        self.index, data = read_meta_txt(self.path, meta)
        if zlib.crc32(data) != self.record.get('meta_crc') or len(self.index) != self.record.get('num_keys'):
            raise LmdbFormatError(self.path, f'meta_info.txt ({len(self.index)} keys) does not belong to this '
                                  f'database ({self.record.get("num_keys")} keys, other checksum); rebuild it or '
                                  'copy the matching meta_info.txt')

    def _decode(self, key: str, info: ValueInfo, buf: Any) -> np.ndarray | bytes:
        return decode_value(self.path, key, info, buf, self.check_crc)


def is_lmdb(path: str | os.PathLike) -> bool:
    """Whether ``path`` is an LMDB environment folder (holds ``data.mdb``)."""
    return (Path(path) / 'data.mdb').is_file()


def resolve_lmdb_path(root: str | os.PathLike) -> str:
    """``root`` if it is an LMDB folder, else ``<root>.lmdb`` if that is one; else FileNotFoundError."""
    root = os.fspath(root).rstrip('/\\') or os.fspath(root)
    if is_lmdb(root):
        return root
    sibling = root + '.lmdb'
    if not root.endswith('.lmdb') and is_lmdb(sibling):
        return sibling
    raise FileNotFoundError(f'io_backend lmdb: {root!r} is not an LMDB folder (no data.mdb)'
                            + ('' if root.endswith('.lmdb') else f', nor is {sibling!r}')
                            + '; build one with `python -m codes.scripts.create_lmdb`')


def open_lmdb(path: str | os.PathLike, max_readers: int = DEFAULT_MAX_READERS, check_crc: bool = True,
              readahead: bool = False, layout: str | Sequence[str] | None = None) -> LmdbReader:
    """Open an LMDB of any supported format (detected: format record, else meta_info.pkl, else meta_info.txt).

    Raises:
        LmdbFormatError: not an LMDB, unknown or other format/layout, incomplete build, bad meta_info.
    """
    path = os.fspath(path)
    if not is_lmdb(path):
        raise LmdbFormatError(path, 'not an LMDB folder (no data.mdb)')
    probe = LmdbReader(path, max_readers)
    try:
        with probe._open().begin() as txn:
            has_record = txn.get(FORMAT_KEY.encode()) is not None
    finally:
        probe.close()
    if has_record:
        return LmdbBackend(path, max_readers, check_crc, readahead, layout)
    root = Path(path)
    if (root / 'meta_info.pkl').is_file():
        backend: LmdbReader = DclsLmdbBackend(path, max_readers, readahead)
    elif (root / 'meta_info.txt').is_file():
        backend = BasicSRLmdbBackend(path, max_readers, readahead)
    else:
        raise LmdbFormatError(path, 'database of unknown format: no format record, no meta_info.txt (BasicSR) '
                              'and no meta_info.pkl (MMSR/DCLS)')
    check_layout(path, backend.layout, layout)
    return backend
