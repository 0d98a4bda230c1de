"""Preemption: SIGTERM mid-run saves a complete state at that iteration and exits 75; ``--auto_resume`` from it
ends bit-identical to an uninterrupted run. Saving by wall time."""
from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

import pytest

from codes.train import train_pipeline
from codes.utils.preemption import PREEMPTED_EXIT_CODE, StopSignals
from tests.test_runner.cluster_helpers import base_env, log_text, train_cmd, wait_for
from tests.test_runner.resume_cases import ROOT, bsrt_demo, differences, final_state, write

pytestmark = pytest.mark.usefixtures('one_thread')


def _options(tmp: Path, sample: Path, name: str) -> dict:
    opt = bsrt_demo(tmp, sample, name, workers=1)
    opt['logger']['print_freq'] = 1
    return opt


@pytest.fixture(scope='module')
def straight(tmp_path_factory, sample_data) -> Path:
    tmp = tmp_path_factory.mktemp('straight')
    opt = _options(tmp, sample_data, 'straight')
    train_pipeline(ROOT, ['-opt', str(write(tmp / 'straight.yml', opt))])
    return Path(opt['path']['experiments_root'])


def test_sigterm_saves_that_iteration_and_the_resume_is_exact(straight, tmp_path, sample_data):
    opt = _options(tmp_path, sample_data, 'preempted')
    opt['datasets']['train']['persistent_workers'] = True  # changes nothing in the data; must not block the exit
    path = write(tmp_path / 'preempted.yml', opt)
    exp = Path(opt['path']['experiments_root'])
    proc = subprocess.Popen(train_cmd(path), cwd=ROOT, env=base_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    wait_for(lambda: exp.is_dir() and 'iter 1/8' in log_text(exp), [proc], 'the first iteration')
    os.killpg(proc.pid, signal.SIGTERM)  # the whole process group, data workers included, as SLURM signals a step
    os.killpg(proc.pid, signal.SIGTERM)  # a second signal during the stop must not break the save
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == PREEMPTED_EXIT_CODE, out[-3000:]
    m = re.search(r'Stop signal \(SIGTERM\) received: the state of iteration (\d+) is saved', log_text(exp))
    assert m, log_text(exp)[-2000:]
    stopped = int(m.group(1))
    assert 1 <= stopped < 8
    assert (exp / 'training_states' / f'{stopped}.state').is_file()
    assert not list((exp / 'training_states').glob('.*tmp*'))  # no temporary file left behind
    train_pipeline(ROOT, ['-opt', str(path), '--auto_resume'])
    assert f'Resumed from {exp / "training_states" / f"{stopped}.state"} at iteration {stopped}' in log_text(exp)
    assert not differences(final_state(straight), final_state(exp))


def test_save_checkpoint_minutes_saves_by_wall_time(tmp_path, sample_data):
    opt = _options(tmp_path, sample_data, 'by_time')
    opt['train']['total_iter'] = 3
    opt['logger'].update(save_checkpoint_freq=1000, save_checkpoint_minutes=1e-9)
    train_pipeline(ROOT, ['-opt', str(write(tmp_path / 'by_time.yml', opt))])
    exp = Path(opt['path']['experiments_root'])
    assert sorted(p.name for p in (exp / 'training_states').glob('*.state')) == ['1.state', '2.state', '3.state']
    assert 'logger.save_checkpoint_minutes' in log_text(exp)


def test_stop_signals_only_record_and_are_put_back():
    old = signal.getsignal(signal.SIGUSR1)
    with StopSignals(['SIGUSR1']) as stop:
        signal.raise_signal(signal.SIGUSR1)
        signal.raise_signal(signal.SIGUSR1)
        assert (stop.received, stop.count) == ('SIGUSR1', 2)
    assert signal.getsignal(signal.SIGUSR1) is old


def test_new_option_keys_have_defaults_and_are_checked(tmp_path, sample_data):
    from codes.utils.options import OptionError, normalize_options, validate_options
    opt = _options(tmp_path, sample_data, 'keys')
    resolved = normalize_options(validate_options(opt), ROOT, True)
    assert resolved['preemption'] == {'signals': ['SIGTERM', 'SIGUSR1'], 'exit_code': PREEMPTED_EXIT_CODE}
    assert resolved['logger']['save_checkpoint_minutes'] is None and resolved['train']['deterministic'] is False
    assert validate_options({**opt, 'preemption': {'signals': ['usr2']}})['preemption']['signals'] == ['SIGUSR2']
    with pytest.raises(OptionError, match=r"'preemption.signals': SIGKILL: not a signal a process can catch"):
        validate_options({**opt, 'preemption': {'signals': ['SIGKILL']}})
    with pytest.raises(OptionError, match='logger.save_checkpoint_minutes'):
        validate_options({**opt, 'logger': {**opt['logger'], 'save_checkpoint_minutes': -1}})
