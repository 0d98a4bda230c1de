"""Padding and blended tiling: exact for local maps, and tiled BSRT = untiled BSRT away from the seams."""
import pytest
import torch
import torch.nn.functional as F

from codes.utils.tiling import pad_to_multiple, ramp_weights, round_tile, tile_starts, tiled_forward
from tests.test_infer.helpers import photo_rgb, seam_distance, tiny_bsrt
from codes.data.camera_pipeline import mosaic

pytestmark = pytest.mark.usefixtures('one_thread')



class _Counter:
    def __init__(self):
        self.total, self.done = None, 0

    def reset(self, total):
        self.total, self.done = total, 0

    def update(self, n):
        self.done += n


def test_pad_to_multiple_sizes_and_modes():
    x = torch.arange(2 * 3 * 10 * 13, dtype=torch.float32).reshape(2, 3, 10, 13)
    y, size = pad_to_multiple(x, 8, min_size=17)
    assert size == (10, 13) and y.shape == (2, 3, 24, 24)
    assert torch.equal(y[..., :10, :13], x)
    small = torch.rand(1, 1, 4, 4)
    z, _ = pad_to_multiple(small, 8)  # pad 4 >= size 4: replicate instead of reflect
    assert z.shape[-2:] == (8, 8) and torch.equal(z[..., 7, 7], small[..., 3, 3])
    same, _ = pad_to_multiple(torch.rand(1, 8, 16), 8)
    assert same.shape == (1, 8, 16)


def test_tile_starts_cover_and_overlap():
    for size, tile, overlap in [(100, 32, 8), (64, 32, 8), (33, 32, 8), (20, 32, 8), (130, 64, 16)]:
        starts = tile_starts(size, tile, overlap)
        covered = torch.zeros(size, dtype=torch.bool)
        for s in starts:
            covered[s:s + tile] = True
            assert 0 <= s and s + min(tile, size) <= size
        assert covered.all()
        for a, b in zip(starts, starts[1:]):
            assert a + tile - b >= overlap
    with pytest.raises(ValueError, match='smaller than the tile'):
        tile_starts(100, 16, 16)


def test_ramps_of_neighbours_sum_to_one():
    a = ramp_weights(32, 0, 8)
    b = ramp_weights(32, 8, 0)
    assert torch.allclose(a[-8:] + b[:8], torch.ones(8))
    assert torch.equal(a[:24], torch.ones(24)) and (a > 0).all()


def test_round_tile_to_network_step():
    assert round_tile(60, 6, 8, 17) == (64, 8)
    assert round_tile(10, 0, 8, 17) == (24, 0)
    with pytest.raises(ValueError, match='overlap'):
        round_tile(24, 24, 8, 17)


def test_tiled_equals_untiled_for_a_local_map():
    """A per-pixel network: tiles + blending must reproduce the one-pass result everywhere, at any size."""
    weight = torch.randn(3, 5, 1, 1)

    def fn(x):  # (1, 5, h, w) -> (1, 3, 4h, 4w), purely local
        return F.interpolate(torch.tanh(F.conv2d(x, weight)), scale_factor=4, mode='nearest')

    x = torch.rand(1, 5, 45, 38)
    counter = _Counter()
    full = tiled_forward(fn, x, 4, None, 0, multiple=4)
    tiled = tiled_forward(fn, x, 4, 16, 4, multiple=4, progress=counter)
    assert full.shape == tiled.shape == (1, 3, 180, 152)
    assert torch.allclose(full, tiled, atol=1e-6)
    assert counter.total == counter.done == len(tile_starts(48, 16, 4)) * len(tile_starts(40, 16, 4))


def test_tiled_bsrt_matches_untiled_away_from_seams():
    net = tiny_bsrt()
    frames = torch.stack([mosaic(photo_rgb(96, 128, shift=i)) for i in range(2)])[None]  # (1, 2, 4, 48, 64)

    def call(x):
        return net(x)

    full = tiled_forward(call, frames, 8, None, 0, multiple=8, min_size=17)
    tiled = tiled_forward(call, frames, 8, 32, 8, multiple=8, min_size=17)
    assert full.shape == tiled.shape == (1, 3, 384, 512)
    diff = (tiled - full).abs().amax(dim=(0, 1))
    far = torch.minimum(torch.from_numpy(seam_distance(48, 32, 8, 8))[:, None],
                        torch.from_numpy(seam_distance(64, 32, 8, 8))[None, :]) >= 16
    assert far.float().mean() > 0.5
    # BSRT is not strictly local (SpyNet's coarse levels, shifted windows at tile borders): tiny residue only
    assert diff[far].max() < 2e-3, diff[far].max()
    assert diff.max() < 0.1
    assert (tiled - full).abs().mean() < 1e-3
