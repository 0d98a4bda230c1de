"""Reading the user's own images for a single-image model (DCLS) in ``infer.py``."""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import torch

from codes.data.input_errors import InputError, InputNotFoundError, InputReadError
from codes.utils.files import IMAGE_EXTENSIONS, natural_key

__all__ = ['find_images', 'read_rgb_image']


def find_images(path: str | os.PathLike) -> list[Path]:
    """An image file, or the image files of a folder (natural order)."""
    path = Path(path)
    if not path.exists():
        raise InputNotFoundError(f'input not found: {path}')
    if path.is_file():
        if path.suffix.lower() not in IMAGE_EXTENSIONS:
            raise InputError(f'{path}: not an image file ({", ".join(sorted(IMAGE_EXTENSIONS))})')
        return [path]
    files = sorted((p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS),
                   key=lambda p: natural_key(p.name.lower()))
    if not files:
        raise InputNotFoundError(f'{path}: no image files ({", ".join(sorted(IMAGE_EXTENSIONS))})')
    return files


def read_rgb_image(path: str | os.PathLike) -> torch.Tensor:
    """An 8- or 16-bit image file -> (3, H, W) float32 RGB in [0, 1] (grey is repeated, alpha dropped)."""
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise InputReadError(f'cannot decode image: {path}')
    if image.dtype == np.uint8:
        scale = 255.0
    elif image.dtype == np.uint16:
        scale = 65535.0
    else:
        raise InputError(f'{path}: expected an 8- or 16-bit image, got dtype {image.dtype}')
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    elif image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    elif image.shape[2] == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    else:
        raise InputError(f'{path}: expected 1, 3 or 4 channels, got {image.shape[2]}')
    return torch.from_numpy(image.astype(np.float32) / scale).permute(2, 0, 1).contiguous()
