"""Optimisers and learning-rate schedulers, by class name (same convention as every builder: copy, pop ``type``,
check the rest against the constructor, call).

Every optimizer of ``torch.optim`` and every scheduler of ``torch.optim.lr_scheduler`` is registered under its class
name (``SGD``, ``AdamW``, ``OneCycleLR``, ...), plus BasicSR's ``MultiStepRestartLR`` and
``CosineAnnealingRestartLR`` (XPixelGroup/BasicSR: ``basicsr/models/lr_scheduler.py``) with BasicSR's semantics.
``SequentialLR`` and ``ChainedScheduler`` take their ``schedulers`` as a list of scheduler blocks. Schedulers are
stepped once per iteration, except ``ReduceLROnPlateau``, which is stepped after each validation.

:func:`weight_decay_groups` puts the parameters a network names in ``no_weight_decay()`` (and, optionally, every
1-D parameter) in parameter groups with ``weight_decay`` 0, as timm's ``param_groups_weight_decay`` does
(``train.no_weight_decay``).
"""
from __future__ import annotations

import inspect
import math
from collections import Counter
from typing import Any, Iterable, Mapping

import torch
import torch.nn as nn
from torch.optim import Optimizer, lr_scheduler

from codes.utils.build import OptionError, check_kwargs
from codes.utils.registry import OPTIMIZER_REGISTRY, SCHEDULER_REGISTRY

__all__ = ['MultiStepRestartLR', 'CosineAnnealingRestartLR', 'build_optimizer', 'build_scheduler', 'OPTIMIZERS',
           'SCHEDULERS', 'UNSUPPORTED', 'weight_decay_groups', 'NO_WEIGHT_DECAY_MODES']

#: names whose constructors need something an option file cannot hold, with what to use instead
UNSUPPORTED = {
    'LBFGS': 'it needs a closure that re-evaluates the loss, which the training step does not provide; '
             'use Adam, AdamW or SGD',
    'SparseAdam': 'it takes only sparse gradients and the networks here have dense ones; use Adam',
    'LambdaLR': 'lr_lambda is a Python function, which an option file cannot hold; use LinearLR, '
                'MultiStepLR, CosineAnnealingLR or SequentialLR',
    'MultiplicativeLR': 'lr_lambda is a Python function, which an option file cannot hold; use ExponentialLR',
}
_NESTED = ('SequentialLR', 'ChainedScheduler')  # their ``schedulers`` are scheduler blocks


class MultiStepRestartLR(lr_scheduler.LRScheduler):
    """BasicSR's multi-step schedule with restarts.

    At each iteration in ``restarts`` every group's lr is reset to ``initial_lr * restart_weights[i]``; at each
    iteration in ``milestones`` it is multiplied by ``gamma`` (by ``gamma ** k`` for a milestone listed k times).
    With the default ``restarts=[0]`` this is ``MultiStepLR``.
    """

    def __init__(self, optimizer: Optimizer, milestones: list[int], gamma: float = 0.1, restarts: list[int] = (0,),
                 restart_weights: list[float] = (1.0,), last_epoch: int = -1) -> None:
        if len(restarts) != len(restart_weights):
            raise ValueError(f'restarts ({len(restarts)} values) and restart_weights ({len(restart_weights)}) '
                             'must have the same length')
        self.milestones = Counter(int(m) for m in milestones)
        self.gamma = float(gamma)
        self.restarts = [int(r) for r in restarts]
        self.restart_weights = [float(w) for w in restart_weights]
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        """The lr of every group at iteration ``last_epoch``."""
        it = self.last_epoch
        if it in self.restarts:
            weight = self.restart_weights[self.restarts.index(it)]
            return [g['initial_lr'] * weight for g in self.optimizer.param_groups]
        if it not in self.milestones:
            return [g['lr'] for g in self.optimizer.param_groups]
        return [g['lr'] * self.gamma ** self.milestones[it] for g in self.optimizer.param_groups]


class CosineAnnealingRestartLR(lr_scheduler.LRScheduler):
    """BasicSR's cosine annealing with restarts.

    The iterations are cut into ``periods``; in period ``i`` (starting at iteration ``s_i``, the sum of the
    earlier periods) the lr of a group with base lr ``b`` is
    ``eta_min + restart_weights[i] * (b - eta_min) * (1 + cos(pi * (t - s_i) / periods[i])) / 2``, where an
    iteration ``t`` belongs to the first period whose end (``s_i + periods[i]``) is >= t. After the last period
    the lr stays at that period's end value.
    """

    def __init__(self, optimizer: Optimizer, periods: list[int], restart_weights: list[float] = (1.0,),
                 eta_min: float = 0.0, last_epoch: int = -1) -> None:
        if len(periods) != len(restart_weights):
            raise ValueError(f'periods ({len(periods)} values) and restart_weights ({len(restart_weights)}) must '
                             'have the same length')
        if any(int(p) < 1 for p in periods):
            raise ValueError(f'periods must be >= 1, got {list(periods)}')
        self.periods = [int(p) for p in periods]
        self.restart_weights = [float(w) for w in restart_weights]
        self.eta_min = float(eta_min)
        self.cumulative_period = [sum(self.periods[:i + 1]) for i in range(len(self.periods))]
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        """The lr of every group at iteration ``last_epoch``."""
        it = self.last_epoch
        idx = next((i for i, end in enumerate(self.cumulative_period) if it <= end), len(self.periods) - 1)
        start = self.cumulative_period[idx - 1] if idx > 0 else 0
        progress = min((it - start) / self.periods[idx], 1.0)
        weight = self.restart_weights[idx]
        return [self.eta_min + weight * 0.5 * (base - self.eta_min) * (1 + math.cos(math.pi * progress))
                for base in self.base_lrs]


