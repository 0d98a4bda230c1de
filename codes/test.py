"""Evaluation pipeline: load a checkpoint, score every dataset of the option file, write metrics and images.

For each dataset block ``datasets.<phase>`` it writes, under ``results/<name>/<dataset>/``:
``metrics.json`` (per-image and mean values); with ``val.save_img``, ``visualization/<key>.png`` (the prediction
in sRGB), ``<key>_input.png``, ``<key>_gt.png``, ``<key>_panel.png`` (the labelled comparison; for blind SR also
``_ker.png``) and ``index.html``, the report page (``codes.visualization.report``); and, for models that write them,
``submission/*.png`` plus ``submission.zip`` (14-bit challenge format, with ``val.save_submission``).
Runs on one process or sharded under torchrun.
"""
from __future__ import annotations

import json
import logging
import sys
import time
import zipfile
from pathlib import Path

from codes.data import build_dataset
from codes.data.loader import ShardSampler, build_dataloader
from codes.models import build_model
from codes.utils import dist as du
from codes.utils.logger import format_options, setup_logging
from codes.utils.options import OptionError, parse_options
from codes.visualization.report import write_report

__all__ = ['test_pipeline']

logger = logging.getLogger('codes.test')


def test_pipeline(root_path: str | Path, argv: list[str] | None = None) -> dict[str, dict]:
    """Evaluate; returns ``{dataset: {'mean': ..., 'per_image': ...}}``."""
    opt, _ = parse_options(root_path, is_train=False, argv=argv)
    if not opt['path'].get('pretrain_network_g'):
        raise OptionError('path.pretrain_network_g', 'test.py needs the weights to evaluate', opt['opt_file'])
    if not opt.get('datasets'):
        raise OptionError('datasets', 'list at least one dataset to evaluate', opt['opt_file'])
    du.init_dist_from_env(opt.get('dist_params', {}).get('backend'))
    rank, world = du.get_dist_info()
    results_root = Path(opt['path']['results_root'])
    try:
        if rank == 0:
            results_root.mkdir(parents=True, exist_ok=True)
        du.barrier()
        setup_logging(results_root / f"test_{opt['name']}_{time.strftime('%Y%m%d_%H%M%S')}.log", rank)
        logger.info('Command: %s\n%s', ' '.join(sys.argv), format_options(opt))
        model = build_model(opt)
        val = opt.get('val', {})
        results = {}
        for phase, ds_opt in sorted(opt['datasets'].items()):
            dataset = build_dataset(ds_opt, f'datasets.{phase}')
            loader = build_dataloader(dataset, ds_opt, ShardSampler(len(dataset), world, rank), opt['manual_seed'],
                                      rank, train=False)
            out_dir = results_root / ds_opt['name']
            sub_dir = out_dir / 'submission' if val.get('save_submission', model.writes_submission) else None
            img_dir = out_dir / 'visualization' if val.get('save_img', True) else None
            for d in (sub_dir, img_dir):
                if d is not None:
                    d.mkdir(parents=True, exist_ok=True)
            res = model.validation(loader, ds_opt['name'], image_dir=img_dir, submission_dir=sub_dir,
                                   max_images=len(dataset) if img_dir is not None else 0)
            results[ds_opt['name']] = res
            du.barrier()
            if rank == 0:
                record = {'dataset': ds_opt['name'], 'checkpoint': opt['path']['pretrain_network_g'],
                          'precision': val.get('precision', 'fp32'), **res}
                (out_dir / 'metrics.json').write_text(json.dumps(record, indent=2))
                if sub_dir is not None:
                    with zipfile.ZipFile(out_dir / 'submission.zip', 'w') as zf:
                        for f in sorted(sub_dir.glob('*.png')):
                            zf.write(f, f.name)
                text = ', '.join(f'{k}: {v:.4f}' for k, v in res['mean'].items() if k != 'num_samples')
                logger.info('%s: %s (%d samples) -> %s', ds_opt['name'], text, res['mean']['num_samples'], out_dir)
                if img_dir is not None:
                    logger.info('Report: %s', write_report(out_dir, f"{opt['name']} / {ds_opt['name']}"))
        return results
    finally:
        du.destroy_dist()
