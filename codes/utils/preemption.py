"""Preemption: stop at a step boundary on SIGTERM / SIGUSR1, save, and exit with a status that asks for a requeue.

A signal only sets a flag (the handler does no I/O), so the step in progress finishes. After every step the ranks
combine their flags in one all-reduce (:func:`agree`), so all of them stop at the same iteration even when the
signal reached only some; the run then saves a complete training state at that iteration and raises
:class:`Preempted`, a ``SystemExit`` with status :data:`PREEMPTED_EXIT_CODE` (75, ``EX_TEMPFAIL`` of
``sysexits.h``: "try again later"). A second signal during the save is recorded and ignored; a SIGKILL during it
leaves the earlier states intact (every checkpoint file is written atomically, ``codes.utils.files``).

Data-loader workers ignore these signals (:func:`ignore_in_worker`): the main process stops them.
"""
from __future__ import annotations

import logging
import signal
import threading
from types import FrameType
from typing import Iterable

import torch

from codes.utils import dist as dist_utils

__all__ = ['PREEMPTED_EXIT_CODE', 'Preempted', 'StopSignals', 'agree', 'ignore_in_worker', 'DEFAULT_SIGNALS']

logger = logging.getLogger(__name__)

#: exit status of a run stopped by a signal after saving its state (``EX_TEMPFAIL``)
PREEMPTED_EXIT_CODE = 75
#: the signals that stop a run by default: the scheduler's termination, and SLURM's ``--signal=USR1@<s>`` warning
DEFAULT_SIGNALS = ('SIGTERM', 'SIGUSR1')


class Preempted(SystemExit):
    """Raised after the state of iteration ``iteration`` was saved on a stop signal; exits with ``code``."""

    def __init__(self, iteration: int, signal_name: str, code: int = PREEMPTED_EXIT_CODE) -> None:
        super().__init__(code)
        self.iteration, self.signal_name = iteration, signal_name


def _signal_numbers(names: Iterable[str]) -> list[signal.Signals]:
    out = []
    for name in names:
        sig = getattr(signal, name, None)
        if isinstance(sig, signal.Signals):
            out.append(sig)
    return out


class StopSignals:
    """Context manager that records the stop signals ``names`` while a run trains (main thread only).

    ``received`` is the first signal's name (None before any), ``count`` how many arrived.
    """

    def __init__(self, names: Iterable[str] = DEFAULT_SIGNALS) -> None:
        self.signals = _signal_numbers(names)
        self.received: str | None = None
        self.count = 0
        self._old: dict[signal.Signals, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1
        if self.received is None:
            self.received = signal.Signals(signum).name

    def __enter__(self) -> 'StopSignals':
        if threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)  # type: ignore[arg-type]
        self._old.clear()


def agree(flags: list[bool], device: torch.device) -> list[bool]:
    """Each flag true on any rank (one all-reduce; no collective in a single process)."""
    if dist_utils.get_dist_info()[1] <= 1:
        return list(flags)
    t = torch.tensor([float(f) for f in flags], device=device)
    dist_utils.all_reduce_sum(t)
    return [bool(v > 0) for v in t.tolist()]


def ignore_in_worker(names: Iterable[str] = DEFAULT_SIGNALS) -> None:
    """Ignore the stop signals in a data-loader worker (a signal sent to the whole process group must not kill
    the workers under the main process, which finishes its step and saves)."""
    for sig in _signal_numbers(names):
        signal.signal(sig, signal.SIG_IGN)
