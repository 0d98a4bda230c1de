"""Datasets (``*_dataset.py``) and data loaders, built from the ``datasets.<phase>`` option blocks."""
from __future__ import annotations

from typing import Any, Mapping

from torch.utils.data import Dataset

from codes.utils.build import build_from_registry
from codes.utils.options import LOADER_SCHEMA
from codes.utils.registry import DATASET_REGISTRY

__all__ = ['build_dataset', 'DATASET_REGISTRY', 'LOADER_KEYS']

#: Keys of a dataset block that configure the runner's DataLoader, not the dataset.
LOADER_KEYS = tuple(LOADER_SCHEMA)


def build_dataset(opt: Mapping[str, Any], where: str = 'datasets') -> Dataset:
    """Build the dataset ``opt['type']``; DataLoader keys (``LOADER_KEYS``) are left to the runner."""
    return build_from_registry(DATASET_REGISTRY, opt, where, drop=LOADER_KEYS)
