"""AlignedPSNR for BurstSR: PSNR of the aligned, colour-matched prediction with the MSE masked by ``valid``.

Follows ``goutamgmb/deep-burst-sr: utils/metrics.py`` (``AlignedPSNR``; Bhat et al., CVPR 2021), not copied.
The alignment itself (flow, warp, colour matrix, ``valid``) is ``codes.metrics.alignment``; the
real-track model (``RealBurstSRModel``) aligns each prediction once and passes the result to every metric, with
``valid`` to those that take it. AlignedSSIM and LPIPS are the plain ``calculate_ssim_linear`` and
``calculate_lpips`` applied to the aligned prediction (not masked, as upstream).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from codes.metrics.metric_util import as_batch
from codes.metrics.metric_util import crop_border as _crop
from codes.utils.registry import METRIC_REGISTRY

__all__ = ['aligned_psnr_per_image', 'calculate_aligned_psnr']

EPS = 1e-12


def aligned_psnr_per_image(pred: Tensor, gt: Tensor, valid: Tensor | None = None, crop_border: int = 40) -> Tensor:
    """Per-image masked PSNR, float32, shape (B,) (see ``calculate_aligned_psnr``)."""
    pred, gt = as_batch(pred, gt)
    if valid is None:
        valid = torch.ones_like(pred[:, :1], dtype=torch.bool)
    if valid.dim() == 3:
        valid = valid.unsqueeze(0)
    if valid.dim() != 4 or valid.shape[0] != pred.shape[0] or valid.shape[1] != 1 or \
            valid.shape[-2:] != pred.shape[-2:]:
        raise ValueError(f'valid must be (B, 1, H, W) for pred {tuple(pred.shape)}, got {tuple(valid.shape)}')
    pred, gt = _crop(pred, crop_border), _crop(gt, crop_border)
    mask = _crop(valid.to(pred.device), crop_border).float()
    sq = (pred - gt) ** 2 * mask  # (B, 3, H, W)
    mse = sq.flatten(1).sum(1) / (mask.flatten(1).sum(1) * (sq[0].numel() / mask[0].numel()) + EPS)
    return 20 * math.log10(1.0) - 10 * torch.log10(mse)


@METRIC_REGISTRY.register()
def calculate_aligned_psnr(pred: Tensor, gt: Tensor, *, valid: Tensor | None = None, crop_border: int = 40) -> float:
    """AlignedPSNR: −10·log10(Σ (pred − gt)²·valid / (Σ valid · 3 + 1e-12)) on the ``crop_border``-cropped images.

    Args:
        pred: (C, H, W) or (B, C, H, W) prediction already aligned and colour-matched to ``gt``
            (``SpatialColorAlignment`` with ``boundary_ignore=0``); linear, not clamped.
        gt: ground truth of the same shape.
        valid: (B, 1, H, W) or (1, H, W) bool mask of the colour fit; None scores every pixel.
        crop_border: pixels ignored on each side (40, the challenge's ``boundary_ignore``).

    Returns:
        The PSNR in dB of the image, or the mean over a batch.
    """
    return float(aligned_psnr_per_image(pred, gt, valid, crop_border).double().mean())
