"""``RealBurstSRModel``: burst SR on real BurstSR data, trained with AlignedL1 and scored with aligned metrics.

The BurstSR ground truth (a Canon DSLR) is neither pixel-aligned nor colour-matched with the Samsung burst
(Bhat et al. CVPR 2021, ``goutamgmb/deep-burst-sr``), so:

* training: a loss with ``requires_burst`` (``AlignedL1Loss``) gets the input burst as its third argument; it runs
  in float32 outside autocast, like every loss of ``BurstSRModel``;
* validation: each prediction is aligned once (``val.alignment``: flow estimator, PWC-Net weights, DIS preset) to
  its ground truth, without cropping, and every metric scores the aligned prediction; metrics that take ``valid``
  (``calculate_aligned_psnr``) get the colour-fit mask. ``baseline_psnr`` is the AlignedPSNR (40 px border) of
  the bilinear upsampling of frame 0, aligned the same way;
* images: comparison panels of the baseline and the prediction as aligned for scoring beside the ground truth,
  rendered with the real-track post-processing (white balance from cam_wb, no colour matrix, gamma, smoothstep)
  and the Canon's meta data.
"""
from __future__ import annotations

import inspect
import logging
from typing import Any

import numpy as np
import torch

from codes.data.camera_pipeline import process_burstsr_image_rgb
from codes.metrics.aligned_metric import calculate_aligned_psnr
from codes.metrics.alignment import SpatialColorAlignment, build_flow_estimator
from codes.metrics.metric_util import bilinear_baseline
from codes.models.base_model import Options
from codes.models.burst_sr_model import BurstSRModel, _meta_item, _view
from codes.utils.options import Key
from codes.utils.registry import MODEL_REGISTRY
from codes.visualization.panels import View

__all__ = ['RealBurstSRModel', 'render_burstsr_srgb']

logger = logging.getLogger(__name__)

BASELINE_BORDER = 40


def render_burstsr_srgb(linear: torch.Tensor, meta: dict[str, Any], gt: bool = False) -> np.ndarray:
    """(3, H, W) BurstSR linear RGB -> (H, W, 3) uint8 RGB; ``gt`` uses the Canon entries of ``BurstSRDataset``'s
    meta (``gt_norm_factor``, ``gt_cam_wb``), else the Samsung ones."""
    if gt:
        meta = {'norm_factor': meta.get('gt_norm_factor', 1.0), 'cam_wb': meta.get('gt_cam_wb', meta.get('cam_wb')),
                'black_level_subtracted': True, 'while_balance_applied': meta.get('while_balance_applied', False)}
    if meta.get('cam_wb') is None:
        meta = dict(meta, while_balance_applied=True)  # nothing to balance with
    return process_burstsr_image_rgb(linear.detach().float().cpu(), meta, return_np=True)


def _takes_valid(fn: Any) -> bool:
    target = getattr(fn, 'func', fn)
    try:
        return 'valid' in inspect.signature(target).parameters
    except (TypeError, ValueError):
        return False


@MODEL_REGISTRY.register()
class RealBurstSRModel(BurstSRModel):
    """``BurstSRModel`` for the real track (see the module docstring). Options read here: ``val.alignment``
    (``flow_estimator``: auto | pwcnet | dis, ``pwcnet_path``, ``dis_preset``, ``sr_factor``)."""

    option_schema = {'val': {'alignment': {
        'flow_estimator': Key(('auto', 'pwcnet', 'dis'), 'auto'), 'pwcnet_path': Key(str | None, None),
        'dis_preset': Key(('ultrafast', 'fast', 'medium'), 'medium'), 'sr_factor': Key(int, 4, minimum=1)}}}

    def __init__(self, opt: Options) -> None:
        super().__init__(opt)
        align = opt['val']['alignment']
        estimator = build_flow_estimator(align['flow_estimator'], align['pwcnet_path'], align['dis_preset'],
                                         where='val.alignment')
        self.alignment = SpatialColorAlignment(estimator, int(align['sr_factor']), boundary_ignore=0)
        self.alignment.to(self.device)
        self.metric_takes_valid = {name: _takes_valid(fn) for name, fn in self.metrics.items()}
        self._aligned: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def compute_loss(self) -> dict[str, torch.Tensor]:
        with self.autocast():
            out = self.net_g(self.lq)
        if getattr(self.cri_pix, 'requires_burst', False):  # AlignedL1: float32, outside autocast
            l_pix = self.cri_pix(out.float(), self.gt.float(), self.lq.float())
        else:
            l_pix = self.cri_pix(out.float(), self.gt.float())
        return {'l_total': l_pix, 'l_pix': l_pix}

    def score_sample(self, pred: torch.Tensor, gt: torch.Tensor, i: int, names: list[str]) -> dict[str, float]:
        """Align ``pred`` to ``gt`` once, then run every metric on the aligned prediction."""
        burst = self.lq[i:i + 1].float()
        aligned = self.alignment(pred.unsqueeze(0), gt.unsqueeze(0), burst)
        extra = {name: {'valid': aligned.valid} for name in names if self.metric_takes_valid.get(name)}
        rec = self.apply_metrics(aligned.pred, aligned.gt, names, extra)
        base = self.alignment(bilinear_baseline(burst).to(gt.device), gt.unsqueeze(0), burst)
        rec['baseline_psnr'] = calculate_aligned_psnr(base.pred, base.gt, valid=base.valid,
                                                      crop_border=BASELINE_BORDER)
        self._aligned = {i: (base.pred[0], aligned.pred[0], aligned.gt[0])}  # for this sample's panel
        return rec

    def panel_views(self, pred: torch.Tensor, i: int, rec: dict[str, Any]) -> tuple[list[View], View | None]:
        """With a ground truth: the bilinear baseline and the prediction as aligned for scoring (in the Canon's
        geometry and colours) beside the ground truth, all rendered with the Canon's meta data; without one, the
        baseline and the prediction with the Samsung's."""
        meta = _meta_item(self.meta, i)
        metric = self.panel_metric
        aligned = self._aligned.pop(i, None) if self.gt is not None else None
        if aligned is None:
            base = bilinear_baseline(self.lq[i:i + 1].float())[0]
            return [_view('bilinear input', base, render_burstsr_srgb(base, meta)),
                    _view('prediction', pred, render_burstsr_srgb(pred, meta))], None
        base, pred_a, gt = aligned
        views = [_view('bilinear input (aligned)', base, render_burstsr_srgb(base, meta, gt=True),
                       rec.get('baseline_psnr'), 'baseline_psnr'),
                 _view('prediction (aligned)', pred_a, render_burstsr_srgb(pred_a, meta, gt=True), rec.get(metric),
                       metric or 'PSNR')]
        return views, _view('ground truth', gt, render_burstsr_srgb(gt, meta, gt=True))
