"""``WeightEMA``: an exponential moving average of a network's weights (``train.ema_decay``).

After each optimiser step every parameter of the copy moves towards the trained one,
``ema = ema + (1 - decay) * (param - ema)``, and the buffers are copied as they are (BasicSR's ``model_ema``). The
copy is saved as ``params_ema`` and is the network that validation and testing run.
"""
from __future__ import annotations

import copy
import logging
import os
from typing import Any, Mapping

import torch
import torch.nn as nn

from codes.utils.checkpoint import load_network

__all__ = ['WeightEMA']

logger = logging.getLogger(__name__)


class WeightEMA:
    """The EMA copy of a network.

    Args:
        net: the trained network (without a DDP wrapper); the copy starts equal to it.
        decay: the weight of the old average in each update, in (0, 1].
        pretrained: a weights file whose ``params_ema`` the copy starts from when it has them (else the copy of
            ``net`` is kept).
    """

    def __init__(self, net: nn.Module, decay: float, pretrained: str | os.PathLike | None = None) -> None:
        if not 0.0 < decay <= 1.0:
            raise ValueError(f'EMA decay must be in (0, 1], got {decay}')
        self.decay = float(decay)
        self.net = copy.deepcopy(net).eval()
        for p in self.net.parameters():
            p.requires_grad_(False)
        if pretrained:  # an EMA in the pretrain file wins over a copy of params
            try:
                load_network(self.net, pretrained, True, 'params_ema')
            except Exception as exc:  # the file has no usable params_ema: keep the copy of params
                logger.info('EMA starts as a copy of net_g (%s)', exc)

    @torch.no_grad()
    def update(self, net: nn.Module) -> None:
        """Move the average one step towards ``net``'s parameters; copy its buffers."""
        ema_params = dict(self.net.named_parameters())
        for name, p in net.named_parameters():
            ema_params[name].lerp_(p.detach(), 1.0 - self.decay)
        ema_buffers = dict(self.net.named_buffers())
        for name, b in net.named_buffers():
            ema_buffers[name].copy_(b)

    def state_dict(self) -> dict[str, Any]:
        """The averaged network's state_dict."""
        return self.net.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the averaged network from a state_dict."""
        self.net.load_state_dict(state)
