"""Spatial and colour alignment of a prediction to a misaligned ground truth (BurstSR AlignedL1 / AlignedPSNR).

Follows the upstream code (not copied): ``goutamgmb/deep-burst-sr``
(``utils/spatial_color_alignment.py``, ``utils/warp.py``, ``utils/metrics.py``) and ``Algolzw/BSRT``
(``code/real/bsrt/utils/``). For pred and gt (B, 3, H, W) and the burst (B, N, 4, H/(2s), W/(2s)), s = sr_factor:

1. flow from pred / (max(pred) + 1e-6) to gt / (max(gt) + 1e-6) (maxima over the batch), under no_grad;
2. pred_w = warp(pred, flow) (pixel-centre grid, bilinear, zeros outside);
3. flow_ds = bilinear(flow, 1/(2s)) / (2s) and gt_ds = bilinear(gt, 1/(2s));
4. base_w = warp(burst[:, 0, [R, G_r, B]], flow_ds);
5. a 3×3 colour matrix C fitted per image by least squares from Gaussian-smoothed base_w to gt_ds (5 px border
   cropped), ``valid`` where the fit error is under 20/255, upsampled to H×W and thresholded at 0.9;
   pred_m = pred_w · C;
6. the caller crops ``boundary_ignore`` px and compares pred_m with gt, masked by ``valid`` for L1/PSNR.

The flow estimator is pluggable: PWC-Net (``codes.archs.pwcnet_arch``, the published protocol, with the official
weights) or OpenCV's DIS optical flow, which needs no weights but gives numbers that are **not comparable** with
published AlignedPSNR values.
"""
from __future__ import annotations

import logging
import math
import os
from typing import NamedTuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from codes.utils.build import OptionError, OptionErrors, OptionProblems

__all__ = ['warp', 'gaussian_kernel', 'match_colors', 'DISFlow', 'PWCNetFlow', 'build_flow_estimator',
           'flow_estimator_problems', 'SpatialColorAlignment', 'Aligned', 'FLOW_ESTIMATORS']

logger = logging.getLogger(__name__)

FLOW_ESTIMATORS = ('auto', 'pwcnet', 'dis')
DIS_PRESETS = ('ultrafast', 'fast', 'medium')
NOT_COMPARABLE = ('AlignedL1/AlignedPSNR/SSIM/LPIPS values are NOT comparable with published BurstSR numbers, '
                  'which use PWC-Net (pwcnet-network-default.pth)')


# ---------------------------------------------------------------------------------------------------- functions
def warp(image: Tensor, flow: Tensor) -> Tensor:
    """Sample ``image`` (B, C, H, W) at (x + 0.5 + dx, y + 0.5 + dy) for flow (B, 2, H, W) in pixels:
    coordinates normalised by 2·u/size − 1, ``grid_sample`` bilinear, align_corners=False, zeros outside."""
    b, _, h, w = flow.shape
    ys, xs = torch.meshgrid(torch.arange(h, device=flow.device, dtype=flow.dtype),
                            torch.arange(w, device=flow.device, dtype=flow.dtype), indexing='ij')
    gx = (xs + 0.5 + flow[:, 0]) * (2.0 / image.shape[-1]) - 1.0  # (B, H, W)
    gy = (ys + 0.5 + flow[:, 1]) * (2.0 / image.shape[-2]) - 1.0
    grid = torch.stack((gx, gy), dim=-1)
    return F.grid_sample(image, grid.to(image.dtype), mode='bilinear', padding_mode='zeros', align_corners=False)


def gaussian_kernel(sigma: float = 1.5) -> Tensor:
    """Normalised 2-D Gaussian of size int(4σ + 1): the outer product of exp(−k²/(2σ²))/(√(2π)·σ), divided by
    its sum; (K, K) float32."""
    size = int(4 * sigma + 1)
    k = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-k ** 2 / (2 * sigma ** 2)) / (math.sqrt(2 * math.pi) * sigma)
    kernel = torch.outer(g, g)
    return kernel / kernel.sum()


