"""Real-track runs on a generated BurstSR-format set: AlignedL1 fine-tuning (one process, and two gloo processes
under torchrun) from a "synthetic" checkpoint, then test.py with aligned metrics and real-track sRGB images."""
import json
from pathlib import Path

import cv2
import pytest
import torch

from codes.archs import build_network
from codes.scripts.make_burstsr_sample import ensure_burstsr_sample
from codes.test import test_pipeline as run_test_pipeline
from codes.train import train_pipeline
from codes.utils.checkpoint import atomic_save
from tests.test_runner.test_training import losses_from_log
from tests.test_runner.tiny import TINY_NET, run_torchrun, write_options

ROOT = Path(__file__).resolve().parents[2]
NUM_VAL = 2


@pytest.fixture(scope='module')
def burstsr(tmp_path_factory):
    """A BurstSR-format set (3 training crops + the bad one, 2 val crops, packed 40x40) and a tiny 'synthetic'
    checkpoint to fine-tune from."""
    tmp = tmp_path_factory.mktemp('burstsr')
    ensure_burstsr_sample(str(tmp / 'data'), num_train=3, num_val=NUM_VAL, crop_size=40)
    torch.manual_seed(0)
    ckpt = tmp / 'synthetic.pth'
    atomic_save({'params': build_network(TINY_NET).state_dict()}, ckpt)
    return tmp / 'data', ckpt


def real_options(tmp, data, ckpt, name, total_iter, batch=2):
    return {
        'name': name, 'model_type': 'RealBurstSRModel', 'num_gpu': 0, 'manual_seed': 3,
        'datasets': {
            'train': {'type': 'BurstSRDataset', 'dataroot': str(data), 'split': 'train', 'burst_size': 2,
                      'crop_size': 32, 'center_crop': True, 'random_flip': False, 'random_frame_order': False,
                      'batch_size_per_gpu': batch, 'num_worker_per_gpu': 0},
            'val': {'type': 'BurstSRDataset', 'dataroot': str(data), 'split': 'val', 'burst_size': 2,
                    'crop_size': 32, 'center_crop': True, 'random_frame_order': False},
        },
        'network_g': dict(TINY_NET),
        'path': {'pretrain_network_g': str(ckpt), 'experiments_root': str(tmp / 'experiments' / name)},
        'train': {'total_iter': total_iter, 'optim_g': {'type': 'Adam', 'lr': 5e-4},
                  'scheduler': {'type': 'MultiStepLR', 'milestones': [1000], 'gamma': 0.5},
                  'pixel_opt': {'type': 'AlignedL1Loss', 'boundary_ignore': 40, 'flow_estimator': 'dis'}},
        'val': {'val_freq': 1000, 'save_img': True, 'max_save_img': 1,
                'alignment': {'flow_estimator': 'dis'},
                'metrics': {'psnr': {'type': 'calculate_aligned_psnr', 'crop_border': 40},
                            'ssim': {'type': 'calculate_ssim_linear', 'crop_border': 40}}},
        'logger': {'print_freq': 1, 'save_checkpoint_freq': 1000, 'use_tb_logger': False, 'use_pbar': False},
    }


@pytest.fixture(scope='module')
def single(burstsr, tmp_path_factory):
    data, ckpt = burstsr
    tmp = tmp_path_factory.mktemp('single')
    opt = real_options(tmp, data, ckpt, 'real1', total_iter=3, batch=1)
    opt['datasets']['train']['exclude'] = ['0004_0006', '0000_0001', '0000_0002']  # one crop: the same every step
    train_pipeline(ROOT, ['-opt', str(write_options(tmp / 'real.yml', opt))])
    return Path(opt['path']['experiments_root'])


def test_single_process_fine_tuning(single, burstsr):
    losses = losses_from_log(single)
    assert len(losses) == 3 and all(0 < v < 1 for v in losses)
    start = torch.load(burstsr[1], weights_only=True)['params']
    end = torch.load(single / 'models' / 'net_g_3.pth', weights_only=True)['params']
    assert any(not torch.equal(end[k], start[k]) for k in start)
    log = ''.join(p.read_text() for p in single.glob('train_*.log'))
    assert 'NOT comparable' in log  # the DIS fallback is announced
    assert 'skipping 3 known bad crop(s): 0000_0001, 0000_0002, 0004_0006' in log
    record = json.loads((single / 'metrics.jsonl').read_text().splitlines()[-1])
    assert record['num_samples'] == NUM_VAL and {'psnr', 'ssim', 'baseline_psnr'} <= set(record)
    assert 5 < record['psnr'] < 80 and 25 < record['baseline_psnr'] < 60  # a random tiny net vs bilinear
    assert list((single / 'visualization' / 'val').glob('*.png'))


