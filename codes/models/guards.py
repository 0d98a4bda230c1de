"""The training guards and the record they measure against.

* ``NonFiniteGuard``: a step whose loss or gradients are not finite is skipped and counted
  (``train.nan_skip_limit``); under DDP every rank skips together.
* ``BestMetrics``: the best value (and its iteration) of every validation metric, per validation set, honouring
  each metric's ``better: higher|lower``; saved in the training state.
* ``DivergenceGuard``: after a validation, a metric that is not finite or worse than its best by more than
  ``max_drop`` rolls the weights, EMA, optimiser and scaler back to the last good validation and lowers every
  learning rate (``train.divergence_guard``).
"""
from __future__ import annotations

import copy
import logging
import math
from typing import Any, Mapping, Protocol

import torch

from codes.utils import dist as dist_utils

__all__ = ['NonFiniteGuard', 'BestMetrics', 'DivergenceGuard', 'Stateful']

logger = logging.getLogger(__name__)


class Stateful(Protocol):
    """Anything with ``state_dict`` / ``load_state_dict`` (modules, optimisers, GradScaler, ``WeightEMA``)."""

    def state_dict(self) -> Mapping[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> Any: ...


class NonFiniteGuard:
    """Counts skipped steps; more than ``limit`` end the run with ``FloatingPointError``.

    Args:
        limit: how many non-finite steps a run may skip (``train.nan_skip_limit``).
    """

    def __init__(self, limit: int) -> None:
        self.limit = int(limit)
        self.count = 0

    @staticmethod
    def loss_is_non_finite(total: torch.Tensor, world_size: int) -> bool:
        """Whether the loss is NaN/inf on this rank or on any other (one small all-reduce when ``world_size`` > 1),
        so that every rank skips the backward together and DDP's gradient all-reduce stays matched."""
        bad = (~torch.isfinite(total.detach())).any().to(torch.float32).reshape(1)
        if world_size > 1:
            dist_utils.all_reduce_sum(bad)
        return bool(bad.item() > 0)

    def skip(self, current_iter: int, out: dict[str, float], what: str) -> dict[str, float]:
        """Count a skipped step (non-finite ``what``: 'loss' or 'gradient'); returns ``out`` with ``skipped`` set
        (and ``grad_norm`` NaN when there was none)."""
        self.count += 1
        out['skipped'] = 1.0
        out.setdefault('grad_norm', float('nan'))
        logger.warning('Non-finite %s at iteration %d (loss %s): step skipped (%d so far)', what, current_iter,
                       out['l_total'], self.count)
        if self.count > self.limit:
            raise FloatingPointError(f'more than train.nan_skip_limit={self.limit} non-finite steps; '
                                     'lower the learning rate, set train.grad_clip_norm or use fp32')
        return out


class BestMetrics:
    """``{val set: {metric: {'value': v, 'iter': i}}}`` of the metrics named in ``better``.

    Args:
        better: metric name -> ``'higher'`` or ``'lower'`` (``val.metrics.<name>.better``); other names are ignored.
    """

    def __init__(self, better: Mapping[str, str]) -> None:
        self.better = dict(better)
        self.best: dict[str, dict[str, Any]] = {}

    def higher_is_better(self, metric: str) -> bool:
        """Whether a larger value of ``metric`` is better."""
        return self.better.get(metric, 'higher') == 'higher'

    def get(self, dataset_name: str, metric: str) -> dict[str, Any] | None:
        """``{'value': ..., 'iter': ...}`` of the best ``metric`` on ``dataset_name`` so far, or None."""
        return self.best.get(dataset_name, {}).get(metric)

    def update(self, dataset_name: str, mean: Mapping[str, float], current_iter: int) -> list[str]:
        """Record the values of ``mean`` that beat the best so far (finite ones only); returns their names."""
        improved = []
        best = self.best.setdefault(dataset_name, {})
        for name, value in mean.items():
            if name not in self.better or not math.isfinite(value):
                continue
            old = best.get(name)
            if old is None or (value > old['value'] if self.higher_is_better(name) else value < old['value']):
                best[name] = {'value': value, 'iter': current_iter}
                improved.append(name)
        return improved


class DivergenceGuard:
    """Roll back to the last good validation when ``metric`` collapses.

    Args:
        metric: the validation metric watched (None: the guard is off).
        max_drop: how much worse than its best the metric may get before the run counts as diverged.
        lr_factor: every learning rate is multiplied by this at a rollback.
        best: the best values the metric is compared with.
        optimizer: whose state is restored and whose learning rates are lowered.
        parts: the other state restored at a rollback, by name (the network, the EMA, the GradScaler; None entries
            are left out).
    """

    def __init__(self, metric: str | None, max_drop: float, lr_factor: float, best: BestMetrics,
                 optimizer: torch.optim.Optimizer, parts: Mapping[str, Stateful | None]) -> None:
        self.metric = metric
        self.max_drop = float(max_drop)
        self.lr_factor = float(lr_factor)
        self.best = best
        self.optimizer = optimizer
        self.parts = {name: part for name, part in parts.items() if part is not None}
        self.snapshot: dict[str, Any] | None = None
        self.rollbacks = 0

    def state_dict(self) -> dict[str, Any]:
        """The last good state (CPU copy, or None) and the rollback count, for the training state file."""
        return {'snapshot': self.snapshot, 'rollbacks': self.rollbacks}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned, so a resumed run rolls back to the same state."""
        self.snapshot = state.get('snapshot')
        self.rollbacks = int(state.get('rollbacks', 0))

    def check(self, dataset_name: str, mean: Mapping[str, float], current_iter: int) -> bool:
        """Called after each validation and ``BestMetrics.update``; returns whether it rolled back.

        When ``metric`` is non-finite or worse than its best by more than ``max_drop``, the optimiser and the parts
        are restored to the last good validation (a scheduler keeps its place), every learning rate is multiplied
        by ``lr_factor``, and True is returned. Otherwise the current state becomes the last good one (a CPU copy).
        All ranks see the same gathered metrics, so they decide alike.
        """
        metric = self.metric
        if not metric or metric not in mean:
            return False
        value, best = mean[metric], self.best.get(dataset_name, metric)
        higher = self.best.higher_is_better(metric)
        gap = 0.0 if best is None else (best['value'] - value if higher else value - best['value'])
        if math.isfinite(value) and gap <= self.max_drop:
            self.snapshot = _to_cpu({'optimizer': self.optimizer.state_dict(), 'iter': current_iter,
                                     **{name: part.state_dict() for name, part in self.parts.items()}})
            return False
        if self.snapshot is None:
            logger.warning('Divergence guard: %s %s = %s at iteration %d, but there is no earlier good state',
                           dataset_name, metric, value, current_iter)
            return False
        snap = self.snapshot
        lrs = [g['lr'] * self.lr_factor for g in self.optimizer.param_groups]
        for name, part in self.parts.items():
            part.load_state_dict(snap[name])
        self.optimizer.load_state_dict(snap['optimizer'])
        for g, lr in zip(self.optimizer.param_groups, lrs):
            g['lr'] = lr
        self.rollbacks += 1
        logger.warning('Divergence guard: %s %s = %.4f at iteration %d (best %.4f): rolled back weights and optimiser '
                       'state to iteration %d, learning rates now %s (rollback %d)', dataset_name, metric, value,
                       current_iter, best['value'] if best else float('nan'), snap['iter'],
                       ', '.join(f'{lr:.3e}' for lr in lrs), self.rollbacks)
        return True


def _to_cpu(obj: Any) -> Any:
    """A deep copy of nested dicts/lists of tensors with every tensor cloned to the CPU."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to('cpu', copy=True)
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return copy.deepcopy(obj)
