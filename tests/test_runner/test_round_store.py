"""Process groups of a restarted torchrun round: the agent's store outlives every round and still holds what the
ranks of the earlier round wrote (their gloo addresses, rank 0's round store), but the new round must come up
whichever of its ranks starts first (``codes.utils.dist.round_store``)."""
from __future__ import annotations

import datetime
import subprocess
import sys

import pytest
import torch.distributed as dist

from codes.utils.dist import ROUND_STORE_KEY
from tests.test_runner.cluster_helpers import base_env
from tests.test_runner.resume_cases import ROOT

pytestmark = pytest.mark.skipif(not dist.is_available(), reason='no torch.distributed')

WORKER = '''
import os, sys, time
import torch
from codes.utils import dist as dist_utils
time.sleep(float(sys.argv[1]))
dist_utils.init_dist_from_env('gloo', timeout_minutes=1)
t = torch.tensor([float(os.environ['RANK']) + 1])
dist_utils.all_reduce_sum(t)
print('sum', int(t.item()))
dist_utils.barrier()
dist_utils.destroy_dist()
'''


def _round(agent_port: int, delays: tuple[float, float]) -> list[str]:
    """Start ranks 0 and 1 as torchrun's agent does (its store at ``agent_port``), rank r after ``delays[r]`` s."""
    procs = [subprocess.Popen([sys.executable, '-c', WORKER, str(delays[rank])], cwd=ROOT, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              env=base_env(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE='2',
                                           MASTER_ADDR='127.0.0.1', MASTER_PORT=str(agent_port),
                                           TORCHELASTIC_USE_AGENT_STORE='True'))
             for rank in (0, 1)]
    outs = []
    for p in procs:
        try:
            outs.append(p.communicate(timeout=90)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise AssertionError('a rank of the round hung')
        assert p.returncode == 0, outs[-1][-3000:]
    return outs


@pytest.mark.parametrize('late_rank', [0, 1])
def test_a_restarted_round_ignores_what_the_dead_round_left_in_the_agent_store(late_rank):
    agent = dist.TCPStore('127.0.0.1', 0, world_size=1, is_master=True, wait_for_workers=False,
                          timeout=datetime.timedelta(seconds=60))
    first = _round(agent.port, (0.0, 0.0))
    assert all('sum 3' in out for out in first)
    assert agent.check([ROUND_STORE_KEY])  # the dead round's store address stays behind
    # the next round on the same agent store; one rank starts late, so the other reads the stale entries first
    delays = (2.0, 0.0) if late_rank == 0 else (0.0, 2.0)
    assert all('sum 3' in out for out in _round(agent.port, delays))