def _smooth(image: Tensor, kernel: Tensor) -> Tensor:
    """Per-channel 2-D convolution with ``kernel`` (K, K), reflect padding K//2."""
    c = image.shape[1]
    pad = kernel.shape[-1] // 2
    weight = kernel.to(image).expand(c, 1, *kernel.shape)
    return F.conv2d(F.pad(image, (pad, pad, pad, pad), mode='reflect'), weight, groups=c)


def match_colors(im_ref: Tensor, im_q: Tensor, im_test: Tensor, kernel: Tensor | None = None,
                 border: int = 5, max_error: float = 20.0) -> tuple[Tensor, Tensor]:
    """Fit per image a 3×3 matrix C mapping ``im_q`` to ``im_ref`` (both smoothed, ``border`` px cropped) by least
    squares, and apply it to ``im_test``.

    Args:
        im_ref: (B, 3, h, w) reference colours (the downsampled ground truth).
        im_q: (B, 3, h, w) the same view in the query colours (the warped base frame).
        im_test: (B, 3, H, W) the image to recolour (the warped prediction), H/h = W/w.
        kernel: smoothing kernel; ``gaussian_kernel(1.5)`` by default.

    Returns:
        (im_test · C of shape (B, 3, H, W), valid (B, 1, H, W) bool): valid where the fit error ‖(q·C − ref)·255‖
        is below ``max_error``, zero-padded back by ``border``, upsampled bilinearly and thresholded at > 0.9.
    """
    kernel = gaussian_kernel(1.5) if kernel is None else kernel
    ref = _smooth(im_ref, kernel)[..., border:-border, border:-border]
    q = _smooth(im_q, kernel)[..., border:-border, border:-border]
    b = ref.shape[0]
    ref_flat = ref.reshape(b, 3, -1).double()  # (B, 3, P)
    q_flat = q.reshape(b, 3, -1).double()
    c_mat = torch.linalg.lstsq(q_flat.transpose(1, 2), ref_flat.transpose(1, 2)).solution  # (B, 3, 3)
    fitted = torch.matmul(q_flat.transpose(1, 2), c_mat).transpose(1, 2)  # (B, 3, P)
    err = ((fitted - ref_flat) * 255.0).norm(dim=1).reshape(b, *ref.shape[-2:])
    valid = (err < max_error).float()
    pad = (im_q.shape[-1] - valid.shape[-1]) // 2
    valid = F.pad(valid, (pad, pad, pad, pad), value=0.0)
    factor = im_test.shape[-1] / valid.shape[-1]
    valid = F.interpolate(valid.unsqueeze(1), scale_factor=factor, mode='bilinear', align_corners=False) > 0.9
    c_mat = c_mat.to(im_test.dtype)
    out = torch.matmul(im_test.reshape(b, 3, -1).transpose(1, 2), c_mat).transpose(1, 2).reshape(im_test.shape)
    return out, valid


