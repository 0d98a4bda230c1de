"""Losses (``codes/losses/basic_loss.py``) and burst metrics (``codes/metrics/burst_metric.py``, ``metric_util.py``)."""
import math
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from codes.losses import build_loss
from codes.losses.basic_loss import CharbonnierLoss, L1Loss, MSELoss
from codes.metrics import build_metric
from codes.metrics.burst_metric import (calculate_lpips, calculate_psnr_linear, calculate_ssim_linear,
                                        gaussian_taps, psnr_linear_per_image, ssim_linear_per_image)
from codes.metrics.metric_util import MetricUnavailable, bilinear_baseline, crop_border
from codes.utils.build import OptionError


def _pair(shape=(3, 96, 104), sigma=0.05, seed=0):
    g = torch.Generator().manual_seed(seed)
    gt = 0.1 + 0.3 * torch.rand(shape, generator=g)
    return gt + sigma * torch.randn(shape, generator=g), gt


# ------------------------------------------------------------------------------------------------ PSNR
def test_psnr_hand_computed():
    gt = torch.zeros(3, 100, 100)
    pred = torch.ones(3, 100, 100)  # the 40 px border is wrong by 1.0 everywhere: ignored
    pred[:, 40:60, 40:50] = 0.1
    pred[:, 40:60, 50:60] = 0.2
    # MSE over the 3 x 20 x 20 cropped values: (0.1² + 0.2²) / 2 = 0.025 -> 16.0206 dB
    assert calculate_psnr_linear(pred, gt) == pytest.approx(-10 * math.log10(0.025), abs=1e-4)
    assert calculate_psnr_linear(pred, gt, crop_border=0) == pytest.approx(
        -10 * math.log10(0.96 * 1.0 + 0.02 * 0.01 + 0.02 * 0.04), abs=1e-4)  # 400 of 10,000 pixels inside


def test_psnr_identical_is_inf():
    pred, _ = _pair()
    assert calculate_psnr_linear(pred, pred.clone()) == math.inf


def test_psnr_crop_border_honoured():
    pred, gt = _pair((3, 100, 100))
    spoilt = pred.clone()
    spoilt[:, :10] = 5.0
    spoilt[:, :, -10:] = -3.0
    assert calculate_psnr_linear(spoilt, gt, crop_border=10) == calculate_psnr_linear(pred, gt, crop_border=10)
    assert calculate_psnr_linear(spoilt, gt, crop_border=9) < calculate_psnr_linear(pred, gt, crop_border=9)
    # the value equals the uncropped PSNR of the cropped images
    assert calculate_psnr_linear(pred, gt, crop_border=40) == calculate_psnr_linear(
        pred[:, 40:-40, 40:-40], gt[:, 40:-40, 40:-40], crop_border=0)


def test_psnr_float32_unclamped():
    gt = torch.full((3, 90, 90), 0.5, dtype=torch.float64)
    pred = gt + 0.6  # 1.1: above 1.0, must not be clamped
    assert calculate_psnr_linear(pred, gt) == pytest.approx(-10 * math.log10(0.36), abs=1e-4)
    assert psnr_linear_per_image(pred, gt).dtype == torch.float32
    assert calculate_psnr_linear(pred.bfloat16(), gt.bfloat16()) == pytest.approx(
        calculate_psnr_linear(pred.bfloat16().float(), gt.bfloat16().float()))


# ------------------------------------------------------------------------------------------------ SSIM
def _ssim_reference(pred: np.ndarray, gt: np.ndarray) -> float:
    """Independent float64 SSIM of (C, H, W) arrays: 11-tap Gaussian σ 1.5, valid filtering, per channel."""
    from scipy.ndimage import correlate1d

    k = np.arange(11, dtype=np.float64) - 5
    taps = np.exp(-k**2 / (2 * 1.5**2))
    taps /= taps.sum()

    def blur(a):  # correlate along H then W, keep only the fully covered ('valid') region
        out = correlate1d(correlate1d(a, taps, axis=0, mode='constant'), taps, axis=1, mode='constant')
        return out[5:-5, 5:-5]

    c1, c2 = 0.01**2, 0.03**2
    values = []
    for x, y in zip(pred.astype(np.float64), gt.astype(np.float64), strict=True):
        mx, my = blur(x), blur(y)
        vx, vy, cxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
        smap = (2 * mx * my + c1) / (mx**2 + my**2 + c1) * (2 * cxy + c2) / (vx + vy + c2)
        values.append(smap.mean())
    return float(np.mean(values))


def test_ssim_identical_is_one():
    pred, _ = _pair()
    assert calculate_ssim_linear(pred, pred.clone()) == pytest.approx(1.0, abs=1e-7)


