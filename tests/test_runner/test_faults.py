"""Faults and bad input in the runner end in one clear error and lose nothing: a non-finite loss, a full disk during
a save, broken or wrong resume files, nonsensical option values, a file given as a data folder, test.py's results
for any sample key."""
import errno
import json
import zipfile
from pathlib import Path

import pytest
import torch

from codes.archs import build_network
from codes.models import build_model
from codes.test import test_pipeline as run_test_pipeline
from codes.train import train_pipeline
from codes.utils.build import OptionError
from codes.utils.checkpoint import CheckpointError, SaveError, load_file
from codes.utils.options import normalize_options, validate_options
from tests.test_runner.tiny import TINY_NET, tiny_options, write_options

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.usefixtures('one_thread')


def _model(tmp_path, sample_data, **train):
    opt = normalize_options(validate_options(tiny_options(tmp_path, sample_data, **train)), ROOT, is_train=True)
    return build_model(opt), opt


def _batch(sample_data):
    from codes.data import build_dataset
    ds = build_dataset(tiny_options(Path('.'), sample_data)['datasets']['train'], 'datasets.train')
    items = [ds[0], ds[1]]
    return {'lq': torch.stack([i['lq'] for i in items]), 'gt': torch.stack([i['gt'] for i in items]),
            'key': [i['key'] for i in items]}


