"""The steps of ``tiled_forward_rows``: tile overlaps, the batch-of-one check, the sliding tile-row band."""
from __future__ import annotations

import pytest
import torch

from codes.utils.tiling import _overlaps, _TileRowBand, tile_starts, tiled_forward_rows


def test_overlaps_of_the_tile_starts():
    starts = tile_starts(40, 16, 4)
    pairs = [_overlaps(starts, i, 16) for i in range(len(starts))]
    assert pairs[0][0] == 0 and pairs[-1][1] == 0
    for i in range(len(starts) - 1):  # what a tile overlaps of the next is what the next overlaps of it
        assert pairs[i][1] == pairs[i + 1][0] == starts[i] + 16 - starts[i + 1] >= 4
    assert _overlaps([0], 0, 16) == (0, 0)


def test_band_hands_out_finished_rows_and_slides():
    band = _TileRowBand(channels=1, height=6, width=3, out_h=9, out_w=2, max_rows=2)
    band.add(torch.arange(18.).reshape(1, 6, 3), torch.ones(1, 6, 3), slice(0, 3))
    out = list(band.advance(4))
    assert [r0 for r0, _ in out] == [0, 2]
    assert torch.equal(torch.cat([b for _, b in out], 1)[0], torch.arange(12.).reshape(4, 3)[:, :2])
    assert band.base == 4
    assert torch.equal(band.acc[0, :2], torch.tensor([[12., 13., 14.], [15., 16., 17.]]))
    assert torch.count_nonzero(band.acc[:, 2:]) == 0 and torch.count_nonzero(band.weight[:, 2:]) == 0
    rest = list(band.finished(band.base + band.height))  # only up to out_h = 9: rows 4..8
    assert [(r0, b.shape[1]) for r0, b in rest] == [(4, 2), (6, 2), (8, 1)]


@pytest.mark.parametrize('tile', [None, 8])
def test_a_batch_other_than_one_is_refused(tile):
    def net(x):
        return torch.cat([x, x])
    with pytest.raises(ValueError, match='returned a batch of 2, expected 1'):
        list(tiled_forward_rows(net, torch.zeros(1, 1, 20, 20), 1, tile, 2))
