"""Camera pipeline: inverses, sampled-parameter distributions, Bayer layout, noise and sRGB post-processing."""
import math
import random

import numpy as np
import pytest
import torch
from torch.utils.data import default_collate

from codes.data import camera_pipeline as cp


def _smooth_image(seed: int, h: int = 16, w: int = 20, low: float = 0.2, high: float = 0.5) -> torch.Tensor:
    """Near-grey colours in [low, high], so that the colour matrices never push a channel below 0."""
    g = torch.Generator().manual_seed(seed)
    base = low + (high - low) * torch.rand(1, h, w, generator=g)
    tint = 0.03 * (torch.rand(3, h, w, generator=g) - 0.5)
    return (base + tint).clamp(0, 1)


def _meta(rng: random.Random, generator: torch.Generator) -> dict:
    return {**cp.sample_isp_params(rng, generator), 'gamma': True, 'smoothstep': True}


# ---------------------------------------------------------------------------------------------------- inverses
def test_smoothstep_inverse():
    x = torch.linspace(0, 1, 1001)
    torch.testing.assert_close(cp.apply_smoothstep(cp.invert_smoothstep(x)), x, atol=2e-6, rtol=0)
    torch.testing.assert_close(cp.invert_smoothstep(cp.apply_smoothstep(x)), x, atol=2e-4, rtol=0)
    assert cp.invert_smoothstep(torch.tensor([-0.5, 1.5])).tolist() == pytest.approx([0.0, 1.0], abs=1e-6)


def test_gamma_inverse():
    x = torch.linspace(1e-3, 1, 1000)
    torch.testing.assert_close(cp.gamma_compression(cp.gamma_expansion(x)), x, atol=1e-5, rtol=0)
    torch.testing.assert_close(cp.gamma_expansion(cp.gamma_compression(x)), x, atol=1e-5, rtol=0)
    assert float(cp.gamma_expansion(torch.tensor(-1.0))) == pytest.approx(1e-8 ** 2.2)


def test_safe_invert_gains_vs_apply_gains():
    rng = random.Random(0)
    x = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(0)) * 0.4  # gray far below 0.9
    for _ in range(20):
        rgb_gain, red_gain, blue_gain = cp.random_gains(rng)
        inv = cp.safe_invert_gains(x, rgb_gain, red_gain, blue_gain)
        torch.testing.assert_close(cp.apply_gains(inv, rgb_gain, red_gain, blue_gain), x, atol=1e-6, rtol=1e-5)
    # Highlights are protected: white stays white, and the gain never falls below the plain inverse gain.
    white = torch.ones(3, 2, 2)
    torch.testing.assert_close(cp.safe_invert_gains(white, 1.25, 2.1, 1.7), white)
    gray = torch.full((3, 1, 1), 0.95)
    plain = gray * (torch.tensor([1 / 2.1, 1.0, 1 / 1.7]) / 1.25).view(3, 1, 1)
    assert (cp.safe_invert_gains(gray, 1.25, 2.1, 1.7) >= plain - 1e-7).all()


def test_unprocess_process_round_trip():
    rng, gen = random.Random(1), torch.Generator().manual_seed(1)
    for seed in range(10):
        x = _smooth_image(seed)
        meta = _meta(rng, gen)
        linear = cp.unprocess(x, meta['rgb2cam'], meta['rgb_gain'], meta['red_gain'], meta['blue_gain'])
        assert linear.min() > 0 and linear.max() < 1  # nothing clipped: the round trip is exact up to float
        torch.testing.assert_close(cp.process_linear_image_rgb(linear, meta), x, atol=2e-5, rtol=0)


def test_batched_processing_matches_single():
    rng, gen = random.Random(2), torch.Generator().manual_seed(2)
    images = [_smooth_image(s) for s in range(3)]
    metas = [_meta(rng, gen) for _ in range(3)]
    metas[1]['gamma'] = False  # a batch that mixes flags
    batch_meta = default_collate(metas)
    out = cp.process_linear_image_rgb(torch.stack(images), batch_meta)
    for i in range(3):
        torch.testing.assert_close(out[i], cp.process_linear_image_rgb(images[i], metas[i]), atol=1e-6, rtol=0)
    u8 = cp.to_uint8_srgb(torch.stack(images), batch_meta)
    assert u8.shape == (3, 16, 20, 3) and u8.dtype == np.uint8


def test_to_uint8_srgb_truncates_and_swaps_to_bgr():
    meta = {'rgb2cam': torch.eye(3), 'cam2rgb': torch.eye(3), 'rgb_gain': 1.0, 'red_gain': 1.0, 'blue_gain': 1.0,
            'gamma': False, 'smoothstep': False}
    image = torch.tensor([127.9 / 255, 0.5, 1.7]).view(3, 1, 1)  # R, G, B
    out = cp.to_uint8_srgb(image, meta)
    assert out.shape == (1, 1, 3)
    assert out[0, 0].tolist() == [255, 127, 127]  # B clamped, G 127.5 -> 127, R 127.9 -> 127 (truncation)
    assert cp.to_uint8_srgb(image, meta, bgr=False)[0, 0].tolist() == [127, 127, 255]
    np.testing.assert_array_equal(cp.process_linear_image_rgb(image, meta, return_np=True), out)


