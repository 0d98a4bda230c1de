"""SLURM launch (``srun python train.py -opt FILE --launcher slurm``): the process-group layout from SLURM's
environment, and a SLURM hostlist expander for machines without ``scontrol``.

``srun`` starts one task per process and sets ``SLURM_PROCID`` (the global rank), ``SLURM_NTASKS`` (the world
size), ``SLURM_LOCALID`` (the rank on the node) and ``SLURM_STEP_NODELIST`` / ``SLURM_JOB_NODELIST`` /
``SLURM_NODELIST`` (the hosts, compressed as ``node[01-03,07],gpu5``). :func:`slurm_dist_env` turns them into the
``env://`` variables of ``torch.distributed`` (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
``MASTER_PORT``), as BasicSR's slurm launcher does, but without requiring ``scontrol``.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from typing import Mapping

from codes.utils.errors import UserError

__all__ = ['expand_hostlist', 'slurm_dist_env', 'apply_slurm_env', 'SlurmEnvError', 'port_from_job_id']

_RANGE = re.compile(r'(\d+)(?:-(\d+))?')


class SlurmEnvError(UserError, ValueError):
    """``--launcher slurm`` without the variables srun sets, or a node list that cannot be read."""


def _split_top(text: str) -> list[str]:
    """Split at the commas that are not inside brackets."""
    parts, depth, cur = [], 0, ''
    for ch in text:
        if ch == '[':
            depth += 1
        elif ch == ']':
            depth -= 1
            if depth < 0:
                raise SlurmEnvError(f'node list {text!r}: unbalanced "]"')
        if ch == ',' and depth == 0:
            parts.append(cur)
            cur = ''
        else:
            cur += ch
    if depth:
        raise SlurmEnvError(f'node list {text!r}: unbalanced "["')
    parts.append(cur)
    return [p for p in (s.strip() for s in parts) if p]


def _expand_ranges(body: str, text: str) -> list[str]:
    """``01-03,07`` -> ``['01', '02', '03', '07']`` (zero padding kept, as SLURM writes it)."""
    out = []
    for item in body.split(','):
        m = _RANGE.fullmatch(item.strip())
        if not m:
            raise SlurmEnvError(f'node list {text!r}: cannot read the range {item!r}')
        lo, hi = m.group(1), m.group(2) or m.group(1)
        if int(hi) < int(lo):
            raise SlurmEnvError(f'node list {text!r}: range {item!r} runs backwards')
        width = len(lo)
        out.extend(str(i).zfill(width) for i in range(int(lo), int(hi) + 1))
    return out


def _expand_host(host: str, text: str) -> list[str]:
    """One host pattern, possibly with several bracket groups (``rack[1-2]-n[1-3]``), in SLURM's order."""
    m = re.search(r'\[([^\[\]]*)\]', host)
    if not m:
        return [host]
    head, tail = host[:m.start()], host[m.end():]
    return [head + mid + rest for mid in _expand_ranges(m.group(1), text) for rest in _expand_host(tail, text)]


def expand_hostlist(text: str) -> list[str]:
    """The host names of a SLURM hostlist: ``'node[01-03,07],gpu5'`` -> ``['node01', 'node02', 'node03', 'node07',
    'gpu5']``. Raises SlurmEnvError on a malformed list."""
    hosts = [h for part in _split_top(text) for h in _expand_host(part, text)]
    if not hosts:
        raise SlurmEnvError(f'node list {text!r} names no host')
    return hosts


def _first_host(nodelist: str) -> str:
    """The first host of ``nodelist``: ``scontrol show hostnames`` where it exists, else :func:`expand_hostlist`."""
    scontrol = shutil.which('scontrol')
    if scontrol:
        try:
            res = subprocess.run([scontrol, 'show', 'hostnames', nodelist], capture_output=True, text=True,
                                 timeout=30, check=True)
            names = res.stdout.split()
            if names:
                return names[0]
        except (OSError, subprocess.SubprocessError):
            pass
    return expand_hostlist(nodelist)[0]


def port_from_job_id(job_id: str | int) -> int:
    """A MASTER_PORT in 15000..34999 derived from the job id, the same on every task of the job (and different
    for neighbouring jobs sharing a node)."""
    return 15000 + int(job_id) % 20000


def slurm_dist_env(environ: Mapping[str, str], port: int | None = None) -> dict[str, str]:
    """The ``env://`` variables for this srun task: ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``
    (the first node, unless set) and ``MASTER_PORT`` (the environment's, else ``port``, else from
    ``SLURM_JOB_ID``, else 29500)."""
    missing = [k for k in ('SLURM_PROCID', 'SLURM_NTASKS') if k not in environ]
    if missing:
        raise SlurmEnvError(f'--launcher slurm: {", ".join(missing)} not set; start train.py with srun (or drop '
                            '--launcher slurm)')
    nodelist = environ.get('SLURM_STEP_NODELIST') or environ.get('SLURM_JOB_NODELIST') \
        or environ.get('SLURM_NODELIST')
    try:
        rank, world = int(environ['SLURM_PROCID']), int(environ['SLURM_NTASKS'])
        local = int(environ.get('SLURM_LOCALID', 0))
    except ValueError as exc:
        raise SlurmEnvError(f'--launcher slurm: a SLURM_* rank variable is not a number ({exc})') from None
    if 'MASTER_ADDR' in environ:
        addr = environ['MASTER_ADDR']
    elif nodelist:
        addr = _first_host(nodelist)
    else:
        raise SlurmEnvError('--launcher slurm: no SLURM_STEP_NODELIST, SLURM_JOB_NODELIST or SLURM_NODELIST, and no '
                            'MASTER_ADDR')
    if 'MASTER_PORT' in environ:
        master_port = environ['MASTER_PORT']
    elif port is not None:
        master_port = str(port)
    elif environ.get('SLURM_JOB_ID', '').isdigit():
        master_port = str(port_from_job_id(environ['SLURM_JOB_ID']))
    else:
        master_port = '29500'
    return {'RANK': str(rank), 'WORLD_SIZE': str(world), 'LOCAL_RANK': str(local), 'MASTER_ADDR': addr,
            'MASTER_PORT': master_port}


def apply_slurm_env(port: int | None = None) -> dict[str, str]:
    """Put :func:`slurm_dist_env` of this process's environment into ``os.environ``; returns what was set."""
    values = slurm_dist_env(os.environ, port)
    os.environ.update(values)
    return values