def test_test_py_writes_aligned_metrics_and_real_track_images(single, burstsr, tmp_path):
    data, ckpt = burstsr
    opt = real_options(tmp_path, data, ckpt, 'real_test', 1)
    opt = {'name': 'real_test', 'model_type': 'RealBurstSRModel', 'num_gpu': 0,
           'datasets': {'test_1': dict(opt['datasets']['val'], name='BurstSR_val')},
           'network_g': dict(TINY_NET),
           'path': {'pretrain_network_g': str(single / 'models' / 'net_g_3.pth'),
                    'results_root': str(tmp_path / 'res')},
           'val': {'save_img': True, 'save_submission': True, 'alignment': {'flow_estimator': 'dis'},
                   'metrics': {'psnr': {'type': 'calculate_aligned_psnr', 'crop_border': 40},
                               'ssim': {'type': 'calculate_ssim_linear', 'crop_border': 40},
                               'lpips': {'type': 'calculate_lpips', 'crop_border': 40, 'better': 'lower'}}}}
    results = run_test_pipeline(ROOT, ['-opt', str(write_options(tmp_path / 'test.yml', opt))])
    out = tmp_path / 'res' / 'BurstSR_val'
    record = json.loads((out / 'metrics.json').read_text())
    assert record['mean']['num_samples'] == NUM_VAL and len(record['per_image']) == NUM_VAL
    assert {r['key'] for r in record['per_image']} == {'0200_0000', '0200_0001'}
    assert record['mean']['psnr'] == pytest.approx(results['BurstSR_val']['mean']['psnr'])
    assert 'lpips' not in record['mean']  # no local LPIPS weights: skipped with a message, not faked
    # validation during training scored the same weights the same way (fixed frame order, centre crop)
    trained = json.loads((single / 'metrics.jsonl').read_text().splitlines()[-1])
    assert record['mean']['psnr'] == pytest.approx(trained['psnr'], abs=1e-3)
    vis = out / 'visualization'
    assert len(list(vis.glob('*_panel.png'))) == NUM_VAL and (out / 'index.html').is_file()
    for suffix in ('', '_input', '_gt'):  # real-track renderings, normalised to their max
        image = cv2.imread(str(vis / f'0200_0000{suffix}.png'))
        assert image.shape == (256, 256, 3) and image.max() > 100
    assert cv2.imread(str(vis / '0200_0000_panel.png')).shape[1] > 4 * 256  # input, prediction, GT, error map
    sub = cv2.imread(str(out / 'submission' / '0200_0000.png'), cv2.IMREAD_UNCHANGED)
    assert sub.dtype.name == 'uint16' and sub.shape == (256, 256, 3)


@pytest.mark.skipif(not torch.distributed.is_available(), reason='torch.distributed missing')
def test_two_process_gloo_fine_tuning(burstsr, tmp_path):
    data, ckpt = burstsr
    opt = real_options(tmp_path, data, ckpt, 'real_ddp', total_iter=2, batch=1)  # global batch 2
    path = write_options(tmp_path / 'ddp.yml', opt)
    out = tmp_path / 'weights'
    run_torchrun(path, out, 2, port_offset=200)
    exp = Path(opt['path']['experiments_root'])
    losses = losses_from_log(exp)
    assert len(losses) == 2 and all(0 < v < 1 for v in losses)
    w0, w1 = (torch.load(out / f'rank{r}.pth', weights_only=True) for r in range(2))
    start = torch.load(ckpt, weights_only=True)['params']
    assert any(not torch.equal(w0[k], start[k]) for k in w0)  # it trained
    for k in w0:
        assert torch.equal(w0[k], w1[k]), f'ranks differ at {k}'
    record = json.loads((exp / 'metrics.jsonl').read_text().splitlines()[-1])
    assert record['num_samples'] == NUM_VAL and 5 < record['psnr'] < 80  # sharded validation, each sample once
