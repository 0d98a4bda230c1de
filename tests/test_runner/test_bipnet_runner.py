"""BIPNet through the runner: the shipped demo option file trains (loss falls), test.py scores the checkpoint,
infer.py reads the architecture from the weights and fills a short burst to the 14 frames; a data burst size other
than 14 is refused in one line; the shipped recipe option files validate."""
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
from codes.utils.errors import UserError
from codes.utils.options import load_yaml, normalize_options, validate_options
from tests.test_infer.helpers import write_png_burst
from tests.test_runner.test_training import losses_from_log
from tests.test_runner.tiny import one_lr_trial

pytestmark = pytest.mark.usefixtures('one_thread')

ROOT = Path(__file__).resolve().parents[2]
OPTIONS = ROOT / 'options' / 'bipnet'
TINY_NET = load_yaml(OPTIONS / 'demo_bipnet.yml')['network_g']
ITERS = 12


@pytest.fixture(scope='module')
def one_val(tmp_path_factory, sample_data) -> Path:
    """A SyntheticBurstVal-format set holding only the first burst of the sample (each burst costs seconds here)."""
    import shutil
    out = tmp_path_factory.mktemp('val1') / 'SyntheticBurstVal'
    src = sample_data / 'SyntheticBurstVal'
    for part in ('bursts', 'gt'):
        shutil.copytree(src / part / '0000', out / part / '0000')
    return out


def _demo_overrides(tmp: Path, sample: Path, val: Path, iters: int) -> list[str]:
    return [f'prepare_sample_data={sample}', f"datasets.train.dataroot={sample / 'zurich'}",
            f'datasets.val.dataroot={val}', 'datasets.train.num_worker_per_gpu=0',
            f"path.experiments_root={tmp / 'experiments' / 'demo_bipnet'}", 'num_gpu=0',
            f'train.total_iter={iters}', f'train.scheduler.T_max={iters}', f'val.val_freq={iters}',
            'val.save_img=false', f'logger.save_checkpoint_freq={iters}',
            'logger.print_freq=1', 'logger.use_tb_logger=false', 'datasets.train.seed=5']


@pytest.fixture(scope='module')
def trained(tmp_path_factory, sample_data, one_val):
    """The shipped CPU demo, shortened to a few iterations and one validation burst; the experiment folder."""
    tmp = tmp_path_factory.mktemp('bipnet')
    train_pipeline(ROOT, ['-opt', str(OPTIONS / 'demo_bipnet.yml'), '--force_yml',
                          *_demo_overrides(tmp, sample_data, one_val, ITERS)])
    return tmp / 'experiments' / 'demo_bipnet'


def test_demo_training_loss_falls(trained):
    losses = losses_from_log(trained)
    assert len(losses) == ITERS
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3, losses
    records = [json.loads(line) for line in (trained / 'metrics.jsonl').read_text().splitlines()]
    assert records[-1]['iter'] == ITERS and np.isfinite(records[-1]['psnr'])


def _test_args(val: Path, weights: Path, out: Path, *extra: str) -> list[str]:
    return ['-opt', str(OPTIONS / 'test_synthetic.yml'), '--force_yml', 'num_gpu=0',
            f'datasets.test_1.dataroot={val}', 'datasets.test_1.num_worker_per_gpu=0',
            f'network_g={json.dumps(TINY_NET)}', f'path.pretrain_network_g={weights}', f'path.results_root={out}',
            'val.save_img=false', *extra]


def test_test_py_scores_the_checkpoint(trained, tmp_path, one_val):
    weights = trained / 'models' / f'net_g_{ITERS}.pth'
    results = run_test_pipeline(ROOT, _test_args(one_val, weights, tmp_path / 'res'))
    jsonl = json.loads((trained / 'metrics.jsonl').read_text().splitlines()[-1])
    assert results['SyntheticBurstVal']['mean']['psnr'] == pytest.approx(jsonl['psnr'], abs=1e-4)
    assert (tmp_path / 'res' / 'SyntheticBurstVal' / 'submission' / '0000.png').is_file()


def test_a_burst_size_other_than_14_is_refused_in_one_line(trained, tmp_path, one_val):
    weights = trained / 'models' / f'net_g_{ITERS}.pth'
    with pytest.raises(UserError, match='bursts of 14 frames.*got 8'):
        run_test_pipeline(ROOT, _test_args(one_val, weights, tmp_path / 'res', 'datasets.test_1.burst_size=8'))
    with pytest.raises(UserError, match=r'network_g\.burst_size'):
        run_test_pipeline(ROOT, _test_args(one_val, weights, tmp_path / 'res2', 'network_g.burst_size=8'))


def _read16(path):
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    return img[..., ::-1].astype(np.float32) / 65535


def test_infer_reads_bipnet_from_the_weights(trained, tmp_path):
    weights = trained / 'models' / f'net_g_{ITERS}.pth'
    net = build_network(TINY_NET).eval()
    net.load_state_dict(torch.load(weights, weights_only=True)['params'])
    write_png_burst(tmp_path / 'burst', 3, (8, 12))  # 3 frames: filled to the 14 the network takes
    rec = infer_pipeline(['--weights', str(weights), '--input', str(tmp_path / 'burst'), '--output',
                          str(tmp_path / 'o1'), '--device', 'cpu'])[0]
    assert len(rec['frames_used']) == 14 and rec['frames_used'][:3] == [0, 1, 2]
    summary = json.loads((tmp_path / 'o1' / 'infer_summary.json').read_text())
    assert summary['network_g'] == {k: v for k, v in TINY_NET.items()}
    from codes.data.burst_readers import read_png_burst
    with torch.no_grad():
        ref = net(read_png_burst(tmp_path / 'burst').frames[rec['frames_used']][None])[0].clamp(0, 1)
    assert np.abs(_read16(rec['linear']) - ref.permute(1, 2, 0).numpy()).max() < 1e-4
    rec = infer_pipeline(['--weights', str(weights), '--input', str(tmp_path / 'burst'), '--output',
                          str(tmp_path / 'o2'), '--device', 'cpu', '--arch', 'BIPNet'])[0]
    assert _read16(rec['linear']).shape == (64, 96, 3)


@pytest.mark.parametrize('name, is_train', [('train_synthetic.yml', True), ('train_real.yml', True),
                                            ('demo_bipnet.yml', True), ('test_synthetic.yml', False),
                                            ('test_real.yml', False)])
def test_shipped_option_files_validate(name, is_train, tmp_path):
    path = OPTIONS / name
    raw = load_yaml(path)
    for ds in raw['datasets'].values():
        ds['dataroot'] = str(tmp_path)  # the data folders are checked for existence
    opt = normalize_options(validate_options(raw, str(path), is_train=is_train), tmp_path, is_train)
    with torch.device('meta'):
        net = build_network(opt['network_g'])
    assert type(net).__name__ == 'BIPNet'
    assert all(ds['burst_size'] == 14 for ds in opt['datasets'].values())


def test_tune_runs_a_bipnet_trial(tmp_path, sample_data, one_val):
    pytest.importorskip('optuna')
    trial = one_lr_trial(OPTIONS / 'demo_bipnet.yml', tmp_path, _demo_overrides(tmp_path, sample_data, one_val, 2))
    assert trial.state.name == 'COMPLETE' and np.isfinite(trial.value)
