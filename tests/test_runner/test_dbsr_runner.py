"""DBSR through the runner: the shipped demo option file trains (loss falls), test.py scores the checkpoint,
infer.py detects the architecture from our checkpoint and from one written as the original trainer writes it
(pickled classes), and the shipped recipe option files validate."""
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
from tests.test_archs.test_dbsr_arch import write_official_checkpoint
from tests.test_infer.helpers import write_png_burst
from tests.test_runner.test_training import losses_from_log
from tests.test_runner.tiny import one_lr_trial

pytestmark = pytest.mark.usefixtures('one_thread')

ROOT = Path(__file__).resolve().parents[2]
OPTIONS = ROOT / 'options' / 'dbsr'
TINY_NET = load_yaml(OPTIONS / 'demo_dbsr.yml')['network_g']
ITERS = 48


def _demo_overrides(tmp: Path, sample: Path, iters: int) -> list[str]:
    return [f'prepare_sample_data={sample}', f"datasets.train.dataroot={sample / 'zurich'}",
            f"datasets.val.dataroot={sample / 'SyntheticBurstVal'}", 'datasets.train.num_worker_per_gpu=0',
            f"path.experiments_root={tmp / 'experiments' / 'demo_dbsr'}", 'num_gpu=0',
            f'train.total_iter={iters}', f'train.scheduler.T_max={iters}', f'val.val_freq={iters}',
            f'logger.save_checkpoint_freq={iters}', 'logger.print_freq=1', 'logger.use_tb_logger=false',
            'datasets.train.seed=5', 'val.max_save_img=1']


@pytest.fixture(scope='module')
def trained(tmp_path_factory, sample_data):
    """The shipped CPU demo, shortened to 48 iterations; returns the experiment folder."""
    tmp = tmp_path_factory.mktemp('dbsr')
    train_pipeline(ROOT, ['-opt', str(OPTIONS / 'demo_dbsr.yml'), '--force_yml',
                          *_demo_overrides(tmp, sample_data, ITERS)])
    return tmp / 'experiments' / 'demo_dbsr'


def test_demo_training_loss_falls(trained):
    losses = losses_from_log(trained)
    assert len(losses) == ITERS
    assert sum(losses[-8:]) / 8 < 0.8 * sum(losses[:8]) / 8, losses
    records = [json.loads(line) for line in (trained / 'metrics.jsonl').read_text().splitlines()]
    assert records[-1]['iter'] == ITERS and np.isfinite(records[-1]['psnr'])
    # the frozen PWC-Net did not move
    sd = torch.load(trained / 'models' / f'net_g_{ITERS}.pth', weights_only=True)['params']
    torch.manual_seed(2)
    fresh = build_network(TINY_NET).state_dict()
    pwc = [k for k in sd if k.startswith('encoder.alignment_net.net.')]
    assert len(pwc) == 126 and all(torch.equal(sd[k], fresh[k]) for k in pwc)


def test_test_py_scores_the_checkpoint(trained, tmp_path, sample_data):
    weights = trained / 'models' / f'net_g_{ITERS}.pth'
    results = run_test_pipeline(ROOT, [
        '-opt', str(OPTIONS / 'test_synthetic.yml'), '--force_yml', 'num_gpu=0',
        f"datasets.test_1.dataroot={sample_data / 'SyntheticBurstVal'}", 'datasets.test_1.burst_size=4',
        'datasets.test_1.num_worker_per_gpu=0', f'network_g={json.dumps(TINY_NET)}',
        f'path.pretrain_network_g={weights}', f"path.results_root={tmp_path / 'res'}", 'val.save_img=false'])
    record = json.loads((tmp_path / 'res' / 'SyntheticBurstVal' / 'metrics.json').read_text())
    assert record['mean']['num_samples'] == 8
    jsonl = json.loads((trained / 'metrics.jsonl').read_text().splitlines()[-1])
    assert results['SyntheticBurstVal']['mean']['psnr'] == pytest.approx(jsonl['psnr'], abs=1e-4)


def _read16(path):
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    return img[..., ::-1].astype(np.float32) / 65535


