"""torch.distributed set-up from the environment (torchrun / env://) and the few collectives the runner uses."""
from __future__ import annotations

import datetime
import os
from typing import Any, Mapping

import torch
import torch.distributed as dist

__all__ = ['init_dist_from_env', 'init_dist_from_options', 'get_dist_info', 'barrier', 'all_reduce_sum',
           'destroy_dist', 'local_rank', 'reduce_mean']


def local_rank() -> int:
    """``LOCAL_RANK`` from the environment (set by torchrun, or from ``--local_rank``), else 0."""
    return int(os.environ.get('LOCAL_RANK', 0))


def init_dist_from_env(backend: str | None = None, timeout_minutes: float = 30.0) -> bool:
    """Join the process group when the environment describes one (``WORLD_SIZE`` > 1).

    Uses ``env://`` (``MASTER_ADDR``, ``MASTER_PORT``, ``RANK``, ``WORLD_SIZE``); NCCL on GPU, gloo on CPU unless
    ``backend`` says otherwise. Returns whether the run is distributed.
    """
    if int(os.environ.get('WORLD_SIZE', 1)) <= 1:
        return False
    if dist.is_initialized():
        return True
    if backend is None:
        backend = 'nccl' if torch.cuda.is_available() else 'gloo'
    if backend == 'nccl':
        torch.cuda.set_device(local_rank())
    dist.init_process_group(backend=backend, init_method='env://',
                            timeout=datetime.timedelta(minutes=timeout_minutes))
    return True


def init_dist_from_options(dist_params: Mapping[str, Any]) -> bool:
    """:func:`init_dist_from_env` with the ``dist_params`` option block (``backend``, ``timeout_minutes``; ``port``
    becomes MASTER_PORT when the launcher did not set one, as in BasicSR's slurm launch)."""
    if dist_params['port'] is not None:
        os.environ.setdefault('MASTER_PORT', str(dist_params['port']))
    return init_dist_from_env(dist_params['backend'], dist_params['timeout_minutes'])


def get_dist_info() -> tuple[int, int]:
    """(rank, world_size), or (0, 1) outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def barrier() -> None:
    """Wait for all ranks (no-op outside a process group)."""
    if get_dist_info()[1] > 1:
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over ranks in place and return it (no-op outside a process group)."""
    if get_dist_info()[1] > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def destroy_dist() -> None:
    """Leave the process group, if any."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def reduce_mean(sums: dict[str, float], count: int, device: torch.device) -> dict[str, float]:
    """Means over all ranks of values given as local ``sums`` over ``count`` local items (one collective)."""
    names = sorted(sums)
    t = torch.tensor([sums[n] for n in names] + [float(count)], dtype=torch.float64, device=device)
    all_reduce_sum(t)
    total = max(t[-1].item(), 1.0)
    return {n: t[i].item() / total for i, n in enumerate(names)}
