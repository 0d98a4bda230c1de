"""Network architectures (``*_arch.py``), built by name from the ``network_g`` option block."""
from __future__ import annotations

from typing import Any, Mapping

import torch.nn as nn

from codes.utils.build import build_from_registry
from codes.utils.registry import ARCH_REGISTRY

__all__ = ['build_network', 'ARCH_REGISTRY']


def build_network(opt: Mapping[str, Any], where: str = 'network_g') -> nn.Module:
    """Build the network ``opt['type']`` with the other keys of ``opt`` as constructor arguments."""
    return build_from_registry(ARCH_REGISTRY, opt, where)
