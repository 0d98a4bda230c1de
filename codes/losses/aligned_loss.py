"""AlignedL1: the BurstSR real-track training loss (L1 after spatial and colour alignment to the Canon GT).

Follows the upstream code (not copied): ``goutamgmb/deep-burst-sr:
utils/metrics.py`` (``AlignedL1``) and ``Algolzw/BSRT: code/real/bsrt/``. The whole per-GPU batch is aligned in one
call (normalising maxima over the batch; flow, colour matrix and mask per image), and the masked absolute errors are
pooled over the batch: Σ |pred_m − gt|·valid / (Σ valid · 3 + 1e-12). The loss runs in float32, outside autocast.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch.nn as nn
from torch import Tensor

from codes.metrics.alignment import SpatialColorAlignment, build_flow_estimator, flow_estimator_problems
from codes.utils.build import OptionProblems
from codes.utils.registry import LOSS_REGISTRY

__all__ = ['AlignedL1Loss']

EPS = 1e-12


@LOSS_REGISTRY.register()
class AlignedL1Loss(nn.Module):
    """L1 between the aligned, colour-matched prediction and the ground truth, masked by the fit's ``valid`` map.

    Called as ``loss(pred, gt, burst)`` with pred, gt (B, 3, H, W) linear RGB and burst (B, N, 4, H/8, W/8).

    Args:
        boundary_ignore: pixels ignored on each side after alignment (40).
        sr_factor: output / LR-RGB scale (4 for BurstSR).
        flow_estimator: 'auto' (PWC-Net when ``pwcnet_path`` is set, else DIS with a warning), 'pwcnet' or 'dis'.
        pwcnet_path: the local official ``pwcnet-network-default.pth``.
        dis_preset: DIS preset ('ultrafast', 'fast', 'medium') when DIS is used.
        loss_weight: factor applied to the loss.
    """

    requires_burst = True  #: the model passes the input burst as the third argument

    @classmethod
    def check_options(cls, args: Mapping[str, Any]) -> OptionProblems:
        """The deliberate value checks of the constructor, as (key, message) pairs (see ``codes.utils.build``)."""
        return flow_estimator_problems(args['flow_estimator'], args['pwcnet_path'])

    def __init__(self, boundary_ignore: int = 40, sr_factor: int = 4, flow_estimator: str = 'auto',
                 pwcnet_path: str | None = None, dis_preset: str = 'medium', loss_weight: float = 1.0) -> None:
        super().__init__()
        estimator = build_flow_estimator(flow_estimator, pwcnet_path, dis_preset, where='train.pixel_opt')
        self.align = SpatialColorAlignment(estimator, sr_factor, boundary_ignore)
        self.loss_weight = float(loss_weight)

    def forward(self, pred: Tensor, gt: Tensor, burst: Tensor) -> Tensor:
        """Float32 scalar loss of the batch."""
        aligned = self.align(pred.float(), gt.float(), burst.float())
        valid = aligned.valid.float()
        l1 = (aligned.pred - aligned.gt).abs() * valid
        ratio = l1.numel() / valid.numel()  # 3 channels per mask pixel
        return self.loss_weight * l1.sum() / (valid.sum() * ratio + EPS)
