"""SLURM: the hostlist expander, the env:// variables from srun's, and two local processes started as srun starts
them (gloo): one gets SIGUSR1, both stop at the same iteration with a saved state, and the resumed job ends
bit-identical to an uninterrupted one."""
from __future__ import annotations

import random
import re
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from codes.utils.preemption import PREEMPTED_EXIT_CODE
from codes.utils.slurm import SlurmEnvError, expand_hostlist, port_from_job_id, slurm_dist_env
from tests.test_runner.cluster_helpers import base_env, log_text, train_cmd, wait_for
from tests.test_runner.resume_cases import ROOT, bsrt_demo, differences, final_state, write


@pytest.mark.parametrize('text, hosts', [
    ('node[01-03,07],gpu5', ['node01', 'node02', 'node03', 'node07', 'gpu5']),
    ('gpu5', ['gpu5']),
    ('a[8-10]', ['a8', 'a9', 'a10']),
    ('rack[1-2]-n[1,3]', ['rack1-n1', 'rack1-n3', 'rack2-n1', 'rack2-n3']),
    ('n[009-011],m1,x[2]', ['n009', 'n010', 'n011', 'm1', 'x2']),
])
def test_expand_hostlist(text, hosts):
    assert expand_hostlist(text) == hosts


@pytest.mark.parametrize('text', ['node[01-03', 'node]1', 'node[3-1]', 'node[a-b]', ''])
def test_expand_hostlist_rejects_malformed_lists(text):
    with pytest.raises(SlurmEnvError):
        expand_hostlist(text)


def test_slurm_dist_env_reads_srun_variables(monkeypatch):
    monkeypatch.setenv('PATH', '/nonexistent')  # no scontrol: the expander is used
    env = {'SLURM_PROCID': '5', 'SLURM_NTASKS': '8', 'SLURM_LOCALID': '1', 'SLURM_JOB_ID': '123456',
           'SLURM_JOB_NODELIST': 'node[07-08]'}
    assert slurm_dist_env(env) == {'RANK': '5', 'WORLD_SIZE': '8', 'LOCAL_RANK': '1', 'MASTER_ADDR': 'node07',
                                   'MASTER_PORT': str(port_from_job_id(123456))}
    assert port_from_job_id(123456) == 15000 + 123456 % 20000
    assert slurm_dist_env({**env, 'MASTER_PORT': '4000'})['MASTER_PORT'] == '4000'
    assert slurm_dist_env(env, port=4100)['MASTER_PORT'] == '4100'
    assert slurm_dist_env({**env, 'SLURM_STEP_NODELIST': 'gpu[3-4]'})['MASTER_ADDR'] == 'gpu3'
    with pytest.raises(SlurmEnvError, match='SLURM_PROCID'):
        slurm_dist_env({'SLURM_NTASKS': '2'})


def test_launcher_slurm_outside_srun_is_a_one_line_error(tmp_path, sample_data):
    path = write(tmp_path / 'x.yml', bsrt_demo(tmp_path, sample_data, 'x', 0))
    res = subprocess.run(train_cmd(path, '--launcher', 'slurm'), cwd=ROOT, env=base_env(), capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        'train.py: error: --launcher slurm: SLURM_PROCID, SLURM_NTASKS not set; start train.py with srun (or drop '
        '--launcher slurm)']


def _job_id_with_free_port() -> int:
    """A SLURM job id whose derived MASTER_PORT is free now."""
    for _ in range(50):
        job = random.randrange(10 ** 6, 10 ** 7)
        with socket.socket() as s:
            try:
                s.bind(('127.0.0.1', port_from_job_id(job)))
            except OSError:
                continue
        return job
    pytest.skip('no free port in the job-id range')


def srun_like(option_file: Path, *flags: str, job: int) -> list[subprocess.Popen]:
    """Two local train.py processes with the variables srun sets for a 2-task step on this host."""
    procs = []
    for rank in range(2):
        env = base_env(SLURM_PROCID=str(rank), SLURM_NTASKS='2', SLURM_LOCALID=str(rank), SLURM_JOB_ID=str(job),
                       SLURM_NODELIST='localhost', SLURM_JOB_NODELIST='localhost', SLURM_NNODES='1')
        procs.append(subprocess.Popen(train_cmd(option_file, '--launcher', 'slurm', *flags), cwd=ROOT, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    return procs


def finish(procs: list[subprocess.Popen]) -> list[int]:
    """Wait for the processes; their exit statuses (their output is kept on the Popen objects)."""
    codes = []
    for p in procs:
        p.output = p.communicate(timeout=300)[0]
        codes.append(p.returncode)
    return codes


def _options(tmp: Path, sample: Path, name: str) -> dict:
    opt = bsrt_demo(tmp, sample, name, workers=1)
    opt['logger']['print_freq'] = 1
    return opt


def test_two_slurm_tasks_stop_together_on_sigusr1_and_resume_exactly(tmp_path, sample_data):
    straight = _options(tmp_path, sample_data, 'slurm_straight')
    procs = srun_like(write(tmp_path / 'straight.yml', straight), job=_job_id_with_free_port())
    assert finish(procs) == [0, 0], procs[0].output[-3000:] + procs[1].output[-3000:]
    straight_exp = Path(straight['path']['experiments_root'])
    assert 'SLURM launch: rank 0 of 2 (local rank 0), master localhost:' in log_text(straight_exp)

    opt = _options(tmp_path, sample_data, 'slurm_preempted')
    path = write(tmp_path / 'preempted.yml', opt)
    exp = Path(opt['path']['experiments_root'])
    procs = srun_like(path, job=_job_id_with_free_port())
    wait_for(lambda: exp.is_dir() and 'iter 1/8' in log_text(exp), procs, 'the first iteration')
    procs[1].send_signal(signal.SIGUSR1)  # only rank 1 is warned: rank 0 must stop at the same iteration
    codes = finish(procs)
    assert codes == [PREEMPTED_EXIT_CODE] * 2, procs[0].output[-3000:] + procs[1].output[-3000:]
    m = re.search(r'Stop signal \((SIGUSR1|another rank)\) received: the state of iteration (\d+) is saved',
                  log_text(exp))
    assert m and m.group(1) == 'another rank', log_text(exp)[-2000:]  # the log is rank 0's
    stopped = int(m.group(2))
    assert 1 <= stopped < 8
    state = exp / 'training_states' / f'{stopped}.state'
    assert state.is_file()

    procs = srun_like(path, '--auto_resume', job=_job_id_with_free_port())
    assert finish(procs) == [0, 0], procs[0].output[-3000:] + procs[1].output[-3000:]
    assert f'Resumed from {state} at iteration {stopped}' in log_text(exp)
    assert not differences(final_state(straight_exp), final_state(exp))
