"""Comparison panels: tile order and geometry, crop choice, labels carrying the metrics' values, DCLS kernels."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from codes.data import build_dataset
from codes.metrics.burst_metric import calculate_psnr_linear
from codes.metrics.metric_util import bilinear_baseline
from codes.models import build_model
from codes.utils.options import normalize_options
from codes.scripts.make_gaussian8 import make_gaussian8
from codes.visualization.panels import CROP_COLOR, View, comparison_panel, crop_psnr, kernel_tile, select_crop
from tests.test_runner.tiny import TINY_NET

pytestmark = pytest.mark.usefixtures('one_thread')


def _u8(x: np.ndarray) -> np.ndarray:
    return (np.clip(x, 0, 1) * 255).round().astype(np.uint8)


@pytest.fixture()
def images():
    rng = np.random.default_rng(0)
    gt = rng.random((200, 240, 3)).astype(np.float32)
    pred = gt.copy()
    pred[120:150, 30:60] = 0.0  # the worst region: 30 x 30 at (120, 30)
    inp = np.clip(gt + 0.02 * rng.standard_normal(gt.shape), 0, 1).astype(np.float32)
    return inp, pred, gt


def test_tile_order_geometry_and_crop(images):
    inp, pred, gt = images
    panel = comparison_panel([View('input', _u8(inp), inp, 30.0, 'baseline_psnr'),
                              View('prediction', _u8(pred), pred, 31.5, 'psnr')],
                             View('ground truth', _u8(gt), gt), crop_size=40, border=10)
    names = [t.name for t in panel.tiles]
    assert names == ['input', 'prediction', 'ground truth', 'error', 'input crop', 'prediction crop',
                     'ground truth crop']
    top, left, size = panel.crop
    assert size == 40 and top <= 120 and top + 40 >= 150 and left <= 30 and left + 40 >= 60  # covers the worst region
    row1 = panel.tiles[:4]
    assert len({t.box[1] for t in row1}) == 1 and [t.box[0] for t in row1] == sorted(t.box[0] for t in row1)
    assert all(t.box[2:] == (240, 200) for t in row1)  # full size (wide enough: not enlarged)
    x, y, w, h = panel.tile('ground truth').box
    shown = panel.image[y:y + h, x:x + w]
    assert np.array_equal(shown[top + 5, left + 5], _u8(gt)[top + 5, left + 5])  # inside the box: the image
    assert tuple(shown[top + 10, left]) == CROP_COLOR  # the crop box's left edge
    cx, cy, cw, ch = panel.tile('prediction crop').box
    assert cw == ch == 40 * panel.zoom and panel.zoom == 240 // 40
    expected = np.kron(_u8(pred)[top:top + 40, left:left + 40], np.ones((panel.zoom, panel.zoom, 1), np.uint8))
    assert np.array_equal(panel.image[cy:cy + ch, cx:cx + cw], expected)  # nearest-neighbour enlargement
    assert panel.tile('prediction').label == ['prediction', 'psnr 31.50 dB']
    assert panel.tile('input').label == ['input', 'baseline_psnr 30.00 dB']
    want = crop_psnr(pred[top:top + 40, left:left + 40], gt[top:top + 40, left:left + 40])
    assert panel.tile('prediction crop').label[1] == f'PSNR crop {want:.2f} dB'


def test_given_crop_border_and_small_images(images):
    inp, pred, gt = images
    small = [View('a', _u8(inp[:40, :50])), View('b', _u8(pred[:40, :50]))]
    panel = comparison_panel(small, None, crop=(4, 6), crop_size=10)
    assert panel.crop == (4, 6, 10) and panel.display_scale == 4  # 50 px wide, shown x4 so labels fit
    assert panel.tile('a').label == ['a (shown x4)', 'no ground truth']
    assert 'error' not in [t.name for t in panel.tiles]
    err = np.zeros((50, 50))
    err[0:5, 0:5] = 1.0
    assert select_crop(err, 10, border=8) == (8, 8)  # kept out of the border the metric ignores
    assert select_crop(err, 10, border=0) == (0, 0)
    with pytest.raises(ValueError, match='does not fit'):
        comparison_panel(small, None, crop=(35, 0), crop_size=10)


def test_burst_model_panel_labels_equal_the_metrics(sample_data, tmp_path):
    opt = {'name': 'p', 'model_type': 'BurstSRModel', 'num_gpu': 0, 'is_train': False,
           'network_g': dict(TINY_NET), 'path': {},
           'val': {'metrics': {'psnr': {'type': 'calculate_psnr_linear', 'crop_border': 40}}}}
    torch.manual_seed(0)
    model = build_model(normalize_options(opt, tmp_path, is_train=False))
    ds = build_dataset({'type': 'SyntheticBurstValDataset', 'dataroot': str(sample_data / 'SyntheticBurstVal'),
                        'burst_size': 2}, 'val')
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(ds, [0]), batch_size=1)
    res = model.validation(loader, 'val', image_dir=tmp_path, max_images=1)
    rec = res['per_image'][0]
    pred = model.predict(model.lq)[0]
    panel, files = model.make_panel(pred, 0, rec)
    assert [t.name for t in panel.tiles][:4] == ['bilinear input', 'prediction', 'ground truth', 'error']
    psnr = calculate_psnr_linear(pred, model.gt[0])
    base = calculate_psnr_linear(bilinear_baseline(model.lq[0]), model.gt[0])
    assert panel.tile('prediction').label[1] == f'psnr {psnr:.2f} dB' == f"psnr {rec['psnr']:.2f} dB"
    assert panel.tile('bilinear input').label[1] == f'baseline_psnr {base:.2f} dB'
    top, left, size = panel.crop
    assert 40 <= top and top + size <= 384 - 40 and 40 <= left  # chosen outside the metric's border
    saved = cv2.imread(str(tmp_path / f"{rec['key']}_panel.png"))[..., ::-1]
    assert np.array_equal(saved, panel.image)
    for suffix in ('', '_input', '_gt'):
        assert cv2.imread(str(tmp_path / f"{rec['key']}{suffix}.png")).shape == (384, 384, 3)
    assert np.array_equal(files['_gt'], cv2.imread(str(tmp_path / f"{rec['key']}_gt.png"))[..., ::-1])


def test_dcls_panel_shows_estimated_and_true_kernel(tmp_path):
    from skimage import data as skd
    hr = tmp_path / 'hr'
    hr.mkdir()
    cv2.imwrite(str(hr / 'coffee.png'), cv2.cvtColor(skd.coffee()[100:148, 100:148], cv2.COLOR_RGB2BGR))
    make_gaussian8(hr, 2, tmp_path / 'G8', sigmas=(1.6,))
    net = {'type': 'DCLS', 'scale': 2, 'kernel_size': 21, 'nf': 16, 'nb': 1, 'ng': 1, 'input_para': 8}
    opt = {'name': 'd', 'model_type': 'BlindSRModel', 'num_gpu': 0, 'is_train': False, 'scale': 2,
           'network_g': net, 'path': {},
           'val': {'metrics': {'psnr': {'type': 'calculate_psnr_matlab', 'crop_border': 2, 'test_y_channel': True}}}}
    model = build_model(normalize_options(opt, tmp_path, is_train=False))
    ds = build_dataset({'type': 'PairedBlindSRDataset', 'dataroot_gt': str(tmp_path / 'G8' / 'HR'),
                        'dataroot_lq': str(tmp_path / 'G8' / 'LRblur'), 'lq_key_regex': 'sig[0-9.]+_(.+)',
                        'scale': 2, 'dataroot_kernel': str(tmp_path / 'G8' / 'kernels'),
                        'kernel_key_regex': '(sig[0-9.]+)_.+'}, 'val')
    true_k = np.load(tmp_path / 'G8' / 'kernels' / 'sig1.60.npy')
    assert np.array_equal(ds[0]['kernel'].numpy(), true_k)
    loader = torch.utils.data.DataLoader(ds, batch_size=1)
    res = model.validation(loader, 'G8', image_dir=tmp_path / 'vis', max_images=1)
    rec = res['per_image'][0]
    sr, kernel = model.predict(model.lq)
    panel, files = model.make_panel(sr[0], kernel[0], 0, rec)
    assert [t.name for t in panel.tiles][-2:] == ['estimated kernel (LR space)', 'true kernel (HR space)']
    assert panel.tile('bicubic input').label[1] == f"bicubic_psnr {rec['bicubic_psnr']:.2f} dB"
    assert panel.tile('prediction').label[1] == f"psnr {rec['psnr']:.2f} dB"
    est, true = panel.tile('estimated kernel (LR space)'), panel.tile('true kernel (HR space)')
    assert est.box[1] == true.box[1] and est.box[0] < true.box[0]  # side by side, estimated first
    x, y, w, h = true.box
    assert np.array_equal(panel.image[y:y + h, x:x + w], kernel_tile(true_k, 128))
    assert (w, h) == (21 * (128 // 21),) * 2 and panel.image[y:y + h, x:x + w].max() == 255
    vis = tmp_path / 'vis'
    assert {p.name for p in vis.iterdir()} == {f'{rec["key"]}{s}.png' for s in ('', '_ker', '_input', '_gt', '_panel')}


def test_kernel_files_must_exist(tmp_path):
    from skimage import data as skd
    hr = tmp_path / 'hr'
    hr.mkdir()
    cv2.imwrite(str(hr / 'coffee.png'), cv2.cvtColor(skd.coffee()[100:132, 100:132], cv2.COLOR_RGB2BGR))
    make_gaussian8(hr, 2, tmp_path / 'G8', sigmas=(1.6,))
    with pytest.raises(ValueError, match=r'dataroot_kernel .*no kernel file for 1 LQ images, e.g. sig1.60_coffee.npy'):
        build_dataset({'type': 'PairedBlindSRDataset', 'dataroot_gt': str(tmp_path / 'G8' / 'HR'),
                       'dataroot_lq': str(tmp_path / 'G8' / 'LRblur'), 'lq_key_regex': 'sig[0-9.]+_(.+)',
                       'scale': 2, 'dataroot_kernel': str(tmp_path / 'G8' / 'kernels')}, 'val')
