"""Training losses (``*_loss.py``), built by name from ``train.pixel_opt`` and friends."""
from __future__ import annotations

from typing import Any, Mapping

import torch.nn as nn

from codes.utils.build import build_from_registry
from codes.utils.registry import LOSS_REGISTRY

__all__ = ['build_loss', 'LOSS_REGISTRY']


def build_loss(opt: Mapping[str, Any], where: str = 'train.pixel_opt') -> nn.Module:
    """Build the loss ``opt['type']`` with the other keys of ``opt`` as constructor arguments."""
    return build_from_registry(LOSS_REGISTRY, opt, where)
