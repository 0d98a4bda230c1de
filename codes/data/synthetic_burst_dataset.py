"""Synthetic RAW bursts for burst super-resolution: on-the-fly training bursts and the SyntheticBurstVal set.

Restated from ``shared/spec/burst_data.md`` §1-§3 (not copied). Upstream: DBSR's ``goutamgmb/deep-burst-sr``
(``data/synthetic_burst_generation.py``, ``dataset/synthetic_burst_train_set.py``,
``dataset/synthetic_burst_val_set.py``) and the identical data code of ``Algolzw/BSRT``
(``code/synthetic/bsrt/datasets/``). One sRGB image becomes a burst as follows:

1. random crop of ``crop_size + 2·border_crop`` (bilinear upsampling of undersized images);
2. camera parameters (random CCM, random gains) and inverse ISP -> linear image; its border-cropped copy is the GT;
3. the linear image is quantised to uint8 by truncation, then every frame is warped (frame 0 by (1.5, 1.5), the
   others by ±24 px and ±1°), border-cropped and downsampled 4× with OpenCV's bilinear rules;
4. RGGB mosaic, heteroscedastic noise, clamp.

The OpenCV 4.x fixed-point ``warpAffine`` that produced BSRT's training data and SyntheticBurstVal is reproduced in
NumPy (``warp_affine_fixed_point``), so bursts do not change with the installed OpenCV release (5.x computes in
float). The downsampling uses ``cv2.resize``, which is identical in 4.x and 5.x.
"""
from __future__ import annotations

import math
import os
import random
from pathlib import Path
from typing import Any, NamedTuple

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from codes.data import camera_pipeline as cp
from codes.utils.registry import DATASET_REGISTRY
from codes.data.io_backend import check_io_backend, open_backend, to_bgr_uint8
from codes.utils.files import IMAGE_EXTENSIONS, natural_key
from codes.utils.safe_pickle import safe_load_pickle, safe_loads_pickle

__all__ = ['FrameTransform', 'SyntheticBurst', 'random_crop', 'sample_burst_transforms', 'transform_matrix',
           'warp_affine_fixed_point', 'warp_affine', 'downsample_uint8', 'single_to_lr_burst', 'rgb_to_raw_burst',
           'read_image', 'SyntheticBurstDataset', 'SyntheticBurstValDataset']

_CV2_MAJOR = int(cv2.__version__.split('.')[0])
_WARP_BACKENDS = ('auto', 'opencv', 'fixed_point')
_DATA_HINT = 'see datasets/README.md (or run `python -m codes.scripts.make_sample_data` for a small offline set)'


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
    """Per-frame geometry (spec §2.1 step 5.3).

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
    count as 0, and the result is (Σ w·tap + 2^14) >> 15 saturated to uint8 (spec §2.1 step 5.4).

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
    if backend not in _WARP_BACKENDS:
        raise ValueError(f'warp backend must be one of {_WARP_BACKENDS}, got {backend!r}')
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
    """LR RGB burst from one linear image (spec §2.1 step 5).

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
    """A synthetic RAW burst from one sRGB crop (spec §2.1 steps 3-8), drawing in the original's order: CCM
    weights (torch), gains (Python), frame geometry (Python), noise levels (Python), per-pixel noise (torch).

    Args:
        image: (3, H, W) sRGB crop in [0, 1] (H, W include the border).
        rng: Python generator; ``random._inst`` (the module's global one) reproduces the original exactly.
        generator: torch CPU generator; ``None`` uses the global one, as the original did.

    Returns:
        ``SyntheticBurst(burst, gt, burst_rgb, meta_info, transforms)``.
    """
    params = cp.sample_isp_params(rng, generator, ccm=random_ccm, gains=random_gains)
    linear = cp.unprocess(image.float(), params['rgb2cam'], params['rgb_gain'], params['red_gain'],
                          params['blue_gain'], smoothstep=smoothstep, gamma=gamma, gains=random_gains)
    transforms = sample_burst_transforms(burst_size, rng, max_translation, max_rotation, max_shear, max_ar_factor,
                                         max_scale, downsample_factor)
    burst_rgb = single_to_lr_burst(linear, transforms, downsample_factor, border_crop, warp_backend)
    burst = cp.mosaic(burst_rgb)
    if add_noise:
        shot_noise, read_noise = cp.random_noise_levels(rng)
        burst = cp.add_noise(burst, shot_noise, read_noise, generator=generator)
    else:
        shot_noise = read_noise = 0.0
    burst = burst.clamp(0.0, 1.0)
    gt = linear[:, border_crop:-border_crop, border_crop:-border_crop] if border_crop > 0 else linear
    meta_info = {**params, 'smoothstep': smoothstep, 'gamma': gamma, 'shot_noise_level': shot_noise,
                 'read_noise_level': read_noise}
    return SyntheticBurst(burst, gt.contiguous(), burst_rgb, meta_info, transforms)


