"""Evaluation pipeline: load a checkpoint, score every dataset of the option file, write metrics and images.

For each dataset block ``datasets.<phase>`` it writes, under ``results/<name>/<dataset>/``:
``metrics.json`` (per-image and mean values, and what was run: network type, options and parameter
count, model, dataset and metric types; written before anything else of the set); with ``val.save_img``,
``visualization/<key>.png`` (the prediction in sRGB), ``<key>_input.png``, ``<key>_gt.png``, ``<key>_panel.png``
(the labelled comparison; for blind SR also ``_ker.png``) and ``index.html``, the report page
(``codes.visualization.report``); and, for models that write them, ``submission/*.png`` plus ``submission.zip``
(14-bit challenge format, with ``val.save_submission``).
A sample key with folders (``train/canon/0.jpg_000000``) gives files in the same sub-folders. Training sets
(``datasets.train*``) are not evaluated. Runs on one process or sharded under torchrun, with a progress bar on
rank 0 (``val.pbar``; default: when stderr is a terminal). ``--print-options`` prints the resolved options and
exits; ``--dry-run`` loads the weights and scores the first sample of every dataset, writing nothing.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import torch.nn as nn

from codes.data import build_dataset
from codes.data.loader import ShardSampler, build_dataloader
from codes.models import build_model
from codes.models.base_model import BaseModel, Options
from codes.scripts.sample_data import prepare_from_options
from codes.utils import dist as dist_utils
from codes.utils.logger import format_options, setup_logging
from codes.utils.options import OptionError, parse_options, print_options
from codes.utils.slurm import apply_slurm_env
from codes.visualization.report import write_report

__all__ = ['test_pipeline']

logger = logging.getLogger('codes.test')


def test_pipeline(root_path: str | Path, argv: list[str] | None = None) -> dict[str, dict]:
    """Evaluate; returns ``{dataset: {'mean': ..., 'per_image': ...}}``."""
    prog = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else 'test.py'
    opt, args = parse_options(root_path, is_train=False, argv=argv, prepare=prepare_from_options, prog=prog)
    if args.print_options:
        print_options(opt)
        return {}
    phases = [(p, d) for p, d in sorted(opt['datasets'].items()) if not p.startswith('train')]
    if not phases:
        raise OptionError('datasets', 'test.py scores the validation and test sets (datasets.val*, datasets.test*); '
                          'this file lists only a training set', opt['opt_file'])
    if args.launcher == 'slurm':
        apply_slurm_env(opt['dist_params']['port'])
    dist_utils.init_dist_from_options(opt['dist_params'])
    rank, world = dist_utils.get_dist_info()
    try:
        model = _set_up_evaluation(opt, phases, rank, args.dry_run)
        results = {}
        for phase, ds_opt in phases:
            res = _evaluate_set(model, opt, phase, ds_opt, rank, world, args.dry_run)
            if res is not None:
                results[ds_opt['name']] = res
        return results
    finally:
        dist_utils.destroy_dist()


def _set_up_evaluation(opt: Options, phases: list[tuple[str, dict]], rank: int, dry: bool) -> BaseModel:
    """The results folder and the log (none for a dry run), then the model with its weights."""
    results_root = Path(opt['path']['results_root'])
    if rank == 0 and not dry:
        results_root.mkdir(parents=True, exist_ok=True)
    dist_utils.barrier()
    log_file = None if dry else results_root / f"test_{opt['name']}_{time.strftime('%Y%m%d_%H%M%S')}.log"
    setup_logging(log_file, rank)
    logger.info('Command: %s\n%s', ' '.join(sys.argv), format_options(opt))
    for phase in sorted(set(opt['datasets']) - {p for p, _ in phases}):
        logger.info('datasets.%s: not evaluated (a training set is randomly cropped and augmented; test.py '
                    'scores the val*/test* sets)', phase)
    return build_model(opt)


def _evaluate_set(model: BaseModel, opt: Options, phase: str, ds_opt: dict, rank: int, world: int,
                  dry: bool) -> dict[str, Any] | None:
    """Score the dataset ``datasets.<phase>`` and write its results; a dry run scores its first sample only,
    writes nothing and returns None."""
    val = opt['val']
    save_submission = model.writes_submission if val['save_submission'] is None else val['save_submission']
    dataset = build_dataset(ds_opt, f'datasets.{phase}')
    n = min(1, len(dataset)) if dry else len(dataset)
    loader = build_dataloader(dataset, ds_opt, ShardSampler(n, world, rank), opt['manual_seed'], rank, train=False)
    out_dir = Path(opt['path']['results_root']) / ds_opt['name']
    sub_dir = out_dir / 'submission' if save_submission and not dry else None
    img_dir = out_dir / 'visualization' if val['save_img'] and not dry else None
    if rank == 0 and not dry:
        for d in (out_dir, sub_dir, img_dir):
            if d is not None:
                d.mkdir(parents=True, exist_ok=True)
    dist_utils.barrier()
    bar = None
    if rank == 0 and (sys.stderr.isatty() if val['pbar'] is None else val['pbar']):
        from tqdm import tqdm
        bar = loader = tqdm(loader, desc=ds_opt['name'], unit='sample', dynamic_ncols=True)
    try:
        res = model.validation(loader, ds_opt['name'], image_dir=img_dir, submission_dir=sub_dir,
                               max_images=len(dataset) if img_dir is not None else 0)
    finally:
        if bar is not None:
            bar.close()
    if dry:
        logger.info('Dry run: %s (%d samples), first sample: %s', ds_opt['name'], len(dataset),
                    ', '.join(f'{k} {v:.4g}' for k, v in res['mean'].items() if isinstance(v, float)))
        return None
    dist_utils.barrier()
    if rank == 0:
        _write_set_results(opt, ds_opt['name'], res, out_dir, sub_dir, img_dir, model.bare_net)
    return res


def _run_description(opt: Options, net: nn.Module, dataset_name: str) -> dict[str, Any]:
    """What ``metrics.json`` records about the run besides its values: ``model_type``, ``dataset_type``,
    ``network`` (``type``, the other ``network_g`` options and the parameter count) and ``metric_options`` (each
    metric's option block, so a reader knows PSNR from AlignedPSNR); readers that do not know the keys ignore them."""
    net_opt = {k: v for k, v in opt['network_g'].items() if k != 'type'}
    ds_type = next((d.get('type') for d in opt['datasets'].values() if d.get('name') == dataset_name), None)
    return {'model_type': opt['model_type'], 'dataset_type': ds_type,
            'network': {'type': opt['network_g']['type'], 'options': net_opt,
                        'parameters': sum(p.numel() for p in net.parameters())},
            'metric_options': {k: dict(v) for k, v in (opt['val'].get('metrics') or {}).items()}}


def _write_set_results(opt: Options, name: str, res: dict[str, Any], out_dir: Path, sub_dir: Path | None,
                       img_dir: Path | None, model_net: nn.Module) -> None:
    """``metrics.json`` first (nothing after it can lose it), then ``submission.zip`` and the HTML report."""
    record = {'dataset': name, 'checkpoint': opt['path']['pretrain_network_g'],
              'precision': opt['val']['precision'], **res, **_run_description(opt, model_net, name)}
    (out_dir / 'metrics.json').write_text(json.dumps(record, indent=2))
    if sub_dir is not None:
        with zipfile.ZipFile(out_dir / 'submission.zip', 'w') as zf:
            for f in sorted(sub_dir.rglob('*.png')):
                zf.write(f, f.relative_to(sub_dir).as_posix())
    text = ', '.join(f'{k}: {v:.4f}' for k, v in res['mean'].items() if k != 'num_samples')
    logger.info('%s: %s (%d samples) -> %s', name, text, res['mean']['num_samples'], out_dir)
    if img_dir is not None:
        logger.info('Report: %s', write_report(out_dir, f"{opt['name']} / {name}"))