# ---------------------------------------------------------------------------------------------------- flow
class DISFlow(nn.Module):
    """OpenCV DIS optical flow as a weights-free flow estimator (on the CPU, one image pair at a time).

    The images are turned into 8-bit grey (mean of the channels of the max-normalised input, ×255) and the flow
    is computed from the target to the source, so ``warp(source, flow)`` ≈ target, like ``PWCNetFlow``.

    Args:
        preset: 'ultrafast', 'fast' or 'medium' (OpenCV's presets).
    """

    def __init__(self, preset: str = 'medium') -> None:
        super().__init__()
        if preset not in DIS_PRESETS:
            raise ValueError(f"dis_preset must be one of {', '.join(DIS_PRESETS)}, got {preset!r}")
        self.preset = preset

    @staticmethod
    def _grey(image: Tensor) -> np.ndarray:
        grey = image.detach().float().mean(0).clamp(0, 1).mul(255).round().to(torch.uint8)
        return np.ascontiguousarray(grey.cpu().numpy())

    @torch.no_grad()
    def estimate_flow(self, source: Tensor, target: Tensor) -> Tensor:
        """(B, 2, H, W) flow in target pixels with ``source`` (B, C, H, W) at x + flow ≈ ``target``."""
        import cv2
        preset = {'ultrafast': cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST, 'fast': cv2.DISOPTICAL_FLOW_PRESET_FAST,
                  'medium': cv2.DISOPTICAL_FLOW_PRESET_MEDIUM}[self.preset]
        dis = cv2.DISOpticalFlow_create(preset)
        flows = []
        for src, tgt in zip(source, target):
            flow = dis.calc(self._grey(tgt), self._grey(src), None)  # (H, W, 2): tgt(x) ≈ src(x + flow)
            flows.append(torch.from_numpy(flow).permute(2, 0, 1))
        return torch.stack(flows).to(device=source.device, dtype=source.dtype)


class PWCNetFlow(nn.Module):
    """PWC-Net with the official weights as the flow estimator (the published protocol)."""

    def __init__(self, pwcnet_path: str | None) -> None:
        super().__init__()
        from codes.archs.pwcnet_arch import PWCNet
        self.net = PWCNet(load_path=pwcnet_path)

    @torch.no_grad()
    def estimate_flow(self, source: Tensor, target: Tensor) -> Tensor:
        """(B, 2, H, W) flow with ``source`` at x + flow ≈ ``target`` (see ``PWCNet.estimate_flow``)."""
        return self.net.estimate_flow(source.float(), target.float()).to(source.dtype)


def flow_estimator_problems(flow_estimator: str, pwcnet_path: str | None) -> OptionProblems:
    """The problems of a flow estimator choice, as (key, message) pairs (the ``check_options`` of the classes that
    take these options, see ``codes.utils.build``): an unknown estimator, or 'pwcnet' without weights. Whether the
    weights file exists is checked when it is read (:func:`build_flow_estimator`), so that an option file can be
    validated on a machine without it."""
    if flow_estimator not in FLOW_ESTIMATORS:
        return [('flow_estimator', f"must be one of {', '.join(FLOW_ESTIMATORS)}, got {flow_estimator!r}")]
    if flow_estimator == 'pwcnet' and not pwcnet_path:
        return [('flow_estimator', "'pwcnet' needs pwcnet_path, the local pwcnet-network-default.pth (it is never "
                 'downloaded)')]
    return []


def build_flow_estimator(flow_estimator: str = 'auto', pwcnet_path: str | None = None,
                         dis_preset: str = 'medium', where: str = '') -> nn.Module:
    """'pwcnet' (needs ``pwcnet_path``), 'dis', or 'auto' (PWC-Net when ``pwcnet_path`` is set, else DIS). DIS logs
    a warning that its numbers are not comparable with published ones. A wrong choice or missing weights raise an
    ``OptionError`` naming ``<where>.<key>``; weights that are refused or do not fit raise a ``CheckpointError``
    naming the file."""
    OptionErrors.raise_all([OptionError(f'{where}.{key}' if where else key, message)
                            for key, message in flow_estimator_problems(flow_estimator, pwcnet_path)])
    if flow_estimator == 'pwcnet' or (flow_estimator == 'auto' and pwcnet_path):
        if not os.path.isfile(pwcnet_path):
            raise OptionError(f'{where}.pwcnet_path' if where else 'pwcnet_path', f'PWC-Net weights {pwcnet_path!r} '
                              'not found (download pwcnet-network-default.pth yourself; see README.md, BurstSR '
                              'real-world track)')
        return PWCNetFlow(pwcnet_path)
    if flow_estimator == 'auto':
        logger.warning('%s: no PWC-Net weights given (pwcnet_path), so the alignment uses OpenCV DIS optical flow: '
                       '%s', where, NOT_COMPARABLE)
    else:
        logger.warning("%s: flow_estimator 'dis': the alignment uses OpenCV DIS optical flow: %s", where,
                       NOT_COMPARABLE)
    return DISFlow(dis_preset)


