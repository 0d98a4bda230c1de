"""Inference pipeline: run a trained BSRT on your own bursts (or DCLS on your own images), any size, any device.

``python infer.py -opt options/infer.yml`` or ``python infer.py --weights W --input PATH --output DIR
[--device cpu|cuda] [--tile 64 --tile-overlap 8] [--precision bf16]``. Command-line flags override the option file.

Which network the weights are for (first match wins):

1. ``network_g`` in the option file: a full constructor block, as in the train/test option files;
2. ``--arch NAME`` (and, for BSRT, ``--level S|L`` / ``--burst-size N``): the architecture family is checked
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
import math
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, Mapping

import cv2
import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from codes.archs import build_network
from codes.archs.arch_detect import FAMILIES, detect_family, network_options_from_state_dict
from codes.data.burst_inputs import find_bursts, read_burst, render_srgb, select_frames
from codes.utils.build import OptionError
from codes.utils.checkpoint import CheckpointError, extract_state_dict, load_file, load_network
from codes.utils.logger import format_options, setup_logging
from codes.utils.options import PRECISIONS, REQUIRED, TYPED_ARCH, apply_overrides, load_yaml, validate_block
from codes.utils.tiling import tiled_forward

__all__ = ['infer_pipeline', 'INFER_SCHEMA', 'build_infer_arg_parser', 'load_inference_network', 'save_linear',
           'resolve_device']

logger = logging.getLogger('codes.infer')

INPUT_KINDS = ('auto', 'png', 'raw', 'burstsr', 'image')

#: Keys of an inference option file (``options/infer.yml``).
INFER_SCHEMA: dict[str, Any] = {
    'name': str,
    'weights': (str, REQUIRED),
    'input': (str, REQUIRED),
    'output': (str, REQUIRED),
    'network_g': TYPED_ARCH,
    'param_key': ('auto', 'params', 'params_ema'),
    'device': str,
    'precision': PRECISIONS,
    'tile': int | None,
    'tile_overlap': int,
    'input_kind': INPUT_KINDS,
    'linear_format': ('png', 'tiff'),
    'save_linear': bool,
    'kernel': str | None,
    'compare': list[str] | None,
}

DEFAULTS = {'name': 'infer', 'param_key': 'auto', 'device': 'auto', 'precision': 'fp32', 'tile': None,
            'tile_overlap': 8, 'input_kind': 'auto', 'linear_format': 'png', 'save_linear': True}

_DTYPES = {'fp32': torch.float32, 'fp16': torch.float16, 'bf16': torch.bfloat16}


def build_infer_arg_parser() -> argparse.ArgumentParser:
    """The ``infer.py`` command line."""
    p = argparse.ArgumentParser(description='Run a trained BSRT on bursts or DCLS on images (any size, tiled).')
    p.add_argument('-opt', '--opt', help='YAML option file (keys: see options/infer.yml); flags below override it')
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
                   help='BSRT burst size the weights were trained for (default: read from them)')
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
    p.add_argument('--force_yml', '--set', nargs='+', default=[], metavar='KEY=VALUE',
                   help='override option-file keys (values parsed as YAML)')
    return p


def parse_infer_options(argv: list[str] | None = None) -> tuple[dict, argparse.Namespace]:
    """Option file (if any) + overrides + flags -> validated options with defaults filled in."""
    args = build_infer_arg_parser().parse_args(argv)
    file = args.opt
    raw: dict = load_yaml(file) if file else {}
    raw = apply_overrides(raw, args.force_yml, file)
    for key in ('weights', 'input', 'output', 'device', 'tile', 'tile_overlap', 'precision', 'param_key',
                'input_kind', 'linear_format', 'save_linear', 'kernel', 'compare'):
        value = getattr(args, key)
        if value is not None:
            raw[key] = value
    if raw.get('tile') == 0:
        raw['tile'] = None
    try:
        opt = validate_block(raw, INFER_SCHEMA, '', file)
    except OptionError as exc:
        if not file and exc.detail == 'required key is missing':
            raise OptionError(exc.where, f'required: give --{exc.where} (or -opt with an option file)') from None
        raise
    for key, value in DEFAULTS.items():
        opt.setdefault(key, value)
    if opt.get('tile') is not None and opt['tile'] < 1:
        raise OptionError('tile', f'must be a positive number of input pixels or 0/none, got {opt["tile"]}', file)
    if opt['tile_overlap'] < 0:
        raise OptionError('tile_overlap', f'must be >= 0, got {opt["tile_overlap"]}', file)
    opt['arch'] = {k: v for k, v in (('type', args.arch), ('level', args.level), ('burst_size', args.burst_size))
                   if v is not None}
    if (args.level or args.burst_size) and args.arch != 'BSRT':
        raise OptionError('arch', '--level and --burst-size are BSRT hyper-parameters: they need --arch BSRT')
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
def save_linear(image: torch.Tensor, path: Path) -> None:
    """(3, H, W) image in [0, 1] (linear RGB for BSRT) -> 16-bit PNG or TIFF (by suffix): clamp to [0, 1], × 65535,
    rounded, channels in RGB order on disk."""
    array = (image.detach().float().cpu().clamp(0, 1) * 65535).round().to(torch.int32).permute(1, 2, 0).numpy()
    array = np.ascontiguousarray(array.astype(np.uint16)[..., ::-1])  # OpenCV writes BGR order as RGB on disk
    if not cv2.imwrite(str(path), array):
        raise OSError(f'could not write {path}')


def save_srgb(array: np.ndarray, path: Path) -> None:
    """(H, W, 3) uint8 RGB -> 8-bit PNG."""
    if not cv2.imwrite(str(path), np.ascontiguousarray(array[..., ::-1])):
        raise OSError(f'could not write {path}')


def _autocast(device: torch.device, precision: str):
    dtype = _DTYPES[precision]
    return nullcontext() if dtype == torch.float32 else torch.autocast(device.type, dtype=dtype)


def _network_call(net: nn.Module, device: torch.device, precision: str) -> Callable[[torch.Tensor], torch.Tensor]:
    def call(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), _autocast(device, precision):
            return net(x.to(device)).float()
    return call


# ------------------------------------------------------------------------------------------------- runners
def run_bursts(net: nn.Module, opt: dict, device: torch.device, out_dir: Path) -> list[dict]:
    """BSRT on every burst under ``opt['input']``; returns one record per burst."""
    kind = opt['input_kind']
    if kind == 'image':
        raise OptionError('input_kind', "'image' is for DCLS; a BSRT takes bursts (png, raw or burstsr)")
    jobs = find_bursts(opt['input'], kind)
    multiple = math.lcm(net.window_size, 2)
    call = _network_call(net, device, opt['precision'])
    records = []
    suffix = '.tiff' if opt['linear_format'] == 'tiff' else '.png'
    with logging_redirect_tqdm([logging.getLogger('codes')]), \
            tqdm(jobs, desc='bursts', unit='burst', disable=None) as files_bar, \
            tqdm(desc='tiles', unit='tile', leave=False, disable=None) as tiles_bar:
        for kind_i, path in files_bar:
            burst = read_burst(kind_i, path)
            idx, message = select_frames(burst.frames.shape[0], net.burst_size)
            if message:
                logger.warning('%s: %s', path, message)
            x = burst.frames[idx][None]  # (1, N, 4, h, w)
            start = time.time()
            # packed h, w: multiples of the window (and even); > 16 for SpyNet's coarsest level
            out = tiled_forward(call, x, 8, opt['tile'], opt['tile_overlap'], multiple=multiple, min_size=17,
                                progress=tiles_bar)[0]
            record = {'input': str(path), 'kind': kind_i, 'frames': len(burst.files), 'frames_used': idx,
                      'frame_rule': message, 'input_size': list(x.shape[-2:]), 'output_size': list(out.shape[-2:]),
                      'seconds': round(time.time() - start, 3), 'render': burst.render.source}
            srgb_path = out_dir / f'{burst.name}_srgb.png'
            save_srgb(render_srgb(out, burst.render), srgb_path)
            record['srgb'] = str(srgb_path)
            if opt['save_linear']:
                lin_path = out_dir / f'{burst.name}_linear{suffix}'
                save_linear(out, lin_path)
                record['linear'] = str(lin_path)
            logger.info('%s (%s, %d frames, %dx%d packed) -> %s', path, kind_i, len(burst.files), *x.shape[-2:],
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


def run_images(net: nn.Module, opt: dict, device: torch.device, out_dir: Path) -> list[dict]:
    """DCLS on every image under ``opt['input']``: kernel estimated (or given), then the Restorer, tiled."""
    from codes.archs.dcls_arch import MIN_LR_SIZE
    from codes.data.burst_inputs import find_images, read_rgb_image
    if opt['input_kind'] not in ('auto', 'image'):
        raise OptionError('input_kind', f"DCLS takes images; got input_kind {opt['input_kind']!r}")
    files = find_images(opt['input'])
    given = _load_kernel(opt['kernel'], net.kernel_size) if opt.get('kernel') else None
    tile = opt['tile']
    if tile and tile < 2 * net.kernel_size:
        logger.info('tile %d raised to %d (twice the kernel size) so the CLS deconvolution sees enough context',
                    tile, 2 * net.kernel_size)
        tile = 2 * net.kernel_size
    suffix = '.tiff' if opt['linear_format'] == 'tiff' else '.png'
    records = []

    with logging_redirect_tqdm([logging.getLogger('codes')]), \
            tqdm(files, desc='images', unit='image', disable=None) as files_bar, \
            tqdm(desc='tiles', unit='tile', leave=False, disable=None) as tiles_bar:
        for path in files_bar:
            lr = read_rgb_image(path)[None]  # (1, 3, h, w)
            start = time.time()
            kernel = given if given is not None else estimate_kernel(net, lr, tile, opt['tile_overlap'], device,
                                                                     opt['precision'], tiles_bar)
            k_dev = kernel.to(device)

            def restore(x: torch.Tensor) -> torch.Tensor:
                with torch.no_grad(), _autocast(device, opt['precision']):
                    return net.Restorer(x.to(device), k_dev).float()

            sr = tiled_forward(restore, lr, net.scale, tile, opt['tile_overlap'], multiple=1, min_size=MIN_LR_SIZE,
                               progress=tiles_bar)[0].clamp(0, 1)
            stem = out_dir / path.stem
            srgb = (sr.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            save_srgb(srgb, stem.with_name(f'{path.stem}_sr.png'))
            record = {'input': str(path), 'kind': 'image', 'input_size': list(lr.shape[-2:]),
                      'output_size': list(sr.shape[-2:]), 'seconds': round(time.time() - start, 3),
                      'srgb': str(stem.with_name(f'{path.stem}_sr.png')),
                      'kernel': 'given' if given is not None else 'estimated'}
            if opt['save_linear']:
                p16 = stem.with_name(f'{path.stem}_sr16{suffix}')
                save_linear(sr, p16)
                record['sr16'] = str(p16)
            npy, png = save_kernel(kernel, stem)
            record.update(kernel_npy=str(npy), kernel_png=str(png))
            logger.info('%s (%dx%d) -> %s', path, *lr.shape[-2:], record['srgb'])
            records.append(record)
    return records


RUNNERS: dict[str, Callable[[nn.Module, dict, torch.device, Path], list[dict]]] = {
    'BSRT': run_bursts, 'DCLS': run_images}


def infer_pipeline(argv: list[str] | None = None) -> list[dict]:
    """Parse the command line, load the weights, run every input; returns the per-input records."""
    opt, _ = parse_infer_options(argv)
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
    if opt.get('compare'):
        from codes.visualization.infer_compare import split_sources, write_comparisons
        split_sources(opt['compare'])  # a bad source fails before the model runs
    records = runner(net, opt, device, out_dir)
    if opt.get('compare'):

        def run_b(weights: str, folder: Path) -> list[dict]:
            net_b, opt_b, _ = load_inference_network(weights, {**opt, 'network_g': None, 'arch': {}}, device)
            if opt_b['type'] != net_opt['type']:
                raise OptionError('compare', f"{weights} holds a {opt_b['type']}, not a {net_opt['type']}")
            folder.mkdir(parents=True, exist_ok=True)
            return RUNNERS[opt_b['type']](net_b, {**opt, 'save_linear': False}, device, folder)
        write_comparisons(records, opt, int(getattr(net, 'scale', 4)), out_dir, run_b)
    summary = {'weights': str(opt['weights']), 'param_key': param_key, 'network_g': net_opt, 'device': str(device),
               'precision': opt['precision'], 'tile': opt['tile'], 'tile_overlap': opt['tile_overlap'],
               'outputs': records}
    (out_dir / 'infer_summary.json').write_text(json.dumps(summary, indent=2))
    logger.info('%d input(s) done -> %s', len(records), out_dir)
    return records
