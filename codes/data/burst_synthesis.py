"""Synthetic RAW bursts from one sRGB image: frame geometry, OpenCV-exact warping, downsampling and mosaicking.

Upstream: DBSR's ``goutamgmb/deep-burst-sr`` (``data/synthetic_burst_generation.py``) and the identical data code
of ``Algolzw/BSRT`` (``code/synthetic/bsrt/datasets/``); paper: Bhat et al., "Deep Burst Super-Resolution",
CVPR 2021. One sRGB crop becomes a burst as follows:

1. camera parameters (random CCM, random gains) and inverse ISP (``camera_pipeline``) -> linear image; its
   border-cropped copy is the GT;
2. the linear image is quantised to uint8 by truncation, then every frame is warped (frame 0 by (1.5, 1.5), the
   others by ±24 px and ±1°), border-cropped and downsampled 4× with OpenCV's bilinear rules;
3. RGGB mosaic, heteroscedastic noise, clamp.

The OpenCV 4.x fixed-point ``warpAffine`` that produced BSRT's training data and SyntheticBurstVal is reproduced in
NumPy (``warp_affine_fixed_point``), so bursts do not change with the installed OpenCV release (5.x computes in
float). The downsampling uses ``cv2.resize``, which is identical in 4.x and 5.x. Every random draw is made in the
original's order, so a seeded burst is bit-identical to the upstream generator's.
"""
from __future__ import annotations

import math
import random
from typing import NamedTuple

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from codes.data import camera_pipeline

__all__ = ['WARP_BACKENDS', 'FrameTransform', 'SyntheticBurst', 'random_crop', 'sample_burst_transforms',
           'transform_matrix', 'warp_affine_fixed_point', 'warp_affine', 'downsample_uint8', 'single_to_lr_burst',
           'rgb_to_raw_burst']

_CV2_MAJOR = int(cv2.__version__.split('.')[0])
#: The ``warp_backend`` choices of :func:`warp_affine`.
WARP_BACKENDS = ('auto', 'opencv', 'fixed_point')


class FrameTransform(NamedTuple):
    """Geometry of one frame: translation (HR px), rotation (degrees), shear, aspect-ratio and scale factors."""
    tx: float
    ty: float
    theta: float
    shear_x: float = 0.0
    shear_y: float = 0.0
    ar_factor: float = 1.0
    scale: float = 1.0


class SyntheticBurst(NamedTuple):
    """Result of ``rgb_to_raw_burst``."""
    burst: Tensor  #: (N, 4, H'/(2·ds), W'/(2·ds)) packed RGGB in [0, 1]; H' = H − 2·border_crop
    gt: Tensor  #: (3, H', W') linear RGB in [0, 1], not quantised
    burst_rgb: Tensor  #: (N, 3, H'/ds, W'/ds) the noise-free LR frames before mosaicking
    meta_info: dict  #: rgb2cam, cam2rgb, gains, flags and noise levels
    transforms: list  #: one ``FrameTransform`` per frame


# ---------------------------------------------------------------------------------------------------- sampling
def random_crop(image: Tensor, crop_size: int, rng: random.Random) -> Tensor:
    """Random square crop of ``image`` (C, H, W); row corner drawn first (``rng.randint``, inclusive bounds).

    An image smaller than ``crop_size`` gives the largest crop of the same aspect ratio,
    floor(crop·min(H/crop, W/crop)), upsampled bilinearly (align_corners=False) to ``crop_size``.

    Args:
        image: float in [0, 1], or uint8, which is converted to float / 255 right after the crop (the values are
            those of ``ToTensor`` before cropping, the cost only that of the crop).

    Returns:
        (C, crop_size, crop_size) float.
    """
    h, w = image.shape[-2:]
    crop = np.float32(crop_size)
    max_scale = min(np.float32(h) / crop, np.float32(w) / crop)
    scale = max_scale if max_scale < 1.0 else np.float32(1.0)
    size = int(np.floor(crop * np.float32(scale)))
    r1 = rng.randint(0, h - size)
    c1 = rng.randint(0, w - size)
    out = image[..., r1:r1 + size, c1:c1 + size]
    if not out.is_floating_point():
        out = out.float().div(255)
    if size != crop_size:
        out = F.interpolate(out.unsqueeze(0), size=(crop_size, crop_size), mode='bilinear',
                            align_corners=False).squeeze(0)
    return out


