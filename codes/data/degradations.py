"""Blind-SR degradations of DCLS (``megvii-research/DCLS-SR``): Gaussian blur kernels, reflect-padded blur,
MATLAB-compatible antialiased bicubic resizing, optional Gaussian noise and 8-bit rounding.

Follows DCLS (upstream ``megvii-research/DCLS-SR: codes/utils/deg_utils.py`` and ``codes/data/util.py``,
themselves from ``greatlog/DAN``); nothing is copied. Kernels are computed in float64 NumPy and cast to float32
once at the end, as upstream. Images are torch tensors (..., C, H, W) in [0, 1] on any device.

Pipeline of one training sample (:func:`degrade`): HR -> blur(HR, k) -> bicubic ↓s = ``lq_blur`` (clean, kept for
the kernel target) -> optional noise (+ clamp) -> round to 8 bits without clamping = ``lq``; ``lq_clean`` =
bicubic ↓s of the HR (used only by the kernel target).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ['GAUSSIAN8_SIGMAS', 'SETTING_KERNELS', 'isotropic_gaussian_kernel', 'random_batch_kernels', 'blur',
           'cubic', 'resize_weights', 'imresize', 'quantize', 'Degraded', 'degrade']

#: The eight σ of the Gaussian8 test protocol per scale (np.linspace over the IKC ranges).
GAUSSIAN8_SIGMAS: dict[int, tuple[float, ...]] = {
    2: tuple(np.linspace(0.8, 1.6, 8).tolist()),
    3: tuple(np.linspace(1.35, 2.4, 8).tolist()),
    4: tuple(np.linspace(1.8, 3.2, 8).tolist()),
}

#: Kernel-sampling options of DCLS-SR's shipped training files, by (setting, scale).
SETTING_KERNELS: dict[tuple[int, int], dict] = {
    (1, 2): dict(kernel_size=21, sig_min=0.2, sig_max=2.0, rate_iso=1.0, random_disturb=False),
    (1, 3): dict(kernel_size=21, sig_min=0.2, sig_max=3.0, rate_iso=1.0, random_disturb=False),
    (1, 4): dict(kernel_size=21, sig_min=0.2, sig_max=4.0, rate_iso=1.0, random_disturb=False),
    (2, 2): dict(kernel_size=11, sig_min=0.6, sig_max=5.0, rate_iso=0.0, random_disturb=True),
    (2, 4): dict(kernel_size=31, sig_min=0.6, sig_max=5.0, rate_iso=0.0, random_disturb=True),
}

Rng = np.random.Generator | np.random.RandomState


# -------------------------------------------------------------------------------------------------- kernels
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    if size % 2 == 0 or size < 1:
        raise ValueError(f'kernel size must be a positive odd number, got {size}')
    ax = np.arange(-(size // 2), size // 2 + 1, dtype=np.float64)
    xx, yy = np.meshgrid(ax, ax)  # x varies along columns, y along rows
    return xx, yy


def isotropic_gaussian_kernel(size: int, sigma: float) -> np.ndarray:
    """(size, size) float32 Gaussian exp(−(x² + y²)/(2σ²)) normalised to sum 1 (computed in float64)."""
    xx, yy = _grid(size)
    k = np.exp(-(xx ** 2 + yy ** 2) / (2.0 * float(sigma) ** 2))
    return (k / k.sum()).astype(np.float32)


def random_batch_kernels(batch: int, size: int, sig_min: float, sig_max: float, rate_iso: float = 1.0,
                         random_disturb: bool = False, rng: Rng | None = None) -> np.ndarray:
    """Random Gaussian blur kernels as in the DCLS training recipe; (batch, size, size) float32.

    * ``rate_iso == 1`` (setting 1): isotropic, one draw σ ~ U(sig_min, sig_max) per kernel.
    * otherwise (setting 2): σx, σy ~ U(sig_min, sig_max), θ ~ U(−π, π), m ~ U(0, 1), drawn in that order; Σ =
      R(θ) diag(σx², σy²) R(θ)ᵀ; where m < rate_iso, θ is set to 0 (an axis-aligned kernel with independent σx,
      σy, as upstream); with ``random_disturb`` every tap is multiplied by 1 + u, u ~ U(0, 0.25). Then normalised.

    Args:
        rng: NumPy generator (a ``RandomState`` seeded as upstream reproduces its draws); default a fresh one.
    """
    rng = rng if rng is not None else np.random.default_rng()
    if not 0 < sig_min <= sig_max:
        raise ValueError(f'need 0 < sig_min <= sig_max, got sig_min={sig_min}, sig_max={sig_max}')
    xx, yy = _grid(size)
    if rate_iso == 1:
        sigma = rng.uniform(sig_min, sig_max, (batch, 1, 1))
        k = np.exp(-(xx[None] ** 2 + yy[None] ** 2) / (2.0 * sigma ** 2))
    else:
        sig_x = rng.uniform(sig_min, sig_max, batch)
        sig_y = rng.uniform(sig_min, sig_max, batch)
        theta = rng.uniform(-np.pi, np.pi, batch)
        m = rng.uniform(0, 1, batch)
        u = rng.uniform(0, 0.25, (batch, size, size)) if random_disturb else None
        theta = np.where(m < rate_iso, 0.0, theta)
        D = np.zeros((batch, 2, 2))
        D[:, 0, 0], D[:, 1, 1] = sig_x ** 2, sig_y ** 2
        c, s = np.cos(theta), np.sin(theta)
        R = np.stack([np.stack([c, -s], -1), np.stack([s, c], -1)], -2)  # (batch, 2, 2)
        inv = np.linalg.inv(R @ D @ np.transpose(R, (0, 2, 1)))
        v = np.stack([xx, yy], -1).reshape(1, -1, 2)  # (1, size², 2) as (x, y)
        q = np.einsum('bni,bij,bnj->bn', np.broadcast_to(v, (batch, size * size, 2)), inv,
                      np.broadcast_to(v, (batch, size * size, 2)))
        k = np.exp(-0.5 * q).reshape(batch, size, size)
        if u is not None:
            k = k + u * k
    k = k / k.sum(axis=(1, 2), keepdims=True)
    return k.astype(np.float32)


# ----------------------------------------------------------------------------------------------------- blur
def blur(x: Tensor, kernels: Tensor) -> Tensor:
    """Per-sample blur: reflect padding by l//2, then a cross-correlation (the kernel is not flipped).

    Args:
        x: (B, C, H, W) images (H, W > l//2).
        kernels: (B, l, l) or (l, l) kernels, l odd; each sample's kernel is applied to all its channels.

    Returns:
        (B, C, H, W), in x's dtype.
    """
    if kernels.dim() == 2:
        kernels = kernels.expand(x.shape[0], *kernels.shape)
    B, C, H, W = x.shape
    l = kernels.shape[-1]
    pad = (l // 2, l // 2 - (1 - l % 2)) * 2
    xp = F.pad(x, pad, mode='reflect').reshape(1, B * C, H + pad[2] + pad[3], W + pad[0] + pad[1])
    w = kernels.to(x).unsqueeze(1).repeat_interleave(C, dim=0)  # (B*C, 1, l, l)
    return F.conv2d(xp, w, groups=B * C).reshape(B, C, H, W)


# ----------------------------------------------------------------------------------------------------- resize
def cubic(t: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution kernel with a = −0.5 (MATLAB's ``imresize`` 'bicubic')."""
    a = np.abs(t)
    return ((1.5 * a ** 3 - 2.5 * a ** 2 + 1) * (a <= 1)
            + (-0.5 * a ** 3 + 2.5 * a ** 2 - 4 * a + 2) * ((a > 1) & (a <= 2)))


def resize_weights(in_len: int, out_len: int, scale: float, antialiasing: bool = True) -> np.ndarray:
    """(out_len, in_len) matrix M with out = M @ in along one axis, as MATLAB ``imresize`` computes it.

    Positions are computed in float32 as in the upstream port: u = x/scale + 0.5(1 − 1/scale) for x = 1 … out_len;
    when downscaling with antialiasing the cubic is stretched by 1/scale (width 4/scale) and scaled by ``scale``;
    each row is normalised to sum 1; a first/last tap column containing an exact zero is trimmed as upstream; and
    out-of-range taps are mirrored with the edge repeated (MATLAB 'symmetric').
    """
    f32 = np.float32
    stretch = bool(scale < 1 and antialiasing)
    width = 4.0 / scale if stretch else 4.0  # Python scalars in double, array arithmetic in float32, as upstream
    x = np.arange(1, out_len + 1, dtype=f32)
    u = x / f32(scale) + f32(0.5 * (1 - 1 / scale))
    left = np.floor(u - f32(width / 2))
    P = int(math.ceil(width)) + 2
    idx = left[:, None] + np.arange(P, dtype=f32)[None]  # 1-based candidate taps
    dist = u[:, None] - idx
    w = f32(scale) * cubic(dist * f32(scale)) if stretch else cubic(dist)
    w = w / w.sum(axis=1, keepdims=True)
    zeros = (w == 0).sum(axis=0)
    if zeros[0] != 0:
        idx, w = idx[:, 1:P - 1], w[:, 1:P - 1]
    elif zeros[-1] != 0:
        idx, w = idx[:, :P - 2], w[:, :P - 2]
    j = idx.astype(np.int64) - 1  # 0-based
    j = np.where(j < 0, -j - 1, j)
    j = np.where(j >= in_len, 2 * in_len - 1 - j, j)
    if (j < 0).any() or (j >= in_len).any():
        raise ValueError(f'imresize: input length {in_len} is too short for this scale')
    M = np.zeros((out_len, in_len), dtype=np.float64)
    np.add.at(M, (np.repeat(np.arange(out_len), j.shape[1]), j.ravel()), w.ravel().astype(np.float64))
    return M


def imresize(x: Tensor, scale: float, antialiasing: bool = True) -> Tensor:
    """MATLAB-compatible bicubic ``imresize(x, scale)`` of (..., H, W) tensors; neither rounded nor clamped.

    The output is ⌈H·scale⌉ × ⌈W·scale⌉. Rows are resized first, then columns (matrix products in x's dtype, at
    least float32).
    """
    if scale <= 0:
        raise ValueError(f'scale must be positive, got {scale}')
    H, W = x.shape[-2:]
    out_h, out_w = math.ceil(H * scale), math.ceil(W * scale)
    dtype = torch.promote_types(x.dtype, torch.float32)
    mh = torch.from_numpy(resize_weights(H, out_h, scale, antialiasing)).to(x.device, dtype)
    mw = torch.from_numpy(resize_weights(W, out_w, scale, antialiasing)).to(x.device, dtype)
    return mh @ x.to(dtype) @ mw.T


def quantize(x: Tensor) -> Tensor:
    """round(x·255)/255 with ties to even and no clamp (DCLS's training LR keeps bicubic over- and undershoot)."""
    return torch.round(x * 255.0) / 255.0


# ----------------------------------------------------------------------------------------------------- pipeline
class Degraded(NamedTuple):
    """Result of :func:`degrade`; every image is (B, C, H/s, W/s)."""
    lq: Tensor  #: network input: blurred, downsampled, optional noise, rounded to 8 bits (not clamped)
    lq_blur: Tensor  #: blurred and downsampled, before noise and rounding (kernel-target input)
    lq_clean: Tensor  #: bicubic-downsampled HR (kernel-target input)
    kernels: Tensor  #: (B, l, l) the HR-space blur kernels used


def degrade(hr: Tensor, kernels: Tensor, scale: int, noise_std: Tensor | float | None = None,
            generator: torch.Generator | None = None) -> Degraded:
    """Blur with the per-sample ``kernels``, bicubic-downsample by ``scale``, add noise, round to 8 bits.

    Args:
        hr: (B, C, H, W) in [0, 1], H and W multiples of ``scale``.
        kernels: (B, l, l) float kernels.
        noise_std: None/0 for no noise, a float, or a (B,) tensor of per-sample standard deviations (on the
            [0, 1] scale); noisy images are clamped to [0, 1] before rounding, as upstream (samples with
            standard deviation 0 are left unclamped).
        generator: torch generator of the noise.
    """
    lq_blur = imresize(blur(hr, kernels), 1.0 / scale)
    lq_clean = imresize(hr, 1.0 / scale)
    lq = lq_blur
    if noise_std is not None:
        std = torch.as_tensor(noise_std, dtype=lq.dtype, device=lq.device).reshape(-1, 1, 1, 1)
        if bool((std > 0).any()):
            dev = generator.device if generator is not None else lq.device
            noise = torch.randn(lq.shape, generator=generator, dtype=lq.dtype, device=dev).to(lq.device)
            lq = torch.where(std > 0, torch.clamp(lq + std * noise, 0, 1), lq)  # noiseless samples keep overshoot
    return Degraded(quantize(lq), lq_blur, lq_clean, kernels)
