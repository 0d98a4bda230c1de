"""Process helpers of the cluster tests: start train.py, wait for a file or a log line, find torchrun's workers."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from tests.test_runner.resume_cases import ROOT


def base_env(**extra: str) -> dict[str, str]:
    """The environment of a child train.py: one thread, the repository importable, no inherited launcher vars."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(('SLURM_', 'TORCHELASTIC_')) and k not in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK',
                                                                           'MASTER_ADDR', 'MASTER_PORT')}
    env.update(OMP_NUM_THREADS='1', PYTHONPATH=str(ROOT), **extra)
    return env


def free_port() -> int:
    """A TCP port nothing listens on now."""
    import socket
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def wait_for(condition: Callable[[], bool], procs: list[subprocess.Popen], what: str, timeout: float = 240) -> None:
    """Poll ``condition`` until true; fail when a process ends first or time runs out."""
    deadline = time.time() + timeout
    while not condition():
        for p in procs:
            if p.poll() is not None:
                out = p.stdout.read() if p.stdout else ''
                raise AssertionError(f'process ended (status {p.returncode}) before {what}:\n{out[-3000:]}')
        if time.time() > deadline:
            raise AssertionError(f'timed out waiting for {what}')
        time.sleep(0.05)


def log_text(exp: Path) -> str:
    """All train_*.log files of an experiment folder."""
    return ''.join(p.read_text() for p in sorted(exp.glob('train_*.log')))


def train_cmd(option_file: Path, *flags: str) -> list[str]:
    """``python train.py -opt FILE FLAGS``."""
    return [sys.executable, str(ROOT / 'train.py'), '-opt', str(option_file), *flags]


def children(pid: int) -> list[int]:
    """The direct child processes of ``pid`` (from /proc)."""
    out = []
    for entry in Path('/proc').iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / 'stat').read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(')', 1)[1].split()[1])
        if ppid == pid:
            out.append(int(entry.name))
    return out


def environ_of(pid: int) -> dict[str, str]:
    """The environment of process ``pid`` ({} if it is gone)."""
    try:
        raw = Path(f'/proc/{pid}/environ').read_bytes()
    except OSError:
        return {}
    return dict(item.split('=', 1) for item in raw.decode(errors='replace').split('\0') if '=' in item)


def rank_pid(agent: int, rank: int) -> int | None:
    """The pid of torchrun's worker of global rank ``rank`` under the agent process ``agent``."""
    for pid in children(agent):
        if environ_of(pid).get('RANK') == str(rank):
            return pid
    return None