def sample_burst_transforms(burst_size: int, rng: random.Random, max_translation: float = 24.0,
                            max_rotation: float = 1.0, max_shear: float = 0.0, max_ar_factor: float = 0.0,
                            max_scale: float = 0.0, downsample_factor: int = 4) -> list[FrameTransform]:
    """Per-frame geometry of a burst.

    Frame 0 is shifted by (ds/2 − 0.5, ds/2 − 0.5) with no rotation, which centres the LR grid on the GT grid.
    Frames 1… each draw seven ``rng.uniform`` values in the order tx, ty, θ, sx, sy, log ar, log s (a zero-width
    range still draws); with ``max_translation`` ≤ 0.01 they keep frame 0's shift and skip the two translation draws.
    """
    shift = downsample_factor / 2.0 - 0.5
    transforms = [FrameTransform(shift, shift, 0.0)]
    for _ in range(1, burst_size):
        if max_translation > 0.01:
            tx = rng.uniform(-max_translation, max_translation)
            ty = rng.uniform(-max_translation, max_translation)
        else:
            tx = ty = shift
        theta = rng.uniform(-max_rotation, max_rotation)
        shear_x = rng.uniform(-max_shear, max_shear)
        shear_y = rng.uniform(-max_shear, max_shear)
        ar_factor = math.exp(rng.uniform(-max_ar_factor, max_ar_factor))
        scale = math.exp(rng.uniform(-max_scale, max_scale))
        transforms.append(FrameTransform(tx, ty, theta, shear_x, shear_y, ar_factor, scale))
    return transforms


# ---------------------------------------------------------------------------------------------------- geometry
def _rotation_matrix(center: tuple[float, float], angle: float, scale: float) -> np.ndarray:
    """OpenCV's ``getRotationMatrix2D`` (2, 3), float64; positive angles turn counter-clockwise on screen."""
    angle = angle * (math.pi / 180)
    alpha = math.cos(angle) * scale
    beta = math.sin(angle) * scale
    cx, cy = center
    return np.array([[alpha, beta, (1 - alpha) * cx - beta * cy],
                     [-beta, alpha, beta * cx + (1 - alpha) * cy]], dtype=np.float64)


def transform_matrix(height: int, width: int, t: FrameTransform) -> np.ndarray:
    """Forward affine map (2, 3) float64: T = T_scale · T_rot · T_shear · T_translate (rotation about the centre)."""
    t_translate = np.identity(3)
    t_translate[0, 2] = t.tx
    t_translate[1, 2] = t.ty
    t_rot = np.concatenate((_rotation_matrix((width * 0.5, height * 0.5), t.theta, 1.0),
                            np.array([[0.0, 0.0, 1.0]])))
    t_shear = np.array([[1.0, t.shear_x, -t.shear_x * 0.5 * width],
                        [t.shear_y, 1.0, -t.shear_y * 0.5 * height],
                        [0.0, 0.0, 1.0]])
    t_scale = np.array([[t.scale, 0.0, 0.0],
                        [0.0, t.scale * t.ar_factor, 0.0],
                        [0.0, 0.0, 1.0]])
    return (t_scale @ t_rot @ t_shear @ t_translate)[:2, :]


def _invert_affine(matrix: np.ndarray) -> tuple[float, ...]:
    """Inverse of a (2, 3) affine map, in OpenCV's operation order (double)."""
    m0, m1, m2 = (float(v) for v in matrix[0])
    m3, m4, m5 = (float(v) for v in matrix[1])
    d = m0 * m4 - m1 * m3
    d = 1.0 / d if d != 0 else 0.0
    a11, a22 = m4 * d, m0 * d
    m0, m1, m3, m4 = a11, m1 * -d, m3 * -d, a22
    b1 = -m0 * m2 - m1 * m5
    b2 = -m3 * m2 - m4 * m5
    return m0, m1, b1, m3, m4, b2


