"""Padding and overlapping-tile inference for networks of any input size (SwinIR's ``test`` idea, with blending).

An input (…, h, w) is padded on the bottom and right to a multiple of the network's size step (and to its minimum
size), cut into ``tile`` × ``tile`` tiles that overlap by at least ``overlap`` pixels, and each tile goes through
the network alone, so device memory is bounded by the tile. Tile outputs are blended with weights that ramp
linearly across each overlap (1 elsewhere) and normalised by the summed weights, so a pixel covered by one tile
only gets exactly that tile's output. Tile corners are multiples of ``multiple`` so that window partitions inside
a tile line up with those of the whole image.

Two ways to get the output: :func:`tiled_forward` returns it whole (float32, output size, plus a weight map of the
same size: the reference), and :func:`tiled_forward_rows` yields it in bands of finished rows, keeping only one
tile row of accumulators (its bands equal the reference's rows exactly). With the streamed writers of
``codes.utils.image_writers`` the host memory of a tiled inference is then bounded by the tile row and the width,
not by the output size; :func:`check_memory` refuses, before any work, an output that cannot fit.
"""
from __future__ import annotations

import logging
import math
import os
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F

from codes.utils.build import OptionError
from codes.utils.errors import UserError

__all__ = ['pad_to_multiple', 'tile_overlap_error', 'check_tile_overlap', 'tile_starts', 'ramp_weights',
           'tiled_forward', 'tiled_forward_rows', 'round_tile', 'tiled_memory_bytes', 'available_memory_bytes',
           'check_memory', 'OutputMemoryError']

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


def tile_overlap_error(tile: int, overlap: int, detail: str = '', file: str | None = None) -> OptionError:
    """The user error of an overlap that is not smaller than the tile: one line naming both options
    (``tile_overlap`` and ``tile`` in an option file, ``--tile-overlap`` and ``--tile`` on infer.py's command line).
    """
    return OptionError('tile_overlap', f'the tile overlap {overlap} must be smaller than the tile {tile}{detail} '
                       '(--tile-overlap must be smaller than --tile)', file)


def check_tile_overlap(tile: int | None, overlap: int, file: str | None = None) -> None:
    """Raise :func:`tile_overlap_error` unless ``overlap < tile`` (no tiling, ``tile`` None, takes any overlap)."""
    if tile is not None and overlap >= tile:
        raise tile_overlap_error(tile, overlap, file=file)


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of ``tile`` covering ``size`` with overlaps of at least ``overlap``.

    Steps of ``tile - overlap``; the last tile is aligned to the end. One tile (start 0) when ``size <= tile``.
    """
    if size <= tile:
        return [0]
    step = tile - overlap
    if step <= 0:
        raise tile_overlap_error(tile, overlap)
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
        raise tile_overlap_error(tile, overlap, f' (rounded to {new_overlap} and {new_tile}: the network takes '
                                 f'sizes in steps of {multiple})')
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
        top, bottom = _overlaps(rows, i, th)
        wy = ramp_weights(scale * th, scale * top, scale * bottom)
        for j, c in enumerate(cols):
            left, right = _overlaps(cols, j, tw)
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


def tiled_forward_rows(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, scale: int, tile: int | None,
                       overlap: int, multiple: int = 1, min_size: int = 0, progress: Any = None,
                       max_rows: int = 256) -> Iterator[tuple[int, torch.Tensor]]:
    """:func:`tiled_forward` as a stream: yields ``(first_row, band)`` with ``band`` (C, n, scale·w) float32 on the
    CPU, ``n <= max_rows``, top to bottom, covering the cropped output once.

    Rows are yielded as soon as no later tile can touch them (after each row of tiles), and only one row of tiles
    is accumulated (C + 1 float32 planes of scale·tile rows by the padded width), so the host memory does not grow
    with the output height. The values equal those of :func:`tiled_forward` exactly (same sums, same order). The
    network's output must have batch size 1.
    """
    padded, (h, w) = pad_to_multiple(x, multiple, min_size)
    ph, pw = padded.shape[-2:]
    out_h, out_w = scale * h, scale * w
    if tile:
        tile, overlap = round_tile(tile, overlap, multiple, min_size)
    if not tile or (ph <= tile and pw <= tile):
        yield from _untiled_rows(fn, padded, out_h, out_w, progress, max_rows)
        return
    rows, cols = tile_starts(ph, tile, overlap), tile_starts(pw, tile, overlap)
    th, tw = min(tile, ph), min(tile, pw)
    if progress is not None:
        progress.reset(total=len(rows) * len(cols))
    band: _TileRowBand | None = None
    for i, r in enumerate(rows):
        if band is not None:
            yield from band.advance(scale * r)  # rows above this tile row's top are final
        top, bottom = _overlaps(rows, i, th)
        wy = ramp_weights(scale * th, scale * top, scale * bottom)
        for j, c in enumerate(cols):
            left, right = _overlaps(cols, j, tw)
            wx = ramp_weights(scale * tw, scale * left, scale * right)
            y = _forward_batch_of_one(fn, padded[..., r:r + th, c:c + tw])
            if band is None:
                band = _TileRowBand(y.shape[1], scale * th, scale * pw, out_h, out_w, max_rows)
            band.add(y[0], (wy[:, None] * wx[None, :])[None], slice(scale * c, scale * (c + tw)))
            del y
            if progress is not None:
                progress.update(1)
    yield from band.finished(band.base + band.height)


def _overlaps(starts: list[int], i: int, size: int) -> tuple[int, int]:
    """How much tile ``i`` (of side ``size``, at ``starts[i]``) overlaps the previous and the next tile on one axis
    (0 at the borders)."""
    before = starts[i - 1] + size - starts[i] if i > 0 else 0
    after = starts[i] + size - starts[i + 1] if i + 1 < len(starts) else 0
    return before, after


def _forward_batch_of_one(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``fn(x)`` under no_grad as float32 on the CPU; ``ValueError`` unless its batch size is 1."""
    with torch.no_grad():
        y = fn(x).float().cpu()
    if y.shape[0] != 1:
        raise ValueError(f'tiled_forward_rows: the network returned a batch of {y.shape[0]}, expected 1')
    return y


