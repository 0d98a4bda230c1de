"""The burst runner: a burst network (BSRT, EBSR, Burstormer, BIPNet, DBSR) on every burst of the input, tiled and
streamed."""
from __future__ import annotations

import logging
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from codes.data.burst_readers import find_bursts, read_burst, select_frames
from codes.data.srgb_render import render_srgb, srgb_norm_factor
from codes.infer.inputs import input_errors
from codes.infer.network import network_call, runner_tile
from codes.infer.outputs import MEMORY_HINT, stream_outputs
from codes.utils.build import OptionError
from codes.utils.tiling import check_memory, tiled_forward_rows, tiled_memory_bytes

__all__ = ['run_bursts']

logger = logging.getLogger('codes.infer')


def _render_band(render: Any, band: torch.Tensor, norm: float | None) -> np.ndarray:
    return render_srgb(band, render, norm)


def run_bursts(net: nn.Module, opt: dict, device: torch.device, out_dir: Path,
               records: list[dict] | None = None) -> list[dict]:
    """A burst network (BSRT, EBSR, Burstormer, BIPNet, DBSR) on every burst under ``opt['input']``; returns one
    record per burst (appended to ``records`` as each burst is done, so a caller keeps them when a later input fails)."""
    kind = opt['input_kind']
    if kind == 'image':
        raise OptionError('input_kind', "'image' is for DCLS; a BSRT takes bursts (png, raw or burstsr)")
    with input_errors(opt, type(net).__name__):
        jobs = find_bursts(opt['input'], kind)
    multiple, min_size = net.input_size_rule  # packed h, w: (multiple, minimum) the network takes
    call = network_call(net, device, opt['precision'])
    tile = runner_tile(net, opt['tile'])
    records = [] if records is None else records
    suffix = '.tiff' if opt['linear_format'] == 'tiff' else '.png'
    with logging_redirect_tqdm([logging.getLogger('codes')]), \
            tqdm(jobs, desc='bursts', unit='burst', disable=None) as files_bar, \
            tqdm(desc='tiles', unit='tile', leave=False, disable=None) as tiles_bar:
        for found_kind, path in files_bar:
            with input_errors(opt, 'BSRT'):
                burst = read_burst(found_kind, path)
            idx, message = select_frames(burst.frames.shape[0], net.burst_size)
            if message:
                logger.warning('%s: %s', path, message)
            x = burst.frames[idx][None]  # (1, N, 4, h, w)
            h, w = x.shape[-2:]
            check_memory(tiled_memory_bytes((h, w), 3, 8, tile, opt['tile_overlap'], multiple, min_size),
                         f'{path}: its {8 * w}x{8 * h} output', hint=MEMORY_HINT)
            srgb_path = out_dir / f'{burst.name}_srgb.png'
            lin_path = out_dir / f'{burst.name}_linear{suffix}' if opt['save_linear'] else None
            start = time.time()
            rows = tiled_forward_rows(call, x, 8, tile, opt['tile_overlap'], multiple=multiple,
                                      min_size=min_size, progress=tiles_bar)
            render = burst.render
            stream_outputs(rows, (8 * h, 8 * w), srgb_path, lin_path, partial(_render_band, render),
                           partial(srgb_norm_factor, render=render) if render.normalize_max else None)
            record = {'input': str(path), 'kind': found_kind, 'frames': len(burst.files), 'frames_used': idx,
                      'frame_rule': message, 'input_size': [h, w], 'output_size': [8 * h, 8 * w],
                      'seconds': round(time.time() - start, 3), 'render': burst.render.source, 'srgb': str(srgb_path)}
            if lin_path is not None:
                record['linear'] = str(lin_path)
            logger.info('%s (%s, %d frames, %dx%d packed) -> %s', path, found_kind, len(burst.files), *x.shape[-2:],
                        srgb_path)
            records.append(record)
    return records