def warp_affine_fixed_point(image: np.ndarray, matrix: np.ndarray, dsize: tuple[int, int]) -> np.ndarray:
    """``cv2.warpAffine(image, matrix, dsize, INTER_LINEAR, BORDER_CONSTANT=0)`` as OpenCV 4.x computes it on uint8.

    With M = matrix⁻¹ and destination (x, y), the source position in 1/32 px is
    X = (round(1024·(m01·y + m02)) + 16 + round(1024·m00·x)) >> 5 (round half to even), Y likewise; the taps are
    (X >> 5, Y >> 5) and their neighbours with weights (32 − fx)(32 − fy)·32 … (sum 2^15), taps outside the image
    count as 0, and the result is (Σ w·tap + 2^14) >> 15 saturated to uint8.

    Args:
        image: (H, W) or (H, W, C) uint8.
        matrix: (2, 3) forward map (destination = matrix · source).
        dsize: (width, height) of the output.
    """
    if image.dtype != np.uint8:
        raise TypeError(f'warp_affine_fixed_point: expected uint8, got {image.dtype}')
    squeeze = image.ndim == 2
    src = image[..., None] if squeeze else image
    h, w, c = src.shape
    out_w, out_h = dsize
    m0, m1, m2, m3, m4, m5 = _invert_affine(np.asarray(matrix, dtype=np.float64))
    xs = np.arange(out_w, dtype=np.float64)
    ys = np.arange(out_h, dtype=np.float64)
    adelta = np.rint(m0 * xs * 1024).astype(np.int64)
    bdelta = np.rint(m3 * xs * 1024).astype(np.int64)
    x_row = np.rint((m1 * ys + m2) * 1024).astype(np.int64) + 16
    y_row = np.rint((m4 * ys + m5) * 1024).astype(np.int64) + 16
    big_x = (x_row[:, None] + adelta[None, :]) >> 5  # source x in 1/32 px, (out_h, out_w)
    big_y = (y_row[:, None] + bdelta[None, :]) >> 5
    x0, fx = big_x >> 5, (big_x & 31).astype(np.int32)
    y0, fy = big_y >> 5, (big_y & 31).astype(np.int32)
    # Zero-padded source: any tap outside [0, w) x [0, h) is clipped onto the zero border.
    padded = np.zeros((h + 2, w + 2, c), dtype=np.int32)
    padded[1:-1, 1:-1] = src
    flat = padded.reshape(-1, c)
    xa = np.clip(x0, -1, w) + 1
    xb = np.clip(x0 + 1, -1, w) + 1
    ya = (np.clip(y0, -1, h) + 1) * (w + 2)
    yb = (np.clip(y0 + 1, -1, h) + 1) * (w + 2)
    gx, gy = 32 - fx, 32 - fy
    acc = (flat[ya + xa] * (gx * gy * 32)[..., None] + flat[ya + xb] * (fx * gy * 32)[..., None]
           + flat[yb + xa] * (gx * fy * 32)[..., None] + flat[yb + xb] * (fx * fy * 32)[..., None])
    out = np.clip((acc + (1 << 14)) >> 15, 0, 255).astype(np.uint8)
    return out[..., 0] if squeeze else out


def warp_affine(image: np.ndarray, matrix: np.ndarray, dsize: tuple[int, int], backend: str = 'auto') -> np.ndarray:
    """Bilinear affine warp of a uint8 image with zero borders.

    Args:
        backend: 'opencv' calls ``cv2.warpAffine`` (whatever release is installed); 'fixed_point' uses
            ``warp_affine_fixed_point`` (OpenCV 4.x results); 'auto' calls OpenCV when it is 4.x (the same results,
            faster) and the fixed-point code otherwise.
    """
    if backend not in WARP_BACKENDS:
        raise ValueError(f'warp backend must be one of {WARP_BACKENDS}, got {backend!r}')
    if backend == 'opencv' or (backend == 'auto' and _CV2_MAJOR == 4):
        return cv2.warpAffine(image, np.asarray(matrix, dtype=np.float64), dsize, flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_CONSTANT)
    return warp_affine_fixed_point(image, matrix, dsize)


def downsample_uint8(image: np.ndarray, factor: int) -> np.ndarray:
    """``cv2.resize(image, None, fx=1/factor, fy=1/factor, INTER_LINEAR)``: no antialiasing; for factor 4, pixel j
    is (c[4i+1, 4j+1] + c[4i+1, 4j+2] + c[4i+2, 4j+1] + c[4i+2, 4j+2] + 2) >> 2."""
    if factor == 1:
        return image
    return cv2.resize(image, None, fx=1.0 / factor, fy=1.0 / factor, interpolation=cv2.INTER_LINEAR)


