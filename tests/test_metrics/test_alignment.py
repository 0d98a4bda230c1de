"""Spatial/colour alignment, AlignedL1 and AlignedPSNR (burst_data.md §8) on a photograph with a known shift."""
import logging

import cv2
import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from skimage import data

from codes.losses.aligned_loss import AlignedL1Loss
from codes.metrics.aligned_metric import calculate_aligned_psnr
from codes.metrics.alignment import (
    DISFlow,
    SpatialColorAlignment,
    build_flow_estimator,
    gaussian_kernel,
    match_colors,
    warp,
)
from codes.metrics.burst_metric import calculate_psnr_linear
from codes.utils.build import OptionError

SHIFT = (0.6, -1.3)  # the prediction is the scene moved by this many pixels (x, y)
#: camera colours of the burst (and so of the prediction) relative to the ground truth's
COLOUR = torch.tensor([[0.9, 0.05, 0.0], [0.03, 1.1, 0.02], [0.0, 0.08, 0.8]])


class ConstantFlow(nn.Module):
    """An oracle flow estimator: the same flow everywhere."""

    def __init__(self, dx, dy):
        super().__init__()
        self.flow = (dx, dy)

    def estimate_flow(self, source, target):
        b, _, h, w = source.shape
        return torch.tensor(self.flow, dtype=source.dtype).view(1, 2, 1, 1).expand(b, 2, h, w).clone()


def shift(image, dx, dy):
    """(3, H, W) moved by (dx, dy) px: out(x, y) = image(x - dx, y - dy) (reflecting at the border)."""
    a = np.ascontiguousarray(image.permute(1, 2, 0).numpy())
    out = cv2.warpAffine(a, np.float32([[1, 0, dx], [0, 1, dy]]), (a.shape[1], a.shape[0]), flags=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_REFLECT)
    return torch.from_numpy(out).permute(2, 0, 1)


@pytest.fixture(scope='module')
def scene():
    """A linear (3, 256, 256) ground truth, the prediction (shifted, other colours) and a 1-frame packed burst."""
    img = cv2.GaussianBlur(data.astronaut()[100:356, 150:406].astype(np.float32) / 255, (0, 0), 1.0)  # optics
    gt = torch.from_numpy(img).permute(2, 0, 1) ** 2.2 * 0.6
    moved = shift(torch.einsum('ij,jhw->ihw', COLOUR, gt), *SHIFT)
    burst = F.avg_pool2d(moved[None], 8)[0][[0, 1, 1, 2]][None, None]  # (1, 1, 4, 32, 32) in burst colours
    return moved, gt, burst


def masked_psnr(aligned):
    mse = ((aligned.pred - aligned.gt) ** 2 * aligned.valid).sum() / (aligned.valid.sum() * 3)
    return float(-10 * torch.log10(mse))


@pytest.mark.parametrize('estimator', ['oracle', 'dis'])
def test_alignment_recovers_a_known_subpixel_shift_and_colour_transform(scene, estimator):
    pred, gt, burst = scene
    flow = ConstantFlow(*SHIFT) if estimator == 'oracle' else DISFlow('medium')
    aligned = SpatialColorAlignment(flow, sr_factor=4, boundary_ignore=40)(pred[None], gt[None], burst)
    assert aligned.pred.shape == (1, 3, 176, 176) and aligned.valid.shape == (1, 1, 176, 176)
    unaligned = calculate_psnr_linear(pred, gt, crop_border=40)
    got = masked_psnr(aligned)
    assert unaligned < 29
    assert got > unaligned + (18 if estimator == 'oracle' else 15), (got, unaligned)  # ~47.9 and ~46.7 dB
    assert aligned.valid.float().mean() > 0.8
    # the metric function gives the same number on the uncropped alignment with crop_border=40
    full = SpatialColorAlignment(flow, 4, 0)(pred[None], gt[None], burst)
    assert calculate_aligned_psnr(full.pred, full.gt, valid=full.valid, crop_border=40) == pytest.approx(got, abs=1e-3)


def test_match_colors_recovers_the_matrix_and_masks_inconsistent_pixels(scene):
    _, gt, _ = scene
    gt_ds = F.interpolate(gt[None], scale_factor=1 / 8, mode='bilinear', align_corners=False)  # (1, 3, 32, 32)
    q = torch.einsum('ij,bjhw->bihw', COLOUR, gt_ds)
    test = torch.einsum('ij,bjhw->bihw', COLOUR, gt[None])
    out, valid = match_colors(gt_ds, q, test)
    assert torch.allclose(out, gt[None], atol=1e-4)
    # valid: False on the zero-padded 5 px border of the fit (40 px at full size), True inside
    assert valid.shape == (1, 1, 256, 256) and valid.dtype == torch.bool
    assert not valid[..., :40, :].any() and not valid[..., -40:, :].any() and not valid[..., :, :40].any()
    assert valid[..., 48:208, 48:208].all()
    # a patch the query does not explain (the GT changed there) is excluded, the rest stays valid
    ref = gt_ds.clone()
    ref[..., 14:18, 14:18] += 0.4
    out, valid = match_colors(ref, q, test)
    assert not valid[..., 112:144, 112:144].any()
    assert valid[..., 48:80, 48:80].all() and valid[..., 176:208, 176:208].all()


