"""Image files written band by band, so that an output never has to be whole in memory.

:class:`PngRowWriter` writes an 8- or 16-bit grey/RGB PNG (zlib-compressed scanlines with the Sub filter, as the
PNG specification, ISO/IEC 15948, defines them) and :class:`TiffRowWriter` an uncompressed baseline TIFF (TIFF 6.0,
one strip per block of rows); rows are given top to bottom as (n, W[, C]) arrays in RGB order. Both write to a
hidden temporary name in the target folder (``.<name>.partial<pid>``) and, on :meth:`close`, fsync it, rename it
and fsync the folder, as :func:`codes.utils.files.atomic_open` does for whole files, so a failed or interrupted
run never leaves a truncated file under the real name; :meth:`abort` (or leaving the ``with`` block on an
exception) removes the temporary file. The file stays open across calls, which is why the writer does not use
``atomic_open``'s ``with`` block.
"""
from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from codes.utils.errors import UserError
from codes.utils.files import fsync_dir

__all__ = ['PngRowWriter', 'TiffRowWriter', 'row_writer']


class _RowWriter:
    """Common part: temporary file, row count, dtype and shape checks."""

    def __init__(self, path: str | os.PathLike, width: int, height: int, channels: int, dtype: Any) -> None:
        self.path = Path(path)
        self.width, self.height, self.channels = int(width), int(height), int(channels)
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.uint8, np.uint16) or self.channels not in (1, 3):
            raise ValueError(f'{self.path}: 8- or 16-bit grey or RGB only, got {self.dtype} x {self.channels}')
        if self.width < 1 or self.height < 1:
            raise ValueError(f'{self.path}: empty image {self.width}x{self.height}')
        self.rows = 0
        self.tmp = self.path.with_name(f'.{self.path.name}.partial{os.getpid()}')
        self.file = open(self.tmp, 'wb')

    def _check(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows)
        if rows.ndim == 2:
            rows = rows[..., None]
        if rows.dtype != self.dtype or rows.shape[1:] != (self.width, self.channels):
            raise ValueError(f'{self.path}: rows of shape (n, {self.width}, {self.channels}) {self.dtype} expected, '
                             f'got {rows.shape} {rows.dtype}')
        if self.rows + rows.shape[0] > self.height:
            raise ValueError(f'{self.path}: more than {self.height} rows')
        self.rows += rows.shape[0]
        return rows

    def write(self, rows: np.ndarray) -> None:
        """Append rows (n, W[, C]) below those written so far."""
        raise NotImplementedError

    def _finish(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Finish the file and give it its name; every row must have been written."""
        if self.file is None:
            return
        try:
            if self.rows != self.height:
                raise ValueError(f'{self.path}: {self.rows} of {self.height} rows written')
            self._finish()
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
            self.file = None
            os.replace(self.tmp, self.path)
        except BaseException:
            self.abort()
            raise
        fsync_dir(self.path.parent)  # the rename survives a power cut, as with codes.utils.files.atomic_open

    def abort(self) -> None:
        """Drop the temporary file (the target name is left as it was)."""
        if self.file is not None:
            self.file.close()
            self.file = None
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> '_RowWriter':
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class PngRowWriter(_RowWriter):
    """A PNG written row by row (colour type 0 or 2, bit depth 8 or 16, Sub filter, zlib ``level``)."""

    def __init__(self, path: str | os.PathLike, width: int, height: int, channels: int = 3, dtype: Any = np.uint8,
                 level: int = 3) -> None:
        super().__init__(path, width, height, channels, dtype)
        self.zlib = zlib.compressobj(level)
        self.bpp = self.channels * self.dtype.itemsize  # bytes per pixel, the Sub filter's distance
        self.file.write(b'\x89PNG\r\n\x1a\n')
        self._chunk(b'IHDR', struct.pack('>IIBBBBB', self.width, self.height, 8 * self.dtype.itemsize,
                                         0 if self.channels == 1 else 2, 0, 0, 0))
        self.pending = bytearray()

    def _chunk(self, kind: bytes, data: bytes) -> None:
        self.file.write(struct.pack('>I', len(data)) + kind + data
                        + struct.pack('>I', zlib.crc32(data, zlib.crc32(kind)) & 0xFFFFFFFF))

    def write(self, rows: np.ndarray) -> None:
        rows = self._check(rows)
        raw = rows.astype(self.dtype.newbyteorder('>'), copy=False).reshape(rows.shape[0], -1).view(np.uint8)
        lines = np.empty((raw.shape[0], raw.shape[1] + 1), dtype=np.uint8)
        lines[:, 0] = 1  # filter type Sub: each byte minus the byte one pixel to the left (mod 256)
        lines[:, 1:self.bpp + 1] = raw[:, :self.bpp]
        np.subtract(raw[:, self.bpp:], raw[:, :-self.bpp], out=lines[:, self.bpp + 1:])
        self.pending += self.zlib.compress(lines.tobytes())
        if len(self.pending) >= 1 << 20:
            self._chunk(b'IDAT', bytes(self.pending))
            self.pending.clear()

    def _finish(self) -> None:
        self.pending += self.zlib.flush()
        self._chunk(b'IDAT', bytes(self.pending))
        self.pending.clear()
        self._chunk(b'IEND', b'')


class TiffRowWriter(_RowWriter):
    """An uncompressed little-endian baseline TIFF written row by row (refused over 4 GiB: use PNG then)."""

    def __init__(self, path: str | os.PathLike, width: int, height: int, channels: int = 3,
                 dtype: Any = np.uint16) -> None:
        self.row_bytes = int(width) * int(channels) * np.dtype(dtype).itemsize
        if 8 + self.row_bytes * int(height) + 4096 + 16 * int(height) >= 2 ** 32:
            raise UserError(f'{path}: a {width}x{height} TIFF would exceed the 4 GiB of a baseline TIFF; use '
                            '--linear-format png')
        super().__init__(path, width, height, channels, dtype)
        self.file.write(b'II*\x00' + struct.pack('<I', 0))  # the IFD offset is filled in at the end

    def write(self, rows: np.ndarray) -> None:
        rows = self._check(rows)
        self.file.write(rows.astype(self.dtype.newbyteorder('<'), copy=False).tobytes())

    def _finish(self) -> None:
        rps = max(1, (64 << 10) // self.row_bytes)  # rows per strip: strips of about 64 KB
        n = -(-self.height // rps)
        offsets = [8 + k * rps * self.row_bytes for k in range(n)]
        counts = [min(rps, self.height - k * rps) * self.row_bytes for k in range(n)]
        ifd = 8 + self.height * self.row_bytes
        ifd += ifd % 2
        tags = [(256, 4, [self.width]), (257, 4, [self.height]), (258, 3, [8 * self.dtype.itemsize] * self.channels),
                (259, 3, [1]), (262, 3, [2 if self.channels == 3 else 1]), (273, 4, offsets),
                (277, 3, [self.channels]), (278, 4, [rps]), (279, 4, counts), (284, 3, [1])]
        extra_at = ifd + 2 + 12 * len(tags) + 4
        entries, extra = b'', b''
        for tag, kind, values in tags:
            data = struct.pack(f'<{len(values)}{"H" if kind == 3 else "I"}', *values)
            if len(data) <= 4:
                entries += struct.pack('<HHI', tag, kind, len(values)) + data.ljust(4, b'\x00')
            else:
                entries += struct.pack('<HHII', tag, kind, len(values), extra_at + len(extra))
                extra += data + (b'\x00' if len(data) % 2 else b'')
        if self.file.tell() != ifd:
            self.file.write(b'\x00')
        self.file.write(struct.pack('<H', len(tags)) + entries + struct.pack('<I', 0) + extra)
        self.file.seek(4)
        self.file.write(struct.pack('<I', ifd))


def row_writer(path: str | os.PathLike, width: int, height: int, channels: int = 3, dtype: Any = np.uint8
               ) -> _RowWriter:
    """A :class:`PngRowWriter` or :class:`TiffRowWriter`, by the suffix of ``path``."""
    suffix = Path(path).suffix.lower()
    if suffix == '.png':
        return PngRowWriter(path, width, height, channels, dtype)
    if suffix in ('.tif', '.tiff'):
        return TiffRowWriter(path, width, height, channels, dtype)
    raise ValueError(f'{path}: streamed output is written as .png or .tiff')
