"""Rendering linear camera RGB (a burst network's output) to 8-bit sRGB for viewing.

Two post-processings, as the burst challenges define them: the synthetic one (DBSR's ``goutamgmb/deep-burst-sr``
``data/postprocessing_functions.py``: gains, colour matrix, gamma, smoothstep) and BurstSR's real-track one
(camera white balance, ÷ the image maximum, no colour matrix). Every step but the maximum is per pixel, so an
output streamed in bands of rows renders as the whole image does.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from codes.data.camera_pipeline import (_channels_013, apply_ccm, apply_gains, apply_smoothstep, gamma_compression,
                                        process_burstsr_image_rgb)

__all__ = ['Render', 'render_srgb', 'srgb_norm_factor']


@dataclass(frozen=True)
class Render:
    """How linear camera RGB becomes sRGB for viewing: gains [red, 1, blue]·rgb_gain, then
    either the synthetic path (clamp, optional cam->sRGB matrix) or, with ``normalize_max``, BurstSR's (÷ the image
    maximum, no matrix); then gamma 1/2.2 and smoothstep. See :func:`render_srgb`."""
    red_gain: float = 1.0
    blue_gain: float = 1.0
    rgb_gain: float = 1.0
    cam2rgb: tuple[tuple[float, ...], ...] | None = None
    normalize_max: bool = False
    gamma: bool = True
    smoothstep: bool = True
    source: str = ''


def _burstsr_meta(render: Render) -> dict:
    if render.cam2rgb is not None:
        raise ValueError('render_srgb: normalize_max (BurstSR post-processing) applies no colour matrix')
    return {'norm_factor': 1.0, 'black_level_subtracted': True,
            'cam_wb': [render.red_gain * render.rgb_gain, render.rgb_gain, render.blue_gain * render.rgb_gain]}


def srgb_norm_factor(linear: torch.Tensor, render: Render) -> float | None:
    """The maximum that ``normalize_max`` divides by (of the white-balanced image), or None without it. The
    maximum over bands of rows is that of the whole image, so a streamed output renders as the whole one does."""
    if not render.normalize_max:
        return None
    image = linear.detach().float().cpu()
    wb = _channels_013(_burstsr_meta(render)['cam_wb'], image, 'cam_wb')
    return float((image * wb / wb[1]).max())


def render_srgb(linear: torch.Tensor, render: Render, norm_factor: float | None = None) -> np.ndarray:
    """(3, H, W) linear camera RGB -> (H, W, 3) uint8 sRGB (RGB order).

    With ``normalize_max`` it is BurstSR's real-track post-processing (``process_burstsr_image_rgb``: × the
    gains, ÷ the maximum, clamp, gamma, smoothstep; no colour matrix); otherwise the synthetic one (gains with
    clamp, colour matrix, clamp, gamma, smoothstep). ×255 truncated. Every step but the maximum is per pixel, so
    bands of rows render as the whole image does when ``norm_factor`` gives the whole image's maximum
    (:func:`srgb_norm_factor`).
    """
    image = linear.detach().float().cpu()
    if render.normalize_max:
        return process_burstsr_image_rgb(image, _burstsr_meta(render), gamma=render.gamma,
                                         smoothstep=render.smoothstep, norm_factor=norm_factor, return_np=True)
    image = apply_gains(image, render.rgb_gain, render.red_gain, render.blue_gain)
    if render.cam2rgb is not None:
        image = apply_ccm(image, torch.tensor(render.cam2rgb, dtype=torch.float32))
    image = image.clamp(0.0, 1.0)
    if render.gamma:
        image = gamma_compression(image)
    if render.smoothstep:
        image = apply_smoothstep(image)
    array = image.clamp(0.0, 1.0).permute(1, 2, 0).numpy()
    return (array * 255).astype(np.uint8)
