"""The disk backend: the image and pickle files under a data folder, by key."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from codes.data.io_backend.format import key_from_name
from codes.utils.files import IMAGE_EXTENSIONS, natural_key

__all__ = ['PICKLE_EXTENSIONS', 'DiskBackend']

#: Files a folder scan takes besides the images (``IMAGE_EXTENSIONS``): the meta pickles.
PICKLE_EXTENSIONS = ('.pkl',)


class DiskBackend:
    """Files under ``root`` by key (relative path without extension); images read with ``IMREAD_UNCHANGED``.

    ``get`` looks for ``root/key`` plus each extension of ``IMAGE_EXTENSIONS`` and ``.pkl`` (or uses the index
    that ``keys`` builds).
    """
    kind = 'disk'

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            if self.root.exists():
                raise NotADirectoryError(f'data folder {self.root} is a file, not a folder')
            raise FileNotFoundError(f'data folder not found: {self.root}')
        self.path = str(self.root)
        self._index: dict[str, str] | None = None

    def _scan(self) -> dict[str, str]:
        if self._index is None:
            index: dict[str, str] = {}
            exts = IMAGE_EXTENSIONS + PICKLE_EXTENSIONS
            for dirpath, dirnames, filenames in os.walk(self.root):
                dirnames.sort()
                for fn in sorted(filenames):
                    if os.path.splitext(fn)[1].lower() in exts:
                        rel = os.path.relpath(os.path.join(dirpath, fn), self.root).replace(os.sep, '/')
                        key = key_from_name(rel)
                        if key in index:
                            raise ValueError(f'{self.root}: {index[key]!r} and {rel!r} have the same key {key!r}')
                        index[key] = rel
            self._index = dict(sorted(index.items(), key=lambda kv: natural_key(kv[0])))
        return self._index

    def keys(self, prefix: str = '') -> list[str]:
        """Keys of the image and pickle files under ``root`` whose key starts with ``prefix``, natural order."""
        return [k for k in self._scan() if k.startswith(prefix)]

    def name(self, key: str) -> str:
        """The relative file name of ``key`` (with extension)."""
        if self._index is not None and key in self._index:
            return self._index[key]
        for ext in IMAGE_EXTENSIONS + PICKLE_EXTENSIONS:
            for cand in (ext, ext.upper()):
                if (self.root / (key + cand)).is_file():
                    return key + cand
        raise FileNotFoundError(f'file not found: {self.root / key}.* (looked for the extensions '
                                f'{"/".join(IMAGE_EXTENSIONS + PICKLE_EXTENSIONS)})')

    def describe(self, key: str) -> str:
        """A path for messages."""
        try:
            return str(self.root / self.name(key))
        except FileNotFoundError:
            return str(self.root / key)

    def get(self, key: str) -> np.ndarray | bytes:
        path = self.root / self.name(key)
        if path.suffix.lower() in PICKLE_EXTENSIONS:
            return path.read_bytes()
        image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if image is None:
            raise OSError(f'cannot decode image: {path}')
        return image

    def get_many(self, keys: Sequence[str]) -> list:
        return [self.get(k) for k in keys]

    def close(self) -> None:
        """Nothing to release."""
