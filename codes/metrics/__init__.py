"""Validation metrics (``*_metric.py``): registered functions ``fn(pred, gt, **options) -> float``."""
from __future__ import annotations

import functools
from typing import Any, Callable, Mapping

from codes.utils.build import OptionError, check_kwargs
from codes.utils.registry import METRIC_REGISTRY

__all__ = ['build_metric', 'METRIC_REGISTRY']

#: Keys of a metric block that belong to the runner, not to the metric function.
RUNNER_KEYS = ('type', 'better')


def build_metric(opt: Mapping[str, Any], where: str = 'val.metrics') -> Callable[..., float]:
    """The metric function ``opt['type']`` with the other keys of ``opt`` bound as keyword options."""
    if 'type' not in opt:
        raise OptionError(where, f'missing key "type" (one of: {", ".join(METRIC_REGISTRY.keys())})')
    try:
        fn = METRIC_REGISTRY.get(opt['type'])
    except KeyError as exc:
        raise OptionError(f'{where}.type', exc.args[0]) from None
    kwargs = {k: v for k, v in opt.items() if k not in RUNNER_KEYS}
    checked = check_kwargs(fn, kwargs, where, supplied=('pred', 'gt'))  # pred and gt come at call time
    return functools.partial(fn, **checked)
