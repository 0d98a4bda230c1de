"""File-system helpers shared by the whole toolkit: atomic writes, natural sort order, image file extensions."""
from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import IO

__all__ = ['IMAGE_EXTENSIONS', 'natural_key', 'atomic_open', 'atomic_write_text', 'atomic_write_bytes',
           'fsync_dir']

#: Suffixes (lower case) of the image files every reader accepts (OpenCV decodes all of them), in the order a
#: reader tries them when it looks a key up by name.
IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.ppm', '.tif', '.tiff', '.webp')


def natural_key(text: str) -> list:
    """Sort key that orders digit runs by value ('img2' before 'img10')."""
    return [int(part) if part.isdigit() else part for part in re.split(r'(\d+)', text)]


def fsync_dir(folder: str | os.PathLike) -> None:
    """Flush a folder's entry table, so that a rename in it survives a power cut (a no-op where unsupported)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = 'wb', encoding: str | None = None) -> Iterator[IO]:
    """Open a temporary file beside ``path``; on a clean exit flush, fsync and rename it over ``path``.

    On any exception the temporary file is removed and whatever ``path`` held before is left as it was, so a
    reader never sees a half-written file.
    """
    if 'w' not in mode:
        raise ValueError(f'atomic_open writes whole files; mode {mode!r} has no "w"')
    path = Path(path)
    tmp = path.with_name(f'.{path.name}.tmp{os.getpid()}')
    try:
        with open(tmp, mode, encoding=encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_open(path, 'w', encoding='utf-8') as f:
        f.write(text)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_open(path, 'wb') as f:
        f.write(data)
