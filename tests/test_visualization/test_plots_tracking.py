"""plot_metrics on generated metric files, and the W&B tracker in offline mode (no network)."""
from __future__ import annotations

import json
import logging
import math
import struct
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from codes.scripts.plot_metrics import main as plot_main
from codes.utils.errors import UserError
from codes.utils.logger import WANDB_ID_FILE, build_trackers


def _write_run(exp: Path) -> None:
    exp.mkdir(parents=True)
    with open(exp / 'metrics.jsonl', 'w') as f:
        for it in (100, 200, 300):
            for ds in ('val', 'val2'):
                f.write(json.dumps({'iter': it, 'dataset': ds, 'psnr': 28 + it / 100, 'ssim': 0.7 + it / 3000,
                                    'baseline_psnr': 29.15, 'num_samples': 8, 'seconds': 1.0}) + '\n')
    with open(exp / 'train_scalars.jsonl', 'w') as f:
        for it in range(25, 301, 25):
            f.write(json.dumps({'iter': it, 'epoch': 0, 'l_total': 0.1 / it ** 0.3, 'l_pix': 0.1 / it ** 0.3,
                                'grad_norm': 1.0, 'lr': 2e-3 * math.cos(it / 300 * 1.5) ** 2 + 1e-5}) + '\n')
        f.write(json.dumps({'iter': 50, 'l_total': 5.0, 'l_pix': 5.0, 'lr': 1.0}) + '\n')  # an earlier run's
        f.write(json.dumps({'iter': 50, 'l_total': 0.1 / 50 ** 0.3, 'l_pix': 0.1 / 50 ** 0.3, 'grad_norm': 1.0,
                            'lr': 2e-3 * math.cos(50 / 300 * 1.5) ** 2 + 1e-5}) + '\n')  # ... logged again on resume
        f.write('{"iter": 310, "l_to')  # a run killed while writing: the last line is skipped


def test_plot_metrics_writes_every_curve(tmp_path):
    pytest.importorskip('matplotlib')
    exp = tmp_path / 'run'
    _write_run(exp)
    out = Path(plot_main([str(exp)]))
    assert out == exp / 'metrics.png'
    img = cv2.imread(str(out))
    assert img.shape == (720, 1280, 3) and img.std() > 5  # 2 x 2 axes: psnr, ssim, losses, lr
    custom = plot_main([str(exp), '--out', str(tmp_path / 'x' / 'curves.png')])
    assert Path(custom).is_file()


def test_plot_metrics_lines_and_baseline_dashes(tmp_path, monkeypatch):
    pytest.importorskip('matplotlib')
    from codes.visualization import plots
    exp = tmp_path / 'run'
    _write_run(exp)
    captured = {}
    real = plots._figure

    def spy(n):
        fig, axes = real(n)
        captured['axes'] = axes
        return fig, axes
    monkeypatch.setattr(plots, '_figure', spy)
    plots.plot_metrics(exp)
    psnr_ax, ssim_ax, loss_ax, lr_ax = captured['axes']
    assert psnr_ax.get_title() == 'validation psnr' and lr_ax.get_title() == 'learning rate'
    lines = {ln.get_label(): ln for ln in psnr_ax.get_lines()}
    assert set(lines) == {'val', 'val2', 'val baseline_psnr', 'val2 baseline_psnr'}
    assert lines['val baseline_psnr'].get_linestyle() == '--' and lines['val'].get_linestyle() == '-'
    assert list(lines['val'].get_xdata()) == [100, 200, 300] and list(lines['val'].get_ydata()) == [29, 30, 31]
    assert {ln.get_label() for ln in loss_ax.get_lines()} == {'l_total', 'l_pix'}
    lr_line = lr_ax.get_lines()[0]
    assert list(lr_line.get_xdata()) == list(range(25, 301, 25)) and lr_ax.get_yscale() == 'log'
    assert max(lr_line.get_ydata()) < 3e-3  # the resumed run's record of iteration 50 replaced the earlier one


def test_plot_metrics_on_an_empty_folder_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match='no metrics.jsonl or train_scalars.jsonl'):
        plot_main([str(tmp_path)])


def test_study_plots(tmp_path):
    optuna = pytest.importorskip('optuna')
    pytest.importorskip('matplotlib')
    from codes.visualization.plots import plot_study
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction='maximize', sampler=optuna.samplers.RandomSampler(seed=0))
    assert plot_study(study, tmp_path) == []  # nothing finished: nothing to draw
    study.optimize(lambda t: -(t.suggest_float('lr', 1e-4, 1e-2, log=True) - 1e-3) ** 2 - t.suggest_int('n', 1, 4),
                   n_trials=6)
    written = plot_study(study, tmp_path / 'study')
    assert [p.name for p in written] == ['optimization_history.png', 'param_importances.png']
    for p in written:
        img = cv2.imread(str(p))
        assert img.shape == (450, 800, 3) and img.std() > 5