def test_valid_mask_excludes_pixels_warped_from_outside(scene):
    pred, gt, burst = scene
    big = ConstantFlow(24.0, 0.0)  # the right 24 px of the warped prediction read outside the image (zeros)
    aligned = SpatialColorAlignment(big, 4, 0)(pred[None], gt[None], burst)
    assert not aligned.valid[..., :, -40:].any()


def test_warp_and_kernel_follow_the_spec():
    image = torch.arange(2 * 6 * 7, dtype=torch.float32).reshape(1, 2, 6, 7)
    flow = torch.zeros(1, 2, 6, 7)
    assert torch.allclose(warp(image, flow), image, atol=1e-4)
    flow[:, 0] = 1.0  # x + 1: column j takes column j + 1, zeros past the edge
    out = warp(image, flow)
    assert torch.allclose(out[..., :6], image[..., 1:], atol=1e-4) and torch.all(out[..., 6] == 0)
    k = gaussian_kernel(1.5)
    assert k.shape == (7, 7) and k.sum().item() == pytest.approx(1.0)
    g = torch.exp(-torch.arange(-3.0, 4.0) ** 2 / 4.5)
    assert torch.allclose(k, torch.outer(g, g) / torch.outer(g, g).sum(), atol=1e-7)


def test_aligned_l1_trains_through_the_alignment(scene):
    pred, gt, burst = scene
    loss_fn = AlignedL1Loss(boundary_ignore=40, flow_estimator='dis')
    x = pred[None].clone().requires_grad_(True)
    aligned_loss = loss_fn(x, gt[None], burst)
    plain = (pred - gt)[:, 40:-40, 40:-40].abs().mean()
    assert aligned_loss.dtype == torch.float32 and aligned_loss < 0.3 * plain
    aligned_loss.backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    # a batch is pooled: one masked mean over both images
    two = loss_fn(torch.cat([pred[None], pred[None]]), torch.cat([gt[None], gt[None]]), torch.cat([burst, burst]))
    assert two.item() == pytest.approx(aligned_loss.item(), rel=1e-4)


def test_descending_aligned_l1_restores_a_noisy_misaligned_prediction(scene):
    pred, gt, burst = scene
    torch.manual_seed(0)
    x = (pred + 0.05 * torch.randn_like(pred))[None].requires_grad_(True)
    loss_fn = AlignedL1Loss(boundary_ignore=40, flow_estimator='dis')
    opt = torch.optim.Adam([x], lr=0.01)
    losses = []
    for _ in range(8):
        opt.zero_grad()
        loss = loss_fn(x, gt[None], burst)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_aligned_psnr_is_the_masked_mse_by_hand():
    pred = torch.zeros(3, 100, 100)
    gt = torch.zeros(3, 100, 100)
    pred[:, :50] = 0.1  # error 0.1 in the top half ...
    valid = torch.zeros(1, 1, 100, 100, dtype=torch.bool)
    valid[..., 50:, :] = True  # ... which the mask excludes
    pred[:, 50:] = 0.01  # error 0.01 in the scored half
    assert calculate_aligned_psnr(pred, gt, valid=valid, crop_border=10) == pytest.approx(40.0, abs=1e-3)
    assert calculate_aligned_psnr(pred, gt, crop_border=10) < 30  # unmasked: the top half counts


def test_flow_estimator_choice_and_warning(caplog, tmp_path):
    with caplog.at_level(logging.WARNING, logger='codes.metrics.alignment'):
        est = build_flow_estimator('auto', None)
    assert isinstance(est, DISFlow) and 'NOT comparable' in caplog.text
    with pytest.raises(OptionError, match="option 'flow_estimator': 'pwcnet' needs pwcnet_path"):
        build_flow_estimator('pwcnet', None)
    with pytest.raises(OptionError, match=r"option 'val\.alignment\.pwcnet_path': .*missing\.pth' not found"):
        build_flow_estimator('auto', str(tmp_path / 'missing.pth'), where='val.alignment')
    with pytest.raises(OptionError, match='one of auto, pwcnet, dis'):
        build_flow_estimator('raft', None)
