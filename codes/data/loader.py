"""Samplers and DataLoader construction for single-process and distributed runs.

* :class:`TrainSampler` shuffles with a generator seeded by ``seed + epoch`` (the same permutation on every rank),
  gives each rank its own slice, and can start mid-epoch so that a resumed run sees exactly the samples it would
  have seen.
* :class:`ShardSampler` splits validation data across ranks without padding or duplicates, so metrics summed
  over ranks count each sample exactly once, also when there are fewer samples than ranks.
"""
from __future__ import annotations

import math
import random
from typing import Any, Iterator, Mapping

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

__all__ = ['TrainSampler', 'ShardSampler', 'build_dataloader', 'seed_worker']


class TrainSampler(Sampler[int]):
    """Shuffled, rank-sliced, resumable sampler.

    Args:
        dataset_len: number of samples.
        world_size, rank: the process group layout.
        seed: the run's seed; the permutation of epoch e uses ``seed + e``.
        shuffle: shuffle or keep dataset order.
    """

    def __init__(self, dataset_len: int, world_size: int = 1, rank: int = 0, seed: int = 0,
                 shuffle: bool = True) -> None:
        if dataset_len <= 0:
            raise ValueError('the training dataset is empty')
        self.dataset_len, self.world_size, self.rank = dataset_len, world_size, rank
        self.seed, self.shuffle = seed, shuffle
        self.num_samples = math.ceil(dataset_len / world_size)
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch's permutation; skip this rank's first ``start`` samples (for a mid-epoch resume)."""
        self.epoch, self.start = epoch, start

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.dataset_len, generator=g).tolist()
        else:
            order = list(range(self.dataset_len))
        total = self.num_samples * self.world_size
        order = (order * math.ceil(total / len(order)))[:total]  # pad by wrapping so all ranks get as many
        return iter(order[self.rank:total:self.world_size][self.start:])

    def __len__(self) -> int:
        return self.num_samples - self.start


class ShardSampler(Sampler[int]):
    """Indices ``rank, rank + world, ...``: every sample on exactly one rank, no padding."""

    def __init__(self, dataset_len: int, world_size: int = 1, rank: int = 0) -> None:
        self.indices = list(range(rank, dataset_len, world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def seed_worker(worker_id: int) -> None:
    """Seed Python's and NumPy's generators from the worker's torch seed (which the loader's generator sets)."""
    seed = torch.initial_seed() % 2 ** 32
    random.seed(seed)
    np.random.seed(seed)


def build_dataloader(dataset: Dataset, opt: Mapping[str, Any], sampler: Sampler, seed: int, rank: int = 0,
                     train: bool = True) -> DataLoader:
    """A DataLoader over ``dataset`` with the loader keys of its option block.

    Training loaders use ``batch_size_per_gpu`` and drop the last incomplete batch; validation loaders use batch 1
    and keep every sample.

    Workers are seeded from ``seed`` and ``rank`` through the loader's generator, so augmentation is reproducible
    and differs between ranks and workers.

    ``opt`` is a block of the normalised options (``codes.utils.options.normalize_options``), which holds every
    loader key with its default; a training block also holds ``batch_size_per_gpu``, which the schema requires.
    """
    workers = opt['num_worker_per_gpu']
    g = torch.Generator().manual_seed(seed + 1000 * rank)
    kwargs: dict[str, Any] = dict(
        batch_size=opt['batch_size_per_gpu'] if train else 1, sampler=sampler, num_workers=workers,
        pin_memory=opt['pin_memory'], drop_last=train, generator=g,
        worker_init_fn=seed_worker, timeout=opt['timeout'] if workers else 0,
    )
    if workers > 0:
        kwargs['persistent_workers'] = opt['persistent_workers']
        if opt['prefetch_factor'] is not None:
            kwargs['prefetch_factor'] = opt['prefetch_factor']
    return DataLoader(dataset, **kwargs)
