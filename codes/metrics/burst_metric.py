"""Burst-SR validation metrics, computed as the BurstSR challenges and BSRT compute them (``goutamgmb/deep-burst-sr``).

All metrics take the prediction and the ground truth in the **linear sensor space** (data range 1.0, no colour
processing), as (C, H, W) or (B, C, H, W) torch tensors, ignore ``crop_border`` pixels on each side (40 for the
4x-resolution BurstSR outputs), and return a Python float: the value for one image, or for a batch the mean of
the per-image values. The prediction is scored as given (neither clamped nor quantised), after a cast to
float32. The ``*_per_image`` functions return the (B,) per-image values.

* PSNR: float32 MSE over the cropped values (``F.mse_loss``, one image at a time), then
  20·log10(1) − 10·log10(MSE) on the float32 tensor; inf when MSE is 0.
* SSIM: single-scale SSIM equivalent to ``pytorch_msssim.ssim(pred, gt, data_range=1.0)`` (1.0.0), written here.
* LPIPS: optional (the ``lpips`` package plus local torchvision backbone weights); raises ``MetricUnavailable``
  when either is missing, never downloads.
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from codes.metrics.metric_util import MetricUnavailable, as_batch
from codes.metrics.metric_util import crop_border as _crop
from codes.utils.registry import METRIC_REGISTRY

__all__ = [
    'psnr_linear_per_image', 'ssim_linear_per_image', 'lpips_per_image', 'calculate_psnr_linear',
    'calculate_ssim_linear', 'calculate_lpips', 'gaussian_taps', 'SSIM_WIN_SIZE', 'SSIM_WIN_SIGMA'
]

#: pytorch_msssim's defaults, which the challenge and BSRT use.
SSIM_WIN_SIZE = 11
SSIM_WIN_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03

LPIPS_NETS = ('alex', 'vgg', 'squeeze')


# ---------------------------------------------------------------------------------------------------- PSNR
def psnr_linear_per_image(pred: Tensor, gt: Tensor, crop_border: int = 40) -> Tensor:
    """Per-image linear PSNR in dB, float32, shape (B,) (see ``calculate_psnr_linear``)."""
    pred, gt = as_batch(pred, gt)
    pred, gt = _crop(pred, crop_border), _crop(gt, crop_border)
    # one F.mse_loss per image, as the challenge scores images one at a time (same float32 reduction order)
    mse = torch.stack([F.mse_loss(p, g) for p, g in zip(pred, gt, strict=True)])  # (B,)
    return 20 * math.log10(1.0) - 10 * torch.log10(mse)  # MSE = 0 gives +inf


@METRIC_REGISTRY.register()
def calculate_psnr_linear(pred: Tensor, gt: Tensor, *, crop_border: int = 40) -> float:
    """PSNR in the linear space with data range 1.0, as the SyntheticBurst/BurstSR challenges compute it.

    Args:
        pred: (C, H, W) or (B, C, H, W) prediction, linear, range about [0, 1]; scored unclamped, cast to float32.
        gt: ground truth of the same shape.
        crop_border: pixels ignored on each side of H and W (40 for the challenge).

    Returns:
        The PSNR of the image, or the mean of the per-image PSNRs of a batch (averaged in float64); inf when an
        image is reproduced exactly.
    """
    return float(psnr_linear_per_image(pred, gt, crop_border).double().mean())


# ---------------------------------------------------------------------------------------------------- SSIM
def gaussian_taps(size: int = SSIM_WIN_SIZE, sigma: float = SSIM_WIN_SIGMA,
                  dtype: torch.dtype = torch.float32) -> Tensor:
    """The 1-D Gaussian window: exp(-k²/(2σ²)) for k = -(size//2)..size//2, normalised to sum 1.

    Computed in float32 by default, as pytorch_msssim does, so the taps are bit-identical to its window.
    """
    k = torch.arange(size, dtype=dtype) - size // 2
    g = torch.exp(-(k**2) / (2 * sigma**2))
    return g / g.sum()


def _gaussian_blur_valid(x: Tensor, taps: Tensor) -> Tensor:
    """Separable per-channel Gaussian filter with no padding ('valid'): (B, C, H, W) -> (B, C, H-10, W-10).

    Pass order: first along H (a (size, 1) kernel), then along W (a (1, size) kernel), the order of
    pytorch_msssim 1.0.0's ``gaussian_filter`` (older releases filtered W first; the difference is float
    rounding only).
    """
    c = x.shape[1]
    k = taps.to(device=x.device, dtype=x.dtype)
    x = F.conv2d(x, k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)  # along H
    return F.conv2d(x, k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)  # along W


def ssim_linear_per_image(pred: Tensor, gt: Tensor, crop_border: int = 40) -> Tensor:
    """Per-image single-scale SSIM, float32, shape (B,) (see ``calculate_ssim_linear``)."""
    pred, gt = as_batch(pred, gt)
    x, y = _crop(pred, crop_border), _crop(gt, crop_border)
    if min(x.shape[-2:]) < SSIM_WIN_SIZE:
        raise ValueError(f'SSIM needs at least {SSIM_WIN_SIZE}x{SSIM_WIN_SIZE} pixels after cropping '
                         f'{crop_border} px per side, got {tuple(x.shape[-2:])}')
    c1, c2 = (SSIM_K1 * 1.0)**2, (SSIM_K2 * 1.0)**2
    c = x.shape[1]
    # the five blurred maps in one grouped convolution: every channel is still filtered on its own
    stats = _gaussian_blur_valid(torch.cat([x, y, x * x, y * y, x * y], dim=1), gaussian_taps())
    mu_x, mu_y, e_xx, e_yy, e_xy = stats.split(c, dim=1)  # each (B, C, H-10, W-10)
    mu_xx, mu_yy, mu_xy = mu_x.pow(2), mu_y.pow(2), mu_x * mu_y
    var_x, var_y, cov = e_xx - mu_xx, e_yy - mu_yy, e_xy - mu_xy
    cs_map = (2 * cov + c2) / (var_x + var_y + c2)
    ssim_map = ((2 * mu_xy + c1) / (mu_xx + mu_yy + c1)) * cs_map  # no clamping of negative values
    return ssim_map.flatten(2).mean(-1).mean(-1)  # mean per channel, then over channels


@METRIC_REGISTRY.register()
def calculate_ssim_linear(pred: Tensor, gt: Tensor, *, crop_border: int = 40) -> float:
    """Single-scale SSIM in the linear space with data range 1.0, equal to ``pytorch_msssim.ssim(pred, gt,
    data_range=1.0)`` on the cropped float32 images.

    Gaussian window of 11 taps, σ = 1.5, applied separably per channel with no padding (H pass, then W pass);
    K1 = 0.01, K2 = 0.03; σ² = G(x²) − μ², σxy = G(xy) − μxμy; the luminance and contrast-structure ratios are
    computed separately and multiplied; the map is averaged per channel, then over channels. Computed in
    float32 throughout.

    Args:
        pred: (C, H, W) or (B, C, H, W) prediction, linear; cast to float32, not clamped.
        gt: ground truth of the same shape.
        crop_border: pixels ignored on each side before filtering (40 for the challenge).

    Returns:
        The SSIM of the image, or the mean of the per-image values of a batch.
    """
    return float(ssim_linear_per_image(pred, gt, crop_border).double().mean())


# ---------------------------------------------------------------------------------------------------- LPIPS
_LPIPS_CACHE: dict[tuple[str, str, str], nn.Module] = {}


def _backbone_state(model: nn.Module, state: dict[str, Tensor], path: Path) -> dict[str, Tensor]:
    """Map a torchvision classifier state_dict (``features.<i>.<param>``) onto lpips' backbone slices
    (``slice<k>.<i>.<param>``)."""
    if 'state_dict' in state and isinstance(state['state_dict'], dict):
        state = state['state_dict']
    out, missing = {}, []
    for key, ref in model.net.state_dict().items():  # 'slice1.0.weight'
        _, idx, param = key.split('.', 2)
        src = f'features.{idx}.{param}'
        if src not in state:
            missing.append(src)
        elif state[src].shape != ref.shape:
            raise ValueError(f'LPIPS backbone weights {path}: {src} has shape {tuple(state[src].shape)}, '
                             f'expected {tuple(ref.shape)}')
        else:
            out[key] = state[src]
    if missing:
        raise ValueError(f'LPIPS backbone weights {path} are not a torchvision {model.pnet_type} state_dict: '
                         f'missing {", ".join(missing)}')
    return out


def _lpips_model(net: str, weights_path: str | None, device: torch.device) -> nn.Module:
    """The LPIPS network for (net, weights_path) on ``device``, built once and cached; never downloads."""
    if net not in LPIPS_NETS:
        raise ValueError(f"net must be one of {', '.join(LPIPS_NETS)}, got {net!r}")
    try:
        import lpips  # optional
    except Exception as exc:
        raise MetricUnavailable(f'LPIPS is unavailable: the optional package "lpips" cannot be imported '
                                f'({type(exc).__name__}: {exc}); install it with "pip install lpips" and '
                                f'set weights_path to local torchvision {net} weights') from exc
    if weights_path is None:
        raise MetricUnavailable(f'LPIPS is unavailable: weights_path is not set. It must name a local '
                                f'torchvision {net} ImageNet state_dict file (e.g. alexnet-owt-7be5be79.pth); '
                                f'nothing is downloaded')
    path = Path(weights_path).expanduser()
    if not path.is_file():
        raise MetricUnavailable(f'LPIPS is unavailable: the {net} backbone weights file {path} does not exist')
    key = (net, str(path.resolve()), str(device))
    if key not in _LPIPS_CACHE:
        with warnings.catch_warnings():  # torchvision's 'pretrained' deprecation notices
            warnings.simplefilter('ignore', UserWarning)
            try:
                # random backbone (no download) + the linear heads shipped inside the lpips wheel
                model = lpips.LPIPS(net=net, version='0.1', pretrained=True, pnet_rand=True, verbose=False)
            except FileNotFoundError as exc:
                raise MetricUnavailable(f'LPIPS is unavailable: the linear-head weights shipped with the lpips '
                                        f'package are missing ({exc})') from exc
        state = torch.load(path, map_location='cpu', weights_only=True)
        model.net.load_state_dict(_backbone_state(model, state, path), strict=True)
        model.eval().requires_grad_(False)
        _LPIPS_CACHE[key] = model.to(device)
    return _LPIPS_CACHE[key]


def lpips_per_image(pred: Tensor, gt: Tensor, crop_border: int = 40, net: str = 'alex',
                    weights_path: str | None = None) -> Tensor:
    """Per-image LPIPS distances, float32, shape (B,) (see ``calculate_lpips``)."""
    pred, gt = as_batch(pred, gt)
    pred, gt = _crop(pred, crop_border), _crop(gt, crop_border)
    model = _lpips_model(net, weights_path, pred.device)
    with torch.no_grad():
        return model(pred, gt, normalize=False).flatten()  # inputs used as [0, 1], not rescaled to [-1, 1]


@METRIC_REGISTRY.register()
def calculate_lpips(pred: Tensor, gt: Tensor, *, crop_border: int = 40, net: str = 'alex',
                    weights_path: str | None = None) -> float:
    """LPIPS (v0.1) applied **directly to the [0, 1] linear images**, as the challenge does (no rescaling to
    [-1, 1], no colour processing).

    Optional: needs the ``lpips`` package (its wheel ships the linear heads) and the torchvision ImageNet
    weights of the backbone as a local file. The network is cached per (net, weights_path, device).

    Args:
        pred: (C, H, W) or (B, C, H, W) prediction, linear; cast to float32, not clamped.
        gt: ground truth of the same shape.
        crop_border: pixels ignored on each side (40 for the challenge).
        net: backbone, 'alex' (the challenge's), 'vgg' or 'squeeze'.
        weights_path: torchvision state_dict of that backbone (``features.*`` keys), e.g.
            ``alexnet-owt-7be5be79.pth``.

    Returns:
        The LPIPS distance of the image, or the mean over a batch (lower is better).

    Raises:
        MetricUnavailable: ``lpips`` cannot be imported, or ``weights_path`` is unset or missing.
    """
    return float(lpips_per_image(pred, gt, crop_border, net, weights_path).double().mean())
