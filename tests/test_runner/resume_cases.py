"""Tiny option files derived from the demos, and the comparison of two finished runs (for the resume tests).

Both demos are shrunk in the same way: a tiny network, no validation set, ``total_iter`` 8 with the scheduler's
horizon 8, a checkpoint every 4 iterations, a warm-up and (BSRT) a freeze that both end after the resume point,
EMA.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import torch
import yaml

from codes.utils.checkpoint import load_file

ROOT = Path(__file__).resolve().parents[2]


def _common(opt: dict, tmp: Path, name: str, workers: int) -> dict:
    opt.pop('prepare_sample_data', None)
    opt.pop('prepare_blind_sample_data', None)
    opt['name'] = name
    opt['num_gpu'] = 0
    opt['path'] = {'experiments_root': str(tmp / 'experiments' / name)}
    opt['datasets'] = {'train': opt['datasets']['train']}
    opt['datasets']['train']['num_worker_per_gpu'] = workers
    opt['datasets']['train']['batch_size_per_gpu'] = 2
    train = opt['train']
    train['total_iter'] = 8
    train['scheduler'] = {'type': 'CosineAnnealingLR', 'T_max': 8, 'eta_min': 1e-5}
    train['warmup_iter'] = 6  # spans the resume point at 4
    train['ema_decay'] = 0.9
    opt['val'] = {'val_freq': 0}
    opt['logger'] = {'print_freq': 2, 'save_checkpoint_freq': 4, 'use_tb_logger': False, 'use_pbar': False}
    return opt


def bsrt_demo(tmp: Path, sample: Path, name: str, workers: int) -> dict:
    """``options/demo_synthetic.yml`` with a tiny BSRT (burst 2) on the sample data."""
    opt = yaml.safe_load((ROOT / 'options' / 'demo_synthetic.yml').read_text())
    opt = _common(opt, tmp, name, workers)
    train_set = opt['datasets']['train']
    train_set.update(dataroot=str(sample / 'zurich'), burst_size=2)
    opt['network_g'].update(embed_dim=12, depths=[1, 1], burst_size=2)
    opt['train']['freeze'] = {'patterns': ['spynet', 'conv_flow'], 'iters': 5}
    return opt


def blind_train_images(root: Path) -> Path:
    """Four 48x48 HR crops of scikit-image's astronaut in ``root/HR``."""
    from skimage import data as skd
    hr = root / 'HR'
    hr.mkdir(parents=True, exist_ok=True)
    img = skd.astronaut()
    for i in range(4):
        crop = img[40 * i:40 * i + 48, 100:148]
        cv2.imwrite(str(hr / f't{i}.png'), cv2.cvtColor(crop, cv2.COLOR_RGB2BGR))
    return hr


def dcls_demo(tmp: Path, hr: Path, name: str, workers: int) -> dict:
    """``options/dcls/demo_dcls.yml`` with a tiny DCLS (kernel 11) on four HR crops."""
    opt = yaml.safe_load((ROOT / 'options' / 'dcls' / 'demo_dcls.yml').read_text())
    opt = _common(opt, tmp, name, workers)
    opt['datasets']['train'].update(dataroot_gt=str(hr), gt_size=32, kernel_size=11)
    opt['network_g'].update(kernel_size=11, nf=16, nb=1, ng=1, input_para=8)
    return opt


def write(path: Path, opt: dict) -> Path:
    """Write ``opt`` as YAML to ``path``."""
    path.write_text(yaml.safe_dump(opt))
    return path


def final_state(exp: Path, it: int = 8) -> dict[str, Any]:
    """The weights, EMA weights, optimiser, scheduler and GradScaler state that a run left at iteration ``it``."""
    weights = load_file(exp / 'models' / f'net_g_{it}.pth')
    state = load_file(exp / 'training_states' / f'{it}.state')
    return {'params': weights['params'], 'params_ema': weights['params_ema'],
            'optimizer': state['optimizers'][0], 'scheduler': state['schedulers'][0], 'scaler': state['scaler']}


def differences(a: Any, b: Any, where: str = '') -> list[str]:
    """Where two nested structures of tensors and plain values differ (tensors compared bit for bit)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        same = isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype \
            and a.shape == b.shape and torch.equal(a, b)
        return [] if same else [where]
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            return [f'{where}: keys {sorted(map(str, set(a) ^ set(b)))}']
        return [d for k in a for d in differences(a[k], b[k], f'{where}.{k}')]
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return [f'{where}: lengths {len(a)} != {len(b)}']
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f'{where}[{i}]')]
    return [] if a == b else [f'{where}: {a!r} != {b!r}']
