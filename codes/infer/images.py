"""The single-image runner: DCLS on every image of the input (kernel estimated or given, then the Restorer)."""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from codes.infer.inputs import check_image_input, input_errors
from codes.infer.network import runner_tile
from codes.infer.outputs import MEMORY_HINT, save_kernel, stream_outputs
from codes.utils.build import OptionError
from codes.utils.precision import autocast as _autocast
from codes.utils.tiling import check_memory, tiled_forward_rows, tiled_memory_bytes

__all__ = ['estimate_kernel', 'run_images']

logger = logging.getLogger('codes.infer')


def _load_kernel(path: str, kernel_size: int) -> torch.Tensor:
    """A user-given LR-space kernel (ks, ks) from a ``.npy`` file -> (1, 1, ks, ks) normalised to sum 1."""
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise OptionError('kernel', f'cannot read {path} as a .npy array: {exc}') from None
    if array.shape != (kernel_size, kernel_size) or not np.isfinite(array).all() or abs(array.sum()) < 1e-8:
        raise OptionError('kernel', f'{path}: expected a finite ({kernel_size}, {kernel_size}) kernel with a '
                          f'non-zero sum (the network\'s kernel_size), got shape {array.shape}')
    k = torch.from_numpy(array.astype(np.float32))
    return (k / k.sum())[None, None]


def estimate_kernel(net: nn.Module, lr: torch.Tensor, tile: int | None, overlap: int, call_device: torch.device,
                    precision: str, progress: Any = None, min_size: int | None = None) -> torch.Tensor:
    """DCLS's Estimator on ``lr`` (1, 3, h, w): on the whole image, or, when it is larger than ``tile``, the mean
    of the per-tile estimates (DCLS models one blur for the whole image). Returns (1, 1, ks, ks) on the CPU.
    ``min_size``: pad the image to at least this (default the network's minimum)."""
    from codes.archs.dcls_arch import MIN_LR_SIZE
    from codes.utils.tiling import pad_to_multiple, tile_starts
    padded, _ = pad_to_multiple(lr, 1, min_size or MIN_LR_SIZE)
    ph, pw = padded.shape[-2:]
    if not tile or (ph <= tile and pw <= tile):
        boxes = [(0, 0, ph, pw)]
    else:
        th, tw = min(tile, ph), min(tile, pw)
        boxes = [(r, c, th, tw) for r in tile_starts(ph, tile, overlap) for c in tile_starts(pw, tile, overlap)]
    if progress is not None:
        progress.reset(total=len(boxes))
    total = None
    for r, c, th, tw in boxes:
        with torch.no_grad(), _autocast(call_device, precision):
            k = net.Estimator(padded[..., r:r + th, c:c + tw].to(call_device)).float().cpu()
        total = k if total is None else total + k
        if progress is not None:
            progress.update(1)
    kernel = total / len(boxes)
    return kernel / kernel.sum()


def run_images(net: nn.Module, opt: dict, device: torch.device, out_dir: Path,
               records: list[dict] | None = None) -> list[dict]:
    """DCLS on every image under ``opt['input']``: kernel estimated (or given), then the Restorer, tiled; records
    as :func:`run_bursts`."""
    from codes.archs.dcls_arch import MIN_LR_SIZE
    from codes.data.image_readers import find_images, read_rgb_image
    if opt['input_kind'] not in ('auto', 'image'):
        raise OptionError('input_kind', f"DCLS takes images; got input_kind {opt['input_kind']!r}")
    with input_errors(opt, 'DCLS'):
        files = find_images(opt['input'])
    check_image_input(opt['input'], files)
    given = _load_kernel(opt['kernel'], net.kernel_size) if opt.get('kernel') else None
    min_size = getattr(net, 'input_size_rule', (1, MIN_LR_SIZE))[1]
    tile = opt['tile']
    if tile and tile < 2 * net.kernel_size and getattr(net, 'fixed_tile', None) is None:
        logger.info('tile %d raised to %d (twice the kernel size) so the CLS deconvolution sees enough context',
                    tile, 2 * net.kernel_size)
        tile = 2 * net.kernel_size
    tile = runner_tile(net, tile)
    suffix = '.tiff' if opt['linear_format'] == 'tiff' else '.png'
    records = [] if records is None else records

    with logging_redirect_tqdm([logging.getLogger('codes')]), \
            tqdm(files, desc='images', unit='image', disable=None) as files_bar, \
            tqdm(desc='tiles', unit='tile', leave=False, disable=None) as tiles_bar:
        for path in files_bar:
            with input_errors(opt, 'DCLS'):
                lr = read_rgb_image(path)[None]  # (1, 3, h, w)
            h, w = lr.shape[-2:]
            s = net.scale
            check_memory(tiled_memory_bytes((h, w), 3, s, tile, opt['tile_overlap'], 1, min_size),
                         f'{path}: its {s * w}x{s * h} output', hint=MEMORY_HINT)
            start = time.time()
            kernel = given if given is not None else estimate_kernel(net, lr, tile, opt['tile_overlap'], device,
                                                                     opt['precision'], tiles_bar, min_size)
            kernel_on_device = kernel.to(device)

            def restore(x: torch.Tensor) -> torch.Tensor:
                with torch.no_grad(), _autocast(device, opt['precision']):
                    return net.Restorer(x.to(device), kernel_on_device).float()

            def to_srgb(band: torch.Tensor, _: Any) -> np.ndarray:
                return (band.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)

            stem = out_dir / path.stem
            srgb_path = stem.with_name(f'{path.stem}_sr.png')
            sr16_path = stem.with_name(f'{path.stem}_sr16{suffix}') if opt['save_linear'] else None
            rows = tiled_forward_rows(restore, lr, s, tile, opt['tile_overlap'], multiple=1, min_size=min_size,
                                      progress=tiles_bar)
            stream_outputs(rows, (s * h, s * w), srgb_path, sr16_path, to_srgb)
            record = {'input': str(path), 'kind': 'image', 'input_size': [h, w], 'output_size': [s * h, s * w],
                      'seconds': round(time.time() - start, 3), 'srgb': str(srgb_path),
                      'kernel': 'given' if given is not None else 'estimated'}
            if sr16_path is not None:
                record['sr16'] = str(sr16_path)
            npy, png = save_kernel(kernel, stem)
            record.update(kernel_npy=str(npy), kernel_png=str(png))
            logger.info('%s (%dx%d) -> %s', path, *lr.shape[-2:], record['srgb'])
            records.append(record)
    return records