def test_infer_detects_dbsr_from_ours_and_from_an_official_trainer_file(trained, tmp_path):
    weights = trained / 'models' / f'net_g_{ITERS}.pth'
    sd = torch.load(weights, weights_only=True)['params']
    net = build_network(TINY_NET).eval()
    net.load_state_dict(sd)
    write_png_burst(tmp_path / 'burst', 3, (10, 12))
    rec = infer_pipeline(['--weights', str(weights), '--input', str(tmp_path / 'burst'), '--output',
                          str(tmp_path / 'o1'), '--device', 'cpu', '--arch', 'DBSR', '--burst-size', '3'])[0]
    assert rec['frames_used'] == [0, 1, 2] and rec['output_size'] == [80, 96]
    summary = json.loads((tmp_path / 'o1' / 'infer_summary.json').read_text())
    assert summary['network_g']['type'] == 'DBSR' and summary['network_g']['enc_out_dim'] == 32
    from codes.data.burst_readers import read_png_burst
    with torch.no_grad():
        ref = net(read_png_burst(tmp_path / 'burst').frames[None])[0].clamp(0, 1)
    assert np.abs(_read16(rec['linear']) - ref.permute(1, 2, 0).numpy()).max() < 1e-4
    # the same weights in the original trainer's checkpoint format, architecture read from the weights
    official = tmp_path / 'DBSRNet_ep0100.pth.tar'
    write_official_checkpoint(sd, official)
    rec2 = infer_pipeline(['--weights', str(official), '--input', str(tmp_path / 'burst'), '--output',
                           str(tmp_path / 'o2'), '--device', 'cpu'])[0]
    assert len(rec2['frames_used']) == 14  # filled to the evaluation burst size
    assert rec2['output_size'] == [80, 96]


@pytest.mark.parametrize('name, is_train', [('train_synthetic.yml', True), ('train_real.yml', True),
                                            ('demo_dbsr.yml', True), ('test_synthetic.yml', False),
                                            ('test_real.yml', False)])
def test_shipped_option_files_validate(name, is_train, tmp_path):
    path = OPTIONS / name
    raw = load_yaml(path)
    for ds in raw['datasets'].values():
        ds['dataroot'] = str(tmp_path)  # the data folders are checked for existence
    opt = normalize_options(validate_options(raw, str(path), is_train=is_train), tmp_path, is_train)
    net_opt = dict(opt['network_g'])
    net_opt.pop('pwcnet_path', None)  # the official PWC-Net file (training from scratch) is not here
    with torch.device('meta'):
        net = build_network(net_opt)
    assert type(net).__name__ == 'DBSR'
    if name.startswith('train'):
        assert opt['train']['optim_g']['lr'] == 1e-4 and opt['train']['scheduler']['type'] == 'StepLR'


def test_real_track_fine_tunes_from_the_synthetic_checkpoint(trained, tmp_path):
    """track real builds the same network: the demo's synthetic checkpoint loads strictly into it, and AlignedL1
    fine-tuning through RealBurstSRModel runs (frozen PWC-Net unchanged)."""
    from codes.scripts.make_burstsr_sample import ensure_burstsr_sample
    from tests.test_runner.test_real_training import real_options
    from tests.test_runner.tiny import write_options
    ensure_burstsr_sample(str(tmp_path / 'data'), num_train=3, num_val=1, crop_size=40)
    ckpt = trained / 'models' / f'net_g_{ITERS}.pth'
    opt = real_options(tmp_path, tmp_path / 'data', ckpt, 'dbsr_real', 3)
    opt['network_g'] = {**TINY_NET, 'track': 'real'}
    train_pipeline(ROOT, ['-opt', str(write_options(tmp_path / 'real.yml', opt))])
    exp = tmp_path / 'experiments' / 'dbsr_real'
    losses = losses_from_log(exp)
    assert len(losses) == 3 and all(np.isfinite(losses))
    before = torch.load(ckpt, weights_only=True)['params']
    after = torch.load(exp / 'models' / 'net_g_3.pth', weights_only=True)['params']
    pwc = [k for k in before if k.startswith('encoder.alignment_net.net.')]
    assert all(torch.equal(before[k], after[k]) for k in pwc)
    assert not torch.equal(before['decoder.predictor.0.weight'], after['decoder.predictor.0.weight'])


def test_tune_runs_a_dbsr_trial(tmp_path, sample_data):
    pytest.importorskip('optuna')
    trial = one_lr_trial(OPTIONS / 'demo_dbsr.yml', tmp_path,
                         [*_demo_overrides(tmp_path, sample_data, 2), 'val.save_img=false'])
    assert trial.state.name == 'COMPLETE' and np.isfinite(trial.value)