def _register_torch() -> None:
    for name, cls in vars(torch.optim).items():
        if inspect.isclass(cls) and issubclass(cls, Optimizer) and cls is not Optimizer:
            if name in UNSUPPORTED:
                OPTIMIZER_REGISTRY.refuse(name, UNSUPPORTED[name])
            else:
                OPTIMIZER_REGISTRY.register(cls, name=name)
    for name, cls in vars(lr_scheduler).items():
        public = inspect.isclass(cls) and not name.startswith('_') and cls is not lr_scheduler.LRScheduler
        if public and (issubclass(cls, lr_scheduler.LRScheduler) or cls is lr_scheduler.ReduceLROnPlateau):
            if name in UNSUPPORTED:
                SCHEDULER_REGISTRY.refuse(name, UNSUPPORTED[name])
            else:
                SCHEDULER_REGISTRY.register(cls, name=name)
    SCHEDULER_REGISTRY.register(MultiStepRestartLR)
    SCHEDULER_REGISTRY.register(CosineAnnealingRestartLR)


_register_torch()
#: name -> class of every optimizer / scheduler accepted by ``train.optim_g`` / ``train.scheduler``
OPTIMIZERS = {k: OPTIMIZER_REGISTRY.get(k) for k in OPTIMIZER_REGISTRY.keys()}
SCHEDULERS = {k: SCHEDULER_REGISTRY.get(k) for k in SCHEDULER_REGISTRY.keys()}


def _build(registry: Any, first: Any, opt: Mapping[str, Any], where: str, supplied: str) -> Any:
    if not isinstance(opt, Mapping) or 'type' not in opt:
        raise OptionError(where, f'expected a mapping with a "type" key (one of: {", ".join(registry.keys())})')
    try:
        cls = registry.get(opt['type'])
    except KeyError as exc:
        raise OptionError(f'{where}.type', exc.args[0]) from None
    rest = {k: v for k, v in opt.items() if k != 'type'}
    nested = rest.get('schedulers') if opt['type'] in _NESTED else None
    if nested is not None:  # SequentialLR, ChainedScheduler: built from their own blocks
        rest['schedulers'] = []
    kwargs = check_kwargs(cls, rest, where, supplied=(supplied,))
    if nested is not None:
        if not isinstance(nested, list):
            raise OptionError(f'{where}.schedulers', 'expected a list of scheduler blocks')
        kwargs['schedulers'] = [build_scheduler(first, b, f'{where}.schedulers[{i}]') for i, b in enumerate(nested)]
    try:
        if opt['type'] == 'ChainedScheduler':
            return cls(kwargs.pop('schedulers'), optimizer=first, **kwargs)
        return cls(first, **kwargs)
    except (ValueError, TypeError) as exc:  # torch's own argument checks ("Invalid learning rate: -1.0")
        raise OptionError(where, f'{cls.__name__}: {exc}') from None


def build_optimizer(params: Iterable, opt: Mapping[str, Any], where: str = 'train.optim_g') -> Optimizer:
    """``torch.optim.<type>(params, **rest)`` (or a registered optimizer) after checking ``rest`` against the
    constructor."""
    return _build(OPTIMIZER_REGISTRY, params, opt, where, 'params')


def build_scheduler(optimizer: Optimizer, opt: Mapping[str, Any], where: str = 'train.scheduler') -> Any:
    """``<type>(optimizer, **rest)`` after checking ``rest`` against the constructor."""
    return _build(SCHEDULER_REGISTRY, optimizer, opt, where, 'optimizer')


#: values of ``train.no_weight_decay``: None (every parameter decays), 'named' (the network's
#: ``no_weight_decay()`` names and ``no_weight_decay_keywords()`` substrings), 'named_and_1d' (also every
#: parameter with at most one dimension: biases and normalisation weights)
NO_WEIGHT_DECAY_MODES = (None, 'named', 'named_and_1d')


def _exempt_names(net: nn.Module) -> tuple[set[str], tuple[str, ...]]:
    names = getattr(net, 'no_weight_decay', None)
    keywords = getattr(net, 'no_weight_decay_keywords', None)
    return (set(names()) if callable(names) else set()), (tuple(keywords()) if callable(keywords) else ())


def weight_decay_groups(params: Iterable, net: nn.Module, mode: str | None) -> Any:
    """``params`` (parameters or parameter groups of ``net``) split so that the exempt ones decay by 0.

    With ``mode`` None ``params`` is returned as it is. Otherwise each group (a plain parameter list is one group)
    becomes a group of the decayed parameters and one of the exempt ones, with ``weight_decay: 0.0`` and the
    group's other keys (``lr``, ...); empty groups are left out.
    """
    if mode is None:
        return params
    if mode not in NO_WEIGHT_DECAY_MODES:
        raise ValueError(f'no_weight_decay: {mode!r} is not one of {NO_WEIGHT_DECAY_MODES}')
    exempt, keywords = _exempt_names(net)
    names = {id(p): n for n, p in net.named_parameters()}
    items = list(params)
    groups = items if items and isinstance(items[0], Mapping) else [{'params': items}]
    out = []
    for group in groups:
        decay, no_decay = [], []
        for p in group['params']:
            name = names.get(id(p), '')
            skip = name in exempt or any(k in name for k in keywords) or (mode == 'named_and_1d' and p.ndim <= 1)
            (no_decay if skip else decay).append(p)
        rest = {k: v for k, v in group.items() if k != 'params'}
        if decay:
            out.append({**rest, 'params': decay})
        if no_decay:
            out.append({**rest, 'params': no_decay, 'weight_decay': 0.0})
    return out