# ---------------------------------------------------------------------------------------------------- alignment
class Aligned(NamedTuple):
    """Result of ``SpatialColorAlignment``: all three cropped by ``boundary_ignore``."""
    pred: Tensor  #: (B, 3, H', W') warped and colour-matched prediction
    gt: Tensor  #: (B, 3, H', W') ground truth
    valid: Tensor  #: (B, 1, H', W') bool, where the colour fit holds


class SpatialColorAlignment(nn.Module):
    """Align a prediction to the ground truth in space (flow) and colour (3×3 matrix from the burst's base frame).

    Args:
        flow_estimator: an object with ``estimate_flow(source, target) -> (B, 2, H, W)`` (``build_flow_estimator``).
        sr_factor: output / LR-RGB scale (4 for BurstSR: packed × 8 = output).
        boundary_ignore: pixels cropped from each side of the aligned result (40).
    """

    def __init__(self, flow_estimator: nn.Module, sr_factor: int = 4, boundary_ignore: int = 40) -> None:
        super().__init__()
        if sr_factor < 1 or boundary_ignore < 0:
            raise ValueError(f'sr_factor must be >= 1 and boundary_ignore >= 0, got {sr_factor}, {boundary_ignore}')
        self.flow_estimator = flow_estimator
        self.sr_factor = sr_factor
        self.boundary_ignore = boundary_ignore
        self.register_buffer('kernel', gaussian_kernel(1.5), persistent=False)

    def forward(self, pred: Tensor, gt: Tensor, burst: Tensor) -> Aligned:
        """Align ``pred`` (B, 3, H, W) to ``gt`` (B, 3, H, W) using ``burst`` (B, N, 4, H/(2s), W/(2s)); the
        gradient flows through pred's warp and colour matrix, not through the flow."""
        if pred.dim() == 3:
            pred, gt, burst = pred.unsqueeze(0), gt.unsqueeze(0), burst.unsqueeze(0)
        if pred.shape != gt.shape or pred.dim() != 4 or pred.shape[1] != 3:
            raise ValueError(f'alignment: pred and gt must be (B, 3, H, W) of one shape, got {tuple(pred.shape)} '
                             f'and {tuple(gt.shape)}')
        ds = 1.0 / (2 * self.sr_factor)
        if burst.dim() != 5 or burst.shape[2] != 4 or \
                (burst.shape[-2] * 2 * self.sr_factor, burst.shape[-1] * 2 * self.sr_factor) != tuple(pred.shape[-2:]):
            raise ValueError(f'alignment: burst {tuple(burst.shape)} does not fit a {tuple(pred.shape[-2:])} output '
                             f'at sr_factor {self.sr_factor} (expected (B, N, 4, H/{2 * self.sr_factor}, '
                             f'W/{2 * self.sr_factor}))')
        with torch.no_grad():
            flow = self.flow_estimator.estimate_flow(pred.detach() / (pred.detach().max() + 1e-6),
                                                     gt / (gt.max() + 1e-6))
        pred_w = warp(pred, flow)
        flow_ds = F.interpolate(flow, scale_factor=ds, mode='bilinear', align_corners=False,
                                recompute_scale_factor=True) * ds
        gt_ds = F.interpolate(gt, scale_factor=ds, mode='bilinear', align_corners=False, recompute_scale_factor=True)
        base = burst[:, 0, [0, 1, 3]].to(pred.dtype)
        base_w = warp(base, flow_ds)
        pred_m, valid = match_colors(gt_ds, base_w, pred_w, self.kernel)
        n = self.boundary_ignore
        if n:
            pred_m, gt, valid = (x[..., n:-n, n:-n] for x in (pred_m, gt, valid))
        return Aligned(pred_m, gt, valid)
