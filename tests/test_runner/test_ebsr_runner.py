"""EBSR in the runner: a short training run of the shipped demo network whose loss falls, test.py on its
checkpoint, infer.py on every burst input kind (architecture read from the weights), and a one-trial tune.py study
(CPU, the sample data)."""
import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from codes.infer import infer_pipeline
from codes.test import test_pipeline as run_test_pipeline
from codes.train import train_pipeline
from codes.utils.options import load_yaml, validate_options
from tests.test_runner.tiny import write_options

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.usefixtures('one_thread')


def demo_options(tmp: Path, sample: Path, name: str = 'ebsr', total_iter: int = 12) -> dict:
    """``options/ebsr/demo_ebsr.yml`` on the session's sample data, writing under ``tmp``, burst 2."""
    opt = load_yaml(ROOT / 'options' / 'ebsr' / 'demo_ebsr.yml')
    opt.pop('prepare_sample_data')
    opt.update(name=name, num_gpu=0, manual_seed=3, path={'experiments_root': str(tmp / 'experiments' / name)})
    train, val = opt['datasets']['train'], opt['datasets']['val']
    train.update(dataroot=str(sample / 'zurich'), burst_size=2, seed=5, num_worker_per_gpu=0)
    val.update(dataroot=str(sample / 'SyntheticBurstVal'), burst_size=2)
    opt['network_g']['burst_size'] = 2
    opt['train'].update(total_iter=total_iter, scheduler={'type': 'MultiStepLR', 'milestones': [1000], 'gamma': 0.5})
    opt['val'].update(val_freq=total_iter, max_save_img=1)
    opt['logger'].update(print_freq=1, save_checkpoint_freq=total_iter, use_tb_logger=False)
    return opt


@pytest.fixture(scope='module')
def trained(tmp_path_factory, sample_data):
    tmp = tmp_path_factory.mktemp('ebsr')
    opt = demo_options(tmp, sample_data)
    train_pipeline(ROOT, ['-opt', str(write_options(tmp / 'ebsr.yml', opt))])
    return opt, Path(opt['path']['experiments_root'])


def test_shipped_option_files_are_valid(sample_data):
    for name in ('train_synthetic', 'train_real', 'test_synthetic', 'test_real', 'demo_ebsr'):
        opt = load_yaml(ROOT / 'options' / 'ebsr' / f'{name}.yml')
        for block in opt['datasets'].values():
            block['dataroot'] = str(sample_data)  # the data folders must exist
        validate_options(opt, f'{name}.yml', is_train=not name.startswith('test'))
        assert opt['network_g']['type'] == 'EBSR'
    full = load_yaml(ROOT / 'options' / 'ebsr' / 'train_synthetic.yml')
    assert full['network_g'] == {'type': 'EBSR'} and full['train']['optim_g']['lr'] == 2e-4


def test_training_loss_falls(trained):
    opt, exp = trained
    text = ''.join(p.read_text() for p in sorted(exp.glob('train_*.log')))
    losses = [float(m) for m in re.findall(r'l_pix: ([0-9.e+-]+)', text)]
    assert len(losses) == opt['train']['total_iter']
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3, losses
    assert 'Network EBSR' in text
    record = json.loads((exp / 'metrics.jsonl').read_text().splitlines()[-1])
    assert record['num_samples'] == 8 and np.isfinite(record['psnr'])
    assert (exp / 'models' / f"net_g_{opt['train']['total_iter']}.pth").is_file()


def test_test_pipeline(trained, tmp_path, sample_data):
    opt, exp = trained
    test_opt = load_yaml(ROOT / 'options' / 'ebsr' / 'test_synthetic.yml')
    test_opt.update(num_gpu=0, network_g=opt['network_g'])
    test_opt['datasets']['test_1'].update(dataroot=str(sample_data / 'SyntheticBurstVal'), burst_size=2,
                                          num_worker_per_gpu=0)
    test_opt['path'].update(pretrain_network_g=str(exp / 'models' / f"net_g_{opt['train']['total_iter']}.pth"),
                            results_root=str(tmp_path / 'res'))
    results = run_test_pipeline(ROOT, ['-opt', str(write_options(tmp_path / 'test.yml', test_opt))])
    record = json.loads((tmp_path / 'res' / 'SyntheticBurstVal' / 'metrics.json').read_text())
    assert record['mean']['num_samples'] == 8
    assert record['mean']['psnr'] == pytest.approx(results['SyntheticBurstVal']['mean']['psnr'])
    # training-time validation of the same weights gave the same mean PSNR
    last = json.loads((exp / 'metrics.jsonl').read_text().splitlines()[-1])
    assert record['mean']['psnr'] == pytest.approx(last['psnr'], abs=1e-6)
    assert len(list((tmp_path / 'res' / 'SyntheticBurstVal').rglob('*.png'))) >= 8


