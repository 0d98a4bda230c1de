"""Inference inputs: the frame-count rule, challenge PNG bursts, DNG files read back through rawpy (Bayer phase,
black/white levels, as-shot white balance, colour matrix), BurstSR bursts, discovery and sRGB rendering."""
import numpy as np
import pytest
import torch

from codes.data.burst_readers import (SRGB_TO_XYZ, find_bursts, read_burst, read_burstsr_burst, read_png_burst,
                                      read_raw_burst, read_raw_frame, select_frames)
from codes.data.image_readers import find_images, read_rgb_image
from codes.data.srgb_render import Render, render_srgb
from codes.data.camera_pipeline import mosaic, unpack_raw
from tests.test_infer.helpers import (AS_SHOT_NEUTRAL, COLOR_MATRIX, mosaic_counts, photo_rgb, write_dng,
                                      write_png_burst)


def test_select_frames_rule():
    assert select_frames(14, 14) == (list(range(14)), None)
    idx, msg = select_frames(20, 14)
    assert idx == list(range(14)) and 'dropping frames 14-19' in msg and 'reference' in msg
    idx, msg = select_frames(4, 8)
    assert idx == [0, 1, 2, 3, 1, 2, 3, 1] and 'repeating' in msg
    assert select_frames(1, 3)[0] == [0, 0, 0]
    assert 'dropping frame 2' in select_frames(3, 2)[1]
    with pytest.raises(ValueError):
        select_frames(0, 3)


def test_png_burst_values_and_order(tmp_path):
    stored = write_png_burst(tmp_path / 'b', 3, (8, 12))
    burst = read_png_burst(tmp_path / 'b')
    assert burst.kind == 'png' and burst.name == 'b' and burst.frames.shape == (3, 4, 8, 12)
    assert torch.equal(burst.frames, stored)  # channel order R, G_r, G_b, B survives OpenCV's BGRA swap
    assert burst.files[0].endswith('im_raw_00.png')
    assert burst.render.normalize_max and burst.render.red_gain > 0


def test_png_burst_with_synthetic_meta(tmp_path):
    import pickle
    write_png_burst(tmp_path / 'b', 2, (8, 8))
    meta = {'rgb_gain': 1.25, 'red_gain': 2.0, 'blue_gain': 1.7, 'cam2rgb': torch.eye(3).numpy(), 'gamma': True,
            'smoothstep': False}
    (tmp_path / 'b' / 'meta_info.pkl').write_bytes(pickle.dumps(meta))
    render = read_png_burst(tmp_path / 'b').render
    assert (render.rgb_gain, render.red_gain, render.blue_gain, render.smoothstep) == (1.25, 2.0, 1.7, False)
    assert not render.normalize_max and 'synthetic' in render.source
    lin = torch.full((3, 1, 1), 0.2)
    assert tuple(render_srgb(lin, render)[0, 0]) == tuple(
        int(v) for v in (np.minimum(np.array([2.0, 1.0, 1.7]) * 1.25 * 0.2, 1) ** (1 / 2.2) * 255).astype(np.float32))


def test_png_burst_rejects_other_pngs(tmp_path):
    import cv2
    (tmp_path / 'b').mkdir()
    cv2.imwrite(str(tmp_path / 'b' / 'x.png'), np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match='4-channel uint16'):
        read_png_burst(tmp_path / 'b')


@pytest.mark.parametrize('pattern', ['RGGB', 'GRBG', 'BGGR'])
def test_dng_read_back_through_rawpy(tmp_path, pattern):
    pytest.importorskip('rawpy')
    pytest.importorskip('tifffile')
    packed = mosaic(photo_rgb(24, 32))  # (4, 12, 16)
    rggb = unpack_raw(packed).numpy()
    counts = mosaic_counts(rggb, pattern, black=64, white=1023)
    path = tmp_path / f'frame_{pattern}.dng'
    write_dng(path, counts, pattern, black=64, white=1023)
    got, render, offset = read_raw_frame(path)
    assert offset == ((1 if pattern in ('GBRG', 'BGGR') else 0), (1 if pattern in ('GRBG', 'BGGR') else 0))
    assert got.shape == packed.shape
    assert torch.allclose(got, packed, atol=0.6 / (1023 - 64))  # black subtracted, / (white - black), phase RGGB
    # as-shot white balance: gains 1 / AsShotNeutral relative to green
    assert render.red_gain == pytest.approx(AS_SHOT_NEUTRAL[1] / AS_SHOT_NEUTRAL[0], rel=1e-4)
    assert render.blue_gain == pytest.approx(AS_SHOT_NEUTRAL[1] / AS_SHOT_NEUTRAL[2], rel=1e-4)
    # colour matrix: camera -> sRGB derived from ColorMatrix1 (XYZ -> camera) as LibRaw does
    cam_rgb = np.array(COLOR_MATRIX).reshape(3, 3) @ SRGB_TO_XYZ
    cam_rgb /= cam_rgb.sum(1, keepdims=True)
    assert np.allclose(np.array(render.cam2rgb), np.linalg.inv(cam_rgb), atol=1e-4)


