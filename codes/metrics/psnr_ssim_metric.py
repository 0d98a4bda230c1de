"""MATLAB-compatible PSNR and SSIM of sRGB images, as single-image SR papers (and DCLS) report them.

Follows BasicSR's ``calculate_psnr``/``calculate_ssim`` and the test script of ``megvii-research/DCLS-SR``:
both images are rounded through uint8 (clamp to [0, 1], ×255, round half to even), optionally
converted to the BT.601 luma of MATLAB's ``rgb2ycbcr`` (Y = 16 + (65.481·R + 128.553·G + 24.966·B)/255 on the
0-255 scale, not rounded), cropped by ``crop_border`` pixels (DCLS: crop = scale), and compared in float64 on the
0-255 scale. SSIM uses the 11×11 Gaussian window with σ = 1.5, 'valid' filtering, C1 = (0.01·255)²,
C2 = (0.03·255)²; on RGB it averages the per-channel SSIMs.

The functions take (C, H, W) or (B, C, H, W) **RGB** torch tensors in [0, 1] and return a float (the mean over a
batch).
"""
from __future__ import annotations

import math

import cv2
import numpy as np
from torch import Tensor

from codes.metrics.metric_util import as_batch
from codes.utils.registry import METRIC_REGISTRY

__all__ = ['to_uint8', 'rgb_to_y', 'psnr_matlab', 'ssim_matlab', 'calculate_psnr_matlab', 'calculate_ssim_matlab',
           'calculate_psnr_basicsr', 'calculate_ssim_basicsr']


def to_uint8(x: Tensor) -> np.ndarray:
    """(C, H, W) float tensor in [0, 1] -> (H, W, C) uint8: clamp, ×255 in float32, round half to even."""
    arr = x.detach().float().clamp(0, 1).mul(255.0).permute(1, 2, 0).cpu().numpy()
    return np.round(arr).astype(np.uint8)


def rgb_to_y(img: np.ndarray) -> np.ndarray:
    """(H, W, 3) RGB on the 0-255 scale -> (H, W) float64 BT.601 Y on the 0-255 scale (MATLAB ``rgb2ycbcr``)."""
    img = img.astype(np.float64) / 255.0
    return img @ np.array([65.481, 128.553, 24.966]) + 16.0


def _quantise_and_crop(pred: Tensor, gt: Tensor, crop_border: int, test_y_channel: bool
                       ) -> tuple[np.ndarray, np.ndarray]:
    """The two arrays a MATLAB-style metric compares: (3, H, W) images quantised to uint8, then the Y channel (or
    RGB) as float64 on the 0-255 scale, ``crop_border`` pixels cut from each side."""
    a, b = to_uint8(pred), to_uint8(gt)
    if test_y_channel:
        if a.shape[-1] != 3:
            raise ValueError(f'test_y_channel needs RGB images, got {a.shape[-1]} channels')
        a, b = rgb_to_y(a)[..., None], rgb_to_y(b)[..., None]
    else:
        a, b = a.astype(np.float64), b.astype(np.float64)
    if crop_border:
        h, w = a.shape[:2]
        if 2 * crop_border >= min(h, w):
            raise ValueError(f'crop_border={crop_border} leaves nothing of a {h}x{w} image')
        a = a[crop_border:-crop_border, crop_border:-crop_border]
        b = b[crop_border:-crop_border, crop_border:-crop_border]
    return a, b


def psnr_matlab(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two float64 arrays on the 0-255 scale; inf when identical."""
    mse = float(np.mean((a - b) ** 2))
    return math.inf if mse == 0 else 20.0 * math.log10(255.0 / math.sqrt(mse))


def ssim_matlab(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM of two (H, W) or (H, W, C) float64 arrays on the 0-255 scale (mean of the per-channel SSIMs)."""
    if a.ndim == 3:
        return float(np.mean([ssim_matlab(a[..., c], b[..., c]) for c in range(a.shape[-1])]))
    if min(a.shape) < 11:
        raise ValueError(f'SSIM needs images of at least 11x11 pixels after cropping, got {a.shape}')
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    g = cv2.getGaussianKernel(11, 1.5)
    window = g @ g.T

    def filt(x: np.ndarray) -> np.ndarray:
        return cv2.filter2D(x, -1, window)[5:-5, 5:-5]

    mu1, mu2 = filt(a), filt(b)
    s1 = filt(a * a) - mu1 ** 2
    s2 = filt(b * b) - mu2 ** 2
    s12 = filt(a * b) - mu1 * mu2
    ssim_map = ((2 * mu1 * mu2 + c1) * (2 * s12 + c2)) / ((mu1 ** 2 + mu2 ** 2 + c1) * (s1 + s2 + c2))
    return float(ssim_map.mean())


@METRIC_REGISTRY.register()
def calculate_psnr_matlab(pred: Tensor, gt: Tensor, *, crop_border: int = 0, test_y_channel: bool = True) -> float:
    """MATLAB-compatible PSNR (dB) after the uint8 round trip, on Y (default) or RGB.

    Args:
        pred, gt: (C, H, W) or (B, C, H, W) RGB in [0, 1].
        crop_border: pixels ignored on each side (DCLS: the scale).
        test_y_channel: score the BT.601 luma (SR papers) instead of the three RGB channels.
    """
    pred, gt = as_batch(pred, gt)
    return float(np.mean([psnr_matlab(*_quantise_and_crop(p, g, crop_border, test_y_channel))
                          for p, g in zip(pred, gt)]))


@METRIC_REGISTRY.register()
def calculate_ssim_matlab(pred: Tensor, gt: Tensor, *, crop_border: int = 0, test_y_channel: bool = True) -> float:
    """MATLAB-compatible SSIM after the uint8 round trip, on Y (default) or RGB (mean of the channel SSIMs).

    Args:
        pred, gt: (C, H, W) or (B, C, H, W) RGB in [0, 1].
        crop_border: pixels ignored on each side (DCLS: the scale).
        test_y_channel: score the BT.601 luma instead of the three RGB channels.
    """
    pred, gt = as_batch(pred, gt)
    return float(np.mean([ssim_matlab(*_quantise_and_crop(p, g, crop_border, test_y_channel))
                          for p, g in zip(pred, gt)]))



@METRIC_REGISTRY.register(name='calculate_psnr')
def calculate_psnr_basicsr(pred: Tensor, gt: Tensor, *, crop_border: int, test_y_channel: bool = False) -> float:
    """BasicSR's ``calculate_psnr`` name and defaults (``crop_border`` required, RGB unless ``test_y_channel``):
    :func:`calculate_psnr_matlab`, which computes the same MATLAB-compatible PSNR."""
    return calculate_psnr_matlab(pred, gt, crop_border=crop_border, test_y_channel=test_y_channel)


@METRIC_REGISTRY.register(name='calculate_ssim')
def calculate_ssim_basicsr(pred: Tensor, gt: Tensor, *, crop_border: int, test_y_channel: bool = False) -> float:
    """BasicSR's ``calculate_ssim`` name and defaults (``crop_border`` required, RGB unless ``test_y_channel``):
    :func:`calculate_ssim_matlab`."""
    return calculate_ssim_matlab(pred, gt, crop_border=crop_border, test_y_channel=test_y_channel)
