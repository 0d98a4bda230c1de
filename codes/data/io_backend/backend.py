"""The interface every backend offers, the ``io_backend`` option block, and the backend that block asks for."""
from __future__ import annotations

import os
from typing import Any, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np

from codes.data.io_backend.disk import DiskBackend
from codes.data.io_backend.lmdb_backend import open_lmdb, resolve_lmdb_path
from codes.data.io_backend.lmdb_env import DEFAULT_MAX_READERS

__all__ = ['IO_BACKEND_KEYS', 'Backend', 'check_io_backend', 'io_backend_problems', 'open_backend']

#: ``io_backend`` option keys and their types.
IO_BACKEND_KEYS: dict[str, type] = {'type': str, 'max_readers': int, 'check_crc': bool, 'readahead': bool}


@runtime_checkable
class Backend(Protocol):
    """What every backend offers: :class:`DiskBackend`, :class:`LmdbBackend`, :class:`BasicSRLmdbBackend` and
    :class:`DclsLmdbBackend` (the LMDB readers also carry ``record``, their format record, and ``layout``)."""
    kind: str  #: 'disk' or 'lmdb'
    path: str  #: the data folder or the database, for messages

    def keys(self, prefix: str = '') -> list[str]:
        """The keys that start with ``prefix``."""

    def name(self, key: str) -> str:
        """The relative file name (with extension) of ``key``."""

    def describe(self, key: str) -> str:
        """Where ``key`` lives, for messages."""

    def get(self, key: str) -> np.ndarray | bytes:
        """The value of ``key``: an array as ``cv2.imread(IMREAD_UNCHANGED)`` gives it, or a pickle's bytes."""

    def get_many(self, keys: Sequence[str]) -> list:
        """The values of ``keys``, in one read where the storage allows it."""

    def close(self) -> None:
        """Release what the backend holds open in this process."""


def check_io_backend(io_backend: Mapping[str, Any] | None) -> dict:
    """Validate an ``io_backend`` option dict; returns it with defaults (``type`` 'disk')."""
    opt = dict(io_backend) if io_backend is not None else {}
    if not isinstance(io_backend, (Mapping, type(None))):
        raise ValueError(f'io_backend: expected a mapping such as {{type: lmdb}}, got {io_backend!r}')
    for key, value in opt.items():
        if key not in IO_BACKEND_KEYS:
            raise ValueError(f'io_backend.{key}: unknown key; known keys: {", ".join(IO_BACKEND_KEYS)}')
        tp = IO_BACKEND_KEYS[key]
        if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
            raise ValueError(f'io_backend.{key}: expected {tp.__name__}, got {value!r}')
    opt.setdefault('type', 'disk')
    if opt['type'] not in ('disk', 'lmdb'):
        raise ValueError(f"io_backend.type: must be 'disk' or 'lmdb', got {opt['type']!r}")
    if opt['type'] == 'disk' and len(opt) > 1:
        extra = ', '.join(k for k in opt if k != 'type')
        raise ValueError(f'io_backend: {extra} only apply to type lmdb')
    if opt.get('max_readers', 1) < 1:
        raise ValueError(f'io_backend.max_readers: must be >= 1, got {opt["max_readers"]}')
    return opt


def io_backend_problems(args: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``check_options`` of a dataset class that takes ``io_backend``: what :func:`check_io_backend` refuses, as
    ``[('io_backend', message)]`` (``codes.utils.build.option_problems`` reports it with the file's other problems)."""
    try:
        check_io_backend(args.get('io_backend'))
    except ValueError as exc:
        return [('io_backend', str(exc))]
    return []


def open_backend(io_backend: Mapping[str, Any] | None, root: str | os.PathLike,
                 layout: str | Sequence[str] | None = None) -> Backend:
    """The backend an ``io_backend`` option dict asks for, over ``root``.

    Args:
        io_backend: ``{type: disk}`` (default) or ``{type: lmdb, max_readers, check_crc, readahead}``.
        root: the data folder; for lmdb, the LMDB folder or a folder ``root.lmdb`` sits beside.
        layout: for lmdb, the layout(s) the dataset can read; a database of another layout is refused.
    """
    opt = check_io_backend(io_backend)
    if opt['type'] == 'disk':
        return DiskBackend(root)
    return open_lmdb(resolve_lmdb_path(root), max_readers=opt.get('max_readers', DEFAULT_MAX_READERS),
                     check_crc=opt.get('check_crc', True), readahead=opt.get('readahead', False), layout=layout)
