"""infer.py --compare: panels against a ground truth and a second model, for bursts and for images."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from codes.archs import build_network
from codes.infer import infer_pipeline
from codes.utils.build import OptionError
from codes.visualization.panels import crop_psnr
from tests.test_infer.helpers import photo_rgb, tiny_bsrt, write_png_burst

pytestmark = pytest.mark.usefixtures('one_thread')


def test_burst_against_ground_truth_and_second_model(tmp_path):
    for seed in (0, 1):
        torch.save({'params': tiny_bsrt(seed).state_dict()}, tmp_path / f'net{seed}.pth')
    write_png_burst(tmp_path / 'bursts' / 'b1', 2, (24, 32))
    (tmp_path / 'gt').mkdir()
    gt = (photo_rgb(192, 256).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    cv2.imwrite(str(tmp_path / 'gt' / 'b1.png'), gt[..., ::-1])
    recs = infer_pipeline(['--weights', str(tmp_path / 'net0.pth'), '--input', str(tmp_path / 'bursts'),
                           '--output', str(tmp_path / 'out'), '--device', 'cpu', '--no-linear',
                           '--compare', str(tmp_path / 'gt'), str(tmp_path / 'net1.pth')])
    rec = recs[0]
    assert rec['compare'] == str(tmp_path / 'out' / 'b1_compare.png')
    panel = cv2.imread(rec['compare'])
    assert panel.shape[0] > 2 * 192 and panel.shape[1] > 5 * 256  # input, B, A, GT, error map side by side
    assert (tmp_path / 'out' / 'compare_b' / 'b1_srgb.png').is_file()
    pred = cv2.imread(rec['srgb'])[..., ::-1]
    want = crop_psnr(pred.astype(np.float32) / 255, gt.astype(np.float32) / 255)
    assert rec['compare_psnr']['prediction (net0)'] == pytest.approx(want)
    assert set(rec['compare_psnr']) == {'bilinear input', 'prediction (net0)', 'second model (net1)'}


def test_images_against_ground_truth_and_bad_sources(tmp_path):
    torch.manual_seed(0)
    net = build_network({'type': 'DCLS', 'scale': 2, 'kernel_size': 11, 'nf': 8, 'nb': 1, 'ng': 1, 'reduction': 2,
                         'input_para': 16})
    torch.save({'params': net.state_dict()}, tmp_path / 'dcls.pth')
    hr = (photo_rgb(80, 96).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    lr = cv2.resize(hr, (48, 40), interpolation=cv2.INTER_AREA)
    cv2.imwrite(str(tmp_path / 'a.png'), lr[..., ::-1])
    cv2.imwrite(str(tmp_path / 'a_hr.png'), hr[..., ::-1])
    base = ['--weights', str(tmp_path / 'dcls.pth'), '--input', str(tmp_path / 'a.png'), '--device', 'cpu']
    rec = infer_pipeline(base + ['--output', str(tmp_path / 'o'), '--compare', str(tmp_path / 'a_hr.png')])[0]
    assert cv2.imread(rec['compare']) is not None
    assert set(rec['compare_psnr']) == {'bicubic input', 'prediction (dcls)'}
    with pytest.raises(OptionError, match="option 'compare': .*nope.png does not exist"):
        infer_pipeline(base + ['--output', str(tmp_path / 'x'), '--compare', str(tmp_path / 'nope.png')])
    with pytest.raises(OptionError, match=r'ground truth .*a.png is 48x40 but the output of .* is 96x80'):
        infer_pipeline(base + ['--output', str(tmp_path / 'y'), '--compare', str(tmp_path / 'a.png')])