def test_ssim_symmetric_and_in_unit_interval():
    pred, gt = _pair()
    a, b = calculate_ssim_linear(pred, gt), calculate_ssim_linear(gt, pred)
    assert a == pytest.approx(b, abs=1e-7)
    assert 0.0 < a < 1.0


@pytest.mark.parametrize('crop', [0, 40])
def test_ssim_matches_float64_reference(crop):
    pred, gt = _pair((3, 120, 112), sigma=0.08, seed=3)
    ref = _ssim_reference(crop_border(pred, crop).numpy(), crop_border(gt, crop).numpy())
    assert calculate_ssim_linear(pred, gt, crop_border=crop) == pytest.approx(ref, abs=1e-5)


def test_ssim_matches_skimage():
    metrics = pytest.importorskip('skimage.metrics')
    pred, gt = _pair((3, 100, 100), sigma=0.05, seed=4)
    ref = metrics.structural_similarity(pred.double().numpy(), gt.double().numpy(), channel_axis=0,
                                        data_range=1.0, gaussian_weights=True, sigma=1.5,
                                        use_sample_covariance=False)
    assert calculate_ssim_linear(pred, gt, crop_border=0) == pytest.approx(ref, abs=1e-5)


def test_ssim_taps():
    taps = gaussian_taps()
    assert taps.shape == (11,) and taps.dtype == torch.float32
    assert float(taps.sum()) == pytest.approx(1.0, abs=1e-7)
    assert torch.equal(taps, taps.flip(0))


def test_ssim_too_small_after_crop():
    pred, gt = _pair((3, 90, 90))
    with pytest.raises(ValueError, match='SSIM needs'):
        calculate_ssim_linear(pred, gt)  # 10 x 10 left


# ------------------------------------------------------------------------------------------------ shapes, helpers
@pytest.mark.parametrize('fn', [calculate_psnr_linear, calculate_ssim_linear])
def test_batch_is_mean_of_images(fn):
    p0, g0 = _pair((3, 96, 96), seed=1)
    p1, g1 = _pair((3, 96, 96), sigma=0.1, seed=2)
    batch = fn(torch.stack([p0, p1]), torch.stack([g0, g1]))
    assert isinstance(batch, float)
    assert batch == pytest.approx((fn(p0, g0) + fn(p1, g1)) / 2, rel=1e-6)
    assert fn(p0[None], g0[None]) == pytest.approx(fn(p0, g0), abs=1e-7)


def test_per_image_shapes():
    pred, gt = _pair((2, 3, 96, 96))
    assert psnr_linear_per_image(pred, gt).shape == (2,)
    assert ssim_linear_per_image(pred, gt).shape == (2,)


@pytest.mark.parametrize('fn', [calculate_psnr_linear, calculate_ssim_linear])
def test_bad_shapes(fn):
    with pytest.raises(ValueError, match='differ'):
        fn(torch.rand(3, 96, 96), torch.rand(3, 96, 98))
    with pytest.raises(ValueError, match='C, H, W'):
        fn(torch.rand(96, 96), torch.rand(96, 96))


def test_crop_border_helper():
    x = torch.rand(2, 3, 10, 12)
    assert crop_border(x, 0) is x
    assert torch.equal(crop_border(x, 2), x[..., 2:8, 2:10])
    for bad in (-1, 5, 1.5):
        with pytest.raises(ValueError):
            crop_border(x, bad)


def test_bilinear_baseline():
    g = torch.Generator().manual_seed(0)
    burst = torch.rand(2, 5, 4, 6, 7, generator=g)
    out = bilinear_baseline(burst)
    assert out.shape == (2, 3, 48, 56)
    ref = burst[:, 0]
    rgb = torch.stack([ref[:, 0], (ref[:, 1] + ref[:, 2]) / 2, ref[:, 3]], 1)
    assert torch.allclose(out, F.interpolate(rgb, scale_factor=8, mode='bilinear', align_corners=False))
    # only the reference frame matters; constant stays constant; unbatched input gives (3, 8h, 8w)
    burst2 = burst.clone()
    burst2[:, 1:] = 0
    assert torch.equal(bilinear_baseline(burst2), out)
    const = torch.full((3, 4, 8, 8), 0.25)
    assert torch.allclose(bilinear_baseline(const), torch.full((3, 64, 64), 0.25))
    with pytest.raises(ValueError):
        bilinear_baseline(torch.rand(2, 5, 3, 6, 6))


