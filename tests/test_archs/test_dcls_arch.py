"""DCLS network: golden keys and parameter counts, the Fourier deconvolution against an independent NumPy
computation, psf2otf/otf2psf, the Estimator's impulse response, the group doubling, strict loading."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from codes.archs import build_network
from codes.archs.dcls_arch import (CLS, DCLS, DPCAB, DPCAG, Estimator, cls_deconv, legacy_irfft2, otf2psf,
                                   psf2otf)
from codes.utils.checkpoint import load_network
from tests.spec_keys import read_spec_keys

pytestmark = pytest.mark.usefixtures('one_thread')

TINY = dict(nf=16, nb=1, ng=1, input_para=16)
# (scale, kernel_size) -> (total, Estimator, tensors), dcls.md §6
COUNTS = {(2, 21): (13_478_475, 6_695_136, 962), (3, 21): (13_663_115, 6_695_136, 962),
          (4, 21): (13_626_187, 6_695_136, 964), (2, 11): (8_905_931, 2_122_592, 962),
          (4, 31): (19_054_027, 12_122_976, 966)}


# ----------------------------------------------------------------------------------------------------- structure
@pytest.mark.parametrize('scale, ks', sorted(COUNTS))
def test_parameter_counts(scale: int, ks: int) -> None:
    with torch.device('meta'):
        net = build_network({'type': 'DCLS', 'scale': scale, 'kernel_size': ks})
    total, est, tensors = COUNTS[(scale, ks)]
    assert sum(p.numel() for p in net.parameters()) == total
    assert sum(p.numel() for p in net.Estimator.parameters()) == est
    assert len(net.state_dict()) == tensors
    assert not list(net.buffers())


@pytest.mark.parametrize('scale, ks', sorted(COUNTS))
def test_keys_match_spec(scale: int, ks: int) -> None:
    with torch.device('meta'):
        net = build_network({'type': 'DCLS', 'scale': scale, 'kernel_size': ks})
    assert [(k, tuple(v.shape)) for k, v in net.state_dict().items()] == read_spec_keys(f'dcls_x{scale}_k{ks}.txt')


def test_bad_options_raise() -> None:
    with pytest.raises(ValueError, match='kernel_size'):
        DCLS(scale=4, kernel_size=15)
    with pytest.raises(ValueError, match='scale'):
        DCLS(scale=8)
    net = DCLS(scale=2, kernel_size=11, **TINY)
    with pytest.raises(ValueError, match='at least 7x7'):
        net(torch.rand(1, 3, 6, 12))


# --------------------------------------------------------------------------------------------- FFT functions
def _np_psf2otf(k: np.ndarray, H: int, W: int) -> np.ndarray:
    """Independent psf2otf: place k[i, j] at ((i - n//2) mod H, (j - n//2) mod W), then a 2-D FFT."""
    n = k.shape[-1]
    psf = np.zeros(k.shape[:-2] + (H, W), dtype=np.float64)
    for i in range(n):
        for j in range(n):
            psf[..., (i - n // 2) % H, (j - n // 2) % W] = k[..., i, j]
    return np.fft.fft2(psf)


def _gaussian(n: int, sigma: float) -> np.ndarray:
    ax = np.arange(n) - n // 2
    g = np.exp(-(ax[:, None] ** 2 + ax[None] ** 2) / (2 * sigma ** 2))
    return g / g.sum()


def test_psf2otf_and_back() -> None:
    rng = np.random.default_rng(0)
    k = rng.random((2, 1, 7, 7))
    otf = psf2otf(torch.from_numpy(k), (20, 17))
    np.testing.assert_allclose(otf.numpy(), _np_psf2otf(k, 20, 17), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(otf2psf(otf, 7).numpy(), k, atol=1e-12)
    # a centred delta has a flat unit spectrum
    delta = torch.zeros(1, 1, 5, 5, dtype=torch.float64)
    delta[..., 2, 2] = 1
    assert torch.allclose(psf2otf(delta, (8, 8)), torch.ones(1, 1, 8, 8, dtype=torch.complex128))


def test_legacy_irfft2_matches_ifft_real_on_hermitian_spectra() -> None:
    x = torch.randn(2, 3, 10, 9, dtype=torch.float64)
    spec = torch.fft.fft2(x) * torch.fft.fft2(torch.randn(2, 3, 10, 9, dtype=torch.float64))
    assert torch.allclose(legacy_irfft2(spec), torch.fft.ifft2(spec).real, atol=1e-10)


def test_cls_deconv_matches_direct_frequency_computation() -> None:
    """cls_deconv against R = F⁻¹[conj(K̂) F(z) / (|K̂|² + |P̂|²)] computed independently in NumPy, per channel."""
    rng = np.random.default_rng(1)
    B, C, h, w, ks = 2, 3, 9, 11, 7
    z = rng.standard_normal((B, C, h, w))
    k = np.stack([_gaussian(ks, 1.2), _gaussian(ks, 0.7)])[:, None]  # (B, 1, ks, ks)
    p = rng.random((B, C, 3, 3))
    p -= p.mean(axis=(-2, -1), keepdims=True)
    expected = np.zeros_like(z)
    for b in range(B):
        for c in range(C):
            zp = np.pad(z[b, c], ks, mode='edge')
            H, W = zp.shape
            K = _np_psf2otf(k[b, 0], H, W)
            P = _np_psf2otf(p[b, c], H, W)
            R = np.conj(K) * np.fft.fft2(zp) / (np.abs(K) ** 2 + np.abs(P) ** 2)
            expected[b, c] = np.fft.ifft2(R).real[ks:-ks, ks:-ks]
    got = cls_deconv(torch.from_numpy(z), torch.from_numpy(k), torch.from_numpy(p))
    assert got.shape == (B, C, h, w) and got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-9, atol=1e-9)
    got32 = cls_deconv(torch.from_numpy(z).float(), torch.from_numpy(k).float(), torch.from_numpy(p).float())
    assert got32.dtype == torch.float32
    np.testing.assert_allclose(got32.numpy(), expected, atol=2e-4)


def test_cls_deconv_equals_the_original_per_channel_loop() -> None:
    """The original transforms one (B, 1, H, W) channel slice at a time with 3-D transforms over (1, H, W) and the
    legacy one-sided C2R inverse; the batched 2-D form must give the same result."""
    torch.manual_seed(4)
    B, C, h, w, ks = 2, 4, 8, 9, 11
    z = torch.randn(B, C, h, w)
    k = torch.softmax(torch.randn(B, 1, ks * ks), -1).reshape(B, 1, ks, ks)
    p = torch.rand(B, C, 3, 3)
    p = p - p.mean((-2, -1), keepdim=True)
    zp = torch.nn.functional.pad(z, (ks,) * 4, mode='replicate')
    H, W = zp.shape[-2:]
    out = torch.zeros(B, C, h, w)
    for c in range(C):
        def otf(x: torch.Tensor) -> torch.Tensor:
            n = x.shape[-1]
            big = torch.zeros(B, 1, H, W)
            big[..., :n, :n] = x
            return torch.fft.fftn(torch.roll(big, (-(n // 2), -(n // 2)), (-2, -1)), dim=(-3, -2, -1))
        K, P, Z = otf(k), otf(p[:, c:c + 1]), torch.fft.fftn(zp[:, c:c + 1], dim=(-3, -2, -1))
        D = K.real * K.real + K.imag * K.imag + P.real * P.real + P.imag * P.imag
        num = torch.complex(K.real / D, -K.imag / D)
        R = torch.complex(num.real * Z.real - num.imag * Z.imag, num.real * Z.imag + num.imag * Z.real)
        r = torch.fft.irfftn(R[..., :W // 2 + 1], s=(1, H, W), dim=(-3, -2, -1))
        out[:, c:c + 1] = r[..., ks:-ks, ks:-ks]
    assert torch.allclose(cls_deconv(z, k, p), out, atol=1e-5)


def test_cls_deconv_identity_and_smoothing() -> None:
    """A delta kernel with P = 0 gives the features back; a non-zero P only damps non-DC frequencies."""
    ks = 5
    z = torch.randn(1, 2, 12, 12, dtype=torch.float64)
    delta = torch.zeros(1, 1, ks, ks, dtype=torch.float64)
    delta[..., 2, 2] = 1
    assert torch.allclose(cls_deconv(z, delta, torch.zeros(1, 2, 3, 3, dtype=torch.float64)), z, atol=1e-12)
    lap = torch.tensor([[0., -1, 0], [-1, 4, -1], [0, -1, 0]], dtype=torch.float64).expand(1, 2, 3, 3)
    smoothed = cls_deconv(z, delta, lap)
    assert torch.allclose(smoothed.mean(), z.mean(), atol=0.05)  # DC kept (up to the replicate padding)
    assert smoothed.std() < z.std()


def test_cls_smoothness_filter_is_zero_mean() -> None:
    torch.manual_seed(0)
    cls = CLS(nf=16, reduction=4)
    p = cls.smoothness_filter(torch.randn(2, 4, 9, 9))
    assert p.shape == (2, 4, 3, 3)
    assert torch.allclose(p.sum(dim=(-2, -1)), torch.zeros(2, 4), atol=1e-6)


# ------------------------------------------------------------------------------------------------ Estimator
@pytest.mark.parametrize('ks', [11, 21, 31])
def test_estimator_kernel_is_the_impulse_response_of_the_decoded_chain(ks: int) -> None:
    torch.manual_seed(ks)
    est = Estimator(nf=8, para_len=8, kernel_size=ks).double()
    lr = torch.rand(2, 3, 9, 10, dtype=torch.float64)
    k = est(lr)
    assert k.shape == (2, 1, ks, ks)
    assert torch.allclose(k.sum(dim=(-2, -1)), torch.ones(2, 1, dtype=torch.float64))
    # independent check for sample 0: compose the decoded filters as true convolutions of a delta image
    f1 = est.head(lr[:1])
    z = est.tail(est.body(f1) + f1)
    img = torch.zeros(1, 3, 3 * ks, 3 * ks, dtype=torch.float64)
    img[..., 3 * ks // 2, 3 * ks // 2] = 1
    x = img
    for dec, ci, co, f in zip(est.dec, est.in_chans, est.out_chans, est.filter_structures):
        w = dec(z).reshape(co, ci, f, f)
        x = torch.nn.functional.conv2d(x, w, padding=f // 2)  # correlation of the delta = flipped filter
    c = 3 * ks // 2
    ref = x[..., c - ks // 2:c + ks // 2 + 1, c - ks // 2:c + ks // 2 + 1].flip(-2, -1).mean(1, keepdim=True)
    ref = ref / ref.sum()
    assert torch.allclose(k[:1], ref, atol=1e-10)
    # every sample uses only its own decoded weights
    assert torch.allclose(est(lr[1:]), k[1:], atol=1e-10)


# ------------------------------------------------------------------------------------------------ Restorer
def test_group_output_is_twice_the_chained_blocks() -> None:
    torch.manual_seed(0)
    group = DPCAG(16, 4, 4, nb=2)
    a, b = torch.randn(1, 16, 8, 8), torch.randn(1, 4, 8, 8)
    chained = group.body[1](group.body[0]([a, b]))
    out = group([a, b])
    assert torch.equal(out[0], 2 * chained[0]) and torch.equal(out[1], 2 * chained[1])
    # blocks do not mutate their input pair
    pair = [a.clone(), b.clone()]
    DPCAB(16, 4, 4)(pair)
    assert torch.equal(pair[0], a) and torch.equal(pair[1], b)


@pytest.mark.parametrize('scale', [1, 2, 3, 4])
def test_forward_shapes_range_and_detached_kernel(scale: int) -> None:
    torch.manual_seed(scale)
    net = DCLS(scale=scale, kernel_size=11, **TINY)
    lr = torch.rand(2, 3, 8, 9)
    sr, k = net(lr)
    assert sr.shape == (2, 3, 8 * scale, 9 * scale) and k.shape == (2, 1, 11, 11)
    assert sr.min() >= 0 and sr.max() <= 1
    sr.mean().backward()  # the SR loss reaches the Restorer only
    assert all(p.grad is None for p in net.Estimator.parameters())
    assert net.Restorer.conv_first.weight.grad is not None
    net.zero_grad()
    k.abs().sum().backward()
    assert net.Estimator.dec[0].weight.grad is not None


def test_strict_load_of_a_bare_module_prefixed_state_dict(tmp_path: Path) -> None:
    """An official-style file (bare state_dict, optionally ``module.``-prefixed) loads strictly, same outputs."""
    torch.manual_seed(0)
    src = DCLS(scale=2, kernel_size=21, **TINY).eval()
    torch.save({f'module.{k}': v for k, v in src.state_dict().items()}, tmp_path / 'DCLSx2_setting1.pth')
    dst = DCLS(scale=2, kernel_size=21, **TINY).eval()
    load_network(dst, tmp_path / 'DCLSx2_setting1.pth', strict=True)
    lr = torch.rand(1, 3, 10, 10)
    with torch.no_grad():
        assert all(torch.equal(x, y) for x, y in zip(src(lr), dst(lr)))
    with pytest.raises(Exception, match='does not fit'):
        load_network(DCLS(scale=2, kernel_size=11, **TINY), tmp_path / 'DCLSx2_setting1.pth', strict=True)


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_autocast_keeps_the_kernel_and_fft_path_in_float32(dtype: torch.dtype) -> None:
    torch.manual_seed(5)
    net = DCLS(scale=2, kernel_size=11, **TINY)
    lr = torch.rand(2, 3, 12, 12)
    with torch.no_grad():
        sr32, k32 = net(lr)
        with torch.autocast('cpu', dtype=dtype):
            sr, k = net(lr)
    assert k.dtype == torch.float32 and torch.isfinite(sr.float()).all()
    assert torch.allclose(k, k32, atol=0.05 * float(k32.abs().max()))
    assert (sr.float() - sr32).abs().mean() < 0.05