class _NoBackward(torch.autograd.Function):
    """Identity whose backward fails, as torchvision's CPU deform_conv2d crashes on NaN input."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        raise AssertionError('backward ran on a non-finite loss')


def test_non_finite_loss_is_skipped_before_backward(tmp_path, sample_data):
    model, _ = _model(tmp_path, sample_data)
    model.feed_data(_batch(sample_data))
    before = {k: v.clone() for k, v in model.bare_net.state_dict().items()}
    real = model.compute_loss

    def nan_loss():
        losses = real()
        total = _NoBackward.apply(losses['l_total'] * float('nan'))
        return {**losses, 'l_total': total}

    model.compute_loss = nan_loss
    out = model.optimize_parameters(1)
    assert out['skipped'] == 1.0 and model.nan_skips == 1 and set(out) >= {'l_total', 'l_pix', 'grad_norm'}
    assert all(torch.equal(before[k], v) for k, v in model.bare_net.state_dict().items())
    assert all(p.grad is None for p in model.bare_net.parameters())
    model.compute_loss = real  # a finite loss trains again
    out = model.optimize_parameters(2)
    assert 'skipped' not in out and model.nan_skips == 1
    model.nan_skip_limit = 0
    model.compute_loss = nan_loss
    with pytest.raises(FloatingPointError, match='nan_skip_limit'):
        model.optimize_parameters(3)


def test_disk_full_during_save_names_the_file_and_keeps_the_previous_checkpoint(tmp_path, sample_data, monkeypatch):
    import builtins

    import codes.utils.files as files
    model, opt = _model(tmp_path, sample_data)
    model.save(1, 0)
    models, states = Path(opt['path']['models']), Path(opt['path']['training_states'])
    pointer = Path(opt['path']['experiments_root']) / 'last_checkpoint'

    class Full:
        """A file whose writes fail with ENOSPC after 4 KB, as on a full disk."""

        def __init__(self, f):
            self.f, self.n = f, 0

        def write(self, data):
            self.n += len(data)
            if self.n > 4096:
                raise OSError(errno.ENOSPC, 'No space left on device')
            return self.f.write(data)

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr(files, 'open', lambda *a, **k: Full(builtins.open(*a, **k)), raising=False)
    with pytest.raises(SaveError) as info:
        model.save(2, 0)
    msg = str(info.value)
    assert 'no space left on the device' in msg and str(models / 'net_g_2.pth') in msg and 'intact' in msg
    assert 'unexpected pos' not in msg and '\n' not in msg
    monkeypatch.undo()
    assert sorted(p.name for p in models.iterdir()) == ['net_g_1.pth']  # no temporary file left
    assert sorted(p.name for p in states.iterdir()) == ['1.state']
    assert pointer.read_text().strip().endswith('1.state')
    assert load_file(models / 'net_g_1.pth')['params'] and load_file(states / '1.state')['iter'] == 1


def test_resume_and_option_mistakes_have_precise_messages(tmp_path, sample_data):
    opt = tiny_options(tmp_path, sample_data, name='broken', total_iter=2)
    path = write_options(tmp_path / 'broken.yml', opt)
    exp = Path(opt['path']['experiments_root'])
    (exp / 'training_states').mkdir(parents=True)
    (exp / 'models').mkdir()
    (exp / 'training_states' / '4.state').write_bytes(b'PK\x03\x04 truncated')
    (exp / 'training_states' / '2.state').write_bytes(b'')
    with pytest.raises(CheckpointError, match=r'--auto_resume: none of the 2 training state\(s\) in .* can be '
                       r'resumed \(newest: 4.state: .*nothing was overwritten'):
        train_pipeline(ROOT, ['-opt', str(path), '--auto_resume'])
    assert (exp / 'training_states' / '4.state').read_bytes() == b'PK\x03\x04 truncated'

    weights = tmp_path / 'net_g_9.pth'
    torch.save({'params': build_network(TINY_NET).state_dict()}, weights)
    with pytest.raises(CheckpointError, match=r'net_g_9.pth \(path.resume_state\): not a training state \(no iter, '
                       r'.*give it as path.pretrain_network_g'):
        train_pipeline(ROOT, ['-opt', str(path), '--force_yml', f'path.resume_state={weights}',
                              f'path.experiments_root={tmp_path / "other"}'])

    for override, key in (('datasets.train.batch_size_per_gpu=-4', 'datasets.train.batch_size_per_gpu'),
                          ('train.total_iter=0', 'train.total_iter'),
                          ('datasets.train.num_worker_per_gpu=-1', 'datasets.train.num_worker_per_gpu')):
        with pytest.raises(OptionError, match=rf"broken.yml: option '{key}': must be >= -?\d+, got -?\d+"):
            train_pipeline(ROOT, ['-opt', str(path), '--force_yml', override,
                                  f'path.experiments_root={tmp_path / "fresh"}'])

    a_file = tmp_path / 'notes.txt'
    a_file.write_text('not data')
    for phase in ('train', 'val'):
        with pytest.raises(OptionError, match=rf"option 'datasets.{phase}.dataroot': .*notes.txt is a file, not a "
                           'folder'):
            train_pipeline(ROOT, ['-opt', str(path), '--force_yml', f'datasets.{phase}.dataroot={a_file}',
                                  f'path.experiments_root={tmp_path / "fresh"}'])
    with pytest.raises(OptionError, match=r"option 'datasets.train.dataroot': .*missing' does not exist"):
        train_pipeline(ROOT, ['-opt', str(path), '--force_yml', f'datasets.train.dataroot={tmp_path / "missing"}',
                              f'path.experiments_root={tmp_path / "fresh"}'])


def _weights(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / 'net_g_2.pth'
    torch.save({'params': build_network(TINY_NET).state_dict()}, path)
    return path


def test_test_py_writes_metrics_without_images_or_submission(tmp_path, sample_data):
    opt = {'name': 'plain', 'model_type': 'BurstSRModel', 'num_gpu': 0,
           'datasets': {'val': {'type': 'SyntheticBurstValDataset', 'name': 'SynVal',
                                'dataroot': str(sample_data / 'SyntheticBurstVal'), 'burst_size': 2}},
           'network_g': dict(TINY_NET),
           'path': {'pretrain_network_g': str(_weights(tmp_path)), 'results_root': str(tmp_path / 'res')},
           'val': {'save_img': False, 'save_submission': False,
                   'metrics': {'psnr': {'type': 'calculate_psnr_linear', 'crop_border': 40}}}}
    results = run_test_pipeline(ROOT, ['-opt', str(write_options(tmp_path / 'plain.yml', opt))])
    record = json.loads((tmp_path / 'res' / 'SynVal' / 'metrics.json').read_text())
    assert record['mean']['psnr'] == pytest.approx(results['SynVal']['mean']['psnr'])
    assert sorted(p.name for p in (tmp_path / 'res' / 'SynVal').iterdir()) == ['metrics.json']


def test_test_py_outputs_for_keys_with_folders_and_skips_the_training_set(tmp_path, sample_data):
    train_opt = tiny_options(tmp_path, sample_data)['datasets']['train']
    opt = {'name': 'demo', 'model_type': 'BurstSRModel', 'num_gpu': 0,
           'datasets': {'train': dict(train_opt),  # as in demo_synthetic.yml: listed, not evaluated
                        'val': {**{k: v for k, v in train_opt.items() if k not in ('batch_size_per_gpu',)},
                                'name': 'crops', 'dataset_enlarge_ratio': 1}},
           'network_g': dict(TINY_NET),
           'path': {'pretrain_network_g': str(_weights(tmp_path)), 'results_root': str(tmp_path / 'res')},
           'val': {'save_img': True, 'save_submission': True,
                   'metrics': {'psnr': {'type': 'calculate_psnr_linear', 'crop_border': 40}}}}
    results = run_test_pipeline(ROOT, ['-opt', str(write_options(tmp_path / 'demo.yml', opt))])
    assert list(results) == ['crops']
    out = tmp_path / 'res' / 'crops'
    record = json.loads((out / 'metrics.json').read_text())
    keys = [r['key'] for r in record['per_image']]
    assert keys and all('/' in k for k in keys)  # e.g. 'train/canon/0.jpg_000000' in the sample data
    for k in keys:
        assert (out / 'submission' / f'{k}.png').is_file() and (out / 'visualization' / f'{k}.png').is_file()
    with zipfile.ZipFile(out / 'submission.zip') as zf:
        assert sorted(zf.namelist()) == sorted(f'{k}.png' for k in keys)
    assert not (tmp_path / 'res' / 'SyntheticBurstDataset').exists() and not (tmp_path / 'res' / 'train').exists()
    only_train = {**opt, 'datasets': {'train': dict(train_opt)}}
    with pytest.raises(OptionError, match='only a training set'):
        run_test_pipeline(ROOT, ['-opt', str(write_options(tmp_path / 'train_only.yml', only_train))])


def test_a_non_finite_loss_on_another_rank_skips_this_rank_too(tmp_path, sample_data, monkeypatch):
    """Under DDP every rank must skip the backward together (or DDP's gradient all-reduce would hang): the flag
    is summed over ranks. Here the other rank's NaN is simulated in the all-reduce."""
    import codes.utils.dist as dist_utils
    model, _ = _model(tmp_path, sample_data)
    model.feed_data(_batch(sample_data))
    calls = []

    def other_rank_nan(t):
        calls.append(float(t.item()))
        return t.add_(1.0)

    monkeypatch.setattr(dist_utils, 'all_reduce_sum', other_rank_nan)
    model.world_size = 2
    out = model.optimize_parameters(1)
    assert calls == [0.0] and out['skipped'] == 1.0 and model.nan_skips == 1  # finite here, skipped all the same
    assert all(p.grad is None for p in model.bare_net.parameters())
