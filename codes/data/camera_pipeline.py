"""Camera pipeline for synthetic RAW bursts: unprocessing (sRGB -> linear camera RGB) and processing back.

The steps follow Brooks et al., "Unprocessing Images for Learned Raw Denoising" (CVPR 2019), in the form used by
DBSR (``goutamgmb/deep-burst-sr: data/camera_pipeline.py``) and copied unchanged into ``Algolzw/BSRT``, written
from their description (not copied). Everything here is a pure function of tensors and
explicit parameters; sampling is separate from applying:

* samplers take ``rng`` (a ``random.Random``, where the original used Python's ``random``) and/or ``generator``
  (a ``torch.Generator``, where it used torch's CPU generator; ``None`` is torch's global one), so that passing
  ``random._inst`` and ``None`` after seeding both global generators reproduces the original's draws exactly;
* the appliers accept one image ``(3, H, W)`` with Python-float parameters (the arithmetic then matches the
  original bit for bit, float32 throughout), or a batch ``(B, 3, H, W)`` with per-sample parameters as produced by
  ``default_collate`` (tensors of shape ``(B,)`` and ``(B, 3, 3)``).

Packed RAW layout: ``(…, 4, h, w)`` with channels R, G_r, G_b, B (RGGB), i.e. ``packed[0] = raw[0::2, 0::2]``,
``packed[1] = raw[0::2, 1::2]``, ``packed[2] = raw[1::2, 0::2]`` and ``packed[3] = raw[1::2, 1::2]``.
"""
from __future__ import annotations

import math
import random
from typing import Any, Mapping

import numpy as np
import torch
from torch import Tensor

__all__ = [
    'XYZ2CAMS', 'RGB2XYZ', 'random_ccm', 'random_gains', 'random_noise_levels', 'sample_isp_params',
    'apply_smoothstep', 'invert_smoothstep', 'gamma_expansion', 'gamma_compression', 'apply_gains',
    'safe_invert_gains', 'apply_ccm', 'mosaic', 'pack_raw', 'unpack_raw', 'demosaic_preview', 'add_noise',
    'unprocess', 'process_linear_image_rgb', 'to_uint8_srgb', 'process_burstsr_image_rgb',
]

#: The four XYZ -> camera matrices mixed by ``random_ccm`` (float32, shape (4, 3, 3)).
XYZ2CAMS = torch.tensor([
    [[1.0234, -0.2969, -0.2266], [-0.5625, 1.6328, -0.0469], [-0.0703, 0.2188, 0.6406]],
    [[0.4913, -0.0541, -0.0202], [-0.6130, 1.3513, 0.2906], [-0.1564, 0.2151, 0.7183]],
    [[0.8380, -0.2630, -0.0639], [-0.2887, 1.0725, 0.2496], [-0.0627, 0.1427, 0.5438]],
    [[0.6596, -0.2079, -0.0562], [-0.4782, 1.3016, 0.1933], [-0.0970, 0.1581, 0.5181]],
], dtype=torch.float32)

#: sRGB (D65) -> XYZ.
RGB2XYZ = torch.tensor([
    [0.4124564, 0.3575761, 0.1804375],
    [0.2126729, 0.7151522, 0.0721750],
    [0.0193339, 0.1191920, 0.9503041],
], dtype=torch.float32)

_LOG_MIN_SHOT = math.log(0.0001)
_LOG_MAX_SHOT = math.log(0.012)