# ---------------------------------------------------------------------------------------------------- files
def read_image(path: str | os.PathLike, channel_order: str = 'bgr') -> np.ndarray:
    """8-bit 3-channel image (H, W, 3) read with ``cv2.imread``: 'bgr' keeps OpenCV's order, 'rgb' converts."""
    image = cv2.imread(os.fspath(path), cv2.IMREAD_COLOR)
    if image is None:
        if not os.path.isfile(path):
            raise FileNotFoundError(f'image not found: {path}')
        raise OSError(f'cannot decode image: {path}')
    if channel_order == 'rgb':
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return image


def _to_collatable(value: Any) -> Any:
    """NumPy arrays -> tensors and NumPy scalars -> Python numbers, so ``default_collate`` can batch the meta."""
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.array(value))
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    return value


def _check_uint16(image: np.ndarray, channels: int, where: str) -> Tensor:
    """(C, H, W) float32 = (H, W, C) uint16 array / 2^14; ``where`` names the file or database key in errors."""
    if image.dtype != np.uint16 or image.ndim != 3 or image.shape[2] != channels:
        raise ValueError(f'{where}: expected a {channels}-channel uint16 PNG, got dtype {image.dtype} and shape '
                         f'{image.shape}')
    return torch.from_numpy(image.astype(np.float32)).permute(2, 0, 1) / 2 ** 14


def _read_uint16_png(path: Path, channels: int) -> Tensor:
    """(C, H, W) float32 = uint16 PNG / 2^14, read with ``IMREAD_UNCHANGED`` (undoes OpenCV's on-disk BGR(A))."""
    if not path.is_file():
        raise FileNotFoundError(f'file not found: {path}')
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise OSError(f'cannot decode image: {path}')
    return _check_uint16(image, channels, str(path))


def _meta_dict(meta: Any, where: str) -> dict:
    if not isinstance(meta, dict):
        raise ValueError(f'{where}: expected a dict, got {type(meta).__name__}')
    return {str(k): _to_collatable(v) for k, v in meta.items()}


