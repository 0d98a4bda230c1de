"""Streamed tiled inference: bands equal the whole-output reference, streamed files equal OpenCV's, the sRGB of a
render that divides by the image maximum is unchanged, and an output that cannot fit is refused before any work."""
import json
import os

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from codes.data.srgb_render import Render, render_srgb, srgb_norm_factor
from codes.infer import infer_pipeline, linear_to_uint16, stream_outputs
from codes.utils.image_writers import PngRowWriter, TiffRowWriter, row_writer
from codes.utils.tiling import (OutputMemoryError, check_memory, tiled_forward, tiled_forward_rows,
                                tiled_memory_bytes)
from tests.test_infer.helpers import photo_rgb

pytestmark = pytest.mark.usefixtures('one_thread')


def _net(x):
    """A local, position-dependent stand-in network (scale 2): blending differences would show."""
    y = F.interpolate(x, scale_factor=2, mode='bilinear', align_corners=False)
    return torch.sin(3 * y) + 0.1 * F.avg_pool2d(F.pad(y, (1, 1, 1, 1), mode='replicate'), 3, 1)


@pytest.mark.parametrize('size,tile,overlap,max_rows', [((37, 50), 16, 4, 7), ((37, 50), 16, 6, 256),
                                                        ((20, 21), None, 0, 9), ((64, 16), 24, 8, 5)])
def test_bands_equal_the_whole_reference_exactly(size, tile, overlap, max_rows):
    x = torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(0))
    ref = tiled_forward(_net, x, 2, tile, overlap, multiple=2, min_size=8)[0]
    starts, bands = [], []
    for r0, band in tiled_forward_rows(_net, x, 2, tile, overlap, multiple=2, min_size=8, max_rows=max_rows):
        assert band.shape[1] <= max_rows
        starts.append(r0)
        bands.append(band)
    assert starts == [sum(b.shape[1] for b in bands[:i]) for i in range(len(bands))]
    assert torch.equal(torch.cat(bands, dim=1), ref)


@pytest.mark.parametrize('cls,suffix', [(PngRowWriter, '.png'), (TiffRowWriter, '.tiff')])
def test_streamed_files_read_back_as_written(tmp_path, cls, suffix):
    rng = np.random.default_rng(0)
    for dtype in (np.uint8, np.uint16):
        img = rng.integers(0, np.iinfo(dtype).max, (29, 41, 3), dtype=dtype)
        path = tmp_path / f'a_{np.dtype(dtype).name}{suffix}'
        with cls(path, 41, 29, 3, dtype) as w:
            for r in range(0, 29, 8):
                w.write(img[r:r + 8])
        back = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        assert back.dtype == dtype and np.array_equal(back[..., ::-1], img)
    with pytest.raises(ValueError, match='5 of 29 rows'), row_writer(tmp_path / 'short.png', 41, 29, 3) as w:
        w.write(np.zeros((5, 41, 3), np.uint8))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f'a_{d}{suffix}' for d in ('uint8', 'uint16'))


def test_a_finished_file_is_renamed_then_its_folder_synced(tmp_path, monkeypatch):
    import codes.utils.image_writers as writers
    events = []
    monkeypatch.setattr(writers, 'fsync_dir', lambda folder: events.append(('fsync_dir', folder,
                                                                          (tmp_path / 'a.png').exists())))
    with row_writer(tmp_path / 'a.png', 4, 2, 3) as w:
        w.write(np.zeros((2, 4, 3), np.uint8))
        assert [p.name for p in tmp_path.iterdir()] == [f'.a.png.partial{os.getpid()}']
    assert events == [('fsync_dir', tmp_path, True)]  # after the rename, on the target's folder
    with pytest.raises(RuntimeError), row_writer(tmp_path / 'b.png', 4, 2, 3):
        raise RuntimeError('interrupted')
    assert len(events) == 1 and sorted(p.name for p in tmp_path.iterdir()) == ['a.png']


@pytest.mark.parametrize('render', [Render(red_gain=1.7, blue_gain=1.3, rgb_gain=1.1),
                                    Render(red_gain=2.0, blue_gain=1.5, normalize_max=True)])
def test_streamed_outputs_equal_whole_image_outputs(tmp_path, render):
    linear = (photo_rgb(40, 48) * 0.6 + 0.05).clamp(0, 1)
    linear[0, 5, 7] = 1.4  # out of range: the render clamps after the gains, the linear file before
    bands = ((r, linear[:, r:r + 6]) for r in range(0, 40, 6))
    norm = (lambda b: srgb_norm_factor(b, render)) if render.normalize_max else None
    stream_outputs(bands, (40, 48), tmp_path / 's.png', tmp_path / 'l.tiff', lambda b, n: render_srgb(b, render, n),
                   norm)
    srgb = cv2.imread(str(tmp_path / 's.png'), cv2.IMREAD_UNCHANGED)[..., ::-1]
    assert np.array_equal(srgb, render_srgb(linear, render))
    lin = cv2.imread(str(tmp_path / 'l.tiff'), cv2.IMREAD_UNCHANGED)[..., ::-1]
    assert np.array_equal(lin, linear_to_uint16(linear))
    assert sorted(p.name for p in tmp_path.iterdir()) == ['l.tiff', 's.png']  # no temporary file left


def test_fit_check_refuses_an_output_that_cannot_fit(tmp_path, monkeypatch):
    # a 12000 x 12000 output (DCLS x4 of a 3000 x 3000 image) with 512 tiles: about one row of tiles of
    # accumulators; whole, it would need more than the budget
    need = tiled_memory_bytes((3000, 3000), 3, 4, 512, 32, 1, 32)
    assert need < 8 * 12000 * 12000  # under 8 bytes per output pixel
    check_memory(need, 'x', budget=need)
    with pytest.raises(OutputMemoryError, match=r'needs about \d+\.\d+ GiB of host memory, but 0\.50 GiB is '
                       r'available; nothing was computed; use --tile'):
        check_memory(need, 'x', budget=2 ** 29, hint='use --tile')
    untiled = tiled_memory_bytes((3000, 3000), 3, 4, None, 0)
    assert untiled > 12000 * 12000 * 12 > need
    # through infer.py: refused before any tile runs, nothing written
    from codes.archs import build_network
    import codes.utils.tiling as tiling
    torch.manual_seed(0)
    net = build_network({'type': 'DCLS', 'scale': 2, 'kernel_size': 11, 'nf': 8, 'nb': 1, 'ng': 1, 'reduction': 2,
                         'input_para': 16})
    torch.save({'params': net.state_dict()}, tmp_path / 'dcls.pth')
    img = (photo_rgb(40, 48).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    cv2.imwrite(str(tmp_path / 'in.png'), img[..., ::-1])
    monkeypatch.setattr(tiling, 'available_memory_bytes', lambda: 1 << 16)
    with pytest.raises(OutputMemoryError, match=r'in\.png: its 96x80 output needs about .* GiB of host memory, but '
                       r'0\.00 GiB is available'):
        infer_pipeline(['--weights', str(tmp_path / 'dcls.pth'), '--input', str(tmp_path / 'in.png'), '--output',
                        str(tmp_path / 'out'), '--device', 'cpu'])
    assert not list((tmp_path / 'out').glob('*.png')) and not list((tmp_path / 'out').glob('*.npy'))
    summary = json.loads((tmp_path / 'out' / 'infer_summary.json').read_text())
    assert summary['complete'] is False and summary['outputs'] == []
