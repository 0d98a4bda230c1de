"""Image values as the datasets need them: BGR uint8 for blind SR, checked 16-bit PNGs for the bursts."""
from __future__ import annotations

import os

import cv2
import numpy as np

__all__ = ['to_bgr_uint8', 'check_png16', 'read_png16']


def to_bgr_uint8(image: np.ndarray) -> np.ndarray:
    """What ``cv2.imread(path, IMREAD_COLOR)`` gives for a file that ``IMREAD_UNCHANGED`` reads as ``image``:
    3-channel uint8 BGR (gray is replicated, alpha dropped, 16-bit shifted right by 8)."""
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise TypeError(f'expected a uint8 or uint16 image, got {image.dtype}')
    if image.ndim == 2 or image.shape[2] == 1:
        return cv2.cvtColor(image.reshape(image.shape[:2]), cv2.COLOR_GRAY2BGR)
    if image.shape[2] == 4:
        return np.ascontiguousarray(image[..., :3])
    return image


def check_png16(image: np.ndarray, channels: int, source: str) -> np.ndarray:
    """``image`` itself if it is a (H, W, ``channels``) uint16 array, else ``ValueError`` naming ``source``."""
    if image.dtype != np.uint16 or image.ndim != 3 or image.shape[2] != channels:
        raise ValueError(f'{source}: expected a {channels}-channel uint16 PNG, got dtype {image.dtype} and shape '
                         f'{image.shape}')
    return image


def read_png16(path: str | os.PathLike, channels: int) -> np.ndarray:
    """A uint16 PNG with ``channels`` channels as (H, W, C), read with ``IMREAD_UNCHANGED`` (in-memory order)."""
    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f'file not found: {path}')
    image = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if image is None:
        raise OSError(f'cannot decode image: {path}')
    return check_png16(image, channels, path)
