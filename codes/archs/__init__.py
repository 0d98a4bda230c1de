"""Network architectures (``*_arch.py``), built by name from the ``network_g`` option block.

A network's deliberate value checks (a width divisible by a group count, a choice among published settings) are
declared, so that the option validation reports each as one line naming ``network_g.<key>`` with the other
problems of the file (see :mod:`codes.utils.build`)::

    @ARCH_REGISTRY.register()
    class MyNet(nn.Module):
        @classmethod
        def check_options(cls, args: Mapping[str, Any]) -> OptionProblems:
            problems = []
            if args['num_feat'] % args['groups']:
                problems.append(('num_feat', f"({args['num_feat']}) must be divisible by 'groups' ({args['groups']})"))
            return problems

        def __init__(self, num_feat: int = 64, groups: int = 8) -> None:
            super().__init__()
            raise_option_problems(MyNet, locals())
            ...

``args`` holds every constructor argument (given or default, already type-checked against the hints). Only these
checks are user errors; anything else a constructor raises keeps its traceback. Checks of input shapes belong in
``forward``, and a file's existence is checked where the file is read.
"""
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