def test_raw_burst_folder_and_consistency(tmp_path):
    pytest.importorskip('rawpy')
    pytest.importorskip('tifffile')
    folder = tmp_path / 'raws'
    folder.mkdir()
    for i in range(3):
        rggb = unpack_raw(mosaic(photo_rgb(24, 32, shift=i))).numpy()
        write_dng(folder / f'IMG_{i + 8}.dng', mosaic_counts(rggb, 'GRBG'), 'GRBG')
    burst = read_raw_burst(folder)
    assert burst.kind == 'raw' and burst.frames.shape == (3, 4, 12, 16)
    assert [p.split('/')[-1] for p in burst.files] == ['IMG_8.dng', 'IMG_9.dng', 'IMG_10.dng']  # natural order
    assert 'as-shot' in burst.render.source
    # a frame of another size is refused with its name
    rggb = unpack_raw(mosaic(photo_rgb(16, 32))).numpy()
    write_dng(folder / 'IMG_11.dng', mosaic_counts(rggb, 'GRBG'), 'GRBG')
    with pytest.raises(ValueError, match='IMG_11.dng'):
        read_raw_burst(folder)


def test_raw_file_that_libraw_cannot_read(tmp_path):
    pytest.importorskip('rawpy')
    bad = tmp_path / 'broken.dng'
    bad.write_bytes(b'not a raw file at all')
    with pytest.raises(ValueError, match='broken.dng'):
        read_raw_frame(bad)


@pytest.fixture(scope='module')
def burstsr_sample(tmp_path_factory):
    from codes.scripts.make_burstsr_sample import make_burstsr_sample
    out = tmp_path_factory.mktemp('burstsr') / 'sample'
    make_burstsr_sample(out, num_train=0, num_val=1, crop_size=24, log=lambda s: None)
    return out


def test_burstsr_burst(burstsr_sample):
    from codes.data.burstsr_dataset import BurstSRDataset
    folder = next((burstsr_sample / 'val').iterdir())
    burst = read_burstsr_burst(folder)
    assert burst.kind == 'burstsr' and burst.frames.shape == (14, 4, 24, 24)
    ds = BurstSRDataset(str(burstsr_sample), split='val', burst_size=14, crop_size=24, random_frame_order=False)
    assert torch.allclose(burst.frames, ds[0]['lq'])  # the same normalisation as the training reader
    assert burst.render.normalize_max and burst.render.cam2rgb is None
    # rendered exactly as the real-track model renders BurstSR predictions
    from codes.models.real_burst_sr_model import render_burstsr_srgb
    pred = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(0)) * 0.3
    assert np.array_equal(render_srgb(pred, burst.render), render_burstsr_srgb(pred, ds[0]['meta_info']))
    assert find_bursts(folder) == [('burstsr', folder)]
    found = find_bursts(burstsr_sample / 'val')  # a folder of burst folders
    assert [k for k, _ in found] == ['burstsr']


def test_find_bursts_kinds_and_errors(tmp_path):
    write_png_burst(tmp_path / 'set' / 'b0', 2, (8, 8))
    write_png_burst(tmp_path / 'set' / 'b1', 2, (8, 8))
    found = find_bursts(tmp_path / 'set')
    assert [(k, p.name) for k, p in found] == [('png', 'b0'), ('png', 'b1')]
    assert read_burst(*found[1]).name == 'b1'
    (tmp_path / 'empty').mkdir()
    with pytest.raises(FileNotFoundError, match='no burst found'):
        find_bursts(tmp_path / 'empty')
    with pytest.raises(FileNotFoundError):
        find_bursts(tmp_path / 'missing')
    (tmp_path / 'photo.jpg').write_bytes(b'')
    with pytest.raises(ValueError, match='burst folder'):
        find_bursts(tmp_path / 'photo.jpg')


def test_images_and_render(tmp_path):
    import cv2
    rgb = (photo_rgb(10, 12).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    cv2.imwrite(str(tmp_path / 'a.png'), rgb[..., ::-1])
    cv2.imwrite(str(tmp_path / 'g.png'), rgb[..., 0])
    assert [p.name for p in find_images(tmp_path)] == ['a.png', 'g.png']
    img = read_rgb_image(tmp_path / 'a.png')
    assert img.shape == (3, 10, 12) and torch.allclose(img, torch.from_numpy(rgb).permute(2, 0, 1) / 255.0)
    assert read_rgb_image(tmp_path / 'g.png').shape == (3, 10, 12)
    # rendering: gains, matrix, gamma and smoothstep on a flat grey
    lin = torch.full((3, 2, 2), 0.25)
    out = render_srgb(lin, Render(red_gain=2.0, blue_gain=1.0, gamma=False, smoothstep=False))
    assert out.shape == (2, 2, 3) and out.dtype == np.uint8
    assert tuple(out[0, 0]) == (127, 63, 63)
    swap = ((0.0, 1.0, 0.0), (1.0, 0.0, 0.0), (0.0, 0.0, 1.0))
    out = render_srgb(lin * torch.tensor([1.0, 2.0, 1.0])[:, None, None], Render(cam2rgb=swap, gamma=False,
                                                                                 smoothstep=False))
    assert tuple(out[0, 0]) == (127, 63, 63)
    assert render_srgb(lin, Render(normalize_max=True))[0, 0, 0] == 255
