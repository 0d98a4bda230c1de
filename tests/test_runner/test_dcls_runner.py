"""DCLS in the runner: the loss falls, train.py and test.py end to end on generated data, the option files."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

from codes.data import build_dataset
from codes.models import build_model
from codes.scripts.make_gaussian8 import make_gaussian8
from codes.test import test_pipeline as run_test_pipeline
from codes.train import train_pipeline
from codes.utils.options import load_yaml, normalize_options, validate_options
from tests.test_runner.tiny import run_torchrun

pytestmark = pytest.mark.usefixtures('one_thread')

ROOT = Path(__file__).resolve().parents[2]
TINY_NET = {'type': 'DCLS', 'scale': 2, 'kernel_size': 11, 'nf': 16, 'nb': 1, 'ng': 1, 'input_para': 8}



@pytest.fixture(scope='module')
def data(tmp_path_factory) -> Path:
    from skimage import data as skd
    root = tmp_path_factory.mktemp('blind')
    (root / 'train').mkdir()
    (root / 'hr_val').mkdir()
    img = skd.astronaut()
    for i in range(4):
        crop = img[40 * i:40 * i + 48, 100:148]
        cv2.imwrite(str(root / 'train' / f't{i}.png'), cv2.cvtColor(crop, cv2.COLOR_RGB2BGR))
    for name, photo in (('coffee', skd.coffee()), ('chelsea', skd.chelsea())):
        cv2.imwrite(str(root / 'hr_val' / f'{name}.png'), cv2.cvtColor(photo[100:132, 100:132], cv2.COLOR_RGB2BGR))
    make_gaussian8(root / 'hr_val', 2, root / 'G8', sigmas=(0.8, 1.6))
    return root


def _options(data: Path, tmp_path: Path, total_iter: int = 3) -> dict:
    return {
        'name': 'tiny_dcls', 'model_type': 'BlindSRModel', 'num_gpu': 0, 'manual_seed': 1, 'scale': 2,
        'datasets': {
            'train': {'type': 'BlindSRHRDataset', 'dataroot_gt': str(data / 'train'), 'scale': 2, 'gt_size': 32,
                      'kernel_size': 11, 'sig_min': 0.6, 'sig_max': 5.0, 'rate_iso': 0.0, 'random_disturb': True,
                      'batch_size_per_gpu': 2, 'num_worker_per_gpu': 0},
            'val': {'name': 'G8', 'type': 'PairedBlindSRDataset', 'dataroot_gt': str(data / 'G8' / 'HR'),
                    'dataroot_lq': str(data / 'G8' / 'LRblur'), 'lq_key_regex': 'sig[0-9.]+_(.+)', 'scale': 2},
        },
        'network_g': dict(TINY_NET),
        'path': {'experiments_root': str(tmp_path / 'exp')},
        'train': {'total_iter': total_iter, 'optim_g': {'type': 'Adam', 'lr': 2e-3, 'betas': [0.9, 0.99]},
                  'lr_estimator': 1e-3, 'scheduler': {'type': 'MultiStepLR', 'milestones': [1000], 'gamma': 0.5},
                  'pixel_opt': {'type': 'L1Loss'}, 'kernel_opt': {'type': 'DCLSKernelLoss', 'loss_weight': 1.0}},
        'val': {'val_freq': 1000, 'save_img': True, 'max_save_img': 2,
                'metrics': {'psnr': {'type': 'calculate_psnr_matlab', 'crop_border': 2, 'test_y_channel': True},
                            'ssim': {'type': 'calculate_ssim_matlab', 'crop_border': 2, 'test_y_channel': True}}},
        'logger': {'print_freq': 1, 'save_checkpoint_freq': 1000, 'use_tb_logger': False, 'use_pbar': False},
    }


def test_training_loss_falls(data: Path, tmp_path: Path) -> None:
    opt = normalize_options(validate_options(_options(data, tmp_path)), tmp_path, is_train=True)
    torch.manual_seed(0)
    model = build_model(opt)
    groups = model.optimizer.param_groups
    assert [g['lr'] for g in groups] == [2e-3, 1e-3]  # Restorer, Estimator
    assert sum(p.numel() for g in groups for p in g['params']) == sum(p.numel() for p in model.net_g.parameters())
    ds = build_dataset(opt['datasets']['train'], 'datasets.train')
    batch = torch.utils.data.default_collate([ds[i] for i in range(2)])
    losses = []
    for it in range(1, 31):
        model.feed_data(batch)  # the same HR and kernels; the LR is synthesised on the model's device
        out = model.optimize_parameters(it)
        losses.append(out)
    assert model.lq.shape == (2, 3, 16, 16) and model.lq_blur is not None
    first = np.mean([o['l_total'] for o in losses[:5]])
    last = np.mean([o['l_total'] for o in losses[-5:]])
    assert last < 0.7 * first
    assert all('l_ker' in o and 'l_pix' in o for o in losses)
    assert np.mean([o['l_pix'] for o in losses[-5:]]) < np.mean([o['l_pix'] for o in losses[:5]])


def test_train_py_then_test_py(data: Path, tmp_path: Path) -> None:
    opt_file = tmp_path / 'train.yml'
    opt_file.write_text(yaml.safe_dump(_options(data, tmp_path)))
    model = train_pipeline(ROOT, ['-opt', str(opt_file)])
    exp = tmp_path / 'exp'
    assert (exp / 'models' / 'net_g_3.pth').is_file() and (exp / 'training_states' / '3.state').is_file()
    records = [json.loads(line) for line in (exp / 'metrics.jsonl').read_text().splitlines()]
    assert records[-1]['iter'] == 3 and records[-1]['num_samples'] == 4
    assert {'psnr', 'ssim', 'bicubic_psnr'} <= set(records[-1])
    vis = exp / 'visualization' / 'G8'
    assert (vis / 'sig0.80_chelsea_3.png').is_file() and (vis / 'sig0.80_chelsea_3_ker.png').is_file()
    assert model.best['G8']['psnr']['iter'] == 3

    test_opt = {
        'name': 'tiny_dcls_test', 'model_type': 'BlindSRModel', 'num_gpu': 0, 'scale': 2,
        'datasets': {'test_1': {'name': 'G8', 'type': 'PairedBlindSRDataset',
                                'dataroot_gt': str(data / 'G8' / 'HR'), 'dataroot_lq': str(data / 'G8' / 'LRblur'),
                                'lq_key_regex': 'sig[0-9.]+_(.+)', 'scale': 2}},
        'network_g': dict(TINY_NET),
        'path': {'pretrain_network_g': str(exp / 'models' / 'net_g_3.pth'), 'results_root': str(tmp_path / 'res')},
        'val': {'save_img': True, 'metrics': _options(data, tmp_path)['val']['metrics']},
    }
    test_file = tmp_path / 'test.yml'
    test_file.write_text(yaml.safe_dump(test_opt))
    results = run_test_pipeline(ROOT, ['-opt', str(test_file)])
    out = tmp_path / 'res' / 'G8'
    metrics = json.loads((out / 'metrics.json').read_text())
    assert len(metrics['per_image']) == 4 and metrics['mean']['num_samples'] == 4
    assert [r['key'] for r in metrics['per_image']][:2] == ['sig0.80_chelsea', 'sig0.80_coffee']
    assert metrics['mean']['psnr'] == pytest.approx(np.mean([r['psnr'] for r in metrics['per_image']]))
    assert metrics['mean']['psnr'] == pytest.approx(records[-1]['psnr'], abs=1e-6)  # same weights, same protocol
    sr = cv2.imread(str(out / 'visualization' / 'sig1.60_coffee.png'))
    ker = cv2.imread(str(out / 'visualization' / 'sig1.60_coffee_ker.png'), cv2.IMREAD_GRAYSCALE)
    assert sr.shape == (32, 32, 3) and ker.shape == (44, 44) and ker.max() == 255
    assert not (out / 'submission').exists()
    log = ''.join(f.read_text() for f in (tmp_path / 'res').glob('test_*.log'))
    assert 'G8 sig0.80_chelsea: psnr: ' in log and 'bicubic_psnr: ' in log
    assert results['G8']['mean']['bicubic_psnr'] > 0


@pytest.mark.parametrize('name', sorted(p.name for p in (ROOT / 'options' / 'dcls').glob('*.yml')))
def test_option_files_validate(name: str, tmp_path: Path) -> None:
    raw = load_yaml(ROOT / 'options' / 'dcls' / name)
    for ds in raw['datasets'].values():
        for key in [k for k in ds if k.startswith('dataroot') and ds[k]]:
            (tmp_path / key).mkdir(exist_ok=True)
            ds[key] = str(tmp_path / key)
    opt = validate_options(raw, name, is_train=name.startswith(('train', 'demo')))
    net = opt['network_g']
    assert net['type'] == 'DCLS' and net['scale'] == opt['scale']
    for ds in opt['datasets'].values():
        assert ds['scale'] == opt['scale']
    for key, m in opt['val']['metrics'].items():
        assert m['crop_border'] == opt['scale'] and m['test_y_channel'] == (key in ('psnr', 'ssim'))
    if name.startswith('train'):
        setting = 1 if 'setting1' in name else 2
        assert net['kernel_size'] == (21 if setting == 1 else {2: 11, 4: 31}[opt['scale']])
        train = opt['datasets']['train']
        assert train['kernel_size'] == net['kernel_size'] and train['gt_size'] == 64 * opt['scale']
        assert (train['rate_iso'], train['random_disturb']) == ((1.0, False) if setting == 1 else (0.0, True))
        assert (train['sig_min'], train['sig_max']) == ((0.2, float(opt['scale'])) if setting == 1 else (0.6, 5.0))
        assert (net['nf'], net['nb'], net['ng'], net['input_para']) == (64, 10, 5, 256)
        t = opt['train']
        assert t['optim_g']['lr'] == 4e-4 and t['lr_estimator'] == 4e-4 and t['total_iter'] == 500000
        assert t['scheduler'] == {'type': 'MultiStepLR', 'milestones': [200000, 400000], 'gamma': 0.5}


def test_divergence_guard_rolls_back_weights_and_optimizer(data: Path, tmp_path: Path) -> None:
    raw = _options(data, tmp_path)
    raw['train']['divergence_guard'] = {'metric': 'psnr', 'max_drop': 2.0, 'lr_factor': 0.5}
    opt = normalize_options(validate_options(raw), tmp_path, is_train=True)
    model = build_model(opt)
    ds = build_dataset(opt['datasets']['train'], 'datasets.train')
    batch = torch.utils.data.default_collate([ds[i] for i in range(2)])
    model.feed_data(batch)
    model.optimize_parameters(1)
    model.update_best('G8', {'psnr': 25.0}, 1)
    assert not model.guard_divergence('G8', {'psnr': 25.0}, 1)  # good: snapshot taken
    good = {k: v.clone() for k, v in model.bare_net.state_dict().items()}
    good_exp_avg = model.optimizer.state_dict()['state'][0]['exp_avg'].clone()
    model.feed_data(batch)
    model.optimize_parameters(2)
    assert not model.guard_divergence('G8', {'psnr': 23.5}, 2)  # within max_drop: new snapshot
    good = {k: v.clone() for k, v in model.bare_net.state_dict().items()}
    good_exp_avg = model.optimizer.state_dict()['state'][0]['exp_avg'].clone()
    model.feed_data(batch)
    model.optimize_parameters(3)
    with torch.no_grad():
        model.bare_net.Restorer.conv_first.weight.fill_(7.0)  # a collapse
    lrs = [g['lr'] for g in model.optimizer.param_groups]
    model.update_best('G8', {'psnr': 9.0}, 3)
    assert model.guard_divergence('G8', {'psnr': 9.0}, 3)
    assert all(torch.equal(v, good[k]) for k, v in model.bare_net.state_dict().items())
    assert torch.equal(model.optimizer.state_dict()['state'][0]['exp_avg'], good_exp_avg)
    assert [g['lr'] for g in model.optimizer.param_groups] == [lr * 0.5 for lr in lrs]
    assert model.rollbacks == 1 and model.best['G8']['psnr']['value'] == 25.0
    assert model.guard_divergence('G8', {'psnr': float('nan')}, 4)  # non-finite counts as diverged


@pytest.mark.skipif(not torch.distributed.is_available(), reason='torch.distributed missing')
def test_two_process_gloo_training(data: Path, tmp_path: Path) -> None:
    """Under torchrun: per-rank data, identical weights on both ranks, validation sharded and gathered exactly."""
    opt = _options(data, tmp_path, total_iter=2)
    opt['datasets']['train']['batch_size_per_gpu'] = 1
    path = tmp_path / 'ddp.yml'
    path.write_text(yaml.safe_dump(opt))
    out = tmp_path / 'weights'
    run_torchrun(path, out, 2, port_offset=300)
    w0, w1 = (torch.load(out / f'rank{r}.pth', weights_only=True) for r in range(2))
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    rec = json.loads((tmp_path / 'exp' / 'metrics.jsonl').read_text().splitlines()[-1])
    assert rec['num_samples'] == 4 and np.isfinite(rec['psnr'])


def test_linear_warmup_then_schedule(data: Path, tmp_path: Path) -> None:
    raw = _options(data, tmp_path)
    raw['train']['warmup_iter'] = 4
    raw['train']['scheduler'] = {'type': 'MultiStepLR', 'milestones': [6], 'gamma': 0.5}
    opt = normalize_options(validate_options(raw), tmp_path, is_train=True)
    model = build_model(opt)
    ds = build_dataset(opt['datasets']['train'], 'datasets.train')
    batch = torch.utils.data.default_collate([ds[i] for i in range(2)])
    seen = []
    for it in range(1, 8):
        model.feed_data(batch)
        model.optimize_parameters(it)
        seen.append(model.current_lr())
    assert seen[0] == pytest.approx([2e-3 / 4, 1e-3 / 4]) and seen[2] == pytest.approx([2e-3 * 3 / 4, 1e-3 * 3 / 4])
    assert seen[4] == pytest.approx([2e-3, 1e-3])  # after the warm-up: the schedule's value
    assert seen[6] == pytest.approx([1e-3, 5e-4])  # milestone 6 halved it
