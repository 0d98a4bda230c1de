"""Test inputs for inference: a tiny BSRT checkpoint, challenge PNG bursts and CFA DNG files written with tifffile."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import torch

from codes.archs import build_network
from codes.data.camera_pipeline import mosaic
from tests.test_runner.tiny import TINY_NET

#: Bayer colour codes of the DNG CFAPattern tag: 0 = R, 1 = G, 2 = B.
CFA = {'RGGB': (0, 1, 1, 2), 'GRBG': (1, 0, 2, 1), 'GBRG': (1, 2, 0, 1), 'BGGR': (2, 1, 1, 0)}
COLOR_MATRIX = (1.0, -0.3, -0.1, -0.4, 1.3, 0.1, -0.05, 0.2, 0.6)  #: XYZ -> camera (DNG ColorMatrix1)
AS_SHOT_NEUTRAL = (0.5, 1.0, 0.7)


def photo_rgb(h: int, w: int, shift: int = 0) -> torch.Tensor:
    """(3, h, w) float RGB in [0, 1] from scikit-image's astronaut, shifted ``shift`` pixels right."""
    from skimage import data
    img = torch.from_numpy(data.astronaut().astype(np.float32) / 255).permute(2, 0, 1)
    img = torch.nn.functional.interpolate(img[None], size=(h, w + 8), mode='area')[0]
    return img[:, :, 4 - shift:4 - shift + w].contiguous()


def tiny_bsrt(seed: int = 0, **overrides) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_network({**TINY_NET, **overrides}).eval()


def write_png_burst(folder: Path, frames: int, packed_hw: tuple[int, int]) -> torch.Tensor:
    """Challenge-format frames im_raw_XX.png (packed RGGB x 2^14); returns the stored (frames, 4, h, w) values."""
    folder.mkdir(parents=True, exist_ok=True)
    h, w = packed_hw
    out = []
    for i in range(frames):
        packed = mosaic(photo_rgb(2 * h, 2 * w, shift=i))
        counts = np.round(packed.permute(1, 2, 0).numpy() * 2 ** 14).astype(np.uint16)
        assert cv2.imwrite(str(folder / f'im_raw_{i:02d}.png'), counts)
        out.append(torch.from_numpy(counts.astype(np.float32)).permute(2, 0, 1) / 2 ** 14)
    return torch.stack(out)


def _rational(values: Sequence[float], den: int = 10000) -> list[int]:
    out = []
    for v in values:
        out += [int(round(v * den)), den]
    return out


def write_dng(path: Path, raw: np.ndarray, pattern: str = 'RGGB', black: int = 64, white: int = 1023,
              neutral: Sequence[float] = AS_SHOT_NEUTRAL, color_matrix: Sequence[float] = COLOR_MATRIX) -> None:
    """A minimal valid CFA DNG (uint16 mosaic, one strip) with the tags LibRaw needs to decode and colour it."""
    import tifffile
    tags = [
        (254, 'I', 1, 0, True),  # NewSubfileType: main image
        (271, 's', 0, 'TestMaker', True),
        (272, 's', 0, 'TestModel', True),
        (33421, 'H', 2, (2, 2), True),  # CFARepeatPatternDim
        (33422, 'B', 4, CFA[pattern], True),  # CFAPattern
        (50706, 'B', 4, (1, 4, 0, 0), True),  # DNGVersion
        (50707, 'B', 4, (1, 1, 0, 0), True),  # DNGBackwardVersion
        (50708, 's', 0, 'TestMaker TestModel', True),  # UniqueCameraModel
        (50713, 'H', 2, (1, 1), True),  # BlackLevelRepeatDim
        (50714, 'H', 1, black, True),  # BlackLevel
        (50717, 'H', 1, white, True),  # WhiteLevel
        (50721, '2i', 9, _rational(color_matrix), True),  # ColorMatrix1 (SRATIONAL)
        (50728, '2I', 3, _rational(neutral), True),  # AsShotNeutral
        (50778, 'H', 1, 21, True),  # CalibrationIlluminant1: D65
    ]
    tifffile.imwrite(path, raw.astype(np.uint16), photometric=32803, planarconfig='contig', compression=None,
                     extratags=tags, metadata=None)


def mosaic_counts(rgggb_mosaic: np.ndarray, pattern: str, black: int = 64, white: int = 1023) -> np.ndarray:
    """Sensor counts of a CFA image whose RGGB-phase content is ``rgggb_mosaic`` (2h, 2w) in [0, 1]: for other
    patterns one column and/or row is added at the top-left, so that dropping it gives the RGGB mosaic back."""
    dy = 1 if pattern in ('GBRG', 'BGGR') else 0
    dx = 1 if pattern in ('GRBG', 'BGGR') else 0
    h, w = rgggb_mosaic.shape
    full = np.zeros((h + 2 * dy, w + 2 * dx), np.float64)
    full[dy:dy + h, dx:dx + w] = rgggb_mosaic
    return np.round(full * (white - black) + black).astype(np.uint16)


def seam_distance(size: int, tile: int, overlap: int, scale: int) -> np.ndarray:
    """Per output pixel along one axis (size·scale,): the distance to the nearest tile edge inside the image."""
    from codes.utils.tiling import tile_starts
    edges = {e * scale for s in tile_starts(size, tile, overlap) for e in (s, s + tile) if 0 < e < size}
    idx = np.arange(size * scale) + 0.5
    return np.min([np.abs(idx - e) for e in edges], axis=0)
