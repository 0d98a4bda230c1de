"""Network architectures (``*_arch.py``), built by name from the ``network_g`` option block."""
from __future__ import annotations

from typing import Any, Mapping

import torch.nn as nn

from codes.utils.build import OptionError, build_from_registry
from codes.utils.registry import ARCH_REGISTRY

__all__ = ['build_network', 'ARCH_REGISTRY']


def build_network(opt: Mapping[str, Any], where: str = 'network_g') -> nn.Module:
    """Build the network ``opt['type']`` with the other keys of ``opt`` as constructor arguments.

    ``compile: true`` (not a constructor argument) compiles the network in place with ``torch.compile``
    (``nn.Module.compile``), so its state_dict keys and checkpoints stay those of the plain module.
    """
    compile_net = opt.get('compile', False) if isinstance(opt, Mapping) else False
    if not isinstance(compile_net, bool):
        raise OptionError(f'{where}.compile', f'expected true or false, got {compile_net!r}')
    net = build_from_registry(ARCH_REGISTRY, opt, where, drop=('compile', ))
    if compile_net:
        net.compile()
    return net
