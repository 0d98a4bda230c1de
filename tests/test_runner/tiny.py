"""A tiny BSRT training configuration for CPU tests (burst 2, 16 features, one Swin block per stage)."""
from pathlib import Path

import yaml

TINY_NET = {'type': 'BSRT', 'embed_dim': 12, 'depths': [1, 1], 'num_heads': 2, 'burst_size': 2, 'num_feat': 16,
            'drop_path_rate': 0.0}


def tiny_options(tmp_path: Path, sample: Path, name: str = 'tiny', total_iter: int = 4, adam_eps: float = 1e-8,
                 **train) -> dict:
    """Options for a tiny run on the sample data, writing under ``tmp_path``."""
    return {
        'name': name, 'model_type': 'BurstSRModel', 'num_gpu': 0, 'manual_seed': 3,
        'datasets': {
            'train': {'type': 'SyntheticBurstDataset', 'dataroot': str(sample / 'zurich'), 'burst_size': 2,
                      'crop_size': 256, 'seed': 5, 'batch_size_per_gpu': 2, 'num_worker_per_gpu': 0},
            'val': {'type': 'SyntheticBurstValDataset', 'dataroot': str(sample / 'SyntheticBurstVal'),
                    'burst_size': 2},
        },
        'network_g': dict(TINY_NET),
        'path': {'experiments_root': str(tmp_path / 'experiments' / name)},
        'train': {'total_iter': total_iter, 'optim_g': {'type': 'Adam', 'lr': 2e-3, 'eps': adam_eps},
                  'scheduler': {'type': 'MultiStepLR', 'milestones': [1000], 'gamma': 0.5}, **train},
        'val': {'val_freq': 1000, 'save_img': True, 'max_save_img': 1,
                'metrics': {'psnr': {'type': 'calculate_psnr_linear', 'crop_border': 40},
                            'ssim': {'type': 'calculate_ssim_linear', 'crop_border': 40}}},
        'logger': {'print_freq': 1, 'save_checkpoint_freq': 1000, 'use_tb_logger': True, 'use_pbar': False},
    }


def one_lr_trial(demo: Path, tmp_path: Path, overrides: list[str]):
    """One ``tune.py`` trial (learning rate sampled, one iteration, one validation batch) of the demo option file
    ``demo`` with the ``--force_yml`` ``overrides`` (``train.*`` ones dropped: the tune block sets the budget);
    returns the trial, which the caller checks."""
    from codes.tune import tune_pipeline
    from codes.utils.options import load_yaml
    opt = load_yaml(demo)
    opt['search_space'] = {'train.optim_g.lr': {'low': 1e-4, 'high': 1e-3, 'log': True}}
    opt['tune'] = {'n_trials': 1, 'max_iters': 1, 'limit_val_batches': 1, 'start_method': 'forkserver'}
    path = write_options(tmp_path / 'tune.yml', opt)
    sets = [s for s in overrides if not s.startswith('train.')]
    root = Path(__file__).resolve().parents[2]
    (trial, ) = tune_pipeline(root, ['-opt', str(path), '--force_yml', *sets]).get_trials()
    return trial


def write_options(path: Path, opt: dict) -> Path:
    path.write_text(yaml.safe_dump(opt))
    return path


def run_torchrun(option_file: Path, out: Path, nproc: int, port_offset: int = 0) -> None:
    """Run ``ddp_worker.py`` (train.py that also saves each rank's weights to ``out/rank<r>.pth``) under
    ``torch.distributed.run`` with ``nproc`` CPU processes (gloo); fails the test with its output otherwise."""
    import os
    import subprocess
    import sys
    root = Path(__file__).resolve().parents[2]
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONPATH': str(root)}
    port = 29500 + port_offset + os.getpid() % 1000
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', str(nproc), '--master_port', str(port),
           str(root / 'tests' / 'test_runner' / 'ddp_worker.py'), str(out), '-opt', str(option_file)]
    res = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
