"""Training/evaluation models (``*_model.py``): own the network, optimisation, validation and checkpoints.

Every model derives from ``codes.models.base_model.BaseModel``, which declares the interface the runners use.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from codes.utils.build import OptionError
from codes.utils.registry import MODEL_REGISTRY

if TYPE_CHECKING:  # importing the base class pulls in torch and the builders: only where a model is built
    from codes.models.base_model import BaseModel, Options

__all__ = ['build_model', 'MODEL_REGISTRY']


def build_model(opt: Options) -> BaseModel:
    """Build ``opt['model_type']`` from the whole (normalised) option tree."""
    name = opt.get('model_type')
    if name is None:
        raise OptionError('model_type', f'missing (one of: {", ".join(MODEL_REGISTRY.keys())})')
    try:
        cls = MODEL_REGISTRY.get(name)
    except KeyError as exc:
        raise OptionError('model_type', exc.args[0]) from None
    return cls(opt)
