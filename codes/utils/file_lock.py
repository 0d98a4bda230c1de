"""An exclusive lock on a file, held by one process at a time (``fcntl`` on POSIX, ``msvcrt`` on Windows)."""
from __future__ import annotations

import contextlib
import os
from typing import Iterator

__all__ = ['exclusive_lock']


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if needed) for the ``with`` block; other processes wait."""
    with open(path, 'a+b') as fh:
        try:
            import fcntl
        except ImportError:  # Windows
            import msvcrt
            fh.seek(0)
            msvcrt.locking(fh.fileno(), msvcrt.LK_LOCK, 1)
            try:
                yield
            finally:
                fh.seek(0)
                msvcrt.locking(fh.fileno(), msvcrt.LK_UNLCK, 1)
            return
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
