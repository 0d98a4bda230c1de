"""torch.distributed set-up from the environment (torchrun / env://) and the few collectives the runner uses."""
from __future__ import annotations

import datetime
import os
import secrets
import time
from typing import Any, Mapping

import torch
import torch.distributed as dist

__all__ = ['init_dist_from_env', 'init_dist_from_options', 'round_store', 'get_dist_info', 'barrier',
           'all_reduce_sum', 'destroy_dist', 'local_rank', 'reduce_mean']


def local_rank() -> int:
    """``LOCAL_RANK`` from the environment (set by torchrun, or from ``--local_rank``), else 0."""
    return int(os.environ.get('LOCAL_RANK', 0))


def init_dist_from_env(backend: str | None = None, timeout_minutes: float = 30.0) -> bool:
    """Join the process group when the environment describes one (``WORLD_SIZE`` > 1).

    Uses ``env://`` (``MASTER_ADDR``, ``MASTER_PORT``, ``RANK``, ``WORLD_SIZE``), or under torchrun's agent store a
    store of this round of workers (:func:`round_store`); NCCL on GPU, gloo on CPU unless ``backend`` says
    otherwise. Returns whether the run is distributed.
    """
    if int(os.environ.get('WORLD_SIZE', 1)) <= 1:
        return False
    if dist.is_initialized():
        return True
    if backend is None:
        backend = 'nccl' if torch.cuda.is_available() else 'gloo'
    if backend == 'nccl':
        torch.cuda.set_device(local_rank())
    timeout = datetime.timedelta(minutes=timeout_minutes)
    if os.environ.get('TORCHELASTIC_USE_AGENT_STORE') == 'True':
        rank, world = int(os.environ['RANK']), int(os.environ['WORLD_SIZE'])
        dist.init_process_group(backend=backend, store=round_store(rank, world, timeout), rank=rank,
                                world_size=world, timeout=timeout)
    else:
        dist.init_process_group(backend=backend, init_method='env://', timeout=timeout)
    return True


#: key of torchrun's agent store under which rank 0 publishes the store of its worker round ("port:token")
ROUND_STORE_KEY = 'codes/round_store'


def round_store(rank: int, world: int, timeout: datetime.timedelta, connect_s: float = 3.0) -> dist.Store:
    """A store that belongs to this round of torchrun workers alone, hosted by rank 0 and found through the agent's.

    torchrun's elastic agent serves one store for every round of a job (``TORCHELASTIC_USE_AGENT_STORE``) and
    ``env://`` hands it to the workers without a per-round prefix, so the process group of a restarted round can read
    the gloo/NCCL addresses that the ranks of the failed round left there: rank 0 then connects to a dead port and
    the round fails, or waits. Every process of an earlier round is dead before a new round starts (the agent stops
    the whole worker group first), so an address one of them published refuses connections. Rank 0 therefore
    starts a fresh store on a free port and publishes ``port:token`` in the agent's store; the other ranks read it
    and retry until they reach a live store that holds the same token (within ``timeout``).
    """
    addr, agent_port = os.environ['MASTER_ADDR'], int(os.environ['MASTER_PORT'])
    agent = dist.TCPStore(addr, agent_port, is_master=False, timeout=timeout)
    if rank == 0:
        token = secrets.token_hex(8)
        own = dist.TCPStore(addr, 0, world_size=world, is_master=True, timeout=timeout, wait_for_workers=False)
        own.set('token', token)
        agent.set(ROUND_STORE_KEY, f'{own.port}:{token}')
        return own
    deadline = time.monotonic() + timeout.total_seconds()
    while True:
        port, token = agent.get(ROUND_STORE_KEY).decode().split(':')
        try:
            store = dist.TCPStore(addr, int(port), is_master=False,
                                  timeout=datetime.timedelta(seconds=connect_s))
            if store.get('token').decode() == token:
                store.set_timeout(timeout)
                return store
        except RuntimeError:  # a port of an earlier round (dead, or since taken by another listener)
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f'rank {rank}: no live store of this torchrun round at {addr} within {timeout} '
                               f'(read from the agent store at {addr}:{agent_port}, key {ROUND_STORE_KEY!r})')
        time.sleep(0.1)


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