# ---------------------------------------------------------------------------------------------------- datasets
@DATASET_REGISTRY.register()
class SyntheticBurstDataset(Dataset):
    """Synthetic RAW bursts generated on the fly from sRGB images (BSRT / DBSR training data, spec §2).

    Each item is ``{'lq': (burst_size, 4, h, w), 'gt': (3, 8h, 8w), 'meta_info': dict, 'key': str}`` with
    h = crop_size / (2·downsample_factor); ``lq`` is packed RGGB in [0, 1], ``gt`` linear RGB in [0, 1].

    Source images: ``dataroot/train/canon/*.jpg`` (Zurich RAW-to-RGB; ``test/canon`` when ``phase`` is not
    'train') if that folder exists, else every image under ``dataroot`` (recursive, sorted).

    Randomness: each ``__getitem__`` makes its own ``random.Random`` and ``torch.Generator``. With ``seed=None``
    they are seeded from the process's global Python and torch generators (``random.getrandbits(64)`` and
    ``torch.randint``), so the runner's per-worker seeding makes a run reproducible; with a ``seed`` they are
    derived from ``(seed, index)``, so item ``i`` is always the same burst (used when ``phase`` is not 'train').

    Args:
        dataroot: folder of source images (see above).
        burst_size: frames per burst; frame 0 is the reference.
        crop_size: HR crop (GT size); a multiple of 2·downsample_factor. 256 in BSRT.
        phase: 'train', or 'val'/'test' (Zurich ``test/canon`` and a fixed ``seed`` of 0 unless one is given).
        channel_order: 'bgr' feeds the inverse ISP OpenCV's BGR data, as BSRT and the NTIRE toolkits do (their
            training distribution); 'rgb' converts first, as DBSR's loader does (physically meaningful colours).
        max_translation, max_rotation, max_shear, max_ar_factor, max_scale: frame geometry ranges (HR px,
            degrees, shear, log factors).
        border_crop: HR pixels cropped from each side after warping.
        downsample_factor: HR -> LR RGB factor (the packed RAW is half of that again).
        noise: add shot and read noise.
        random_ccm, random_gains, smoothstep, gamma: inverse-ISP switches (all True upstream).
        warp_backend: 'auto', 'opencv' or 'fixed_point' (see ``warp_affine``).
        seed: fixed base seed (see Randomness); None draws from the global generators.
        dataset_enlarge_ratio: ``len`` is the image count times this (one random crop per item).
        io_backend: ``{'type': 'disk'}`` (default) or ``{'type': 'lmdb', ...}`` (see ``codes/data/io_backend.py``):
            ``dataroot`` is then an ``images`` LMDB (``create_lmdb --format images``; or ``dataroot.lmdb`` beside
            it) holding the same relative paths, from which the same images are selected; the decoded pixels are
            those ``cv2.imread`` gives, so an item is the same burst from either backend.
    """

    def __init__(self, dataroot: str, burst_size: int = 14, crop_size: int = 256, phase: str = 'train',
                 channel_order: str = 'bgr', max_translation: float = 24.0, max_rotation: float = 1.0,
                 border_crop: int = 24, downsample_factor: int = 4, noise: bool = True, max_shear: float = 0.0,
                 max_ar_factor: float = 0.0, max_scale: float = 0.0, random_ccm: bool = True,
                 random_gains: bool = True, smoothstep: bool = True, gamma: bool = True,
                 warp_backend: str = 'auto', seed: int | None = None, dataset_enlarge_ratio: int = 1,
                 io_backend: dict | None = None) -> None:
        super().__init__()
        if burst_size < 1:
            raise ValueError(f'burst_size must be >= 1, got {burst_size}')
        if downsample_factor < 1:
            raise ValueError(f'downsample_factor must be >= 1, got {downsample_factor}')
        if crop_size <= 0 or crop_size % (2 * downsample_factor):
            raise ValueError(f'crop_size must be a positive multiple of 2*downsample_factor = '
                             f'{2 * downsample_factor}, got {crop_size}')
        if border_crop < 0:
            raise ValueError(f'border_crop must be >= 0, got {border_crop}')
        if channel_order not in ('bgr', 'rgb'):
            raise ValueError(f"channel_order must be 'bgr' or 'rgb', got {channel_order!r}")
        if phase not in ('train', 'val', 'test'):
            raise ValueError(f"phase must be 'train', 'val' or 'test', got {phase!r}")
        if warp_backend not in _WARP_BACKENDS:
            raise ValueError(f'warp_backend must be one of {_WARP_BACKENDS}, got {warp_backend!r}')
        if dataset_enlarge_ratio < 1:
            raise ValueError(f'dataset_enlarge_ratio must be >= 1, got {dataset_enlarge_ratio}')
        self.io_backend = check_io_backend(io_backend)
        self.dataroot = str(dataroot)
        self.burst_size = burst_size
        self.crop_size = crop_size
        self.phase = phase
        self.channel_order = channel_order
        self.border_crop = border_crop
        self.downsample_factor = downsample_factor
        self.noise = noise
        self.geometry = dict(max_translation=max_translation, max_rotation=max_rotation, max_shear=max_shear,
                             max_ar_factor=max_ar_factor, max_scale=max_scale)
        self.isp = dict(random_ccm=random_ccm, random_gains=random_gains, smoothstep=smoothstep, gamma=gamma)
        self.warp_backend = warp_backend
        self.seed = seed if seed is not None or phase == 'train' else 0
        self.dataset_enlarge_ratio = dataset_enlarge_ratio
        self.backend = None
        if self.io_backend['type'] == 'lmdb':
            self.backend = open_backend(self.io_backend, self.dataroot, layout='images')
            self.keys = self._find_keys(self.backend, phase)
            self.paths = [self.backend.name(k) for k in self.keys]
        else:
            self.paths = self._find_images(Path(self.dataroot), phase)

    @staticmethod
    def _find_images(root: Path, phase: str) -> list[str]:
        if not root.is_dir():
            raise FileNotFoundError(f'SyntheticBurstDataset: dataroot {str(root)!r} is not a folder; {_DATA_HINT}')
        zurich = root / ('train' if phase == 'train' else 'test') / 'canon'
        if phase != 'train' and not zurich.is_dir() and (root / 'train' / 'canon').is_dir():
            raise FileNotFoundError(f'SyntheticBurstDataset: {str(root)!r} has the Zurich layout but no test/canon '
                                    f"for phase {phase!r} (the public zip has no test split); validate on "
                                    f'SyntheticBurstValDataset instead; {_DATA_HINT}')
        if zurich.is_dir():
            paths = [p for p in zurich.iterdir() if p.suffix.lower() in ('.jpg', '.jpeg') and p.is_file()]
        else:
            paths = [p for p in root.rglob('*') if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()]
        rel = sorted((p.relative_to(root).as_posix() for p in paths), key=natural_key)
        if not rel:
            raise FileNotFoundError(f'SyntheticBurstDataset: no images found in {str(root)!r} (looked for '
                                    f'{zurich.relative_to(root).as_posix()}/*.jpg, then any '
                                    f'{"/".join(IMAGE_EXTENSIONS)} file); {_DATA_HINT}')
        return rel

    @staticmethod
    def _find_keys(backend: Any, phase: str) -> list[str]:
        """The LMDB counterpart of ``_find_images``: ``{train|test}/canon/*.jpg`` keys if there are any, else all."""
        def zurich(split: str) -> list[str]:
            return [k for k in backend.keys(f'{split}/canon/') if '/' not in k[len(split) + 7:]
                    and os.path.splitext(backend.name(k))[1].lower() in ('.jpg', '.jpeg')]
        split = 'train' if phase == 'train' else 'test'
        keys = zurich(split)
        if not keys and phase != 'train' and zurich('train'):
            raise FileNotFoundError(f'SyntheticBurstDataset: {backend.path!r} has the Zurich layout but no test/canon '
                                    f"for phase {phase!r}; validate on SyntheticBurstValDataset instead; {_DATA_HINT}")
        keys = keys or backend.keys()
        if not keys:
            raise FileNotFoundError(f'SyntheticBurstDataset: {backend.path!r} holds no images; {_DATA_HINT}')
        return sorted(keys, key=natural_key)

    def __len__(self) -> int:
        return len(self.paths) * self.dataset_enlarge_ratio

    def _read(self, index: int) -> np.ndarray:
        """(H, W, 3) uint8 in ``channel_order``, the same array from disk and from an LMDB."""
        if self.backend is None:
            return read_image(os.path.join(self.dataroot, self.paths[index]), self.channel_order)
        image = to_bgr_uint8(self.backend.get(self.keys[index]))
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB) if self.channel_order == 'rgb' else image

    def _generators(self, index: int) -> tuple[random.Random, torch.Generator]:
        if self.seed is None:
            rng = random.Random(random.getrandbits(64))
            torch_seed = int(torch.randint(0, 2 ** 62, (1,)).item())
        else:
            base = random.Random(f'{self.seed}/{index}')
            rng = random.Random(base.getrandbits(64))
            torch_seed = base.getrandbits(62)
        return rng, torch.Generator().manual_seed(torch_seed)

    def __getitem__(self, index: int) -> dict[str, Any]:
        rel = self.paths[index % len(self.paths)]
        image = self._read(index % len(self.paths))
        rng, generator = self._generators(index)
        image = torch.from_numpy(image).permute(2, 0, 1)  # (3, H, W) uint8
        crop = random_crop(image, self.crop_size + 2 * self.border_crop, rng)
        sample = rgb_to_raw_burst(crop, self.burst_size, rng, generator, downsample_factor=self.downsample_factor,
                                  border_crop=self.border_crop, add_noise=self.noise,
                                  warp_backend=self.warp_backend, **self.geometry, **self.isp)
        return {'lq': sample.burst, 'gt': sample.gt, 'meta_info': sample.meta_info, 'key': f'{rel}_{index:06d}'}


