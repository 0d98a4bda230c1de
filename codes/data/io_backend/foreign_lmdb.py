"""Readers of the two legacy LMDB formats: BasicSR's (PNG bytes, ``meta_info.txt``) and MMSR/DCLS's (raw uint8
bytes, ``meta_info.pkl``), both of layout ``images``."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from codes.data.io_backend.errors import LmdbFormatError
from codes.data.io_backend.format import ValueInfo, decode_value, read_meta_txt
from codes.data.io_backend.lmdb_env import DEFAULT_MAX_READERS, LmdbReader

__all__ = ['BasicSRLmdbBackend', 'DclsLmdbBackend']


class BasicSRLmdbBackend(LmdbReader):
    """A BasicSR image LMDB: PNG (or other cv2-decodable) bytes keyed by the names in ``meta_info.txt``."""

    def __init__(self, path: str | os.PathLike, max_readers: int = DEFAULT_MAX_READERS,
                 readahead: bool = False) -> None:
        super().__init__(os.fspath(path), max_readers, readahead)
        self.index, _ = read_meta_txt(self.path, Path(self.path) / 'meta_info.txt')
        if not self.index:
            raise LmdbFormatError(self.path, 'meta_info.txt lists no keys')
        self.record = {'format': 'basicsr', 'layout': 'images'}

    def _decode(self, key: str, info: ValueInfo, buf: Any) -> np.ndarray | bytes:
        return decode_value(self.path, key, info, buf, check_crc=False)


class DclsLmdbBackend(LmdbReader):
    """An MMSR/DCLS LMDB: raw uint8 (H, W, C) bytes, keys and 'C_H_W' resolutions in ``meta_info.pkl``."""

    def __init__(self, path: str | os.PathLike, max_readers: int = DEFAULT_MAX_READERS,
                 readahead: bool = False) -> None:
        super().__init__(os.fspath(path), max_readers, readahead)
        from codes.utils.safe_pickle import safe_load_pickle
        meta_path = Path(self.path) / 'meta_info.pkl'
        meta = safe_load_pickle(meta_path)
        if not isinstance(meta, dict) or not isinstance(meta.get('keys'), list) \
                or not isinstance(meta.get('resolution'), list):
            raise LmdbFormatError(self.path, f'{meta_path.name}: expected a dict with the lists "keys" and '
                                  f'"resolution", got {type(meta).__name__}')
        keys, res = meta['keys'], meta['resolution']
        if len(res) == 1:
            res = res * len(keys)
        if len(res) != len(keys):
            raise LmdbFormatError(self.path, f'{meta_path.name}: {len(keys)} keys but {len(res)} resolutions')
        for key, r in zip(keys, res):
            try:
                c, h, w = (int(v) for v in str(r).split('_'))
            except ValueError:
                raise LmdbFormatError(self.path, f'{meta_path.name}: resolution {r!r} is not "C_H_W"', str(key)) \
                    from None
            if str(key) in self.index:
                raise LmdbFormatError(self.path, f'{meta_path.name}: duplicate key', str(key))
            self.index[str(key)] = ValueInfo(str(key), (h, w, c), None, 'uint8', None)
        self.record = {'format': 'dcls', 'layout': 'images', 'name': meta.get('name')}

    def _raw_get(self, txn: Any, key: str) -> Any:
        return txn.get(key.encode('ascii'))

    def _decode(self, key: str, info: ValueInfo, buf: Any) -> np.ndarray | bytes:
        return decode_value(self.path, key, info, buf, check_crc=False)
