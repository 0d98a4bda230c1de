"""``BlindSRModel``: single-image blind super-resolution with a kernel estimator (DCLS), scored as SR papers do.

Follows DCLS (Luo et al. CVPR 2022; upstream ``megvii-research/DCLS-SR: codes/config/DCLS/models/
blind_model.py`` and ``train.py``). The network's ``forward(lq)`` returns ``(sr, kernel)``.

* Training batches from ``BlindSRHRDataset`` carry HR crops and per-sample kernels: the model blurs, downsamples
  (MATLAB bicubic), adds noise and rounds to 8 bits on its device (``codes.data.degradations.degrade``), then
  trains with L = ``pixel_opt``(SR, HR) + ``kernel_opt``(kernel, target), the target being the closed-form
  LR-space kernel of the batch's clean LR pair (``DCLSKernelLoss``). Paired batches (``lq`` given) use the LQ
  itself and the bicubic-downsampled GT as that pair (an approximation: the LQ is rounded and maybe noisy).
* One optimiser with two parameter groups, the Restorer's at ``train.optim_g.lr`` and the Estimator's at
  ``train.lr_estimator`` (the original's lr_G / lr_E); everything else (AMP, EMA, clipping, checkpoints, the
  non-finite guard) is ``BaseModel``'s.
* Validation: the configured metrics (``calculate_psnr_matlab`` / ``calculate_ssim_matlab``: Y channel, crop =
  scale, uint8 round trip), plus ``bicubic_psnr``, the PSNR of MATLAB-bicubic upsampling of the LQ under the
  same protocol, so a run shows whether it beats the trivial answer. SR images are saved as ``<key>.png``, the
  estimated kernels as ``<key>_ker.png`` and a comparison panel (bicubic input, SR, GT, crops, error map,
  estimated and, when the data knows it, true kernel) as ``<key>_panel.png``.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from codes.data.degradations import degrade, imresize
from codes.losses import build_loss
from codes.metrics.psnr_ssim_metric import calculate_psnr_matlab, to_uint8
from codes.models.base_model import BaseModel, Options
from codes.utils.build import OptionError
from codes.utils.options import TYPED_LOSS, Key
from codes.utils.registry import MODEL_REGISTRY
from codes.visualization.panels import Panel, View, comparison_panel, kernel_tile, save_sample_pictures

__all__ = ['BlindSRModel', 'kernel_to_image']

logger = logging.getLogger(__name__)


def kernel_to_image(kernel: Tensor, zoom: int = 4) -> np.ndarray:
    """(1, ks, ks) or (ks, ks) kernel -> (ks·zoom, ks·zoom) uint8 image: negative taps at 0, the maximum at 255
    (DCLS issue #18), enlarged by pixel repetition."""
    k = kernel.detach().float().reshape(kernel.shape[-2:]).clamp(min=0).cpu().numpy()
    peak = k.max()
    img = np.round(k / peak * 255.0).astype(np.uint8) if peak > 0 else np.zeros(k.shape, np.uint8)
    return np.kron(img, np.ones((zoom, zoom), np.uint8))


@MODEL_REGISTRY.register()
class BlindSRModel(BaseModel):
    """Blind SR model: ``lq`` (B, 3, h, w) RGB -> ``(sr (B, 3, s·h, s·w), kernel (B, 1, ks, ks))``."""

    reference_values = ('bicubic_psnr',)
    logs_per_sample = True  # one line per image in test.py, as the original test script logs
    #: ``train.kernel_opt``: the kernel loss; ``train.lr_estimator``: the Estimator's lr (None: optim_g's)
    option_schema = {'train': {'kernel_opt': Key(TYPED_LOSS, {'type': 'DCLSKernelLoss', 'loss_weight': 1.0}),
                               'lr_estimator': Key(float | None, None, minimum=0)}}

    def __init__(self, opt: Options) -> None:
        net_scale = opt['network_g'].get('scale')
        top_scale = opt.get('scale')
        if net_scale is not None and top_scale is not None and net_scale != top_scale:
            raise OptionError('scale', f'is {top_scale} but network_g.scale is {net_scale}', opt.get('opt_file'))
        self.scale = int(net_scale or top_scale or 4)
        super().__init__(opt)

    def _init_training(self) -> None:
        super()._init_training()
        kernel_opt = self.opt['train']['kernel_opt']
        self.cri_ker = build_loss(kernel_opt, 'train.kernel_opt').to(self.device)
        if float(getattr(self.cri_ker, 'loss_weight', 1.0)) == 0:
            self.cri_ker = None

    def optimizer_params(self) -> Any:
        """Two parameter groups: the Restorer at ``optim_g.lr``, the Estimator at ``train.lr_estimator``."""
        net = self.bare_net
        if not (hasattr(net, 'Restorer') and hasattr(net, 'Estimator')):
            return net.parameters()
        estimator = {'params': list(net.Estimator.parameters())}
        lr_e = self.opt['train']['lr_estimator']
        if lr_e is not None:
            estimator['lr'] = float(lr_e)
        return [{'params': list(net.Restorer.parameters())}, estimator]

    # ------------------------------------------------------------------------------------------------ data
    @torch.no_grad()
    def feed_data(self, data: dict[str, Any]) -> None:
        """Move a batch to the device; synthesise the LR from ``gt`` and ``kernel`` when the batch has no ``lq``."""
        self.keys = data.get('key')
        self.gt = data['gt'].to(self.device, non_blocking=True) if 'gt' in data else None
        self.lq_blur = self.lq_clean = None
        self.true_kernel = data.get('kernel')  # the known blur kernel (synthetic data, dataroot_kernel), if any
        if 'lq' in data:
            self.lq = data['lq'].to(self.device, non_blocking=True)
        else:
            if self.gt is None or 'kernel' not in data:
                raise KeyError("a batch needs 'lq', or 'gt' and 'kernel' (BlindSRHRDataset) to synthesise it")
            noise = data.get('noise_std')
            deg = degrade(self.gt, data['kernel'].to(self.device), self.scale,
                          noise.to(self.device) if noise is not None else None)
            self.lq, self.lq_blur, self.lq_clean = deg.lq, deg.lq_blur, deg.lq_clean

    def compute_loss(self) -> dict[str, Tensor]:
        with self.autocast():
            sr, kernel = self.net_g(self.lq)
        l_pix = self.cri_pix(sr.float(), self.gt.float())
        losses = {'l_pix': l_pix}
        total = l_pix
        if self.cri_ker is not None:
            if self.lq_blur is None:  # paired data: the LQ and the bicubic GT stand in for the clean pair
                with torch.no_grad():
                    self.lq_blur, self.lq_clean = self.lq, imresize(self.gt, 1.0 / self.scale)
            l_ker = self.cri_ker(kernel.float(), self.lq_blur, self.lq_clean)
            losses['l_ker'] = l_ker
            total = total + l_ker
        return {'l_total': total, **losses}

    # ------------------------------------------------------------------------------------------- validation
    def score_sample(self, output: tuple[Tensor, Tensor], gt: Tensor, i: int, names: list[str]) -> dict[str, float]:
        """The metrics ``names`` of the SR image of sample ``i`` (``output``: its ``(sr, kernel)``) and
        ``bicubic_psnr``, the MATLAB-bicubic upsampling of its LQ scored by the same protocol."""
        sr = output[0]
        rec = {name: float(self.metrics[name](sr, gt)) for name in names}
        bic = imresize(self.lq[i:i + 1].float(), self.scale)[0].clamp(0, 1)
        rec['bicubic_psnr'] = calculate_psnr_matlab(bic, gt, crop_border=self.scale)
        return rec

    def save_visuals(self, output: tuple[Tensor, Tensor], i: int, key: str, rec: dict[str, Any],
                     image_dir: str | Path | None, tb_writer: Any, dataset_name: str, current_iter: int) -> None:
        """For ``output`` = ``(sr, kernel)`` of sample ``i``: ``<stem>.png`` (SR), ``<stem>_ker.png`` (estimated
        kernel) and the comparison panel ``<stem>_panel.png`` (also to TensorBoard), ``<stem>`` being
        ``<key>_<iter>`` in training; test.py (``current_iter`` 0) also writes the full-resolution
        ``<key>_input.png`` (bicubic) and ``<key>_gt.png`` for the HTML report."""
        panel, files = self.make_panel(output[0], output[1], i, rec)
        if current_iter:
            files = {k: files[k] for k in ('', '_ker')}
        stem = f'{key}_{current_iter}' if current_iter else key
        save_sample_pictures(image_dir, stem, panel, files, tb_writer, f'{dataset_name}/{key}', current_iter)

    def make_panel(self, sr: Tensor, kernel: Tensor, i: int,
                   rec: dict[str, Any]) -> tuple[Panel, dict[str, np.ndarray]]:
        """The comparison panel of batch sample ``i`` (bicubic input, SR, GT, crops, error map, the estimated and,
        when the batch has one, the true kernel) and its full-size images by file suffix (``''``: SR, ``'_ker'``,
        ``'_input'``, ``'_gt'``)."""
        metric = self.panel_metric
        bic = imresize(self.lq[i:i + 1].float(), self.scale)[0].clamp(0, 1)
        views = [_view('bicubic input', bic, rec.get('bicubic_psnr'), 'bicubic_psnr'),
                 _view('prediction', sr.clamp(0, 1), rec.get(metric), metric or 'PSNR')]
        gt = _view('ground truth', self.gt[i].float()) if self.gt is not None else None
        size = min(256, max(128, views[0].srgb.shape[1] // 2))  # kernel tiles: half a full tile, readable
        extra = [('estimated kernel (LR space)', kernel_tile(kernel.detach().float().cpu().numpy(), size))]
        if self.true_kernel is not None:
            extra.append(('true kernel (HR space)', kernel_tile(self.true_kernel[i].float().cpu().numpy(), size)))
        files = {'': views[-1].srgb, '_ker': kernel_to_image(kernel), '_input': views[0].srgb}
        if gt is not None:
            files['_gt'] = gt.srgb
        return comparison_panel(views, gt, border=self.scale, extra=extra), files


def _view(name: str, image: Tensor, value: float | None = None, metric: str = 'PSNR') -> View:
    """A panel view of a (3, H, W) RGB image in [0, 1], shown as the uint8 image the metrics score."""
    srgb = to_uint8(image)
    return View(name, srgb, srgb.astype(np.float32) / 255.0, value, metric)