def test_infer_every_input_kind(trained, tmp_path):
    from tests.test_infer.helpers import mosaic_counts, photo_rgb, write_dng, write_png_burst
    from codes.data.burst_readers import read_png_burst
    from codes.data.camera_pipeline import mosaic, unpack_raw
    opt, exp = trained
    weights = exp / 'models' / f"net_g_{opt['train']['total_iter']}.pth"
    write_png_burst(tmp_path / 'burst', 3, (20, 26))  # 26 is padded to 26 (even); 3 frames -> first 2 used
    base = ['--weights', str(weights), '--input', str(tmp_path / 'burst'), '--device', 'cpu']
    rec = infer_pipeline(base + ['--output', str(tmp_path / 'o1')])[0]
    summary = json.loads((tmp_path / 'o1' / 'infer_summary.json').read_text())
    assert summary['network_g']['type'] == 'EBSR' and summary['network_g']['burst_size'] == 2
    assert rec['frames_used'] == [0, 1] and cv2.imread(rec['srgb']).shape == (160, 208, 3)
    lin = cv2.imread(rec['linear'], cv2.IMREAD_UNCHANGED)[..., ::-1].astype(np.float32) / 65535
    from codes.archs import build_network
    net = build_network(summary['network_g']).eval()
    net.load_state_dict(torch.load(weights, weights_only=True)['params'])
    with torch.no_grad():
        ref = net(read_png_burst(tmp_path / 'burst').frames[:2][None])[0].clamp(0, 1)
    assert np.abs(lin - ref.permute(1, 2, 0).numpy()).max() < 1e-4
    # tiled (odd tile rounded to the packed multiple of 2), named architecture, bf16
    tiled = infer_pipeline(base + ['--output', str(tmp_path / 'o2'), '--arch', 'EBSR', '--tile', '13',
                                   '--tile-overlap', '4', '--precision', 'bf16'])[0]
    assert cv2.imread(tiled['srgb']).shape == (160, 208, 3)
    # RAW files and a BurstSR burst folder
    pytest.importorskip('rawpy')
    pytest.importorskip('tifffile')
    raws = tmp_path / 'raws'
    raws.mkdir()
    write_dng(raws / 'shot.dng', mosaic_counts(unpack_raw(mosaic(photo_rgb(32, 40))).numpy(), 'GRBG'), 'GRBG')
    rec = infer_pipeline(['--weights', str(weights), '--input', str(raws), '--output', str(tmp_path / 'o3'),
                          '--device', 'cpu'])[0]
    assert rec['kind'] == 'raw' and rec['frames_used'] == [0, 0]
    assert cv2.imread(rec['srgb']).shape == (128, 160, 3)
    from codes.scripts.make_burstsr_sample import make_burstsr_sample
    make_burstsr_sample(tmp_path / 'bsr', num_train=0, num_val=1, crop_size=16, log=lambda s: None)
    rec = infer_pipeline(['--weights', str(weights), '--input', str(tmp_path / 'bsr' / 'val'),
                          '--output', str(tmp_path / 'o4'), '--device', 'cpu', '--no-linear'])[0]
    assert rec['kind'] == 'burstsr' and cv2.imread(rec['srgb']).shape == (128, 128, 3)


def test_one_trial_tune_study(tmp_path, sample_data):
    pytest.importorskip('optuna')
    from codes.tune import tune_pipeline
    opt = demo_options(tmp_path, sample_data, name='ebsr_tune', total_iter=2)
    opt['datasets']['val'] = {'type': 'SyntheticBurstDataset', 'dataroot': str(sample_data / 'zurich'),
                              'burst_size': 2, 'crop_size': 128, 'seed': 11}
    opt['val'].update(val_freq=1, save_img=False)
    opt['search_space'] = {'network_g.n_resblocks': [1, 2], 'train.optim_g.lr': {'low': 1e-4, 'high': 1e-3}}
    opt['tune'] = {'n_trials': 1, 'max_iters': 1, 'limit_val_batches': 1, 'start_method': 'forkserver',
                   'sampler': {'type': 'random', 'seed': 0}}
    study = tune_pipeline(ROOT, ['-opt', str(write_options(tmp_path / 'tune.yml', opt))])
    (trial, ) = study.get_trials()
    assert trial.state.name == 'COMPLETE' and np.isfinite(trial.value)
    sampled = load_yaml(tmp_path / 'experiments' / 'ebsr_tune' / 'trial_0' / 'trial.yml')
    assert sampled['network_g']['type'] == 'EBSR'
    assert sampled['network_g']['n_resblocks'] == trial.params['network_g.n_resblocks']
