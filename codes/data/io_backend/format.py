"""Our LMDB format on paper: the format record, the ``meta_info.txt`` lines, and decoding a stored value.

A ``meta_info.txt`` line is ``<name> (<shape>) <raw|PNG level> <dtype> <crc32>`` (the first three fields are
BasicSR's, whose own lines this parser also reads); the ``__format__`` record is JSON (format name, version, layout,
complete flag, key count and the CRC-32 of ``meta_info.txt``).
"""
from __future__ import annotations

import json
import os
import zlib
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import cv2
import numpy as np

from codes.data.io_backend.errors import CorruptValueError, LmdbFormatError

__all__ = ['FORMAT_NAME', 'FORMAT_VERSION', 'FORMAT_KEY', 'META_PREFIX', 'LAYOUTS', 'ValueInfo', 'key_from_name',
           'format_meta_line', 'parse_meta_line', 'read_meta_txt', 'decode_value', 'parse_format_record',
           'check_layout']

FORMAT_NAME = 'sr-toolkit-lmdb'
FORMAT_VERSION = 1
FORMAT_KEY = '__format__'  #: JSON format/version record inside the database
META_PREFIX = '__meta__/'  #: ``__meta__/<key>`` holds the meta_info line of ``<key>`` (for resume and checks)
LAYOUTS = ('images', 'synburst_val', 'burstsr', 'paired')


class ValueInfo(NamedTuple):
    """One ``meta_info.txt`` entry."""
    name: str  #: source file relative to the root, with its extension
    shape: tuple  #: array shape (H, W[, C]); (N,) bytes for pickles
    compression: int | None  #: PNG level, or None for raw bytes
    dtype: str | None  #: NumPy dtype name, 'bytes', or None (legacy BasicSR: whatever the PNG holds)
    crc: int | None  #: CRC-32 of the stored value (None for legacy databases)

    @property
    def key(self) -> str:
        return key_from_name(self.name)

    @property
    def nbytes(self) -> int:
        """Raw size of the value: the array's bytes (for PNG values, of the decoded array)."""
        if self.dtype == 'bytes':
            return int(self.shape[0])
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype or 'uint8').itemsize


def key_from_name(name: str) -> str:
    """The key of a relative file name: the path without its extension, with '/' separators."""
    name = name.replace(os.sep, '/')
    stem, ext = os.path.splitext(name)
    return stem if ext else name


def format_meta_line(info: ValueInfo) -> str:
    """``<name> (<shape>) <raw|level> <dtype> <crc32 hex>``."""
    shape = '(' + ','.join(str(int(s)) for s in info.shape) + (',)' if len(info.shape) == 1 else ')')
    comp = 'raw' if info.compression is None else str(int(info.compression))
    crc = '-' if info.crc is None else f'{info.crc:08x}'
    return f'{info.name} {shape} {comp} {info.dtype or "-"} {crc}'


def _parse_shape(text: str) -> tuple:
    if not (text.startswith('(') and text.endswith(')')):
        raise ValueError(f'bad shape {text!r}')
    return tuple(int(s) for s in text[1:-1].split(',') if s.strip())


def parse_meta_line(line: str) -> ValueInfo:
    """Parse one line of ours (5 fields) or BasicSR's (3 fields: name, shape, PNG level); names may hold spaces."""
    parts = line.rsplit(' ', 4)
    if len(parts) == 5 and parts[1].startswith('('):
        name, shape, comp, dtype, crc = parts
        return ValueInfo(name, _parse_shape(shape), None if comp == 'raw' else int(comp),
                         None if dtype == '-' else dtype, None if crc == '-' else int(crc, 16))
    parts = line.rsplit(' ', 2)
    if len(parts) == 3 and parts[1].startswith('('):
        name, shape, comp = parts
        return ValueInfo(name, _parse_shape(shape), int(comp), None, None)
    raise ValueError(f'cannot parse {line!r}')


