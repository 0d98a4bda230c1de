"""Padding and overlapping-tile inference for networks of any input size (SwinIR's ``test`` idea, with blending).

An input (…, h, w) is padded on the bottom and right to a multiple of the network's size step (and to its minimum
size), cut into ``tile`` × ``tile`` tiles that overlap by at least ``overlap`` pixels, and each tile goes through
the network alone, so device memory is bounded by the tile. Tile outputs are blended with weights that ramp
linearly across each overlap (1 elsewhere) and normalised by the summed weights, so a pixel covered by one tile
only gets exactly that tile's output. Tile corners are multiples of ``multiple`` so that window partitions inside
a tile line up with those of the whole image. Output accumulators stay on the CPU (float32, output size).
"""
from __future__ import annotations

import logging
import math
from typing import Any, Callable

import torch
import torch.nn.functional as F

__all__ = ['pad_to_multiple', 'tile_starts', 'ramp_weights', 'tiled_forward', 'round_tile']

logger = logging.getLogger(__name__)


def pad_to_multiple(x: torch.Tensor, multiple: int, min_size: int = 0) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad the last two dims of ``x`` on the bottom/right to a multiple of ``multiple`` and at least ``min_size``.

    Reflection padding where the pad is smaller than the size, replication otherwise. Returns the padded tensor
    and the original (h, w).
    """
    h, w = x.shape[-2:]
    target_h = max(math.ceil(h / multiple) * multiple, math.ceil(min_size / multiple) * multiple)
    target_w = max(math.ceil(w / multiple) * multiple, math.ceil(min_size / multiple) * multiple)
    ph, pw = target_h - h, target_w - w
    if ph == 0 and pw == 0:
        return x, (h, w)
    lead = x.shape[:-2]
    flat = x.reshape(-1, 1, h, w)
    mode = 'reflect' if ph < h and pw < w else 'replicate'
    out = F.pad(flat, (0, pw, 0, ph), mode=mode)
    return out.reshape(*lead, target_h, target_w), (h, w)


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of ``tile`` covering ``size`` with overlaps of at least ``overlap``.

    Steps of ``tile - overlap``; the last tile is aligned to the end. One tile (start 0) when ``size <= tile``.
    """
    if size <= tile:
        return [0]
    step = tile - overlap
    if step <= 0:
        raise ValueError(f'tile overlap ({overlap}) must be smaller than the tile ({tile})')
    starts = list(range(0, size - tile, step))
    starts.append(size - tile)
    return sorted(set(starts))


def ramp_weights(length: int, left: int, right: int) -> torch.Tensor:
    """1-D blending weights (length,): linear ramps (i + 0.5) / n over the first ``left`` and last ``right``
    samples, 1 in between. Ramps of two neighbours over the same overlap sum to 1."""
    w = torch.ones(length, dtype=torch.float32)
    if left > 0:
        w[:left] = torch.minimum(w[:left], (torch.arange(left, dtype=torch.float32) + 0.5) / left)
    if right > 0:
        w[length - right:] = torch.minimum(w[length - right:],
                                           (torch.arange(right, 0, -1, dtype=torch.float32) - 0.5) / right)
    return w


def round_tile(tile: int, overlap: int, multiple: int, min_size: int) -> tuple[int, int]:
    """Round ``tile`` up to a multiple of ``multiple`` (at least ``min_size``) and ``overlap`` up to a multiple of
    ``multiple``, logging any change. Returns (tile, overlap)."""
    new_tile = max(math.ceil(tile / multiple) * multiple, math.ceil(min_size / multiple) * multiple)
    new_overlap = math.ceil(overlap / multiple) * multiple if overlap > 0 else 0
    if new_overlap >= new_tile:
        raise ValueError(f'tile overlap {overlap} (rounded to {new_overlap}) must be smaller than the tile '
                         f'{tile} (rounded to {new_tile}); the network takes sizes in steps of {multiple}')
    if (new_tile, new_overlap) != (tile, overlap):
        logger.info('tile %d / overlap %d rounded to %d / %d: the network takes sizes in steps of %d (minimum %d)',
                    tile, overlap, new_tile, new_overlap, multiple, min_size)
    return new_tile, new_overlap


def tiled_forward(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, scale: int, tile: int | None,
                  overlap: int, multiple: int = 1, min_size: int = 0,
                  progress: Any = None) -> torch.Tensor:
    """Run ``fn`` on ``x`` padded and, when larger than ``tile``, in overlapping blended tiles.

    Args:
        fn: network call, (…, th, tw) on its device -> (1, C, scale·th, scale·tw); called under no_grad.
        x: input (…, h, w) on any device; tiles are cut from it and moved nowhere (``fn`` moves them).
        scale: output pixels per input pixel.
        tile: tile size in input pixels (rounded to ``multiple``), or None/0 for one pass over the whole input.
        overlap: minimal tile overlap in input pixels (rounded up to ``multiple``).
        multiple: the network's size step; padding and tile corners use it.
        min_size: the network's smallest input side.
        progress: a ``tqdm`` (or anything with ``reset(total=)`` and ``update(n)``): reset to the tile count,
            advanced after each tile.

    Returns:
        (1, C, scale·h, scale·w) float32 on the CPU, cropped back to the unpadded size.
    """
    padded, (h, w) = pad_to_multiple(x, multiple, min_size)
    ph, pw = padded.shape[-2:]
    if tile:
        tile, overlap = round_tile(tile, overlap, multiple, min_size)
    if not tile or (ph <= tile and pw <= tile):
        if progress is not None:
            progress.reset(total=1)
        with torch.no_grad():
            out = fn(padded).float().cpu()
        if progress is not None:
            progress.update(1)
        return out[..., :scale * h, :scale * w]
    rows, cols = tile_starts(ph, tile, overlap), tile_starts(pw, tile, overlap)
    th, tw = min(tile, ph), min(tile, pw)
    if progress is not None:
        progress.reset(total=len(rows) * len(cols))
    out = weight = None
    for i, r in enumerate(rows):
        top = rows[i - 1] + th - r if i > 0 else 0
        bottom = r + th - rows[i + 1] if i + 1 < len(rows) else 0
        wy = ramp_weights(scale * th, scale * top, scale * bottom)
        for j, c in enumerate(cols):
            left = cols[j - 1] + tw - c if j > 0 else 0
            right = c + tw - cols[j + 1] if j + 1 < len(cols) else 0
            wx = ramp_weights(scale * tw, scale * left, scale * right)
            with torch.no_grad():
                y = fn(padded[..., r:r + th, c:c + tw]).float().cpu()
            if out is None:
                out = torch.zeros(y.shape[0], y.shape[1], scale * ph, scale * pw)
                weight = torch.zeros(1, 1, scale * ph, scale * pw)
            wt = (wy[:, None] * wx[None, :])[None, None]
            ys, xs = slice(scale * r, scale * (r + th)), slice(scale * c, scale * (c + tw))
            out[..., ys, xs] += y * wt
            weight[..., ys, xs] += wt
            if progress is not None:
                progress.update(1)
    out /= weight
    return out[..., :scale * h, :scale * w]
