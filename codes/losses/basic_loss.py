"""Pixel losses of the BSRT recipes (``Algolzw/BSRT``): L1 (the default, ``1*L1``), MSE and Charbonnier.

Every loss casts the prediction and the target to float32 before computing, so a bf16/fp16 network output under
autocast still gives a float32 loss (losses run in fp32), and returns ``loss_weight`` times
the reduced value. Shapes must match exactly: silent broadcasting of a (B, 3, H, W) against a (3, H, W) tensor
is refused.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor

from codes.utils.registry import LOSS_REGISTRY

__all__ = ['L1Loss', 'MSELoss', 'CharbonnierLoss']

REDUCTIONS = ('mean', 'sum', 'none')


def _reduce(loss: Tensor, reduction: str) -> Tensor:
    if reduction == 'mean':
        return loss.mean()
    if reduction == 'sum':
        return loss.sum()
    return loss


class _PixelLoss(nn.Module):
    """Shared argument checks, the float32 cast and the weighting; subclasses give the element-wise loss."""

    def __init__(self, loss_weight: float = 1.0, reduction: str = 'mean') -> None:
        super().__init__()
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {', '.join(map(repr, REDUCTIONS))}, got {reduction!r}")
        self.loss_weight = float(loss_weight)
        self.reduction = reduction

    def elementwise(self, pred: Tensor, target: Tensor) -> Tensor:
        """The unreduced loss of float32 ``pred`` and ``target``."""
        raise NotImplementedError

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        """pred, target: same-shaped tensors (e.g. (B, 3, H, W) linear RGB); the result is float32."""
        if pred.shape != target.shape:
            raise ValueError(f'pred and target shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)}')
        return self.loss_weight * _reduce(self.elementwise(pred.float(), target.float()), self.reduction)

    def extra_repr(self) -> str:
        return f'loss_weight={self.loss_weight}, reduction={self.reduction!r}'


@LOSS_REGISTRY.register()
class L1Loss(_PixelLoss):
    """Mean (or summed) absolute error; BSRT's default training loss.

    Args:
        loss_weight: factor applied to the reduced loss.
        reduction: 'mean', 'sum' or 'none' (element-wise).
    """

    def elementwise(self, pred: Tensor, target: Tensor) -> Tensor:
        return (pred - target).abs()


@LOSS_REGISTRY.register()
class MSELoss(_PixelLoss):
    """Mean (or summed) squared error (BSRT's ``MSE``).

    Args:
        loss_weight: factor applied to the reduced loss.
        reduction: 'mean', 'sum' or 'none' (element-wise).
    """

    def elementwise(self, pred: Tensor, target: Tensor) -> Tensor:
        return (pred - target).square()


@LOSS_REGISTRY.register()
class CharbonnierLoss(_PixelLoss):
    """Charbonnier (smooth L1) loss, sqrt((pred − target)² + eps²), reduced by mean by default (BSRT's ``CB``).

    BSRT's recipes (``Algolzw/BSRT``) use eps = 1e-3 for CB. Here eps is the distance floor and is **squared**
    inside the root, so eps = 1e-3 adds 1e-6 under the square root: the same function as the EDVR/BasicSR-style
    form sqrt(d² + ε) with ε = 1e-6 (BasicSR's own default, ε = 1e-12, is a different, sharper loss). The loss
    of a perfect prediction is therefore eps per element, not 0.

    Args:
        loss_weight: factor applied to the reduced loss.
        reduction: 'mean', 'sum' or 'none' (element-wise).
        eps: positive smoothing constant (1e-3, BSRT's value).
    """

    def __init__(self, loss_weight: float = 1.0, reduction: str = 'mean', eps: float = 1e-3) -> None:
        super().__init__(loss_weight, reduction)
        if not eps > 0:
            raise ValueError(f'eps must be positive, got {eps!r}')
        self.eps = float(eps)

    def elementwise(self, pred: Tensor, target: Tensor) -> Tensor:
        diff = pred - target
        return torch.sqrt(diff * diff + self.eps * self.eps)

    def extra_repr(self) -> str:
        return f'{super().extra_repr()}, eps={self.eps}'
