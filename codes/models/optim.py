"""Optimiser and learning-rate scheduler builders (same convention as every builder: copy, pop ``type``, call)."""
from __future__ import annotations

from typing import Any, Iterable, Mapping

import torch
from torch.optim import Optimizer, lr_scheduler

from codes.utils.build import OptionError, check_kwargs

__all__ = ['OPTIMIZERS', 'SCHEDULERS', 'build_optimizer', 'build_scheduler']

OPTIMIZERS = {'Adam': torch.optim.Adam, 'AdamW': torch.optim.AdamW}
#: Schedulers stepped once per iteration, except ReduceLROnPlateau, which is stepped after each validation.
SCHEDULERS = {'MultiStepLR': lr_scheduler.MultiStepLR, 'CosineAnnealingLR': lr_scheduler.CosineAnnealingLR,
              'ReduceLROnPlateau': lr_scheduler.ReduceLROnPlateau}


def _build(table: dict, first: str, first_value: Any, opt: Mapping[str, Any], where: str) -> Any:
    if 'type' not in opt or opt['type'] not in table:
        raise OptionError(f'{where}.type', f"unknown type {opt.get('type')!r}; one of: {', '.join(table)}")
    cls = table[opt['type']]
    kwargs = check_kwargs(cls, {k: v for k, v in opt.items() if k != 'type'}, where, supplied=(first,))
    return cls(first_value, **kwargs)


def build_optimizer(params: Iterable, opt: Mapping[str, Any], where: str = 'train.optim_g') -> Optimizer:
    """``OPTIMIZERS[opt['type']](params, **rest)``."""
    return _build(OPTIMIZERS, 'params', params, opt, where)


def build_scheduler(optimizer: Optimizer, opt: Mapping[str, Any], where: str = 'train.scheduler') -> Any:
    """``SCHEDULERS[opt['type']](optimizer, **rest)``."""
    return _build(SCHEDULERS, 'optimizer', optimizer, opt, where)
