"""End-to-end runs of the training and test pipelines on a tiny BSRT and the sample data (CPU)."""
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import pytest
import torch

from codes.models import build_model
from codes.test import test_pipeline as run_test_pipeline
from codes.train import train_pipeline
from codes.utils.checkpoint import load_file
from codes.utils.options import normalize_options, validate_options
from tests.test_runner.tiny import run_torchrun, tiny_options, write_options

ROOT = Path(__file__).resolve().parents[2]


def losses_from_log(exp: Path) -> list[float]:
    text = ''.join(p.read_text() for p in sorted(exp.glob('train_*.log')))
    return [float(m) for m in re.findall(r'l_pix: ([0-9.e+-]+)', text)]


@pytest.fixture(scope='module')
def trained(tmp_path_factory, sample_data):
    """A 16-iteration run with validation at the end; returns (options path, experiment folder)."""
    tmp = tmp_path_factory.mktemp('train')
    opt = tiny_options(tmp, sample_data, total_iter=16)
    path = write_options(tmp / 'tiny.yml', opt)
    train_pipeline(ROOT, ['-opt', str(path)])
    return path, Path(opt['path']['experiments_root'])


def test_loss_falls_and_outputs_are_written(trained):
    _, exp = trained
    losses = losses_from_log(exp)
    assert len(losses) == 16
    assert sum(losses[-4:]) / 4 < 0.7 * sum(losses[:4]) / 4, losses
    assert (exp / 'models' / 'net_g_16.pth').is_file() and (exp / 'training_states' / '16.state').is_file()
    assert (exp / 'last_checkpoint').read_text().strip().endswith('16.state')
    assert (exp / 'options.yml').is_file() and list((exp / 'tb_logger').glob('events.*'))
    records = [json.loads(line) for line in (exp / 'metrics.jsonl').read_text().splitlines()]
    assert len(records) == 1 and records[0]['iter'] == 16 and records[0]['dataset'] == 'val'
    assert {'psnr', 'ssim', 'baseline_psnr', 'num_samples'} <= set(records[0]) and records[0]['num_samples'] == 8
    assert [p.name for p in (exp / 'visualization' / 'val').glob('*.png')] == ['0000_16_panel.png']
    scalars = [json.loads(line) for line in (exp / 'train_scalars.jsonl').read_text().splitlines()]
    assert [r['iter'] for r in scalars] == list(range(1, 17)) and {'l_pix', 'lr', 'grad_norm'} <= set(scalars[0])
    assert [r['l_pix'] for r in scalars] == pytest.approx(losses, rel=1e-3)  # the logged losses, readable
    assert (exp / 'metrics.png').is_file()  # the curves, drawn at the end of the run
    ckpt = load_file(exp / 'models' / 'net_g_16.pth')
    assert set(ckpt) == {'params'}


def test_fresh_start_over_existing_checkpoints_is_refused(trained):
    path, exp = trained
    with pytest.raises(ValueError, match='already holds training states.*--auto_resume'):
        train_pipeline(ROOT, ['-opt', str(path)])
    assert (exp / 'training_states' / '16.state').is_file()


def test_test_pipeline_writes_metrics_images_and_submission(trained, tmp_path, sample_data):
    _, exp = trained
    opt = {
        'name': 'tiny_test', 'model_type': 'BurstSRModel', 'num_gpu': 0,
        'datasets': {'test_1': {'type': 'SyntheticBurstValDataset', 'name': 'SynVal',
                                'dataroot': str(sample_data / 'SyntheticBurstVal'), 'burst_size': 2}},
        'network_g': tiny_options(tmp_path, sample_data)['network_g'],
        'path': {'pretrain_network_g': str(exp / 'models' / 'net_g_16.pth'), 'results_root': str(tmp_path / 'res')},
        'val': {'save_img': True, 'save_submission': True,
                'metrics': {'psnr': {'type': 'calculate_psnr_linear', 'crop_border': 40}}},
    }
    results = run_test_pipeline(ROOT, ['-opt', str(write_options(tmp_path / 'test.yml', opt))])
    out = tmp_path / 'res' / 'SynVal'
    record = json.loads((out / 'metrics.json').read_text())
    assert record['mean']['num_samples'] == 8 and len(record['per_image']) == 8
    assert record['mean']['psnr'] == pytest.approx(results['SynVal']['mean']['psnr'])
    assert {r['key'] for r in record['per_image']} == {f'{i:04d}' for i in range(8)}
    # training-time validation of the same weights gave the same mean PSNR
    jsonl = json.loads((exp / 'metrics.jsonl').read_text().splitlines()[-1])
    assert record['mean']['psnr'] == pytest.approx(jsonl['psnr'], abs=1e-4)
    for suffix in ('', '_input', '_gt', '_panel'):  # full-resolution views for the report, and the panel
        assert len(list((out / 'visualization').glob(f'[0-9][0-9][0-9][0-9]{suffix}.png'))) == 8, suffix
    assert cv2.imread(str(out / 'visualization' / '0000_gt.png')).shape == (384, 384, 3)
    assert (out / 'index.html').is_file() and len(list((out / 'thumbs').glob('*.jpg'))) == 8
    sub = cv2.imread(str(out / 'submission' / '0000.png'), cv2.IMREAD_UNCHANGED)
    assert sub.dtype.name == 'uint16' and sub.shape == (384, 384, 3) and sub.max() <= 2 ** 14
    assert (out / 'submission.zip').is_file()


