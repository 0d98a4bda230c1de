"""Elastic restarts: under ``torchrun --max-restarts 2 --nproc_per_node 2`` a rank killed with SIGKILL is
restarted by the agent, the workers resume by themselves from the newest complete state, and the job ends with the
weights of an uninterrupted 2-rank run (gloo, CPU), after exactly one restart."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_runner.cluster_helpers import base_env, free_port, log_text, rank_pid, wait_for
from tests.test_runner.resume_cases import ROOT, bsrt_demo, differences, final_state, write

pytestmark = pytest.mark.skipif(not __import__('torch').distributed.is_available(),
                                reason='no torch.distributed')

TOTAL = 12


def torchrun(option_file: Path, *flags: str) -> subprocess.Popen:
    """``torchrun --max-restarts 2 --nproc_per_node 2 train.py -opt FILE`` (c10d rendezvous on a free port)."""
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--rdzv-backend', 'c10d', '--rdzv-endpoint',
           f'localhost:{free_port()}', '--max-restarts', '2', '--nproc_per_node', '2', str(ROOT / 'train.py'),
           '-opt', str(option_file), *flags]
    return subprocess.Popen(cmd, cwd=ROOT, env=base_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def _options(tmp: Path, sample: Path, name: str) -> dict:
    opt = bsrt_demo(tmp, sample, name, workers=1)
    opt['train']['total_iter'] = TOTAL
    opt['train']['scheduler']['T_max'] = TOTAL
    return opt


def test_killed_rank_is_restarted_and_the_job_ends_as_an_uninterrupted_run(tmp_path, sample_data):
    straight = _options(tmp_path, sample_data, 'elastic_straight')
    proc = torchrun(write(tmp_path / 'straight.yml', straight))
    out = proc.communicate(timeout=400)[0]
    assert proc.returncode == 0, out[-3000:]

    opt = _options(tmp_path, sample_data, 'elastic_killed')
    exp = Path(opt['path']['experiments_root'])
    proc = torchrun(write(tmp_path / 'killed.yml', opt))
    wait_for(lambda: (exp / 'training_states' / '4.state').is_file(), [proc], 'the state of iteration 4')
    victim = rank_pid(proc.pid, 1)
    assert victim is not None, 'rank 1 not found under the torchrun agent'
    done_before_kill = (exp / 'training_states' / f'{TOTAL}.state').is_file()
    os.kill(victim, signal.SIGKILL)
    out = proc.communicate(timeout=400)[0]
    assert proc.returncode == 0, out[-3000:]
    assert not done_before_kill, 'the run finished before the kill: nothing was tested'
    log = log_text(exp)
    # exactly one restart: the restarted round must come up at once (codes.utils.dist.round_store)
    assert 'torchrun restart 1 (TORCHELASTIC_RESTART_COUNT): resuming from the newest complete training state' in log
    assert 'torchrun restart 2' not in log, out[-3000:]
    assert 'Resumed from ' in log
    assert not differences(final_state(Path(straight['path']['experiments_root']), TOTAL), final_state(exp, TOTAL))