# ---------------------------------------------------------------------------------------------------- sampling
def random_ccm(generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Sample a random colour correction matrix.

    Four weights w_k ~ U(0, 1) (one ``uniform_`` call of 4 float32 values on ``generator``) mix the XYZ -> camera
    matrices as (Σ w_k M_k) / Σ w_k; rgb2cam = xyz2cam · M_rgb2xyz with each row normalised to sum to 1.

    Returns:
        ``(rgb2cam, cam2rgb)``, float32 (3, 3); cam2rgb is the matrix inverse of rgb2cam.
    """
    weights = torch.empty(XYZ2CAMS.shape[0], 1, 1, dtype=torch.float32).uniform_(0.0, 1.0, generator=generator)
    xyz2cam = (XYZ2CAMS * weights).sum(dim=0) / weights.sum()
    rgb2cam = torch.mm(xyz2cam, RGB2XYZ)
    rgb2cam = rgb2cam / rgb2cam.sum(dim=-1, keepdim=True)
    cam2rgb = torch.inverse(rgb2cam)
    return rgb2cam, cam2rgb


def random_gains(rng: random.Random) -> tuple[float, float, float]:
    """Sample ``(rgb_gain, red_gain, blue_gain)``: 1/N(0.8, 0.1), U(1.9, 2.4), U(1.5, 1.9), drawn in this order
    (``rng.gauss``, then two ``rng.uniform``)."""
    rgb_gain = 1.0 / rng.gauss(0.8, 0.1)
    red_gain = rng.uniform(1.9, 2.4)
    blue_gain = rng.uniform(1.5, 1.9)
    return rgb_gain, red_gain, blue_gain


def random_noise_levels(rng: random.Random) -> tuple[float, float]:
    """Sample ``(shot_noise, read_noise)``: log(shot) ~ U(log 1e-4, log 1.2e-2) and
    log(read) = 2.18·log(shot) + 1.20 + N(0, 0.26²) (``rng.uniform`` then ``rng.gauss``; natural logarithms).

    ``random.gauss`` caches the second normal of each pair, so right after ``random_gains`` on the same ``rng``
    the read-noise term is that cached value, as in the original.
    """
    log_shot = rng.uniform(_LOG_MIN_SHOT, _LOG_MAX_SHOT)
    shot_noise = math.exp(log_shot)
    log_read = 2.18 * log_shot + 1.20 + rng.gauss(0.0, 0.26)
    read_noise = math.exp(log_read)
    return shot_noise, read_noise


def sample_isp_params(rng: random.Random, generator: torch.Generator | None = None, ccm: bool = True,
                      gains: bool = True) -> dict[str, Any]:
    """Sample the per-burst camera parameters (torch draws for the CCM first, then the Python draws for the gains).

    A disabled part draws nothing: the identity CCM, and gains of 1.

    Returns:
        ``{'rgb2cam', 'cam2rgb', 'rgb_gain', 'red_gain', 'blue_gain'}``.
    """
    if ccm:
        rgb2cam, cam2rgb = random_ccm(generator)
    else:
        rgb2cam = torch.eye(3, dtype=torch.float32)
        cam2rgb = rgb2cam.clone()
    rgb_gain, red_gain, blue_gain = random_gains(rng) if gains else (1.0, 1.0, 1.0)
    return {'rgb2cam': rgb2cam, 'cam2rgb': cam2rgb, 'rgb_gain': rgb_gain, 'red_gain': red_gain,
            'blue_gain': blue_gain}


# ---------------------------------------------------------------------------------------------------- helpers
def _is_scalar(value: Any) -> bool:
    return not isinstance(value, Tensor) or value.numel() == 1


def _gain_vector(first: Any, rgb_gain: Any, third: Any, image: Tensor, invert: bool) -> Tensor:
    """Per-channel gains broadcastable to ``image``: (3, 1, 1) for scalars, (B, 3, 1, 1) for per-sample values."""
    if _is_scalar(first) and _is_scalar(rgb_gain) and _is_scalar(third):
        first, rgb_gain, third = float(first), float(rgb_gain), float(third)
        if invert:
            gains = torch.tensor([1.0 / first, 1.0, 1.0 / third]) / rgb_gain
        else:
            gains = torch.tensor([first, 1.0, third]) * rgb_gain
        return gains.to(image.device, image.dtype).view(-1, 1, 1)
    f, k, t = (torch.as_tensor(v, dtype=torch.float64).reshape(-1) for v in (first, rgb_gain, third))
    f, k, t = torch.broadcast_tensors(f, k, t)
    ones = torch.ones_like(f)
    if invert:
        gains = torch.stack([1.0 / f, ones, 1.0 / t], dim=-1) / k[:, None]
    else:
        gains = torch.stack([f, ones, t], dim=-1) * k[:, None]
    return gains.to(image.device, image.dtype).view(-1, 3, 1, 1)


def _flag(value: Any, image: Tensor) -> bool | Tensor:
    """A meta flag as a Python bool, or as a (B, 1, 1, 1) mask when a collated batch mixes True and False."""
    if not isinstance(value, Tensor):
        return bool(value)
    value = value.reshape(-1).bool()
    if bool(value.all()):
        return True
    if not bool(value.any()):
        return False
    return value.to(image.device).view(-1, 1, 1, 1)


def _apply_if(flag: bool | Tensor, fn: Any, image: Tensor) -> Tensor:
    if flag is True:
        return fn(image)
    if flag is False:
        return image
    return torch.where(flag, fn(image), image)


def _check_rgb(image: Tensor, name: str) -> None:
    if image.dim() not in (3, 4) or image.shape[-3] != 3:
        raise ValueError(f'{name}: expected an image (3, H, W) or a batch (B, 3, H, W), got shape {tuple(image.shape)}')


# ---------------------------------------------------------------------------------------------------- tone and gamma
def apply_smoothstep(image: Tensor) -> Tensor:
    """Global tone curve 3x² − 2x³ (no clamping)."""
    return 3 * image ** 2 - 2 * image ** 3


def invert_smoothstep(image: Tensor) -> Tensor:
    """Inverse of ``apply_smoothstep`` on [0, 1]: 0.5 − sin(asin(1 − 2·clamp(x, 0, 1)) / 3)."""
    image = image.clamp(0.0, 1.0)
    return 0.5 - torch.sin(torch.asin(1.0 - 2.0 * image) / 3.0)


def gamma_expansion(image: Tensor) -> Tensor:
    """sRGB-like gamma -> linear: max(x, 1e-8)^2.2."""
    return image.clamp(min=1e-8) ** 2.2


def gamma_compression(image: Tensor) -> Tensor:
    """Linear -> gamma: max(x, 1e-8)^(1/2.2)."""
    return image.clamp(min=1e-8) ** (1.0 / 2.2)


# ---------------------------------------------------------------------------------------------------- colour
def apply_gains(image: Tensor, rgb_gain: float | Tensor, red_gain: float | Tensor,
                blue_gain: float | Tensor) -> Tensor:
    """Forward white balance and brightness: multiply by [red_gain, 1, blue_gain]·rgb_gain, then clamp to [0, 1].

    Args:
        image: (3, H, W) or (B, 3, H, W) linear RGB.
        rgb_gain, red_gain, blue_gain: floats, or per-sample tensors (B,).
    """
    _check_rgb(image, 'apply_gains')
    return (image * _gain_vector(red_gain, rgb_gain, blue_gain, image, invert=False)).clamp(0.0, 1.0)


def safe_invert_gains(image: Tensor, rgb_gain: float | Tensor, red_gain: float | Tensor,
                      blue_gain: float | Tensor) -> Tensor:
    """Inverse gains that keep highlights: g = [1/red, 1, 1/blue] / rgb_gain, mask = (max(gray − 0.9, 0) / 0.1)²
    with gray the channel mean, and the applied gain is max(mask + (1 − mask)·g, g). Not clamped.

    Args:
        image: (3, H, W) or (B, 3, H, W) in [0, 1].
    """
    _check_rgb(image, 'safe_invert_gains')
    gains = _gain_vector(red_gain, rgb_gain, blue_gain, image, invert=True)
    gray = image.mean(dim=-3, keepdim=True)
    inflection = 0.9
    mask = ((gray - inflection).clamp(min=0.0) / (1.0 - inflection)) ** 2.0
    safe_gains = torch.max(mask + (1.0 - mask) * gains, gains)
    return image * safe_gains


def apply_ccm(image: Tensor, ccm: Tensor) -> Tensor:
    """Colour matrix times each pixel's column vector.

    Args:
        image: (3, H, W) or (B, 3, H, W).
        ccm: (3, 3), or (B, 3, 3) for a batch.
    """
    _check_rgb(image, 'apply_ccm')
    ccm = torch.as_tensor(ccm).to(image.device, image.dtype)
    shape = image.shape
    if image.dim() == 3 and ccm.dim() == 2:
        return torch.mm(ccm, image.reshape(3, -1)).reshape(shape)
    return torch.matmul(ccm, image.reshape(*shape[:-2], -1)).reshape(shape)


# ---------------------------------------------------------------------------------------------------- bayer
def mosaic(image: Tensor) -> Tensor:
    """RGB (…, 3, H, W) -> packed RGGB (…, 4, H/2, W/2): R = img[0, 0::2, 0::2], G_r = img[1, 0::2, 1::2],
    G_b = img[1, 1::2, 0::2], B = img[2, 1::2, 1::2]. H and W must be even."""
    if image.dim() < 3 or image.shape[-3] != 3 or image.shape[-2] % 2 or image.shape[-1] % 2:
        raise ValueError(f'mosaic: expected (…, 3, H, W) with even H and W, got {tuple(image.shape)}')
    red = image[..., 0, 0::2, 0::2]
    green_red = image[..., 1, 0::2, 1::2]
    green_blue = image[..., 1, 1::2, 0::2]
    blue = image[..., 2, 1::2, 1::2]
    return torch.stack((red, green_red, green_blue, blue), dim=-3)


def pack_raw(raw: Tensor) -> Tensor:
    """Bayer mosaic (…, 2h, 2w) (RGGB phase) -> packed (…, 4, h, w)."""
    if raw.dim() < 2 or raw.shape[-2] % 2 or raw.shape[-1] % 2:
        raise ValueError(f'pack_raw: expected (…, 2h, 2w), got {tuple(raw.shape)}')
    return torch.stack((raw[..., 0::2, 0::2], raw[..., 0::2, 1::2], raw[..., 1::2, 0::2], raw[..., 1::2, 1::2]),
                       dim=-3)


def unpack_raw(packed: Tensor) -> Tensor:
    """Packed (…, 4, h, w) -> Bayer mosaic (…, 2h, 2w) (RGGB phase); the inverse of ``pack_raw``."""
    if packed.dim() < 3 or packed.shape[-3] != 4:
        raise ValueError(f'unpack_raw: expected (…, 4, h, w), got {tuple(packed.shape)}')
    *lead, _, h, w = packed.shape
    raw = packed.new_empty(*lead, 2 * h, 2 * w)
    raw[..., 0::2, 0::2] = packed[..., 0, :, :]
    raw[..., 0::2, 1::2] = packed[..., 1, :, :]
    raw[..., 1::2, 0::2] = packed[..., 2, :, :]
    raw[..., 1::2, 1::2] = packed[..., 3, :, :]
    return raw


def demosaic_preview(packed: Tensor) -> Tensor:
    """Half-resolution RGB preview of packed RGGB (…, 4, h, w): channels [R, (G_r + G_b)/2, B] -> (…, 3, h, w)."""
    if packed.dim() < 3 or packed.shape[-3] != 4:
        raise ValueError(f'demosaic_preview: expected (…, 4, h, w), got {tuple(packed.shape)}')
    green = (packed[..., 1, :, :] + packed[..., 2, :, :]) / 2
    return torch.stack((packed[..., 0, :, :], green, packed[..., 3, :, :]), dim=-3)


# ---------------------------------------------------------------------------------------------------- noise
def add_noise(image: Tensor, shot_noise: float | Tensor = 0.01, read_noise: float | Tensor = 0.0005,
              generator: torch.Generator | None = None, noise: Tensor | None = None) -> Tensor:
    """Heteroscedastic Gaussian noise: x + N(0, 1)·sqrt(x·shot + read), not clamped.

    Args:
        image: any shape, float32 in [0, 1].
        generator: draws one float32 ``normal_`` over ``image.shape`` (memory order) when ``noise`` is not given.
        noise: a pre-drawn standard normal tensor of ``image.shape`` (sampling kept apart from applying).
    """
    variance = image * shot_noise + read_noise
    if noise is None:
        noise = torch.empty(image.shape, dtype=torch.float32).normal_(generator=generator)
    return image + noise.to(image.device, image.dtype) * variance.sqrt()


# ---------------------------------------------------------------------------------------------------- pipelines
def unprocess(image: Tensor, rgb2cam: Tensor, rgb_gain: float, red_gain: float, blue_gain: float,
              smoothstep: bool = True, gamma: bool = True, gains: bool = True) -> Tensor:
    """sRGB -> linear camera RGB (Brooks et al. 2019): inverse smoothstep, inverse gamma, rgb2cam, safe inverse
    gains, clamp to [0, 1]. Each of the first, second and fourth steps can be switched off.

    Args:
        image: (3, H, W) or (B, 3, H, W) in [0, 1].
    """
    _check_rgb(image, 'unprocess')
    if smoothstep:
        image = invert_smoothstep(image)
    if gamma:
        image = gamma_expansion(image)
    image = apply_ccm(image, rgb2cam)
    if gains:
        image = safe_invert_gains(image, rgb_gain, red_gain, blue_gain)
    return image.clamp(0.0, 1.0)


def process_linear_image_rgb(image: Tensor, meta_info: Mapping[str, Any], gains: bool = True, ccm: bool = True,
                             gamma: bool = True, smoothstep: bool = True,
                             return_np: bool = False) -> Tensor | np.ndarray:
    """Linear camera RGB -> sRGB for viewing (synthetic track): forward gains (with clamp), cam2rgb, gamma if
    ``meta_info['gamma']``, smoothstep if ``meta_info['smoothstep']``, clamp to [0, 1].

    Args:
        image: (3, H, W), or (B, 3, H, W) with a collated ``meta_info`` (per-sample tensors).
        meta_info: keys ``rgb_gain``, ``red_gain``, ``blue_gain``, ``cam2rgb``, ``gamma``, ``smoothstep``.
        gains, ccm, gamma, smoothstep: switch single steps off.
        return_np: return ``to_uint8_srgb``'s uint8 array ((H, W, 3) or (B, H, W, 3), BGR) instead of a tensor.
    """
    _check_rgb(image, 'process_linear_image_rgb')
    if gains:
        image = apply_gains(image, meta_info['rgb_gain'], meta_info['red_gain'], meta_info['blue_gain'])
    if ccm:
        image = apply_ccm(image, meta_info['cam2rgb'])
    if gamma:
        image = _apply_if(_flag(meta_info.get('gamma', True), image), gamma_compression, image)
    if smoothstep:
        image = _apply_if(_flag(meta_info.get('smoothstep', True), image), apply_smoothstep, image)
    image = image.clamp(0.0, 1.0)
    if return_np:
        return _to_uint8(image, bgr=True)
    return image


def _to_uint8(image: Tensor, bgr: bool) -> np.ndarray:
    """[0, 1] (…, 3, H, W) -> uint8 (…, H, W, 3): ×255 in float32 and truncation, optionally RGB -> BGR."""
    array = image.detach().to('cpu', torch.float32).clamp(0.0, 1.0).movedim(-3, -1).numpy()
    array = (array * 255).astype(np.uint8)
    if bgr:
        array = np.ascontiguousarray(array[..., ::-1])
    return array


def to_uint8_srgb(image: Tensor, meta_info: Mapping[str, Any], bgr: bool = True, gains: bool = True,
                  ccm: bool = True, gamma: bool = True, smoothstep: bool = True) -> np.ndarray:
    """Linear camera RGB -> 8-bit sRGB as the original's ``SimplePostProcess``: process, clamp,
    ×255, cast to uint8 by **truncation**, and swap to BGR for ``cv2.imwrite`` unless ``bgr=False``.

    Returns:
        uint8 (H, W, 3) for an image (3, H, W), or (B, H, W, 3) for a batch.
    """
    out = process_linear_image_rgb(image, meta_info, gains=gains, ccm=ccm, gamma=gamma, smoothstep=smoothstep)
    return _to_uint8(out, bgr=bgr)


# ---------------------------------------------------------------------------------------------------- real track
def _channels_013(value: Any, image: Tensor, name: str) -> Tensor:
    """Entries [0, 1, −1] of a 3- or 4-valued per-image vector (black level, white balance) as (3, 1, 1)."""
    vec = torch.as_tensor(value, dtype=torch.float32, device=image.device).reshape(-1)
    if vec.numel() < 3:
        raise ValueError(f'process_burstsr_image_rgb: meta_info[{name!r}] needs at least 3 values, got {vec.numel()}')
    return vec[[0, 1, -1]].reshape(3, 1, 1)


def process_burstsr_image_rgb(image: Tensor, meta_info: Mapping[str, Any], white_balance: bool = True,
                              gamma: bool = True, smoothstep: bool = True, norm_factor: float | None = None,
                              return_np: bool = False) -> Tensor | np.ndarray:
    """BurstSR linear RGB -> sRGB for viewing (real track): × ``meta_info['norm_factor']``; the black
    level [0, 1, −1] subtracted unless ``black_level_subtracted``; × cam_wb[0, 1, −1] / cam_wb[1] unless
    ``while_balance_applied`` (upstream spelling) or ``white_balance`` is off; ÷ the image max (or ``norm_factor``,
    to give several images one scale) and clamp; x^(1/2.2); smoothstep. **No colour matrix.**

    Args:
        image: (3, H, W) linear camera RGB, as ``BurstSRDataset`` returns it or a prediction of it.
        meta_info: ``norm_factor`` and ``cam_wb`` (and ``black_level``, flags) of the camera.
        return_np: return (H, W, 3) uint8 **RGB** (×255, truncated) instead of the [0, 1] tensor.
    """
    _check_rgb(image, 'process_burstsr_image_rgb')
    if image.dim() != 3:
        raise ValueError(f'process_burstsr_image_rgb: expected one (3, H, W) image, got {tuple(image.shape)}')
    image = image.detach().float() * float(meta_info.get('norm_factor', 1.0))
    if not bool(meta_info.get('black_level_subtracted', False)):
        image = image - _channels_013(meta_info['black_level'], image, 'black_level')
    if white_balance and not bool(meta_info.get('while_balance_applied', False)):
        wb = _channels_013(meta_info['cam_wb'], image, 'cam_wb')
        image = image * wb / wb[1]
    scale = float(norm_factor) if norm_factor is not None else float(image.max())
    image = (image / max(scale, 1e-12)).clamp(0.0, 1.0)
    if gamma:
        image = image ** (1.0 / 2.2)
    if smoothstep:
        image = apply_smoothstep(image)
    if return_np:
        return _to_uint8(image, bgr=False)
    return image