# ---------------------------------------------------------------------------------------------------- synthesis
def single_to_lr_burst(image: Tensor, transforms: list[FrameTransform], downsample_factor: int = 4,
                       border_crop: int = 24, warp_backend: str = 'auto') -> Tensor:
    """LR RGB burst from one linear image: warp, border crop and downsample each frame.

    Args:
        image: (3, H, W) float in [0, 1] (values below 2 are scaled by 255) or already in [0, 255].
        transforms: one per frame; W and H of the rotation centre are those of ``image``.

    Returns:
        (N, 3, (H − 2·border)/ds, (W − 2·border)/ds) float32 in [0, 1], multiples of 1/255.
    """
    if float(image.max()) < 2.0:
        image = image * 255.0
    quantised = np.ascontiguousarray(image.permute(1, 2, 0).numpy().astype(np.uint8))  # (H, W, 3), truncation
    h, w = quantised.shape[:2]
    frames = []
    for t in transforms:
        warped = warp_affine(quantised, transform_matrix(h, w, t), (w, h), warp_backend)
        if border_crop > 0:
            warped = warped[border_crop:-border_crop, border_crop:-border_crop]
        lr = downsample_uint8(np.ascontiguousarray(warped), downsample_factor)
        frames.append(torch.from_numpy(np.ascontiguousarray(lr)).permute(2, 0, 1))
    return torch.stack(frames).float() / 255.0


def rgb_to_raw_burst(image: Tensor, burst_size: int, rng: random.Random, generator: torch.Generator | None = None,
                     downsample_factor: int = 4, max_translation: float = 24.0, max_rotation: float = 1.0,
                     max_shear: float = 0.0, max_ar_factor: float = 0.0, max_scale: float = 0.0,
                     border_crop: int = 24, random_ccm: bool = True, random_gains: bool = True,
                     smoothstep: bool = True, gamma: bool = True, add_noise: bool = True,
                     warp_backend: str = 'auto') -> SyntheticBurst:
    """A synthetic RAW burst from one sRGB crop, drawing in the original's order: CCM weights (torch), gains
    (Python), frame geometry (Python), noise levels (Python), per-pixel noise (torch).

    Args:
        image: (3, H, W) sRGB crop in [0, 1] (H, W include the border).
        rng: Python generator; ``random._inst`` (the module's global one) reproduces the original exactly.
        generator: torch CPU generator; ``None`` uses the global one, as the original did.

    Returns:
        ``SyntheticBurst(burst, gt, burst_rgb, meta_info, transforms)``.
    """
    params = camera_pipeline.sample_isp_params(rng, generator, ccm=random_ccm, gains=random_gains)
    linear = camera_pipeline.unprocess(image.float(), params['rgb2cam'], params['rgb_gain'], params['red_gain'],
                                       params['blue_gain'], smoothstep=smoothstep, gamma=gamma, gains=random_gains)
    transforms = sample_burst_transforms(burst_size, rng, max_translation, max_rotation, max_shear, max_ar_factor,
                                         max_scale, downsample_factor)
    burst_rgb = single_to_lr_burst(linear, transforms, downsample_factor, border_crop, warp_backend)
    burst = camera_pipeline.mosaic(burst_rgb)
    if add_noise:  # the flag shadows camera_pipeline.add_noise, hence the module-qualified calls
        shot_noise, read_noise = camera_pipeline.random_noise_levels(rng)
        burst = camera_pipeline.add_noise(burst, shot_noise, read_noise, generator=generator)
    else:
        shot_noise = read_noise = 0.0
    burst = burst.clamp(0.0, 1.0)
    gt = linear[:, border_crop:-border_crop, border_crop:-border_crop] if border_crop > 0 else linear
    meta_info = {**params, 'smoothstep': smoothstep, 'gamma': gamma, 'shot_noise_level': shot_noise,
                 'read_noise_level': read_noise}
    return SyntheticBurst(burst, gt.contiguous(), burst_rgb, meta_info, transforms)
