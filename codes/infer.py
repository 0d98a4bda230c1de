"""Inference pipeline: run a trained BSRT on your own bursts (or DCLS on your own images), any size, any device.

``python infer.py -opt options/infer.yml`` or ``python infer.py --weights W --input PATH --output DIR
[--device cpu|cuda] [--tile 64 --tile-overlap 8] [--precision bf16]``. Command-line flags override the option file.

Which network the weights are for (first match wins):

1. ``network_g`` in the option file: a full constructor block, as in the train/test option files;
2. ``--arch NAME`` (and ``--level S|L`` for BSRT, ``--burst-size N`` for BSRT and Burstormer): the family is checked
   against the checkpoint's keys, and the hyper-parameters not given are read from its tensor shapes;
3. nothing: family and hyper-parameters are read from the checkpoint (``codes.archs.arch_detect``).

The weights are always loaded strictly with ``weights_only=True`` (``codes.utils.checkpoint``); a file that is not a
checkpoint, or that does not fit the network, is refused with a message naming the file.

Per input, under ``--output``: ``<name>_srgb.png`` (8-bit sRGB for viewing) and ``<name>_linear.png`` or
``.tiff`` (16-bit linear RGB, clamp to [0, 1] × 65535, channels in RGB order on disk), plus for DCLS
``<name>_kernel.png`` / ``<name>_kernel.npy``; ``infer_summary.json`` lists what was done. With ``--compare``
(a ground truth and/or a second model's checkpoint), also ``<name>_compare.png``, a labelled comparison panel
(``codes.visualization.infer_compare``).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import cv2
import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from codes.archs import build_network
from codes.archs.arch_detect import FAMILIES, detect_family, network_options_from_state_dict
from codes.data.burst_readers import find_bursts, read_burst, select_frames
from codes.data.srgb_render import render_srgb, srgb_norm_factor
from codes.utils.build import OptionError
from codes.utils.checkpoint import CheckpointError, extract_state_dict, load_file, load_network
from codes.utils.logger import format_options, setup_logging
from codes.utils.build import OptionErrors
from codes.utils.image_writers import row_writer
from codes.utils.options import (PRECISIONS, TYPED_ARCH, Key, add_common_flags, apply_overrides, fill_defaults,
                                 print_options, read_options, validate_block)
from codes.utils.precision import autocast as _autocast
from codes.utils.tiling import check_memory, tiled_forward_rows, tiled_memory_bytes

__all__ = ['infer_pipeline', 'INFER_SCHEMA', 'build_infer_arg_parser', 'load_inference_network', 'save_linear',
           'linear_to_uint16', 'stream_outputs', 'check_image_input', 'resolve_device']

logger = logging.getLogger('codes.infer')

INPUT_KINDS = ('auto', 'png', 'raw', 'burstsr', 'image')

#: Keys of an inference option file (``options/infer.yml``), with their defaults.
INFER_SCHEMA: dict[str, Any] = {
    'name': Key(str, 'infer'),
    'weights': Key(str, required=True),
    'input': Key(str, required=True),
    'output': Key(str, required=True),
    'network_g': Key(TYPED_ARCH),
    'param_key': Key(('auto', 'params', 'params_ema'), 'auto'),
    'device': Key(str, 'auto'),
    'precision': Key(PRECISIONS, 'fp32'),
    'tile': Key(int | None, None, minimum=1, hint='0 or ~: the whole input at once'),
    'tile_overlap': Key(int, 8, minimum=0),
    'input_kind': Key(INPUT_KINDS, 'auto'),
    'linear_format': Key(('png', 'tiff'), 'png'),
    'save_linear': Key(bool, True),
    'kernel': Key(str | None, None),
    'compare': Key(list[str] | None, None),
}


def build_infer_arg_parser() -> argparse.ArgumentParser:
    """The ``infer.py`` command line."""
    p = argparse.ArgumentParser(description='Run a trained BSRT on bursts or DCLS on images (any size, tiled).')
    add_common_flags(p, opt_required=False,
                     opt_help='YAML option file (keys: see options/infer.yml); flags below override it')
    p.add_argument('--weights', help='checkpoint: ours (params / params_ema) or an official bare state_dict')
    p.add_argument('--input', help='BSRT: a burst folder (4-channel PNG frames, RAW files or samsung_XX folders), '
                   'a folder of such folders, or one RAW file. DCLS: an image file or a folder of images')
    p.add_argument('--output', help='output folder')
    p.add_argument('--device', help="'auto' (default: CUDA when available), 'cpu', 'cuda' or 'cuda:N'")
    p.add_argument('--tile', type=int, help='tile size in input pixels (packed pixels for BSRT); 0 or none: '
                   'whole input at once')
    p.add_argument('--tile-overlap', '--tile_overlap', type=int, dest='tile_overlap',
                   help='minimal tile overlap in input pixels (default 8)')
    p.add_argument('--precision', choices=PRECISIONS, help='autocast precision (default fp32)')
    p.add_argument('--arch', choices=sorted(FAMILIES), help='architecture of the weights (default: read from them)')
    p.add_argument('--level', choices=['S', 'L'], help='BSRT level (published hyper-parameters)')
    p.add_argument('--burst-size', '--burst_size', type=int, dest='burst_size',
                   help='burst size the weights were trained for (BSRT default: read from them; Burstormer: 14)')
    p.add_argument('--param-key', '--param_key', choices=['auto', 'params', 'params_ema'], dest='param_key',
                   help="which weights of our checkpoints: 'auto' (default) takes params_ema when present")
    p.add_argument('--input-kind', '--input_kind', choices=INPUT_KINDS, dest='input_kind',
                   help='force the input kind instead of detecting it')
    p.add_argument('--linear-format', '--linear_format', choices=['png', 'tiff'], dest='linear_format',
                   help='file format of the 16-bit linear output (default png)')
    p.add_argument('--no-linear', dest='save_linear', action='store_false', default=None,
                   help='do not write the 16-bit linear output')
    p.add_argument('--kernel', help='DCLS: a known LR-space blur kernel (.npy, kernel_size x kernel_size) to use '
                   'instead of the estimated one')
    p.add_argument('--compare', nargs='+', metavar='SOURCE',
                   help='write <name>_compare.png panels against a ground truth (an image, or a folder of images '
                   'named like the inputs) and/or a second model (a .pth/.pt checkpoint)')
    return p


def parse_infer_options(argv: list[str] | None = None) -> tuple[dict, argparse.Namespace]:
    """Option file (if any) + overrides + flags -> validated options with defaults filled in."""
    args = build_infer_arg_parser().parse_args(argv)
    file = args.opt
    raw: dict = read_options(file, args.force_yml) if file else apply_overrides({}, args.force_yml)
    for key in ('weights', 'input', 'output', 'device', 'tile', 'tile_overlap', 'precision', 'param_key',
                'input_kind', 'linear_format', 'save_linear', 'kernel', 'compare'):
        value = getattr(args, key)
        if value is not None:
            raw[key] = value
    if raw.get('tile') == 0:
        raw['tile'] = None
    try:
        opt = fill_defaults(validate_block(raw, INFER_SCHEMA, '', file), INFER_SCHEMA, 'infer')
    except OptionError as exc:
        if file:
            raise
        errors = [OptionError(e.where, f'required: give --{e.where} (or -opt with an option file)')
                  if e.detail == 'required key is missing' else e for e in OptionErrors.flatten(exc)]
        OptionErrors.raise_all(errors)
        raise
    opt['arch'] = {k: v for k, v in (('type', args.arch), ('level', args.level), ('burst_size', args.burst_size))
                   if v is not None}
    if args.level and args.arch != 'BSRT':
        raise OptionError('arch', '--level is a BSRT hyper-parameter: you need --arch BSRT')
    if args.burst_size and args.arch not in ('BSRT', 'Burstormer'):
        raise OptionError('arch', '--burst-size needs --arch BSRT or --arch Burstormer')
    opt['opt_file'] = file
    return opt, args


def resolve_device(name: str) -> torch.device:
    """'auto' -> CUDA when available, else CPU; 'cuda' without CUDA is an error."""
    if name == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    try:
        device = torch.device(name)
    except RuntimeError:
        raise OptionError('device', f"expected 'auto', 'cpu', 'cuda' or 'cuda:N', got {name!r}") from None
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise OptionError('device', 'CUDA was asked for but is not available here; use --device cpu')
    return device


# ------------------------------------------------------------------------------------------------- network
def _network_options(sd: Mapping[str, torch.Tensor], opt: dict, source: str) -> dict:
    """The ``network_g`` block for these weights (see the module docstring for the rule)."""
    family = detect_family(sd)
    if opt.get('network_g'):
        given = opt['network_g']['type']
        if family is not None and given in FAMILIES and family != given:
            raise CheckpointError(f'{source}: holds a {family} network, not {given} (network_g.type in '
                                  f'{opt.get("opt_file")}); pass the {given} weights or fix network_g')
        return dict(opt['network_g'])
    arch = opt.get('arch') or {}
    wanted = arch.get('type')
    if wanted is None:
        return network_options_from_state_dict(sd, source)
    if family is not None and family != wanted:
        raise CheckpointError(f'{source}: holds a {family} network, not {wanted} (--arch {wanted}); pass the '
                              f'{wanted} weights, or drop --arch to use these')
    if family is None:
        raise CheckpointError(f'{source}: its keys are not those of {wanted} (first keys {list(sd)[:4]}); is it a '
                              'checkpoint of another architecture?')
    net_opt = network_options_from_state_dict(sd, source)
    if wanted == 'BSRT' and arch.get('level'):
        net_opt = {'type': 'BSRT', 'level': arch['level'], 'burst_size': net_opt['burst_size'], 'drop_path_rate': 0.0}
    if arch.get('burst_size'):
        net_opt['burst_size'] = arch['burst_size']
    return net_opt


def load_inference_network(weights: str | Path, opt: dict, device: torch.device) -> tuple[nn.Module, dict, str]:
    """Build the network for ``weights`` and load them strictly; returns (net in eval mode, network_g, param_key)."""
    weights = Path(weights)
    ckpt = load_file(weights)
    if not isinstance(ckpt, Mapping):
        raise CheckpointError(f'{weights}: expected a state_dict or a {{"params": ...}} checkpoint, got a '
                              f'{type(ckpt).__name__}')
    param_key = opt.get('param_key', 'auto')
    if param_key == 'auto':
        param_key = 'params_ema' if isinstance(ckpt.get('params_ema'), Mapping) else 'params'
    sd = extract_state_dict(ckpt, param_key, str(weights))
    if not sd:
        raise CheckpointError(f'{weights}: holds no tensors')
    try:
        net_opt = _network_options(sd, opt, str(weights))
    except ValueError as exc:
        raise CheckpointError(str(exc)) from None
    net = build_network(net_opt)
    load_network(net, weights, strict=True, param_key=param_key)
    return net.to(device).eval(), net_opt, param_key


# ------------------------------------------------------------------------------------------------- outputs
def linear_to_uint16(image: torch.Tensor) -> np.ndarray:
    """(3, H, W) image in [0, 1] -> (H, W, 3) uint16 RGB: clamp to [0, 1], × 65535, rounded."""
    array = (image.detach().float().cpu().clamp(0, 1) * 65535).round().to(torch.int32).permute(1, 2, 0).numpy()
    return array.astype(np.uint16)


def save_linear(image: torch.Tensor, path: Path) -> None:
    """(3, H, W) image in [0, 1] (linear RGB for BSRT) -> 16-bit PNG or TIFF (by suffix): clamp to [0, 1], × 65535,
    rounded, channels in RGB order on disk."""
    array = np.ascontiguousarray(linear_to_uint16(image)[..., ::-1])  # OpenCV writes BGR order as RGB on disk
    if not cv2.imwrite(str(path), array):
        raise OSError(f'could not write {path}')


#: What to change when an output does not fit (the accumulators hold one row of tiles across the whole width).
MEMORY_HINT = 'use --tile (or a smaller one), or free memory'


def stream_outputs(rows: Iterator[tuple[int, torch.Tensor]], size: tuple[int, int], srgb_path: Path,
                   linear_path: Path | None, to_srgb: Callable[[torch.Tensor, float | None], np.ndarray],
                   norm_of: Callable[[torch.Tensor], float] | None = None) -> None:
    """Write the bands of ``rows`` (``tiled_forward_rows``) as they come: the 8-bit sRGB PNG ``to_srgb(band,
    norm)`` and the 16-bit linear file (:func:`linear_to_uint16`), each under a temporary name until complete.

    With ``norm_of`` (a per-band maximum, for a render that divides by the image's maximum), the sRGB image needs
    every band first: the bands go to an unnamed temporary float32 file beside the output (disk, not memory) and
    are rendered in a second pass with the maximum of them all.
    """
    import tempfile
    out_h, out_w = size
    srgb = row_writer(srgb_path, out_w, out_h, 3, np.uint8)
    linear = row_writer(linear_path, out_w, out_h, 3, np.uint16) if linear_path is not None else None
    spill = tempfile.TemporaryFile(dir=srgb_path.parent) if norm_of is not None else None
    try:
        norm, spans = None, []
        for _, band in rows:
            if linear is not None:
                linear.write(linear_to_uint16(band))
            if spill is None:
                srgb.write(to_srgb(band, None))
            else:
                m = norm_of(band)
                norm = m if norm is None else max(norm, m)
                spill.write(band.contiguous().numpy().tobytes())
                spans.append(band.shape[1])
        if spill is not None:
            spill.seek(0)
            for n in spans:
                buf = bytearray(spill.read(3 * n * out_w * 4))
                srgb.write(to_srgb(torch.frombuffer(buf, dtype=torch.float32).reshape(3, n, out_w), norm))
        if linear is not None:
            linear.close()
        srgb.close()
    except BaseException:
        srgb.abort()
        if linear is not None:
            linear.abort()
        raise
    finally:
        if spill is not None:
            spill.close()


def save_srgb(array: np.ndarray, path: Path) -> None:
    """(H, W, 3) uint8 RGB -> 8-bit PNG."""
    if not cv2.imwrite(str(path), np.ascontiguousarray(array[..., ::-1])):
        raise OSError(f'could not write {path}')


def _network_call(net: nn.Module, device: torch.device, precision: str) -> Callable[[torch.Tensor], torch.Tensor]:
    def call(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), _autocast(device, precision):
            return net(x.to(device)).float()
    return call


# ------------------------------------------------------------------------------------------------- runners
@contextmanager
def _input_errors(opt: dict, model: str) -> Iterator[None]:
    """Errors reading the input (missing, unreadable, of another kind) as one-line errors naming ``input``."""
    try:
        yield
    except OptionError:
        raise
    except (FileNotFoundError, NotADirectoryError, ValueError, ImportError) as exc:
        raise OptionError('input', f'{exc} ({model} weights {opt["weights"]})', opt.get('opt_file')) from None
    except OSError as exc:  # cannot decode image
        raise OptionError('input', str(exc), opt.get('opt_file')) from None


def _packed_raw_frame(path: Path) -> bool:
    """Whether ``path`` is a challenge-format RAW frame (4-channel uint16 PNG of packed RGGB), not a photograph."""
    if path.suffix.lower() != '.png':
        return False
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    return image is not None and image.dtype == np.uint16 and image.ndim == 3 and image.shape[2] == 4


def check_image_input(path: str | Path, files: list[Path]) -> None:
    """Refuse a RAW burst given to an image model (DCLS): RAW files, BurstSR samsung_XX folders or packed RAW
    frames. Raises OptionError naming ``input``."""
    from codes.data.burst_readers import RAW_EXTENSIONS, burst_kind
    path = Path(path)
    kind = burst_kind(path) if path.is_dir() else ('raw' if path.suffix.lower() in RAW_EXTENSIONS else None)
    raw = kind in ('raw', 'burstsr') or any(_packed_raw_frame(f) for f in files[:1])
    if raw:
        raise OptionError('input', f'{path} is a RAW burst (packed RGGB frames), but the weights are for DCLS, '
                          'which super-resolves RGB images; run a BSRT checkpoint on bursts, or give DCLS '
                          'photographs (PNG/JPEG/TIFF)')


def _render_band(render: Any, band: torch.Tensor, norm: float | None) -> np.ndarray:
    return render_srgb(band, render, norm)


def run_bursts(net: nn.Module, opt: dict, device: torch.device, out_dir: Path,
               records: list[dict] | None = None) -> list[dict]:
    """A burst network (BSRT, EBSR, Burstormer) on every burst under ``opt['input']``; returns one record per burst (appended to ``records`` as each
    burst is done, so a caller keeps them when a later input fails)."""
    kind = opt['input_kind']
    if kind == 'image':
        raise OptionError('input_kind', "'image' is for DCLS; a BSRT takes bursts (png, raw or burstsr)")
    with _input_errors(opt, type(net).__name__):
        jobs = find_bursts(opt['input'], kind)
    multiple, min_size = net.input_size_rule  # packed h, w: (multiple, minimum) the network takes
    call = _network_call(net, device, opt['precision'])
    records = [] if records is None else records
    suffix = '.tiff' if opt['linear_format'] == 'tiff' else '.png'
    with logging_redirect_tqdm([logging.getLogger('codes')]), \
            tqdm(jobs, desc='bursts', unit='burst', disable=None) as files_bar, \
            tqdm(desc='tiles', unit='tile', leave=False, disable=None) as tiles_bar:
        for found_kind, path in files_bar:
            with _input_errors(opt, 'BSRT'):
                burst = read_burst(found_kind, path)
            idx, message = select_frames(burst.frames.shape[0], net.burst_size)
            if message:
                logger.warning('%s: %s', path, message)
            x = burst.frames[idx][None]  # (1, N, 4, h, w)
            h, w = x.shape[-2:]
            check_memory(tiled_memory_bytes((h, w), 3, 8, opt['tile'], opt['tile_overlap'], multiple, min_size),
                         f'{path}: its {8 * w}x{8 * h} output', hint=MEMORY_HINT)
            srgb_path = out_dir / f'{burst.name}_srgb.png'
            lin_path = out_dir / f'{burst.name}_linear{suffix}' if opt['save_linear'] else None
            start = time.time()
            rows = tiled_forward_rows(call, x, 8, opt['tile'], opt['tile_overlap'], multiple=multiple, min_size=min_size,
                                      progress=tiles_bar)
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
                    precision: str, progress: Any = None) -> torch.Tensor:
    """DCLS's Estimator on ``lr`` (1, 3, h, w): on the whole image, or, when it is larger than ``tile``, the mean
    of the per-tile estimates (DCLS models one blur for the whole image). Returns (1, 1, ks, ks) on the CPU."""
    from codes.archs.dcls_arch import MIN_LR_SIZE
    from codes.utils.tiling import pad_to_multiple, tile_starts
    padded, _ = pad_to_multiple(lr, 1, MIN_LR_SIZE)
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


def save_kernel(kernel: torch.Tensor, stem: Path) -> tuple[Path, Path]:
    """(1, 1, ks, ks) -> ``<stem>_kernel.npy`` (exact values) and ``<stem>_kernel.png`` (÷ max, ×8 nearest)."""
    k = kernel[0, 0].double().numpy()
    npy, png = stem.with_name(f'{stem.name}_kernel.npy'), stem.with_name(f'{stem.name}_kernel.png')
    np.save(npy, k)
    view = np.clip(k / max(k.max(), 1e-12), 0, 1)
    view = np.kron((view * 255).round().astype(np.uint8), np.ones((8, 8), dtype=np.uint8))
    if not cv2.imwrite(str(png), view):
        raise OSError(f'could not write {png}')
    return npy, png


def run_images(net: nn.Module, opt: dict, device: torch.device, out_dir: Path,
               records: list[dict] | None = None) -> list[dict]:
    """DCLS on every image under ``opt['input']``: kernel estimated (or given), then the Restorer, tiled; records
    as :func:`run_bursts`."""
    from codes.archs.dcls_arch import MIN_LR_SIZE
    from codes.data.image_readers import find_images, read_rgb_image
    if opt['input_kind'] not in ('auto', 'image'):
        raise OptionError('input_kind', f"DCLS takes images; got input_kind {opt['input_kind']!r}")
    with _input_errors(opt, 'DCLS'):
        files = find_images(opt['input'])
    check_image_input(opt['input'], files)
    given = _load_kernel(opt['kernel'], net.kernel_size) if opt.get('kernel') else None
    tile = opt['tile']
    if tile and tile < 2 * net.kernel_size:
        logger.info('tile %d raised to %d (twice the kernel size) so the CLS deconvolution sees enough context',
                    tile, 2 * net.kernel_size)
        tile = 2 * net.kernel_size
    suffix = '.tiff' if opt['linear_format'] == 'tiff' else '.png'
    records = [] if records is None else records

    with logging_redirect_tqdm([logging.getLogger('codes')]), \
            tqdm(files, desc='images', unit='image', disable=None) as files_bar, \
            tqdm(desc='tiles', unit='tile', leave=False, disable=None) as tiles_bar:
        for path in files_bar:
            with _input_errors(opt, 'DCLS'):
                lr = read_rgb_image(path)[None]  # (1, 3, h, w)
            h, w = lr.shape[-2:]
            s = net.scale
            check_memory(tiled_memory_bytes((h, w), 3, s, tile, opt['tile_overlap'], 1, MIN_LR_SIZE),
                         f'{path}: its {s * w}x{s * h} output', hint=MEMORY_HINT)
            start = time.time()
            kernel = given if given is not None else estimate_kernel(net, lr, tile, opt['tile_overlap'], device,
                                                                     opt['precision'], tiles_bar)
            kernel_on_device = kernel.to(device)

            def restore(x: torch.Tensor) -> torch.Tensor:
                with torch.no_grad(), _autocast(device, opt['precision']):
                    return net.Restorer(x.to(device), kernel_on_device).float()

            def to_srgb(band: torch.Tensor, _: Any) -> np.ndarray:
                return (band.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)

            stem = out_dir / path.stem
            srgb_path = stem.with_name(f'{path.stem}_sr.png')
            sr16_path = stem.with_name(f'{path.stem}_sr16{suffix}') if opt['save_linear'] else None
            rows = tiled_forward_rows(restore, lr, s, tile, opt['tile_overlap'], multiple=1, min_size=MIN_LR_SIZE,
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


RUNNERS: dict[str, Callable[..., list[dict]]] = {
    'BSRT': run_bursts, 'EBSR': run_bursts, 'Burstormer': run_bursts, 'DCLS': run_images}


def _dry_run(opt: dict) -> None:
    setup_logging(None)
    device = resolve_device(opt['device'])
    net, net_opt, param_key = load_inference_network(opt['weights'], opt, device)
    if net_opt['type'] not in RUNNERS:
        raise OptionError('network_g.type', f"infer.py runs {', '.join(RUNNERS)}; got {net_opt['type']!r}",
                          opt['opt_file'])
    if net_opt['type'] == 'DCLS':
        from codes.data.image_readers import find_images
        found = len(find_images(opt['input']))
    else:
        found = len(find_bursts(opt['input'], opt['input_kind']))
    logger.info('Dry run: %s from %s [%s] loads on %s; %d input(s) under %s', net_opt['type'], opt['weights'],
                param_key, device, found, opt['input'])


def _write_comparisons(net: nn.Module, net_opt: dict, opt: dict, device: torch.device, out_dir: Path,
                       records: list[dict]) -> None:
    """``--compare``: panels of every output against a ground truth and/or a second model's output."""
    from codes.visualization.infer_compare import write_comparisons

    def run_b(weights: str, folder: Path) -> list[dict]:
        net_b, opt_b, _ = load_inference_network(weights, {**opt, 'network_g': None, 'arch': {}}, device)
        if opt_b['type'] != net_opt['type']:
            raise OptionError('compare', f"{weights} holds a {opt_b['type']}, not a {net_opt['type']}")
        folder.mkdir(parents=True, exist_ok=True)
        return RUNNERS[opt_b['type']](net_b, {**opt, 'save_linear': False}, device, folder)
    write_comparisons(records, opt, int(getattr(net, 'scale', 4)), out_dir, run_b)


def infer_pipeline(argv: list[str] | None = None) -> list[dict]:
    """Parse the command line, load the weights, run every input; returns the per-input records.

    ``--print-options`` prints the resolved options; ``--dry-run`` loads the weights into the network they fit and
    lists the inputs found, writing nothing. Both return no records."""
    opt, args = parse_infer_options(argv)
    if args.print_options:
        print_options(opt)
        return []
    if args.dry_run:
        _dry_run(opt)
        return []
    out_dir = Path(opt['output'])
    out_dir.mkdir(parents=True, exist_ok=True)
    setup_logging(out_dir / f"infer_{opt['name']}_{time.strftime('%Y%m%d_%H%M%S')}.log")
    logger.info('Command: %s\n%s', ' '.join(sys.argv), format_options(opt))
    device = resolve_device(opt['device'])
    net, net_opt, param_key = load_inference_network(opt['weights'], opt, device)
    runner = RUNNERS.get(net_opt['type'])
    if runner is None:
        raise OptionError('network_g.type', f"infer.py runs {', '.join(RUNNERS)}; got {net_opt['type']!r}",
                          opt['opt_file'])
    logger.info('Network %s from %s [%s] on %s, %s: %s', net_opt['type'], opt['weights'], param_key, device,
                opt['precision'], net_opt)
    if opt['compare']:
        from codes.visualization.infer_compare import split_sources
        split_sources(opt['compare'])  # a bad source fails before the model runs
    records: list[dict] = []
    complete = False
    try:
        runner(net, opt, device, out_dir, records)
        if opt['compare']:
            _write_comparisons(net, net_opt, opt, device, out_dir, records)
        complete = True
    finally:  # also when an input fails: the summary lists the outputs already written
        summary = {'weights': str(opt['weights']), 'param_key': param_key, 'network_g': net_opt,
                   'device': str(device), 'precision': opt['precision'], 'tile': opt['tile'],
                   'tile_overlap': opt['tile_overlap'], 'complete': complete, 'outputs': records}
        (out_dir / 'infer_summary.json').write_text(json.dumps(summary, indent=2))
    logger.info('%d input(s) done -> %s', len(records), out_dir)
    return records
