"""``BurstSRModel``: burst super-resolution (BSRT) on packed RAW bursts, scored in linear RGB.

Validation is sharded over ranks without padding; every per-sample value is summed over ranks exactly once.
Besides the configured metrics it always reports ``baseline_psnr``, the PSNR of bilinear upsampling of the
reference frame, so a run shows whether the network beats the trivial answer.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from codes.data.camera_pipeline import to_uint8_srgb
from codes.metrics.burst_metric import calculate_psnr_linear
from codes.metrics.metric_util import bilinear_baseline
from codes.models.base_model import BaseModel, Options
from codes.utils.registry import MODEL_REGISTRY
from codes.visualization.panels import Panel, View, comparison_panel, save_sample_pictures

__all__ = ['BurstSRModel', 'save_submission_png', 'render_srgb']

logger = logging.getLogger(__name__)


def render_srgb(linear: torch.Tensor, meta: dict[str, Any]) -> np.ndarray:
    """(3, H, W) linear camera RGB -> (H, W, 3) uint8 RGB for viewing, with the synthetic post-processing."""
    return to_uint8_srgb(linear.detach().float().cpu(), meta, bgr=False)


def save_submission_png(pred: torch.Tensor, path: str | Path) -> None:
    """Challenge submission format: clamp to [0, 1], x 2^14, truncate to uint16, 3-channel PNG written by OpenCV
    from the RGB array (so the file has OpenCV's on-disk channel order, as the official files do)."""
    arr = (pred.detach().float().clamp(0, 1) * 2 ** 14).to(torch.int32).permute(1, 2, 0).cpu().numpy()
    Path(path).parent.mkdir(parents=True, exist_ok=True)  # keys may hold folders
    if not cv2.imwrite(str(path), arr.astype(np.uint16)):
        raise OSError(f'could not write {path}')


def _meta_item(meta: dict[str, Any], i: int) -> dict[str, Any]:
    return {k: (v[i] if isinstance(v, (torch.Tensor, list, tuple)) else v) for k, v in meta.items()}


@MODEL_REGISTRY.register()
class BurstSRModel(BaseModel):
    """Burst SR model: ``lq`` (B, N, 4, h, w) packed RGGB -> (B, 3, 8h, 8w) linear RGB, compared with ``gt``."""

    writes_submission = True
    reference_values = ('baseline_psnr',)

    def __init__(self, opt: Options) -> None:
        super().__init__(opt)
        #: the border the panels leave out of their crop PSNR: the panel metric's ``crop_border`` (default 40)
        self.panel_border = int(opt['val']['metrics'].get(self.panel_metric or '', {}).get('crop_border', 40))

    def feed_data(self, data: dict[str, Any]) -> None:
        """Move a collated batch to the device."""
        self.lq = data['lq'].to(self.device, non_blocking=True)
        self.gt = data['gt'].to(self.device, non_blocking=True) if 'gt' in data else None
        self.meta = data.get('meta_info', {})
        self.keys = data.get('key')

    def compute_loss(self) -> dict[str, torch.Tensor]:
        with self.autocast():
            out = self.net_g(self.lq)
        l_pix = self.cri_pix(out.float(), self.gt.float())  # the loss runs in fp32, outside autocast
        return {'l_total': l_pix, 'l_pix': l_pix}

    # ------------------------------------------------------------------------------------------- validation
    def score_sample(self, output: torch.Tensor, gt: torch.Tensor, i: int, names: list[str]) -> dict[str, float]:
        """The metrics ``names`` of sample ``i`` of the batch (prediction ``output``, ``gt`` (3, H, W)) and
        ``baseline_psnr``."""
        rec = self.apply_metrics(output, gt, names)
        base = bilinear_baseline(self.lq[i]).to(gt.device)
        rec['baseline_psnr'] = calculate_psnr_linear(base, gt)
        return rec

    def save_submission(self, output: torch.Tensor, path: Path) -> None:
        """The 14-bit challenge PNG of one prediction (:func:`save_submission_png`)."""
        save_submission_png(output, path)

    def save_visuals(self, output: torch.Tensor, i: int, key: str, rec: dict[str, Any],
                     image_dir: str | Path | None, tb_writer: Any, dataset_name: str, current_iter: int) -> None:
        """The comparison panel of sample ``i`` (``<key>[_<iter>]_panel.png``, TensorBoard); test.py
        (``current_iter`` 0) also writes the full-resolution views ``<key>.png``, ``_input.png``, ``_gt.png``."""
        panel, files = self.make_panel(output, i, rec)
        stem = f'{key}_{current_iter}' if current_iter else key
        save_sample_pictures(image_dir, stem, panel, {} if current_iter else files, tb_writer,
                             f'{dataset_name}/{key}', current_iter)

    def make_panel(self, pred: torch.Tensor, i: int, rec: dict[str, Any]) -> tuple[Panel, dict[str, np.ndarray]]:
        """The comparison panel of batch sample ``i`` (metric values from its record ``rec``) and its full-size
        views by file suffix (``''``: prediction, ``'_input'``, ``'_gt'``)."""
        views, gt = self.panel_views(pred, i, rec)
        files = {'': views[-1].srgb, '_input': views[0].srgb}
        if gt is not None:
            files['_gt'] = gt.srgb
        return comparison_panel(views, gt, border=self.panel_border), files

    def panel_views(self, pred: torch.Tensor, i: int, rec: dict[str, Any]) -> tuple[list[View], View | None]:
        """The views of sample ``i``: the bilinear upsampling of its reference frame and the prediction, with their
        ``baseline_psnr`` / PSNR metric values, and the ground truth; sRGB through the synthetic post-processing,
        linear RGB (clamped to [0, 1]) for crop PSNR and the error map."""
        meta = _meta_item(self.meta, i)
        metric = self.panel_metric
        base = bilinear_baseline(self.lq[i].float())
        views = [_view('bilinear input', base, render_srgb(base, meta), rec.get('baseline_psnr'), 'baseline_psnr'),
                 _view('prediction', pred, render_srgb(pred, meta), rec.get(metric), metric or 'PSNR')]
        gt = None if self.gt is None else _view('ground truth', self.gt[i], render_srgb(self.gt[i], meta))
        return views, gt


def _view(name: str, linear: torch.Tensor, srgb: np.ndarray, value: float | None = None,
          metric: str = 'PSNR') -> View:
    data = linear.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy()
    return View(name, srgb, data, value, metric)