@DATASET_REGISTRY.register()
class SyntheticBurstValDataset(Dataset):
    """The SyntheticBurstVal set (DBSR / NTIRE 2021 validation; spec §3), from its folders or an LMDB of them.

    Layout under ``dataroot`` (or ``dataroot/val``, as BSRT uses): ``bursts/XXXX/im_raw_{00..13}.png`` (4-channel
    uint16, packed RGGB × 2^14), ``gt/XXXX/im_rgb.png`` (3-channel uint16, linear RGB × 2^14) and
    ``gt/XXXX/meta_info.pkl``. PNGs are read with OpenCV's ``IMREAD_UNCHANGED``, which undoes the BGR(A) swap
    OpenCV applied when writing them, so the channels come back in the generator's order (R, G_r, G_b, B and
    R, G, B). The meta pickle is read with ``safe_load_pickle``.

    Each item is ``{'lq': (burst_size, 4, h, w), 'gt': (3, 8h, 8w), 'meta_info': dict, 'key': 'XXXX'}``.

    Args:
        dataroot: the set's root (see above), or with ``io_backend.type`` lmdb a ``synburst_val`` LMDB
            (``create_lmdb --format synburst_val``), whose keys are the relative paths above without extension;
            a burst's frames, GT and meta are then read in one transaction.
        burst_size: use the first ``burst_size`` frames (frame 0 is the reference).
        io_backend: ``{'type': 'disk'}`` (default) or ``{'type': 'lmdb', ...}`` (see ``codes/data/io_backend.py``).
    """

    def __init__(self, dataroot: str, burst_size: int = 14, io_backend: dict | None = None) -> None:
        super().__init__()
        if burst_size < 1:
            raise ValueError(f'burst_size must be >= 1, got {burst_size}')
        self.io_backend = check_io_backend(io_backend)
        self.dataroot = str(dataroot)
        self.burst_size = burst_size
        self.backend = None
        if self.io_backend['type'] == 'lmdb':
            self.backend = open_backend(self.io_backend, self.dataroot, layout='synburst_val')
            self.root = Path(self.backend.path)
            self.names = sorted((k.split('/')[1] for k in self.backend.keys('bursts/') if k.endswith('/im_raw_00')),
                                key=natural_key)
            if not self.backend.record.get('has_gt', True):
                raise FileNotFoundError(f'SyntheticBurstValDataset: {self.backend.path} was built from a set without '
                                        'gt/; it cannot be used for validation')
            where = f'{self.backend.path} [bursts/{self.names[0] if self.names else "?"}]'
            num_frames = len(self.backend.keys(f'bursts/{self.names[0]}/im_raw_')) if self.names else 0
        else:
            root = Path(self.dataroot)
            candidates = [root, root / 'val']
            base = next((c for c in candidates if (c / 'bursts').is_dir()), None)
            if base is None:
                raise FileNotFoundError(f'SyntheticBurstValDataset: no bursts/ folder in {self.dataroot!r} or its '
                                        f'val/; {_DATA_HINT}')
            self.root = base
            self.names = sorted((d.name for d in (base / 'bursts').iterdir() if d.is_dir()), key=natural_key)
            where = str(base / 'bursts' / self.names[0]) if self.names else ''
            num_frames = len(list((base / 'bursts' / self.names[0]).glob('im_raw_*.png'))) if self.names else 0
        if not self.names:
            raise FileNotFoundError(f'SyntheticBurstValDataset: {self.root / "bursts"} holds no burst folders; '
                                    f'{_DATA_HINT}')
        if burst_size > num_frames:
            raise ValueError(f'burst_size={burst_size} exceeds the {num_frames} frames on disk in {where}')

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> dict[str, Any]:
        name = self.names[index]
        if self.backend is not None:
            keys = [f'bursts/{name}/im_raw_{i:02d}' for i in range(self.burst_size)]
            keys += [f'gt/{name}/im_rgb', f'gt/{name}/meta_info']
            values = self.backend.get_many(keys)  # one transaction for the whole sample
            burst = torch.stack([_check_uint16(v, 4, self.backend.describe(k)) for k, v in zip(keys, values)
                                 if k.startswith('bursts/')])
            gt = _check_uint16(values[-2], 3, self.backend.describe(keys[-2]))
            where = self.backend.describe(keys[-1])
            meta = safe_loads_pickle(values[-1], source=where)
        else:
            burst_dir = self.root / 'bursts' / name
            burst = torch.stack([_read_uint16_png(burst_dir / f'im_raw_{i:02d}.png', 4)
                                 for i in range(self.burst_size)])
            gt = _read_uint16_png(self.root / 'gt' / name / 'im_rgb.png', 3)
            where = str(self.root / 'gt' / name / 'meta_info.pkl')
            meta = safe_load_pickle(where)
        return {'lq': burst, 'gt': gt, 'meta_info': _meta_dict(meta, where), 'key': name}
