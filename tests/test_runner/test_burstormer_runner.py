"""Burstormer through the runner: the shipped demo option file trains (loss falls), test.py scores the checkpoint,
infer.py detects the architecture and runs every burst input kind, tune.py runs a trial; the shipped recipe option
files validate."""
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from codes.archs import build_network
from codes.infer import infer_pipeline
from codes.test import test_pipeline as run_test_pipeline
from codes.train import train_pipeline
from codes.utils.options import load_yaml, normalize_options, validate_options
from tests.test_infer.helpers import mosaic_counts, photo_rgb, write_dng, write_png_burst
from tests.test_runner.test_training import losses_from_log
from tests.test_runner.tiny import one_lr_trial

pytestmark = pytest.mark.usefixtures('one_thread')

ROOT = Path(__file__).resolve().parents[2]
OPTIONS = ROOT / 'options' / 'burstormer'
TINY_NET = load_yaml(OPTIONS / 'demo_synthetic.yml')['network_g']


def _demo_overrides(tmp: Path, sample: Path, iters: int) -> list[str]:
    return [f'prepare_sample_data={sample}', f"datasets.train.dataroot={sample / 'zurich'}",
            f"datasets.val.dataroot={sample / 'SyntheticBurstVal'}", 'datasets.train.num_worker_per_gpu=0',
            f"path.experiments_root={tmp / 'experiments' / 'demo_burstormer'}", 'num_gpu=0',
            f'train.total_iter={iters}', f'train.scheduler.T_max={iters}', f'val.val_freq={iters}',
            f'logger.save_checkpoint_freq={iters}', 'logger.print_freq=1', 'logger.use_tb_logger=false',
            'datasets.train.seed=5']


@pytest.fixture(scope='module')
def trained(tmp_path_factory, sample_data):
    """The shipped CPU demo, shortened to 16 iterations; returns the experiment folder."""
    tmp = tmp_path_factory.mktemp('burstormer')
    train_pipeline(ROOT, ['-opt', str(OPTIONS / 'demo_synthetic.yml'), '--force_yml',
                          *_demo_overrides(tmp, sample_data, 16)])
    return tmp / 'experiments' / 'demo_burstormer'


def test_demo_training_loss_falls(trained):
    losses = losses_from_log(trained)
    assert len(losses) == 16
    assert sum(losses[-4:]) / 4 < 0.8 * sum(losses[:4]) / 4, losses
    records = [json.loads(line) for line in (trained / 'metrics.jsonl').read_text().splitlines()]
    assert records[-1]['iter'] == 16 and np.isfinite(records[-1]['psnr'])


def test_test_py_scores_the_checkpoint(trained, tmp_path, sample_data):
    weights = trained / 'models' / 'net_g_16.pth'
    results = run_test_pipeline(ROOT, [
        '-opt', str(OPTIONS / 'test_synthetic.yml'), '--force_yml', 'num_gpu=0',
        f"datasets.test_1.dataroot={sample_data / 'SyntheticBurstVal'}", 'datasets.test_1.burst_size=4',
        'datasets.test_1.num_worker_per_gpu=0', f'network_g={json.dumps(TINY_NET)}',
        f'path.pretrain_network_g={weights}', f"path.results_root={tmp_path / 'res'}", 'val.save_img=false'])
    record = json.loads((tmp_path / 'res' / 'SyntheticBurstVal' / 'metrics.json').read_text())
    assert record['mean']['num_samples'] == 8
    jsonl = json.loads((trained / 'metrics.jsonl').read_text().splitlines()[-1])
    assert results['SyntheticBurstVal']['mean']['psnr'] == pytest.approx(jsonl['psnr'], abs=1e-4)
    assert (tmp_path / 'res' / 'SyntheticBurstVal' / 'submission' / '0000.png').is_file()


def _read16(path):
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    return img[..., ::-1].astype(np.float32) / 65535