def read_meta_txt(db: str, path: Path) -> tuple[dict[str, ValueInfo], bytes]:
    """Key -> ValueInfo in file order, and the file's bytes."""
    data = path.read_bytes()
    index: dict[str, ValueInfo] = {}
    for number, line in enumerate(data.decode('utf-8').splitlines(), 1):
        if not line.strip():
            continue
        try:
            info = parse_meta_line(line.rstrip('\r'))
        except ValueError as exc:
            raise LmdbFormatError(db, f'{path.name} line {number}: {exc}') from None
        if info.key in index:
            raise LmdbFormatError(db, f'{path.name} line {number}: duplicate key (also named by '
                                  f'{index[info.key].name!r})', info.key)
        index[info.key] = info
    return index, data


def decode_value(db: str, key: str, info: ValueInfo, buf: Any, check_crc: bool = True) -> np.ndarray | bytes:
    """Decode one stored value (bytes or a buffer valid for the call) and check it against ``info``.

    Returns:
        a writable array for images (a copy, independent of the transaction), bytes for pickles.

    Raises:
        CorruptValueError naming ``db`` and ``key`` for a truncated or corrupt value.
    """
    size = len(buf)
    if check_crc and info.crc is not None:
        crc = zlib.crc32(buf)
        if crc != info.crc:
            raise CorruptValueError(db, f'corrupt value: CRC-32 {crc:08x} of its {size} bytes, meta_info records '
                                    f'{info.crc:08x}', key)
    if info.dtype == 'bytes':
        if size != info.shape[0]:
            raise CorruptValueError(db, f'truncated value: {size} bytes, meta_info records {info.shape[0]}', key)
        return bytes(buf)
    if info.compression is None:
        expected = info.nbytes
        if size != expected:
            raise CorruptValueError(db, f'truncated value: {size} bytes, but shape {info.shape} {info.dtype} '
                                    f'needs {expected}', key)
        return np.frombuffer(buf, dtype=info.dtype).reshape(info.shape).copy()
    array = cv2.imdecode(np.frombuffer(buf, dtype=np.uint8), cv2.IMREAD_UNCHANGED) if size else None
    if array is None:
        raise CorruptValueError(db, f'corrupt value: {size} bytes that do not decode as a PNG image', key)
    if info.dtype is not None:
        if tuple(array.shape) != tuple(info.shape) or array.dtype.name != info.dtype:
            raise CorruptValueError(db, f'decoded to {array.shape} {array.dtype}, meta_info records {info.shape} '
                                    f'{info.dtype}', key)
    elif tuple(array.shape[:2]) != tuple(info.shape[:2]):  # legacy BasicSR: the channels may differ (gray)
        raise CorruptValueError(db, f'decoded to {array.shape}, meta_info records {info.shape}', key)
    return array


def parse_format_record(db: str, raw: Any) -> dict:
    """Parse and check the ``__format__`` record (format name, version, complete flag)."""
    try:
        record = json.loads(bytes(raw).decode('utf-8'))
    except (UnicodeDecodeError, ValueError):
        raise LmdbFormatError(db, f'the {FORMAT_KEY!r} record is not JSON') from None
    if not isinstance(record, dict) or record.get('format') != FORMAT_NAME:
        found = record.get('format') if isinstance(record, dict) else record
        raise LmdbFormatError(db, f'database of another format ({found!r}, expected {FORMAT_NAME!r})')
    if not isinstance(record.get('version'), int) or record['version'] > FORMAT_VERSION:
        raise LmdbFormatError(db, f'format version {record.get("version")!r} is newer than this reader '
                              f'({FORMAT_VERSION})')
    if record.get('layout') not in LAYOUTS:
        raise LmdbFormatError(db, f'unknown layout {record.get("layout")!r}')
    if not record.get('complete'):
        raise LmdbFormatError(db, 'incomplete build (interrupted?): rerun `python -m codes.scripts.create_lmdb` '
                              'with the same arguments and --resume')
    return record


def check_layout(db: str, layout: str, accepted: str | Sequence[str] | None) -> None:
    """Refuse (``LmdbFormatError``) a database whose ``layout`` is not ``accepted``; None accepts any."""
    if accepted is None:
        return
    accepted = (accepted,) if isinstance(accepted, str) else tuple(accepted)
    if layout not in accepted:
        raise LmdbFormatError(db, f"database of another format: layout {layout!r}, this dataset reads "
                              f"{' or '.join(map(repr, accepted))} (create_lmdb --format {accepted[0]})")
