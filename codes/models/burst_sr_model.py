"""``BurstSRModel``: burst super-resolution (BSRT) on packed RAW bursts, scored in linear RGB.

Validation is sharded over ranks without padding; every per-sample value is summed over ranks exactly once.
Besides the configured metrics it always reports ``baseline_psnr``, the PSNR of bilinear upsampling of the
reference frame, so a run shows whether the network beats the trivial answer.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader

from codes.data.camera_pipeline import to_uint8_srgb
from codes.metrics.burst_metric import calculate_psnr_linear
from codes.metrics.metric_util import MetricUnavailable, bilinear_baseline
from codes.models.base_model import BaseModel
from codes.utils.registry import MODEL_REGISTRY
from codes.visualization.panels import Panel, View, comparison_panel, panel_metric, save_sample_pictures

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

    @torch.no_grad()
    def predict(self, lq: torch.Tensor) -> torch.Tensor:
        """Eval-mode forward of ``eval_net`` (EMA if any) in ``val.precision`` (fp32 by default), as float32."""
        net = self.eval_net
        was_training = net.training
        net.eval()
        with self.autocast(self.eval_dtype):
            out = net(lq.to(self.device)).float()
        net.train(was_training)
        return out

    # ------------------------------------------------------------------------------------------- validation
    def validation(self, loader: DataLoader, dataset_name: str, *, image_dir: str | Path | None = None,
                   submission_dir: str | Path | None = None, max_images: int = 0,
                   tb_writer: Any = None, current_iter: int = 0) -> dict[str, Any]:
        """Score every sample of ``loader`` (sharded over ranks) and return ``{'mean': {...}, 'per_image': [...]}``.

        Args:
            loader: a batch-1 loader whose sampler shards the dataset (``ShardSampler``).
            dataset_name: used in logs and image names.
            image_dir: write comparison panels here (the first ``max_images`` samples; see ``_save_visual``).
            submission_dir: write 14-bit submission PNGs of every prediction here.
            max_images: how many samples get an sRGB image (also sent to TensorBoard when ``tb_writer`` is given).
        """
        names = [n for n in self.metrics if n not in self._unavailable]
        records: list[dict[str, Any]] = []
        start = time.time()
        for data in loader:
            self.feed_data(data)
            pred = self.predict(self.lq)
            for i in range(pred.shape[0]):
                key = self.keys[i] if self.keys is not None else str(len(records))
                rec: dict[str, Any] = {'key': key}
                if self.gt is not None:
                    rec.update(self.score_sample(pred[i], self.gt[i].float(), i, names))
                index = self.sample_index(len(records))
                if submission_dir is not None:
                    save_submission_png(pred[i], Path(submission_dir) / f'{key}.png')
                if index < max_images and (image_dir is not None or tb_writer is not None):
                    self._save_visual(pred[i], i, key, rec, image_dir, tb_writer, dataset_name, current_iter)
                records.append(rec)
        per_image = self._gather(records)
        value_names = [n for n in names + ['baseline_psnr'] if per_image and n in per_image[0]]
        mean = {n: float(np.mean([r[n] for r in per_image])) for n in value_names}
        mean['num_samples'] = len(per_image)
        mean['seconds'] = round(time.time() - start, 3)
        return {'mean': mean, 'per_image': per_image}

    def score_sample(self, pred: torch.Tensor, gt: torch.Tensor, i: int, names: list[str]) -> dict[str, float]:
        """The metrics ``names`` of sample ``i`` of the batch (pred, gt (3, H, W)) and ``baseline_psnr``."""
        rec = self.apply_metrics(pred, gt, names)
        base = bilinear_baseline(self.lq[i]).to(gt.device)
        rec['baseline_psnr'] = calculate_psnr_linear(base, gt)
        return rec

    def apply_metrics(self, pred: torch.Tensor, gt: torch.Tensor, names: list[str],
                      extra: dict[str, dict[str, Any]] | None = None) -> dict[str, float]:
        """Run the metrics ``names`` (with per-metric keyword arguments ``extra``); a metric that raises
        ``MetricUnavailable`` is logged once and removed from ``names`` for the rest of the run."""
        rec = {}
        for name in list(names):
            try:
                rec[name] = float(self.metrics[name](pred, gt, **(extra or {}).get(name, {})))
            except MetricUnavailable as exc:
                logger.warning('Metric %s skipped: %s', name, exc)
                self._unavailable.add(name)
                names.remove(name)
        return rec

    def _save_visual(self, pred: torch.Tensor, i: int, key: str, rec: dict[str, Any], image_dir: str | Path | None,
                     tb_writer: Any, dataset_name: str, current_iter: int) -> None:
        """The comparison panel of sample ``i`` (``<key>[_<iter>]_panel.png``, TensorBoard); test.py
        (``current_iter`` 0) also writes the full-resolution views ``<key>.png``, ``_input.png``, ``_gt.png``."""
        panel, files = self.make_panel(pred, i, rec)
        stem = f'{key}_{current_iter}' if current_iter else key
        save_sample_pictures(image_dir, stem, panel, {} if current_iter else files, tb_writer,
                             f'{dataset_name}/{key}', current_iter)

    def make_panel(self, pred: torch.Tensor, i: int, rec: dict[str, Any]) -> tuple[Panel, dict[str, np.ndarray]]:
        """The comparison panel of batch sample ``i`` (metric values from its record ``rec``) and its full-size
        views by file suffix (``''``: prediction, ``'_input'``, ``'_gt'``)."""
        views, gt = self.panel_views(pred, i, rec)
        crop_border = int(self.opt.get('val', {}).get('metrics', {}).get(self.panel_metric or '', {})
                          .get('crop_border', 40))
        files = {'': views[-1].srgb, '_input': views[0].srgb}
        if gt is not None:
            files['_gt'] = gt.srgb
        return comparison_panel(views, gt, border=crop_border), files

    @property
    def panel_metric(self) -> str | None:
        """The metric shown in the panels' labels."""
        return panel_metric(self.opt.get('val', {}).get('metrics', {}))

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
