"""``infer.py --compare SOURCE [SOURCE]``: a comparison panel per input, against a ground truth and/or a second model.

Each SOURCE is either a checkpoint (``.pth``, ``.pt``: a second model, run on the same inputs with the same
options into ``<output>/compare_b/``) or a ground truth: an image file (one input) or a folder holding an image
named like each input (``<burst or image name>.<ext>``). The panel, ``<output>/<name>_compare.png``, shows the input
seen the simple way (bilinear upsampling of the reference frame for bursts, MATLAB bicubic for images), the
prediction, the second model's prediction, and the ground truth, with crops and the error map
(``codes.visualization.panels``). PSNRs are of the saved 8-bit RGB images against the ground truth image
(data range 1, no border), since a user's ground truth is an ordinary image.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np

from codes.utils.files import IMAGE_EXTENSIONS
from codes.utils.build import OptionError
from codes.visualization.panels import View, comparison_panel, crop_psnr, write_rgb

__all__ = ['split_sources', 'write_comparisons', 'CHECKPOINT_SUFFIXES']

logger = logging.getLogger(__name__)

CHECKPOINT_SUFFIXES = ('.pth', '.pt')


def split_sources(sources: list[str]) -> tuple[str | None, str | None]:
    """(second model's weights, ground truth) from the ``compare`` sources; at most one of each."""
    weights = [s for s in sources if Path(s).suffix.lower() in CHECKPOINT_SUFFIXES]
    truth = [s for s in sources if s not in weights]
    for s in sources:
        if not Path(s).exists():
            raise OptionError('compare', f'{s} does not exist (give a checkpoint .pth/.pt or a ground-truth image '
                              'or folder)')
    if len(weights) > 1 or len(truth) > 1:
        raise OptionError('compare', f'give at most one second model and one ground truth, got {sources}')
    return (weights[0] if weights else None), (truth[0] if truth else None)


def _read_rgb8(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)  # 16-bit files are scaled to 8 bits by OpenCV
    if img is None:
        raise OptionError('compare', f'cannot read {path} as an image')
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def _ground_truth(truth: str, name: str, single: bool) -> Path | None:
    root = Path(truth)
    if root.is_file():
        if not single:
            raise OptionError('compare', f'{truth} is one image but there are several inputs: give a folder of '
                              'ground truths named like the inputs')
        return root
    return next((root / f'{name}{ext}' for ext in IMAGE_EXTENSIONS if (root / f'{name}{ext}').is_file()), None)


def _simple_input(record: dict[str, Any], scale: int) -> np.ndarray:
    """The input seen the simple way, as (H, W, 3) uint8 sRGB."""
    if record['kind'] == 'image':
        from codes.data.image_readers import read_rgb_image
        from codes.data.degradations import imresize
        from codes.metrics.psnr_ssim_metric import to_uint8
        lr = read_rgb_image(record['input'])[None]
        return to_uint8(imresize(lr, scale)[0].clamp(0, 1))
    from codes.data.burst_readers import read_burst
    from codes.data.srgb_render import render_srgb
    from codes.metrics.metric_util import bilinear_baseline
    burst = read_burst(record['kind'], Path(record['input']))
    frames = burst.frames[record.get('frames_used') or [0]]
    return render_srgb(bilinear_baseline(frames[None])[0], burst.render)


def _name(record: dict[str, Any]) -> str:
    stem = Path(record['srgb']).stem
    for suffix in ('_srgb', '_sr'):
        if stem.endswith(suffix):
            return stem[:-len(suffix)]
    return stem


def _psnr(a: np.ndarray, gt: np.ndarray | None) -> float | None:
    if gt is None:
        return None
    return crop_psnr(a.astype(np.float32) / 255.0, gt.astype(np.float32) / 255.0)


def write_comparisons(records: list[dict], opt: dict, scale: int, out_dir: Path,
                      run_b: Callable[[str, Path], list[dict]] | None) -> None:
    """Write ``<name>_compare.png`` for every record of ``records`` (adds ``compare`` to each record).

    Args:
        records: the runner's records (``input``, ``kind``, ``srgb``, ...).
        opt: the inference options (``compare`` holds the sources).
        scale: the network's SR factor (for the bicubic input of images; bursts use 8).
        out_dir: the output folder.
        run_b: ``run_b(weights, folder)`` runs a second model on the same inputs and returns its records.
    """
    weights_b, truth = split_sources(list(opt['compare']))
    records_b = None
    if weights_b is not None:
        if run_b is None:
            raise OptionError('compare', 'a second model cannot be run here')
        logger.info('Second model %s -> %s', weights_b, out_dir / 'compare_b')
        records_b = run_b(weights_b, out_dir / 'compare_b')
        if [r['input'] for r in records_b] != [r['input'] for r in records]:
            raise OptionError('compare', f'{weights_b} did not run on the same inputs')
    for j, rec in enumerate(records):
        name = _name(rec)
        pred = _read_rgb8(Path(rec['srgb']))
        gt_path = _ground_truth(truth, name, len(records) == 1) if truth else None
        if truth and gt_path is None:
            logger.warning('%s: no ground truth named %s.* in %s', rec['input'], name, truth)
        gt = _read_rgb8(gt_path) if gt_path is not None else None
        if gt is not None and gt.shape != pred.shape:
            raise OptionError('compare', f'ground truth {gt_path} is {gt.shape[1]}x{gt.shape[0]} but the output of '
                              f'{rec["input"]} is {pred.shape[1]}x{pred.shape[0]}')
        inp = _simple_input(rec, 8 if rec['kind'] != 'image' else scale)
        simple = 'bicubic input' if rec['kind'] == 'image' else 'bilinear input'
        views = [View(simple, inp, value=_psnr(inp, gt)), View(f'prediction ({Path(opt["weights"]).stem})', pred,
                                                                 value=_psnr(pred, gt))]
        if records_b is not None:
            pred_b = _read_rgb8(Path(records_b[j]['srgb']))
            views.append(View(f'second model ({Path(weights_b).stem})', pred_b, value=_psnr(pred_b, gt)))
        if records_b is not None and gt is not None:
            views = [views[0], views[2], views[1]]  # the error map and crop are those of the first model
        panel = comparison_panel(views, View('ground truth', gt) if gt is not None else None)
        path = out_dir / f'{name}_compare.png'
        write_rgb(path, panel.image)
        rec['compare'] = str(path)
        if gt is not None:
            rec['compare_psnr'] = {v.name: v.value for v in views if v.value is not None and math.isfinite(v.value)}
        logger.info('%s: comparison panel -> %s', rec['input'], path)