def test_infer_detects_burstormer_on_every_input_kind(trained, tmp_path):
    weights = trained / 'models' / 'net_g_16.pth'
    net = build_network(TINY_NET).eval()
    net.load_state_dict(torch.load(weights, weights_only=True)['params'])
    # PNG burst, 3 frames: filled to the 4 the network was trained for; architecture read from the weights
    write_png_burst(tmp_path / 'burst', 3, (20, 24))
    rec = infer_pipeline(['--weights', str(weights), '--input', str(tmp_path / 'burst'), '--output',
                          str(tmp_path / 'o1'), '--device', 'cpu', '--arch', 'Burstormer', '--burst-size', '4'])[0]
    assert rec['frames_used'] == [0, 1, 2, 1] and 'repeating' in rec['frame_rule']
    summary = json.loads((tmp_path / 'o1' / 'infer_summary.json').read_text())
    assert summary['network_g'] == {'type': 'Burstormer', 'track': 'synthetic', 'num_features': 16,
                                    'deformable_groups': 8, 'burst_size': 4}
    from codes.data.burst_readers import read_png_burst
    with torch.no_grad():
        ref = net(read_png_burst(tmp_path / 'burst').frames[[0, 1, 2, 1]][None])[0].clamp(0, 1)
    assert np.abs(_read16(rec['linear']) - ref.permute(1, 2, 0).numpy()).max() < 1e-4
    # architecture read from the weights (the burst size cannot be: the published 14), tiled
    rec = infer_pipeline(['--weights', str(weights), '--input', str(tmp_path / 'burst'), '--output',
                          str(tmp_path / 'o2'), '--device', 'cpu', '--tile', '12'])[0]
    assert len(rec['frames_used']) == 14 and _read16(rec['linear']).shape == (160, 192, 3)
    # a RAW file (DNG) and a BurstSR burst
    pytest.importorskip('rawpy')
    pytest.importorskip('tifffile')
    (tmp_path / 'raws').mkdir()
    from codes.data.camera_pipeline import mosaic, unpack_raw
    write_dng(tmp_path / 'raws' / 'a.dng', mosaic_counts(unpack_raw(mosaic(photo_rgb(40, 48))).numpy(), 'RGGB'))
    four = ['--device', 'cpu', '--arch', 'Burstormer', '--burst-size', '4']
    rec = infer_pipeline(['--weights', str(weights), '--input', str(tmp_path / 'raws'), '--output',
                          str(tmp_path / 'o3'), *four])[0]
    assert rec['kind'] == 'raw' and cv2.imread(rec['srgb']).shape == (160, 192, 3)
    from codes.scripts.make_burstsr_sample import make_burstsr_sample
    make_burstsr_sample(tmp_path / 'bsr', num_train=0, num_val=1, crop_size=24, log=lambda s: None)
    rec = infer_pipeline(['--weights', str(weights), '--input', str(tmp_path / 'bsr' / 'val'), '--output',
                          str(tmp_path / 'o4'), '--no-linear', *four])[0]
    assert rec['kind'] == 'burstsr' and rec['frames_used'] == [0, 1, 2, 3]
    assert cv2.imread(rec['srgb']).shape == (192, 192, 3)


def test_tune_runs_a_burstormer_trial(tmp_path, sample_data):
    pytest.importorskip('optuna')
    trial = one_lr_trial(OPTIONS / 'demo_synthetic.yml', tmp_path,
                         [*_demo_overrides(tmp_path, sample_data, 2), 'val.save_img=false'])
    assert trial.state.name == 'COMPLETE' and np.isfinite(trial.value)


@pytest.mark.parametrize('name, is_train', [('train_synthetic.yml', True), ('train_real.yml', True),
                                            ('demo_synthetic.yml', True), ('test_synthetic.yml', False),
                                            ('test_real.yml', False)])
def test_shipped_option_files_validate(name, is_train, tmp_path):
    path = OPTIONS / name
    raw = load_yaml(path)
    for ds in raw['datasets'].values():
        ds['dataroot'] = str(tmp_path)  # the data folders are checked for existence
    opt = normalize_options(validate_options(raw, str(path), is_train=is_train), tmp_path, is_train)
    with torch.device('meta'):
        net = build_network(opt['network_g'])
    assert type(net).__name__ == 'Burstormer'
