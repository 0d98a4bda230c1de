"""Datasets (``*_dataset.py``) and data loaders, built from the ``datasets.<phase>`` option blocks."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from torch.utils.data import Dataset

from codes.utils.build import OptionError, build_from_registry
from codes.utils.errors import UserError
from codes.utils.options import LOADER_SCHEMA
from codes.utils.registry import DATASET_REGISTRY

__all__ = ['build_dataset', 'DATASET_REGISTRY', 'LOADER_KEYS']

#: Keys of a dataset block that configure the runner's DataLoader, not the dataset.
LOADER_KEYS = tuple(LOADER_SCHEMA)


def build_dataset(opt: Mapping[str, Any], where: str = 'datasets') -> Dataset:
    """Build the dataset ``opt['type']``; DataLoader keys (``LOADER_KEYS``) are left to the runner.

    A ``dataroot*`` key naming a file (not a folder) and a data folder that is missing or empty are reported as
    an ``OptionError`` naming the key path (``where``).
    """
    if isinstance(opt, Mapping):
        for key, value in opt.items():
            if str(key).startswith('dataroot') and isinstance(value, str) and Path(value).is_file():
                raise OptionError(f'{where}.{key}', f'{value} is a file, not a folder: give the data folder (or the '
                                  'LMDB folder that holds data.mdb)')
    try:
        return build_from_registry(DATASET_REGISTRY, opt, where, drop=LOADER_KEYS)
    except UserError:
        raise
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise OptionError(where, str(exc)) from None