def _untiled_rows(fn: Callable[[torch.Tensor], torch.Tensor], padded: torch.Tensor, out_h: int, out_w: int,
                  progress: Any, max_rows: int) -> Iterator[tuple[int, torch.Tensor]]:
    """One pass over the whole padded input, cropped to (out_h, out_w) and yielded in bands of ``max_rows``."""
    if progress is not None:
        progress.reset(total=1)
    out = _forward_batch_of_one(fn, padded)
    if progress is not None:
        progress.update(1)
    out = out[0, :, :out_h, :out_w]
    for r0 in range(0, out_h, max_rows):
        yield r0, out[:, r0:r0 + max_rows]


class _TileRowBand:
    """The accumulators of one row of tiles: weighted sums (C, height, width) and weights (1, height, width) of the
    output rows from ``base``; :meth:`advance` hands out the finished rows and slides the band down."""

    def __init__(self, channels: int, height: int, width: int, out_h: int, out_w: int, max_rows: int) -> None:
        self.acc = torch.zeros(channels, height, width)
        self.weight = torch.zeros(1, height, width)
        self.height, self.out_h, self.out_w, self.max_rows = height, out_h, out_w, max_rows
        self.base = 0  # output row of acc[:, 0]

    def add(self, y: torch.Tensor, wt: torch.Tensor, xs: slice) -> None:
        """Accumulate one tile's output ``y`` (C, height, tile width) with weights ``wt`` at columns ``xs``."""
        self.acc[:, :, xs] += y * wt
        self.weight[:, :, xs] += wt

    def finished(self, upto: int) -> Iterator[tuple[int, torch.Tensor]]:
        """Rows [base, upto) of the accumulators, normalised and cropped, in bands of ``max_rows``."""
        end = min(upto, self.out_h) - self.base
        for a in range(0, end, self.max_rows):
            b = min(a + self.max_rows, end)
            yield self.base + a, self.acc[:, a:b, :self.out_w] / self.weight[:, a:b, :self.out_w]

    def advance(self, new_base: int) -> Iterator[tuple[int, torch.Tensor]]:
        """Yield rows [base, new_base), then shift the rest of the band up so that it starts at ``new_base``."""
        done = new_base - self.base
        yield from self.finished(new_base)
        keep = self.height - done
        for k in range(0, keep, done):  # shift up in non-overlapping chunks (no band-sized copy)
            n = min(done, keep - k)
            self.acc[:, k:k + n] = self.acc[:, done + k:done + k + n]
            self.weight[:, k:k + n] = self.weight[:, done + k:done + k + n]
        self.acc[:, keep:] = 0
        self.weight[:, keep:] = 0
        self.base = new_base


# ----------------------------------------------------------------------------------------------- memory
class OutputMemoryError(UserError, MemoryError):
    """An output that cannot fit in the host memory available; raised before any work is done."""


def tiled_memory_bytes(in_hw: tuple[int, int], channels: int, scale: int, tile: int | None, overlap: int,
                       multiple: int = 1, min_size: int = 0, resident_bytes_per_pixel: float = 0.0,
                       max_rows: int = 256) -> int:
    """Host memory a :func:`tiled_forward_rows` inference of an input of ``in_hw`` needs beyond the model and the
    input: the tile-row accumulators (or, untiled, the whole float32 output), the tile outputs, the per-band
    temporaries of the writers (a few float32 copies of ``max_rows`` rows), and ``resident_bytes_per_pixel`` per
    output pixel for an output kept whole in memory."""
    h, w = in_hw
    ph = max(math.ceil(h / multiple) * multiple, math.ceil(min_size / multiple) * multiple)
    pw = max(math.ceil(w / multiple) * multiple, math.ceil(min_size / multiple) * multiple)
    out_px = scale * h * scale * w
    if tile:
        tile, overlap = round_tile(tile, overlap, multiple, min_size)
    if not tile or (ph <= tile and pw <= tile):
        work = 2 * channels * 4 * (scale * ph) * (scale * pw)  # the output and its crop/copy
    else:
        th, tw = min(tile, ph), min(tile, pw)
        work = (channels + 1) * 4 * scale * th * scale * pw + 3 * channels * 4 * scale * th * scale * tw
    bands = 8 * channels * 4 * min(max_rows, scale * h) * scale * w
    return int(work + bands + resident_bytes_per_pixel * out_px)


def available_memory_bytes() -> int | None:
    """The host memory available to a new allocation (``MemAvailable`` of /proc/meminfo, else free pages), or
    None when the system does not say."""
    try:
        with open('/proc/meminfo') as f:
            for line in f:
                if line.startswith('MemAvailable:'):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf('SC_AVPHYS_PAGES') * os.sysconf('SC_PAGE_SIZE')
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(need: int, what: str, budget: int | None = None, hint: str = '') -> None:
    """Raise :class:`OutputMemoryError` when ``need`` bytes exceed ``budget`` (default: the memory available now).

    ``what`` names the input and output in the message; ``hint`` says what to change.
    """
    budget = available_memory_bytes() if budget is None else budget
    if budget is not None and need > budget:
        raise OutputMemoryError(f'{what} needs about {need / 2 ** 30:.2f} GiB of host memory, but '
                                f'{budget / 2 ** 30:.2f} GiB is available; nothing was computed'
                                + (f'; {hint}' if hint else ''))
