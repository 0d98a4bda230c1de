"""DCLS degradations: MATLAB bicubic against an independent NumPy reference, kernel sampling ranges, blur, noise."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from codes.data.degradations import (GAUSSIAN8_SIGMAS, blur, degrade, imresize, isotropic_gaussian_kernel, quantize,
                                     random_batch_kernels, resize_weights)


def _keys_cubic(t: float) -> float:
    a = abs(t)
    if a <= 1:
        return 1.5 * a ** 3 - 2.5 * a ** 2 + 1
    if a <= 2:
        return -0.5 * a ** 3 + 2.5 * a ** 2 - 4 * a + 2
    return 0.0


def _matlab_resize_1d(x: np.ndarray, scale: float) -> np.ndarray:
    """MATLAB imresize(…, 'bicubic') along one axis, written directly from its definition in float64: output
    sample i (1-based) sits at u = i/scale + (1 − 1/scale)/2; every input j within the (stretched) kernel
    support contributes h(u − j), h(t) = scale·cubic(scale·t) when shrinking; weights are normalised; indices
    outside 1..L are mirrored with the edge repeated."""
    L = len(x)
    n = math.ceil(L * scale)
    shrink = scale < 1
    half = 2 / scale if shrink else 2
    out = np.zeros(n)
    for i in range(1, n + 1):
        u = i / scale + 0.5 * (1 - 1 / scale)
        taps = range(math.floor(u - half), math.ceil(u + half) + 1)
        w = np.array([scale * _keys_cubic(scale * (u - j)) if shrink else _keys_cubic(u - j) for j in taps])
        idx = []
        for j in taps:
            j0 = j - 1
            j0 = -j0 - 1 if j0 < 0 else j0
            j0 = 2 * L - 1 - j0 if j0 >= L else j0
            idx.append(j0)
        out[i - 1] = np.dot(w / w.sum(), x[idx])
    return out


def _matlab_resize_2d(img: np.ndarray, scale: float) -> np.ndarray:
    rows = np.stack([_matlab_resize_1d(c, scale) for c in img.T], axis=1)  # along H first
    return np.stack([_matlab_resize_1d(r, scale) for r in rows], axis=0)


@pytest.mark.parametrize('scale, size', [(1 / 2, (12, 10)), (1 / 3, (12, 15)), (1 / 4, (16, 20)), (2, (5, 6)),
                                         (3, (4, 5))])
def test_imresize_matches_independent_matlab_reference(scale: float, size: tuple[int, int]) -> None:
    rng = np.random.default_rng(0)
    img = rng.random(size)
    ref = _matlab_resize_2d(img, scale)
    got = imresize(torch.from_numpy(img).float()[None, None], scale)[0, 0].numpy()
    assert got.shape == ref.shape == (math.ceil(size[0] * scale), math.ceil(size[1] * scale))
    np.testing.assert_allclose(got, ref, atol=2e-6)


def test_imresize_reproduces_ramps_and_constants() -> None:
    """Keys' cubic reproduces linear functions: away from the borders, ↓2 of f(j) = j gives 2i − 1.5 (0-based
    output i at input position 2i + 0.5), and ↓4 gives 4i + 1.5; constants stay constant everywhere."""
    ramp = torch.arange(32, dtype=torch.float64).reshape(1, 32).expand(8, 32).contiguous()
    down2 = imresize(ramp, 0.5)[0]
    np.testing.assert_allclose(down2[3:-3].numpy(), 2 * np.arange(3, 13) + 0.5, atol=1e-5)
    down4 = imresize(ramp, 0.25)[0]
    np.testing.assert_allclose(down4[2:-2].numpy(), 4 * np.arange(2, 6) + 1.5, atol=1e-5)
    const = torch.full((1, 3, 30, 27), 0.3)
    assert torch.allclose(imresize(const, 1 / 3), torch.full((1, 3, 10, 9), 0.3), atol=1e-6)


def test_resize_weights_tap_count() -> None:
    """After trimming, interior outputs of ↓s use 4s taps (s = 2, 4), each row sums to 1."""
    for s in (2, 4):
        M = resize_weights(64, 64 // s, 1 / s)
        np.testing.assert_allclose(M.sum(1), 1, atol=1e-6)
        assert (np.count_nonzero(M[4:-4], axis=1) == 4 * s).all()


def test_imresize_is_neither_clamped_nor_rounded() -> None:
    img = torch.zeros(1, 1, 16, 16)
    img[..., :, 7:] = 1  # a step between input columns 6 and 7 (output position 3.25 at ↓2)
    out = imresize(img, 0.5)
    assert out.min() < 0 and out.max() > 1  # bicubic overshoot survives


# ------------------------------------------------------------------------------------------------ kernels
def test_gaussian8_sigmas() -> None:
    np.testing.assert_allclose(GAUSSIAN8_SIGMAS[2], [0.8, 0.914286, 1.028571, 1.142857, 1.257143, 1.371429,
                                                     1.485714, 1.6], atol=1e-6)
    np.testing.assert_allclose(GAUSSIAN8_SIGMAS[3], [1.35, 1.5, 1.65, 1.8, 1.95, 2.1, 2.25, 2.4], atol=1e-12)
    np.testing.assert_allclose(GAUSSIAN8_SIGMAS[4], [1.8, 2.0, 2.2, 2.4, 2.6, 2.8, 3.0, 3.2], atol=1e-12)


def _inverse_cov(k: np.ndarray) -> np.ndarray:
    """Σ⁻¹ of a (noise-free) sampled Gaussian from the log second differences at its centre (exact)."""
    c0 = k.shape[0] // 2
    lk = np.log(k[c0 - 1:c0 + 2, c0 - 1:c0 + 2].astype(np.float64))
    c = 1
    a_xx = -(lk[c, c + 1] + lk[c, c - 1] - 2 * lk[c, c])  # x along columns
    a_yy = -(lk[c + 1, c] + lk[c - 1, c] - 2 * lk[c, c])
    a_xy = -(lk[c + 1, c + 1] - lk[c + 1, c] - lk[c, c + 1] + lk[c, c])
    return np.array([[a_xx, a_xy], [a_xy, a_yy]])


@pytest.mark.parametrize('size, lo, hi', [(21, 0.2, 2.0), (21, 0.2, 3.0), (21, 0.2, 4.0)])
def test_isotropic_kernel_sigma_range(size: int, lo: float, hi: float) -> None:
    k = random_batch_kernels(400, size, lo, hi, rate_iso=1.0, rng=np.random.default_rng(1))
    assert k.dtype == np.float32 and k.shape == (400, size, size)
    np.testing.assert_allclose(k.sum((1, 2)), 1, atol=1e-5)
    c = size // 2
    sig = np.sqrt(-1 / (2 * np.log(k[:, c, c + 1].astype(np.float64) / k[:, c, c])))
    assert sig.min() >= lo - 1e-3 and sig.max() <= hi + 1e-3
    assert sig.min() < lo + 0.05 * (hi - lo) and sig.max() > hi - 0.05 * (hi - lo)  # the range is covered
    np.testing.assert_allclose(k, np.transpose(k, (0, 2, 1)), atol=1e-7)  # isotropic


@pytest.mark.parametrize('size', [11, 31])
def test_anisotropic_kernel_axis_ranges(size: int) -> None:
    k = random_batch_kernels(300, size, 0.6, 5.0, rate_iso=0.0, rng=np.random.default_rng(2))
    np.testing.assert_allclose(k.sum((1, 2)), 1, atol=1e-5)
    eig = np.array([np.linalg.eigvalsh(np.linalg.inv(_inverse_cov(x))) for x in k])  # σ² along the two axes
    assert eig.min() >= 0.6 ** 2 - 1e-3 and eig.max() <= 5.0 ** 2 + 1e-2
    offdiag = np.array([abs(_inverse_cov(x)[0, 1]) for x in k])
    assert (offdiag > 1e-3).mean() > 0.9  # rotated (θ ~ U(−π, π))
    np.testing.assert_allclose(k, k[:, ::-1, ::-1], atol=1e-7)  # centrally symmetric without disturbance


def test_random_disturb_and_rate_iso_semantics() -> None:
    clean = random_batch_kernels(50, 11, 0.6, 5.0, rate_iso=0.0, random_disturb=False, rng=np.random.default_rng(3))
    noisy = random_batch_kernels(50, 11, 0.6, 5.0, rate_iso=0.0, random_disturb=True, rng=np.random.default_rng(3))
    ratio = noisy.astype(np.float64) / clean  # same σ and θ draws; taps multiplied by 1 + U(0, 0.25), renormalised
    spread = ratio.max((1, 2)) / ratio.min((1, 2))
    assert (spread <= 1.25 + 1e-4).all() and (spread > 1.15).all()
    # rate_iso < 1 but m < rate_iso: θ is zeroed while σx and σy stay independent (the upstream behaviour)
    k = random_batch_kernels(50, 11, 0.6, 5.0, rate_iso=0.999, rng=np.random.default_rng(4))
    covs = [_inverse_cov(x) for x in k]
    assert max(abs(c[0, 1]) for c in covs) < 1e-4
    assert np.mean([abs(c[0, 0] - c[1, 1]) > 1e-3 for c in covs]) > 0.9


def test_isotropic_kernel_values() -> None:
    k = isotropic_gaussian_kernel(21, 2.0)
    ax = np.arange(-10, 11)
    ref = np.exp(-(ax[:, None] ** 2 + ax[None] ** 2) / 8.0)
    np.testing.assert_allclose(k, ref / ref.sum(), rtol=1e-6)


# --------------------------------------------------------------------------------------------- blur, pipeline
def test_blur_is_a_reflect_padded_correlation() -> None:
    img = torch.arange(64.0).reshape(1, 1, 8, 8)
    k = torch.zeros(3, 3)
    k[1, 2] = 1  # correlation with this picks the right-hand neighbour
    out = blur(img, k)
    assert torch.equal(out[..., :, :-1], img[..., :, 1:])
    assert torch.equal(out[..., :, -1], img[..., :, -2])  # reflect: mirror without repeating the edge
    ks = torch.from_numpy(np.stack([isotropic_gaussian_kernel(5, 1.0), isotropic_gaussian_kernel(5, 2.0)]))
    x = torch.rand(2, 3, 12, 12)
    both = blur(x, ks)
    assert torch.allclose(both[1:], blur(x[1:], ks[1]), atol=1e-6)  # each sample its own kernel


def test_degrade_quantises_without_clamping_and_noise() -> None:
    torch.manual_seed(0)
    hr = torch.zeros(2, 3, 32, 32)
    hr[..., 13:] = 1  # a hard edge: bicubic overshoot
    k = torch.from_numpy(random_batch_kernels(2, 21, 0.2, 0.3, rng=np.random.default_rng(0)))
    d = degrade(hr, k, 4)
    assert d.lq.shape == (2, 3, 8, 8)
    assert torch.equal(d.lq, quantize(d.lq_blur))
    assert torch.allclose(d.lq * 255, torch.round(d.lq * 255), atol=1e-4)
    assert d.lq.min() < 0 or d.lq.max() > 1  # not clamped
    assert torch.allclose(d.lq_clean, imresize(hr, 0.25))
    noisy = degrade(hr, k, 4, torch.tensor([0.0, 0.1]), generator=torch.Generator().manual_seed(1))
    assert torch.equal(noisy.lq[0], d.lq[0])  # std 0: untouched
    assert noisy.lq[1].min() >= 0 and noisy.lq[1].max() <= 1
    assert (noisy.lq[1] - d.lq[1]).abs().mean() > 0.03
