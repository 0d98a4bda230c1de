"""Samplers and DataLoader construction for single-process and distributed runs.

* :class:`TrainSampler` shuffles with a generator seeded by ``seed + epoch`` (the same permutation on every rank),
  gives each rank its own slice, and can start mid-epoch so that a resumed run sees exactly the samples it would
  have seen.
* :class:`SeededSampler` and :class:`SeededDataset` give every training sample its own random seed, a function of
  (run seed, epoch, position in the epoch): the random crop, the burst synthesis and the degradation of a sample
  are then the same whichever worker loads it, however many workers there are, and after a resume.
* :class:`ShardSampler` splits validation data across ranks without padding or duplicates, so metrics summed
  over ranks count each sample exactly once, also when there are fewer samples than ranks.
"""
from __future__ import annotations

import contextlib
import math
import random
from typing import Any, Iterator, Mapping

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info

from codes.utils.preemption import ignore_in_worker

__all__ = ['TrainSampler', 'SeededSampler', 'SeededDataset', 'sample_seed', 'ShardSampler', 'build_dataloader',
           'seed_worker', 'shutdown_workers']


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

    def positions(self) -> Iterator[tuple[int, int]]:
        """``(position in the epoch's padded order, dataset index)`` of this rank's remaining samples."""
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.dataset_len, generator=g).tolist()
        else:
            order = list(range(self.dataset_len))
        total = self.num_samples * self.world_size
        order = (order * math.ceil(total / len(order)))[:total]  # pad by wrapping so all ranks get as many
        first = self.rank + self.start * self.world_size
        return ((p, order[p]) for p in range(first, total, self.world_size))

    def __iter__(self) -> Iterator[int]:
        return (index for _, index in self.positions())

    def __len__(self) -> int:
        return self.num_samples - self.start


def sample_seed(seed: int, epoch: int, position: int) -> int:
    """The 63-bit seed of the sample at ``position`` of epoch ``epoch``'s order in a run seeded with ``seed``."""
    words = np.random.SeedSequence([seed % 2 ** 63, epoch, position]).generate_state(2, np.uint32)
    return (int(words[0]) << 31) ^ int(words[1])


class SeededSampler(Sampler[tuple[int, int]]):
    """Yields ``(dataset index, sample seed)`` for the indices of a :class:`TrainSampler` (which it also steers:
    ``set_epoch`` is forwarded); the seed is :func:`sample_seed` of the sample's place in the epoch, so it does not
    depend on the rank count, the worker count or where the run was resumed."""

    def __init__(self, sampler: TrainSampler) -> None:
        self.sampler = sampler

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """See :meth:`TrainSampler.set_epoch`."""
        self.sampler.set_epoch(epoch, start)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        s = self.sampler
        return ((index, sample_seed(s.seed, s.epoch, p)) for p, index in s.positions())

    def __len__(self) -> int:
        return len(self.sampler)


@contextlib.contextmanager
def _kept_global_rng() -> Iterator[None]:
    """Restore Python's, NumPy's and torch's CPU generators on exit (the main process's training streams)."""
    py, npy, th = random.getstate(), np.random.get_state(), torch.get_rng_state()
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(npy)
        torch.set_rng_state(th)


class SeededDataset(Dataset):
    """Loads ``dataset[index]`` for the ``(index, seed)`` keys of :class:`SeededSampler` with Python's, NumPy's and
    torch's CPU generators seeded from ``seed`` first.

    The datasets draw their per-sample randomness from those global generators (when they have no fixed
    ``seed`` of their own), so a sample becomes a function of its key alone. In the main process (no workers)
    the generators are put back afterwards, so the training step's random stream is not disturbed.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getattr__(self, name: str) -> Any:
        if name == 'dataset':
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, seed = key
        ctx = _kept_global_rng() if get_worker_info() is None else contextlib.nullcontext()
        with ctx:
            random.seed(seed)
            np.random.seed(seed % 2 ** 32)
            torch.default_generator.manual_seed(seed)
            return self.dataset[index]


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


def shutdown_workers(loader: DataLoader, iterator: Iterator | None = None) -> None:
    """Stop the workers of ``loader`` now: its persistent ones, and those of ``iterator`` (an ``iter(loader)``
    that may still be running, as when an error raised in a worker ends the run mid-epoch).

    Training workers ignore the stop signals (:func:`codes.utils.preemption.ignore_in_worker`), so they must be
    told to stop before the interpreter exits: ``multiprocessing`` would otherwise wait for them forever after its
    SIGTERM.
    """
    for running in (getattr(loader, '_iterator', None), iterator):
        if running is not None and hasattr(running, '_shutdown_workers'):
            running._shutdown_workers()
    loader._iterator = None


def _init_train_worker(worker_id: int) -> None:
    """Seed a training-data worker (:func:`seed_worker`) and let it ignore the stop signals: a signal sent to the
    whole process group (as SLURM does) must not kill it under the main process, which finishes its step, saves
    and then stops its workers."""
    seed_worker(worker_id)
    ignore_in_worker()


def build_dataloader(dataset: Dataset, opt: Mapping[str, Any], sampler: Sampler, seed: int, rank: int = 0,
                     train: bool = True) -> DataLoader:
    """A DataLoader over ``dataset`` with the loader keys of its option block.

    Training loaders use ``batch_size_per_gpu`` and drop the last incomplete batch; validation loaders use batch 1
    and keep every sample.

    Workers are seeded from ``seed`` and ``rank`` through the loader's generator, so augmentation is reproducible
    and differs between ranks and workers. Training workers ignore the stop signals: stop them with
    :func:`shutdown_workers` (the loader's persistent workers and those of a running iterator).

    ``opt`` is a block of the normalised options (``codes.utils.options.normalize_options``), which holds every
    loader key with its default; a training block also holds ``batch_size_per_gpu``, which the schema requires.
    """
    workers = opt['num_worker_per_gpu']
    g = torch.Generator().manual_seed(seed + 1000 * rank)
    kwargs: dict[str, Any] = dict(
        batch_size=opt['batch_size_per_gpu'] if train else 1, sampler=sampler, num_workers=workers,
        pin_memory=opt['pin_memory'], drop_last=train, generator=g,
        worker_init_fn=_init_train_worker if train else seed_worker, timeout=opt['timeout'] if workers else 0,
    )
    if workers > 0:
        kwargs['persistent_workers'] = opt['persistent_workers']
        if opt['prefetch_factor'] is not None:
            kwargs['prefetch_factor'] = opt['prefetch_factor']
    return DataLoader(dataset, **kwargs)