# ---------------------------------------------------------------------------------------------------- sampling
def test_gain_distribution():
    rng = random.Random(0)
    draws = np.array([cp.random_gains(rng) for _ in range(20000)])
    rgb, red, blue = draws.T
    assert red.min() >= 1.9 and red.max() <= 2.4 and abs(red.mean() - 2.15) < 0.01
    assert blue.min() >= 1.5 and blue.max() <= 1.9 and abs(blue.mean() - 1.7) < 0.01
    g = 1.0 / rgb  # rgb_gain = 1/N(0.8, 0.1)
    assert abs(g.mean() - 0.8) < 0.004 and abs(g.std() - 0.1) < 0.004


def test_ccm_rows_sum_to_one_and_invert():
    gen = torch.Generator().manual_seed(0)
    for _ in range(200):
        rgb2cam, cam2rgb = cp.random_ccm(gen)
        assert rgb2cam.dtype == torch.float32 and rgb2cam.shape == (3, 3)
        torch.testing.assert_close(rgb2cam.sum(dim=1), torch.ones(3), atol=1e-6, rtol=0)
        torch.testing.assert_close(cam2rgb @ rgb2cam, torch.eye(3), atol=1e-5, rtol=0)
    # Four uniform draws from the torch generator, mixed as (Σ w M) / Σ w.
    w = torch.empty(4, 1, 1).uniform_(0, 1, generator=torch.Generator().manual_seed(5))
    xyz2cam = (cp.XYZ2CAMS * w).sum(0) / w.sum()
    expected = xyz2cam @ cp.RGB2XYZ
    expected = expected / expected.sum(-1, keepdim=True)
    torch.testing.assert_close(cp.random_ccm(torch.Generator().manual_seed(5))[0], expected)


def test_noise_level_distribution():
    rng = random.Random(0)
    levels = np.array([cp.random_noise_levels(rng) for _ in range(20000)])
    shot, read = levels.T
    assert shot.min() >= 1e-4 and shot.max() <= 1.2e-2
    log_shot = np.log(shot)
    assert abs(log_shot.mean() - (math.log(1e-4) + math.log(1.2e-2)) / 2) < 0.05
    residual = np.log(read) - (2.18 * log_shot + 1.20)
    assert abs(residual.mean()) < 0.01 and abs(residual.std() - 0.26) < 0.01


def test_read_noise_uses_cached_gauss_partner():
    """random.gauss caches its second normal: gains + noise levels consume 5 uniforms, not 7."""
    rng = random.Random(123)
    cp.random_gains(rng)
    cp.random_noise_levels(rng)
    ref = random.Random(123)
    for _ in range(5):
        ref.random()
    assert rng.random() == ref.random()


# ---------------------------------------------------------------------------------------------------- bayer
def test_mosaic_layout_and_packing():
    img = torch.arange(3 * 6 * 8, dtype=torch.float32).view(3, 6, 8)
    packed = cp.mosaic(img)
    assert packed.shape == (4, 3, 4)
    torch.testing.assert_close(packed[0], img[0, 0::2, 0::2])  # R
    torch.testing.assert_close(packed[1], img[1, 0::2, 1::2])  # G_r
    torch.testing.assert_close(packed[2], img[1, 1::2, 0::2])  # G_b
    torch.testing.assert_close(packed[3], img[2, 1::2, 1::2])  # B
    raw = cp.unpack_raw(packed)  # the Bayer mosaic: R at (0, 0), B at (1, 1)
    assert raw.shape == (6, 8)
    torch.testing.assert_close(raw[0::2, 0::2], img[0, 0::2, 0::2])
    torch.testing.assert_close(raw[1::2, 1::2], img[2, 1::2, 1::2])
    torch.testing.assert_close(cp.pack_raw(raw), packed)
    batch = torch.stack([img, img + 1])
    torch.testing.assert_close(cp.mosaic(batch)[1], packed + 1)
    preview = cp.demosaic_preview(packed)
    torch.testing.assert_close(preview[1], (packed[1] + packed[2]) / 2)
    torch.testing.assert_close(preview[[0, 2]], packed[[0, 3]])
    with pytest.raises(ValueError):
        cp.mosaic(torch.zeros(3, 5, 4))


# ---------------------------------------------------------------------------------------------------- noise
def test_add_noise_variance_and_generator():
    image = torch.full((4, 4, 64, 64), 0.5)
    shot, read = 0.01, 0.001
    noisy = cp.add_noise(image, shot, read, generator=torch.Generator().manual_seed(0))
    expected_std = math.sqrt(0.5 * shot + read)
    assert abs((noisy - image).std().item() / expected_std - 1) < 0.02
    normal = torch.empty(image.shape).normal_(generator=torch.Generator().manual_seed(0))  # one call, memory order
    torch.testing.assert_close(noisy, image + normal * torch.tensor(expected_std, dtype=torch.float32))
    torch.testing.assert_close(cp.add_noise(image, shot, read, noise=normal), noisy)