def test_kill_and_auto_resume(tmp_path, sample_data):
    opt = tiny_options(tmp_path, sample_data, name='resume', total_iter=1000)
    opt['logger']['save_checkpoint_freq'] = 1
    path = write_options(tmp_path / 'resume.yml', opt)
    exp = Path(opt['path']['experiments_root'])
    proc = subprocess.Popen([sys.executable, str(ROOT / 'train.py'), '-opt', str(path)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while not (exp / 'training_states' / '3.state').exists():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.time() < deadline, 'no checkpoint written in time'
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    states = sorted(int(p.stem) for p in (exp / 'training_states').glob('*.state'))
    last = states[-1]
    # a truncated newer state (as a crash during a non-atomic write would leave) must be skipped
    (exp / 'training_states' / f'{last + 5}.state').write_bytes(b'PK\x03\x04truncated')
    (exp / 'models' / f'net_g_{last + 5}.pth').write_bytes(b'')
    saved = load_file(exp / 'training_states' / f'{last}.state')

    # the resumed model has exactly the saved optimizer state
    resolved = normalize_options(validate_options(opt), ROOT, True)
    model = build_model(resolved)
    model.resume_training(saved, exp / 'models' / f'net_g_{last}.pth')
    got, want = model.optimizer.state_dict(), saved['optimizers'][0]
    assert got['param_groups'] == want['param_groups']
    for k, st in want['state'].items():
        for name, value in st.items():
            assert torch.equal(got['state'][k][name], value), (k, name)

    train_pipeline(ROOT, ['-opt', str(path), '--auto_resume', '--force_yml', f'train.total_iter={last + 2}'])
    log = ''.join(p.read_text() for p in exp.glob('train_*.log'))
    assert f'Skipping training state {exp / "training_states" / f"{last + 5}.state"}' in log
    assert f'Resumed training state of iteration {last}' in log
    assert f'Training finished at iteration {last + 2}' in log
    assert (exp / 'training_states' / f'{last + 2}.state').is_file()


@pytest.mark.skipif(not torch.distributed.is_available(), reason='torch.distributed missing')
def test_two_process_gloo_matches_single_process(tmp_path, sample_data):
    runs = {}
    for world in (1, 2):
        # Adam's first step is lr * sign(g) for tiny g; a large eps makes it linear in g, so rounding can't flip it
        opt = tiny_options(tmp_path, sample_data, name=f'ddp{world}', total_iter=1, adam_eps=1.0)
        opt['datasets']['train']['batch_size_per_gpu'] = 2 // world  # same global batch
        path = write_options(tmp_path / f'ddp{world}.yml', opt)
        out = tmp_path / f'weights{world}'
        run_torchrun(path, out, world, port_offset=world)
        exp = Path(opt['path']['experiments_root'])
        runs[world] = {
            'loss': losses_from_log(exp)[0],
            'weights': [torch.load(out / f'rank{r}.pth', weights_only=True) for r in range(world)],
            'val': json.loads((exp / 'metrics.jsonl').read_text().splitlines()[-1]),
        }
    assert runs[2]['loss'] == pytest.approx(runs[1]['loss'], rel=1e-5)
    w0, w1 = runs[2]['weights']
    for k in w0:
        assert torch.equal(w0[k], w1[k]), f'ranks differ at {k}'
        assert torch.allclose(w0[k], runs[1]['weights'][0][k], atol=1e-6), k
    assert runs[2]['val']['num_samples'] == runs[1]['val']['num_samples'] == 8
    assert runs[2]['val']['psnr'] == pytest.approx(runs[1]['val']['psnr'], abs=1e-3)
