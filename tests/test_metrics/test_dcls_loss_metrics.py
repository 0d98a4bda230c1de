"""DCLS kernel target/loss and the MATLAB-compatible PSNR/SSIM (checked against scikit-image)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.color import rgb2ycbcr
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from codes.data.degradations import degrade, isotropic_gaussian_kernel
from codes.losses import build_loss
from codes.losses.dcls_loss import kernel_target, zeroize_negligible
from codes.metrics import build_metric
from codes.metrics.psnr_ssim_metric import calculate_psnr_matlab, calculate_ssim_matlab, rgb_to_y, to_uint8


# ------------------------------------------------------------------------------------------------ kernel target
def test_kernel_target_recovers_a_known_lr_space_kernel() -> None:
    """If lq_blur is lq_clean circularly convolved with k_R (fewer than 41 taps), the target is k_R."""
    torch.manual_seed(0)
    ks = 21
    k_r = torch.zeros(ks, ks, dtype=torch.float64)
    k_r[9:12, 9:12] = torch.tensor([[1., 2, 1], [2, 6, 3], [1, 2, 1]])
    k_r /= k_r.sum()
    clean = torch.rand(2, 3, 32, 32, dtype=torch.float64)
    otf = torch.fft.fft2(torch.roll(torch.nn.functional.pad(k_r, (0, 32 - ks, 0, 32 - ks)), (-10, -10), (0, 1)))
    blurred = torch.fft.ifft2(torch.fft.fft2(clean) * otf).real
    target = kernel_target(blurred, clean, ks)
    assert target.shape == (2, 1, ks, ks)
    assert torch.allclose(target[:, 0], k_r.expand(2, ks, ks), atol=1e-6)


def test_kernel_target_of_a_blurred_white_noise_patch() -> None:
    """Spec sanity values: isotropic σ = 2.6 at ×4 on white noise gives a centred target, Σ = 1, ~50 taps."""
    torch.manual_seed(1)
    hr = torch.rand(4, 3, 256, 256)
    k = torch.from_numpy(isotropic_gaussian_kernel(21, 2.6)).expand(4, 21, 21)
    d = degrade(hr, k, 4)
    t = kernel_target(d.lq_blur, d.lq_clean, 21)
    assert torch.allclose(t.sum((-2, -1)), torch.ones(4, 1), atol=1e-5)
    ax = torch.arange(21.0) - 10
    for m in t[:, 0]:
        assert abs(float((m.sum(1) * ax).sum())) < 0.5 and abs(float((m.sum(0) * ax).sum())) < 0.5
        assert m.argmax() == 10 * 21 + 10
        assert 41 <= int((m > 0).sum()) <= 120
    assert t.min() >= 0


def test_zeroize_negligible() -> None:
    k = torch.arange(49.0).reshape(1, 1, 7, 7)  # 0 … 48; the 41st largest is 8, threshold 6
    out = zeroize_negligible(k)
    expected = torch.clamp(k - 6, 0, 1)
    expected[0, 0, 4, 4] += 1e-20
    assert torch.allclose(out, expected / expected.sum())


def test_kernel_loss_is_l1_to_target_and_trains_the_estimate() -> None:
    torch.manual_seed(2)
    loss = build_loss({'type': 'DCLSKernelLoss', 'loss_weight': 2.0}, 'train.kernel_opt')
    blur_lr, clean = torch.rand(2, 3, 24, 24), torch.rand(2, 3, 24, 24)
    pred = torch.full((2, 1, 11, 11), 1 / 121, requires_grad=True)
    value = loss(pred, blur_lr, clean)
    target = kernel_target(blur_lr, clean, 11)
    assert torch.allclose(value, 2 * (pred - target).abs().mean())
    value.backward()
    assert pred.grad is not None and pred.grad.abs().sum() > 0
    with pytest.raises(ValueError, match='at least as large'):
        kernel_target(torch.rand(1, 3, 9, 9), torch.rand(1, 3, 9, 9), 11)


# ---------------------------------------------------------------------------------------------------- metrics
@pytest.fixture()
def pair() -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(3)
    a = torch.rand(3, 40, 36)
    return a, (a + 0.05 * torch.randn_like(a)).clamp(0, 1)


def test_y_channel_matches_matlab_rgb2ycbcr(pair) -> None:
    u = to_uint8(pair[0])
    np.testing.assert_allclose(rgb_to_y(u), rgb2ycbcr(u)[..., 0], atol=1e-10)


@pytest.mark.parametrize('y', [True, False])
def test_psnr_ssim_match_scikit_image(pair, y: bool) -> None:
    a, b = pair
    ua, ub = to_uint8(a), to_uint8(b)
    if y:
        ra, rb = rgb2ycbcr(ua)[4:-4, 4:-4, 0], rgb2ycbcr(ub)[4:-4, 4:-4, 0]
        channel = None
    else:
        ra, rb = ua[4:-4, 4:-4].astype(np.float64), ub[4:-4, 4:-4].astype(np.float64)
        channel = -1
    psnr = calculate_psnr_matlab(a, b, crop_border=4, test_y_channel=y)
    assert psnr == pytest.approx(peak_signal_noise_ratio(ra, rb, data_range=255), abs=1e-9)
    ssim = calculate_ssim_matlab(a, b, crop_border=4, test_y_channel=y)
    ref = structural_similarity(ra, rb, data_range=255, gaussian_weights=True, sigma=1.5,
                                use_sample_covariance=False, channel_axis=channel)
    assert ssim == pytest.approx(ref, abs=1e-9)


def test_metrics_round_through_uint8_and_build_from_options(pair) -> None:
    a, _ = pair
    assert calculate_psnr_matlab(a, a) == float('inf')
    grid = torch.round(a * 255) / 255
    nudged = grid + 0.2 / 255  # rounds back to the same uint8 values
    assert calculate_psnr_matlab(nudged, grid, crop_border=2) == float('inf')
    metric = build_metric({'type': 'calculate_psnr_matlab', 'crop_border': 3, 'test_y_channel': True})
    b = (a + 3 / 255).clamp(0, 1)
    assert metric(b, a) == pytest.approx(calculate_psnr_matlab(b, a, crop_border=3))
    batch = torch.stack([a, b])
    assert calculate_ssim_matlab(batch, batch) == pytest.approx(1.0)
    with pytest.raises(ValueError, match='crop_border'):
        calculate_psnr_matlab(a, b, crop_border=20)