# ------------------------------------------------------------------------------------------------ builders
def test_build_metric():
    fn = build_metric({'type': 'calculate_psnr_linear', 'crop_border': 40, 'better': 'higher'})
    pred, gt = _pair((3, 100, 100))
    assert fn(pred, gt) == calculate_psnr_linear(pred, gt, crop_border=40)
    fn = build_metric({'type': 'calculate_ssim_linear', 'crop_border': '4'})  # coerced to int
    assert fn(pred, gt) == calculate_ssim_linear(pred, gt, crop_border=4)
    with pytest.raises(OptionError, match='boundary_ignore'):
        build_metric({'type': 'calculate_psnr_linear', 'boundary_ignore': 40})
    with pytest.raises(OptionError, match='pred'):
        build_metric({'type': 'calculate_ssim_linear', 'pred': 1})


# ------------------------------------------------------------------------------------------------ LPIPS
def test_lpips_without_weights_is_unavailable():
    pred, gt = _pair((3, 100, 100))
    with pytest.raises(MetricUnavailable, match='LPIPS is unavailable'):
        calculate_lpips(pred, gt)
    with pytest.raises(MetricUnavailable, match='LPIPS is unavailable'):
        calculate_lpips(pred, gt, weights_path='/nonexistent/alexnet.pth')
    assert issubclass(MetricUnavailable, RuntimeError)


def test_lpips_without_package_is_unavailable(monkeypatch):
    monkeypatch.setitem(sys.modules, 'lpips', None)  # makes "import lpips" fail
    pred, gt = _pair((3, 100, 100))
    with pytest.raises(MetricUnavailable, match='"lpips" cannot be imported'):
        calculate_lpips(pred, gt, weights_path=__file__)


def test_lpips_offline_load(tmp_path):
    pytest.importorskip('lpips')
    torchvision = pytest.importorskip('torchvision')
    features = torchvision.models.alexnet(weights=None).features.state_dict()
    path = tmp_path / 'alexnet.pth'
    torch.save({f'features.{k}': v for k, v in features.items()}, path)
    pred, gt = _pair((3, 112, 112))
    d = calculate_lpips(pred, gt, weights_path=str(path))
    assert d > 0
    assert calculate_lpips(gt, gt, weights_path=str(path)) == pytest.approx(0.0, abs=1e-7)
    bad = tmp_path / 'bad.pth'
    torch.save({'conv.weight': torch.zeros(1)}, bad)
    with pytest.raises(ValueError, match='missing features.0.weight'):
        calculate_lpips(pred, gt, weights_path=str(bad))


# ------------------------------------------------------------------------------------------------ losses
@pytest.mark.parametrize('reduction', ['mean', 'sum', 'none'])
def test_l1_mse_match_functional(reduction):
    pred, gt = _pair((2, 3, 16, 16))
    assert torch.allclose(L1Loss(reduction=reduction)(pred, gt), F.l1_loss(pred, gt, reduction=reduction))
    assert torch.allclose(MSELoss(loss_weight=0.5, reduction=reduction)(pred, gt),
                          0.5 * F.mse_loss(pred, gt, reduction=reduction))


def test_charbonnier_formula():
    pred, gt = _pair((2, 3, 16, 16))
    ref = torch.sqrt((pred - gt)**2 + 1e-6).mean()
    assert torch.allclose(CharbonnierLoss()(pred, gt), ref)
    assert torch.allclose(CharbonnierLoss(loss_weight=2.0, reduction='sum', eps=1e-2)(pred, gt),
                          2.0 * torch.sqrt((pred - gt)**2 + 1e-4).sum())
    assert CharbonnierLoss()(gt, gt).item() == pytest.approx(1e-3, rel=1e-4)  # floor is eps
    with pytest.raises(ValueError, match='eps'):
        CharbonnierLoss(eps=0.0)


@pytest.mark.parametrize('cls', [L1Loss, MSELoss, CharbonnierLoss])
def test_loss_float32_from_bf16(cls):
    pred, gt = _pair((1, 3, 8, 8))
    pred = pred.bfloat16().requires_grad_()
    out = cls()(pred, gt.bfloat16())
    assert out.dtype == torch.float32
    assert torch.allclose(out, cls()(pred.detach().float(), gt.bfloat16().float()))
    out.backward()
    assert pred.grad is not None and pred.grad.dtype == torch.bfloat16


@pytest.mark.parametrize('cls', [L1Loss, MSELoss, CharbonnierLoss])
def test_loss_bad_reduction_and_shape(cls):
    with pytest.raises(ValueError, match='reduction'):
        cls(reduction='avg')
    with pytest.raises(ValueError, match='differ'):
        cls()(torch.rand(2, 3, 4, 4), torch.rand(3, 4, 4))


def test_build_loss():
    loss = build_loss({'type': 'CharbonnierLoss', 'eps': '1e-3', 'loss_weight': 1})
    assert isinstance(loss, CharbonnierLoss) and loss.eps == 1e-3 and loss.loss_weight == 1.0
    with pytest.raises(OptionError, match='bogus'):
        build_loss({'type': 'L1Loss', 'bogus': 1})
