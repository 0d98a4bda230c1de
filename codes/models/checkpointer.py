"""``Checkpointer``: writes one run's checkpoints, keeps the newest ``logger.keep_last``, restores RNG states.

A save writes, in this order and each atomically (``codes.utils.checkpoint``): the weights
``models/net_g_<iter>.pth`` (``{'params': ..., 'params_ema': ...}``), the training state
``training_states/<iter>.state``, then the pointer ``last_checkpoint`` naming that state, so the pointer only ever
names a complete pair. Finding the state to resume from is ``codes.utils.checkpoint.find_resume_state``.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn as nn

from codes.utils import dist as dist_utils
from codes.utils.checkpoint import atomic_save, get_rng_states, set_rng_states, write_pointer

__all__ = ['Checkpointer']

logger = logging.getLogger(__name__)


class Checkpointer:
    """Saves and prunes the checkpoints of one experiment folder.

    Args:
        models_dir: where ``net_g_<iter>.pth`` go (``path.models``).
        states_dir: where ``<iter>.state`` go (``path.training_states``).
        pointer: the ``last_checkpoint`` file.
        keep_last: keep only the newest this many pairs (0 keeps all; ``logger.keep_last``).
        rank, world_size: this process in the process group (rank 0 writes; every rank's RNG state is kept).
    """

    def __init__(self, models_dir: str | os.PathLike, states_dir: str | os.PathLike, pointer: str | os.PathLike,
                 keep_last: int = 0, rank: int = 0, world_size: int = 1) -> None:
        self.models_dir, self.states_dir, self.pointer = Path(models_dir), Path(states_dir), Path(pointer)
        self.keep_last = int(keep_last)
        self.rank, self.world_size = rank, world_size

    def weights_path(self, current_iter: int) -> Path:
        """``models/net_g_<iter>.pth``."""
        return self.models_dir / f'net_g_{current_iter}.pth'

    def state_path(self, current_iter: int) -> Path:
        """``training_states/<iter>.state``."""
        return self.states_dir / f'{current_iter}.state'

    def save(self, current_iter: int, epoch: int, weights: Mapping[str, nn.Module],
             state: Mapping[str, Any]) -> None:
        """Write the weights (param key -> network), the training state (``state`` plus ``iter``, ``epoch``,
        ``rng`` of every rank and ``world_size``) and the pointer on rank 0, then prune.

        Every rank must call it, because the RNG states of all ranks are gathered into the state file.

        Raises:
            SaveError naming the file when a write fails; the files of earlier saves are intact.
        """
        rng = get_rng_states()
        if self.world_size > 1:
            gathered: list[Any] = [None] * self.world_size
            torch.distributed.all_gather_object(gathered, rng)
        else:
            gathered = [rng]
        if self.rank == 0:
            atomic_save({key: _cpu_state(net) for key, net in weights.items()}, self.weights_path(current_iter))
            full = {'iter': current_iter, 'epoch': epoch, **state, 'rng': gathered, 'world_size': self.world_size}
            atomic_save(full, self.state_path(current_iter))
            write_pointer(self.pointer, self.state_path(current_iter))
            logger.info('Saved checkpoint and training state at iteration %d', current_iter)
            self.prune()
        dist_utils.barrier()

    def saved_iters(self) -> list[int]:
        """The iterations that have a training state, oldest first."""
        return sorted(int(p.stem) for p in self.states_dir.glob('*.state') if p.stem.isdigit())

    def prune(self) -> None:
        """Delete all but the newest ``keep_last`` training states and their weights (nothing when 0)."""
        if self.keep_last <= 0:
            return
        for it in self.saved_iters()[:-self.keep_last]:
            self.state_path(it).unlink(missing_ok=True)
            self.weights_path(it).unlink(missing_ok=True)

    def restore_rng(self, state: Mapping[str, Any]) -> bool:
        """This rank's RNG states from a training state written by as many ranks (else a warning); whether they
        were restored."""
        rng = state['rng']
        if len(rng) == self.world_size:
            set_rng_states(rng[self.rank])
            return True
        logger.warning('Training state was written by %d ranks, this run has %d: RNG states not restored',
                       len(rng), self.world_size)
        return False


def _cpu_state(net: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in net.state_dict().items()}
