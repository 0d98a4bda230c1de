"""The ``infer.py`` command line (and ``bsr-infer``): its options, the runner of each network family, the dry
run, ``--compare`` and ``infer_summary.json``."""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from codes.archs.arch_detect import FAMILIES
from codes.data.burst_readers import find_bursts
from codes.infer.bursts import run_bursts
from codes.infer.images import run_images
from codes.infer.network import load_inference_network, resolve_device
from codes.utils.build import OptionError, OptionErrors
from codes.utils.logger import format_options, setup_logging
from codes.utils.options import (PRECISIONS, TYPED_ARCH, Key, add_common_flags, apply_overrides, fill_defaults,
                                 print_options, read_options, validate_block)
from codes.utils.tiling import check_tile_overlap

__all__ = ['INPUT_KINDS', 'INFER_SCHEMA', 'build_infer_arg_parser', 'parse_infer_options', 'RUNNERS', 'infer_pipeline']

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
                   help='burst size the weights were trained for (BSRT default: read from them; Burstormer, DBSR: 14)')
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
    check_tile_overlap(opt['tile'], opt['tile_overlap'], file)
    opt['arch'] = {k: v for k, v in (('type', args.arch), ('level', args.level), ('burst_size', args.burst_size))
                   if v is not None}
    if args.level and args.arch != 'BSRT':
        raise OptionError('arch', '--level is a BSRT hyper-parameter: you need --arch BSRT')
    if args.burst_size and args.arch not in ('BSRT', 'Burstormer', 'DBSR'):
        raise OptionError('arch', '--burst-size needs --arch BSRT, Burstormer or DBSR')
    opt['opt_file'] = file
    return opt, args


RUNNERS: dict[str, Callable[..., list[dict]]] = {
    'BSRT': run_bursts, 'EBSR': run_bursts, 'Burstormer': run_bursts, 'BIPNet': run_bursts, 'DBSR': run_bursts,
    'DCLS': run_images}


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
