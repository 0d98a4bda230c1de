"""Helpers shared by the metric modules: border cropping, input checks, the bilinear burst baseline, and the
``MetricUnavailable`` exception raised by optional metrics (LPIPS) whose package or weights are missing.

Nothing here is registered; the registered metrics live in ``*_metric.py`` files.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ['MetricUnavailable', 'crop_border', 'as_batch', 'bilinear_baseline']


class MetricUnavailable(RuntimeError):
    """An optional metric cannot run here (a package or a weight file is missing).

    The runner catches it, logs the message once and skips the metric; it is never raised for bad inputs.
    """


def crop_border(x: Tensor, n: int) -> Tensor:
    """Drop ``n`` pixels from each side of the last two (spatial) axes of ``x``.

    Args:
        x: (..., H, W) tensor.
        n: border width in pixels; 0 returns ``x`` unchanged.

    Returns:
        A view of shape (..., H - 2n, W - 2n).
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f'crop_border must be a non-negative integer, got {n!r}')
    if x.dim() < 2:
        raise ValueError(f'crop_border needs a (..., H, W) tensor, got shape {tuple(x.shape)}')
    if n == 0:
        return x
    h, w = x.shape[-2:]
    if 2 * n >= h or 2 * n >= w:
        raise ValueError(f'crop_border={n} leaves nothing of a {h}x{w} image')
    return x[..., n:h - n, n:w - n]


def as_batch(pred: Tensor, gt: Tensor) -> tuple[Tensor, Tensor]:
    """Check that ``pred`` and ``gt`` are same-shaped (C, H, W) or (B, C, H, W) tensors; return both as
    (B, C, H, W) float32 tensors on ``pred``'s device, detached from the autograd graph."""
    if not isinstance(pred, Tensor) or not isinstance(gt, Tensor):
        raise TypeError(f'metrics take torch tensors, got {type(pred).__name__} and {type(gt).__name__}')
    if pred.shape != gt.shape:
        raise ValueError(f'pred and gt shapes differ: {tuple(pred.shape)} vs {tuple(gt.shape)}')
    if pred.dim() == 3:
        pred, gt = pred.unsqueeze(0), gt.unsqueeze(0)
    elif pred.dim() != 4:
        raise ValueError(f'metrics take (C, H, W) or (B, C, H, W) tensors, got shape {tuple(pred.shape)}')
    pred = pred.detach().to(dtype=torch.float32)
    gt = gt.detach().to(device=pred.device, dtype=torch.float32)
    return pred, gt


def bilinear_baseline(burst: Tensor, scale: int = 8) -> Tensor:
    """The no-learning reference: the reference frame demosaicked by channel averaging, upsampled bilinearly.

    RGB is built at packed resolution from frame 0 as [R, (G_r + G_b) / 2, B] (packed channels 0, 1+2, 3), then
    enlarged by ``F.interpolate(mode='bilinear', align_corners=False)``. ``align_corners=False`` treats each
    packed pixel as a square of ``scale`` x ``scale`` output pixels centred on it, which is how the network's
    output grid relates to its packed input; the half-raw-pixel offsets between the R, G and B sites of the Bayer
    cell are ignored. Only frame 0 is used, so the result is independent of the burst size.

    Args:
        burst: (B, N, 4, h, w) or (N, 4, h, w) packed RGGB bursts in [0, 1]; frame 0 is the reference.
        scale: upsampling factor from packed to output resolution (8 for BSRT: 2 for the mosaic, 4 for SR).

    Returns:
        (B, 3, scale*h, scale*w) linear RGB, or (3, scale*h, scale*w) for an unbatched burst. Same dtype as the
        input.
    """
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise ValueError(f'scale must be a positive integer, got {scale!r}')
    unbatched = burst.dim() == 4
    if unbatched:
        burst = burst.unsqueeze(0)
    if burst.dim() != 5 or burst.shape[2] != 4:
        raise ValueError(f'burst must be (B, N, 4, h, w) or (N, 4, h, w), got shape {tuple(burst.shape)}')
    ref = burst[:, 0]  # (B, 4, h, w)
    rgb = torch.stack([ref[:, 0], 0.5 * (ref[:, 1] + ref[:, 2]), ref[:, 3]], dim=1)  # (B, 3, h, w)
    out = F.interpolate(rgb, scale_factor=scale, mode='bilinear', align_corners=False)  # (B, 3, s*h, s*w)
    return out[0] if unbatched else out