def _wandb_records(path: Path) -> list:
    """The protobuf records of a .wandb file (LevelDB-log framing: 32 KiB blocks, 7-byte chunk headers)."""
    from wandb.proto import wandb_internal_pb2 as pb
    data = path.read_bytes()
    assert data[:4] == b':W&B'
    pos, block, buf, out = 7, 32768, b'', []
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack('<IHB', data[pos:pos + 7])
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 0:
            break
        buf = chunk if kind in (1, 2) else buf + chunk
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(buf)
            out.append(rec)
    return out


def _history(run_dir: Path) -> list[tuple[int, dict]]:
    files = list(run_dir.glob('run-*.wandb'))
    assert len(files) == 1
    rows = []
    for rec in _wandb_records(files[0]):
        if rec.WhichOneof('record_type') == 'history':
            rows.append((rec.history.step.num, {(i.key or '/'.join(i.nested_key)): json.loads(i.value_json)
                                                for i in rec.history.item}))
    return rows


def test_wandb_offline_writes_the_logged_scalars_and_resumes_the_run(tmp_path, monkeypatch):
    pytest.importorskip('wandb')
    monkeypatch.setenv('WANDB_MODE', 'offline')
    monkeypatch.setenv('WANDB_SILENT', 'true')
    monkeypatch.setenv('WANDB_DIR', str(tmp_path))
    exp = tmp_path / 'exp'
    opt = {'name': 'tiny', 'logger': {'use_tb_logger': False, 'wandb': {'project': 'toolkit-test'}},
           'path': {'experiments_root': str(exp)}, 'train': {'optim_g': {'type': 'Adam', 'lr': 1e-3}}}
    trackers = build_trackers(opt)
    assert trackers and trackers.tb is None
    run_id = (exp / WANDB_ID_FILE).read_text().strip()
    assert trackers.wandb_run.id == run_id and trackers.wandb_run.config['train']['optim_g']['lr'] == 1e-3
    trackers.add_scalar('losses/l_pix', 0.5, 1)
    trackers.add_scalar('metrics/val/psnr', 28.25, 1)
    trackers.add_image('val/0000', np.zeros((16, 24, 3), np.uint8), 1)
    trackers.add_scalar('losses/l_pix', 0.25, 2)
    trackers.close()
    runs = sorted((exp / 'wandb').glob(f'offline-run-*-{run_id}'))
    assert len(runs) == 1
    hist = _history(runs[0])
    assert [step for step, _ in hist] == [1, 2]
    assert hist[0][1]['losses/l_pix'] == 0.5 and hist[0][1]['metrics/val/psnr'] == 28.25
    assert hist[0][1]['val/0000/_type'] == 'image-file' and hist[1][1]['losses/l_pix'] == 0.25
    assert list((runs[0] / 'files' / 'media' / 'images').rglob('*.png'))
    # a resumed experiment continues the same W&B run id
    again = build_trackers(opt)
    assert again.wandb_run.id == run_id
    again.add_scalar('losses/l_pix', 0.125, 3)
    again.close()
    assert len(list((exp / 'wandb').glob(f'offline-run-*-{run_id}'))) in (1, 2)  # same id, maybe a new folder
    assert build_trackers(opt, rank=1).wandb_run is None  # only rank 0 logs


def test_wandb_missing_package_is_said_and_training_goes_on(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, 'wandb', None)  # import wandb raises ImportError
    opt = {'name': 't', 'logger': {'wandb': {'project': 'p'}}, 'path': {'experiments_root': str(tmp_path)}}
    with caplog.at_level(logging.WARNING, logger='codes.utils.logger'):
        trackers = build_trackers(opt)
    assert not trackers
    assert 'wandb package is not installed' in caplog.text


def test_wandb_options_are_validated():
    from codes.utils.options import SCHEMA, OptionError, validate_block
    block = {'print_freq': 10, 'wandb': {'project': 'p', 'entity': None, 'resume_id': 'abc123'}}
    assert validate_block(block, SCHEMA['logger'], 'logger')['wandb']['project'] == 'p'
    with pytest.raises(OptionError, match="logger.wandb.projekt': unknown key. Did you mean 'project'"):
        validate_block({'wandb': {'projekt': 'p'}}, SCHEMA['logger'], 'logger')
