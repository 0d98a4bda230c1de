"""Training/evaluation models (``*_model.py``): own the network, optimisation, validation and checkpoints."""
from __future__ import annotations

from typing import Any, Mapping

from codes.utils.build import OptionError
from codes.utils.registry import MODEL_REGISTRY

__all__ = ['build_model', 'MODEL_REGISTRY']


def build_model(opt: Mapping[str, Any]) -> Any:
    """Build ``opt['model_type']`` from the whole (normalised) option tree."""
    name = opt.get('model_type')
    if name is None:
        raise OptionError('model_type', f'missing (one of: {", ".join(MODEL_REGISTRY.keys())})')
    try:
        cls = MODEL_REGISTRY.get(name)
    except KeyError as exc:
        raise OptionError('model_type', exc.args[0]) from None
    return cls(opt)
