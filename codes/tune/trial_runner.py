"""One trial: sample its options, resolve them through the option front end, train them in a child process that
dies with its worker, relay each validation to Optuna (reporting and pruning), and turn the outcome into a state.

The worker resolves a trial's options once (:func:`codes.tune.study.resolve_trial_options`) and hands the
resolved tree to the child, which trains on it without reading an option file; ``trial.yml`` in the trial's
folder records the sampled options and budget (an option file ``train.py`` accepts), and the training writes
the resolved ones to ``options.yml`` beside it, as every training does.
"""
from __future__ import annotations

import logging
import math
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import yaml

from codes.tune.search_space import apply_params, set_path
from codes.tune.study import StudyPlan, resolve_trial_options, with_budget
from codes.utils.files import atomic_write_text
from codes.utils.options import OptionError, build_arg_parser

__all__ = ['ValidationReporter', 'failure_reason', 'die_with_worker', 'start_guarded', 'run_trial_process',
           'run_trial']

logger = logging.getLogger(__name__)


class ValidationReporter:
    """The ``on_validation`` callback of a trial: reports the objective metric and asks the pruner.

    ``history`` holds (iteration, value) of every validation, ``pruned_at`` the iteration the pruner stopped at,
    ``missing`` why the objective could not be read from a validation.
    """

    def __init__(self, trial: Any, metric: str, dataset: str) -> None:
        self.trial, self.metric, self.dataset = trial, metric, dataset
        self.history: list[tuple[int, float]] = []
        self.pruned_at: int | None = None
        self.missing: str | None = None

    def __call__(self, current_iter: int, results: dict[str, dict[str, float]]) -> bool:
        """Record and report one validation; true stops the training."""
        mean = results.get(self.dataset, {})
        if self.metric not in mean:
            self.missing = (f"validation gave no '{self.metric}' on '{self.dataset}' (got: "
                            f"{', '.join(k for k in mean if k not in ('num_samples', 'seconds')) or 'nothing'})")
            return True
        value = float(mean[self.metric])
        self.history.append((current_iter, value))
        if not math.isfinite(value):
            return True
        self.trial.report(value, current_iter)
        if self.trial.should_prune():
            self.pruned_at = current_iter
            return True
        return False


def failure_reason(exc: BaseException) -> str:
    """The failure reason recorded for a trial's exception."""
    import torch
    if isinstance(exc, FloatingPointError):
        return f'non-finite loss: {exc}'
    if isinstance(exc, (torch.cuda.OutOfMemoryError, MemoryError)):
        return f'out of memory: {exc}'.strip()
    if isinstance(exc, OptionError):
        return f'invalid sampled combination: {exc}'
    return f'{type(exc).__name__}: {exc}'


# ---------------------------------------------------------------------------------------- the trial's process
def die_with_worker(lifeline: Any, worker_pid: int) -> None:
    """In a trial process: be killed when the worker dies, whatever kills it (``kill -9`` included).

    On Linux the kernel's parent-death signal (``prctl(PR_SET_PDEATHSIG, SIGKILL)``) does it when the worker is the
    direct parent; in every case a daemon thread waits on ``lifeline``, the read end of a pipe whose only write end
    the worker holds, which reaches end-of-file when the worker's process is gone, and then kills this process.
    """
    import signal
    if sys.platform.startswith('linux') and os.getppid() == worker_pid:
        try:
            import ctypes
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG = 1
        except (OSError, AttributeError):  # pragma: no cover - the lifeline thread still covers it
            pass
        if os.getppid() != worker_pid:  # the worker died before the signal was armed
            os.kill(os.getpid(), signal.SIGKILL)

    def watch() -> None:
        try:
            while True:
                lifeline.recv_bytes()  # the worker never sends: this returns only at end-of-file
        except (EOFError, OSError):
            os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name='tune-lifeline', daemon=True).start()


def run_guarded(lifeline: Any, inherited: Any, worker_pid: int, target: Any, *args: Any) -> Any:
    """A trial process's entry: :func:`die_with_worker`, then ``target(*args)``. ``inherited`` is the worker's
    write end of the lifeline when ``fork`` copied it into this process (closed here), else None."""
    if inherited is not None:
        inherited.close()
    die_with_worker(lifeline, worker_pid)
    return target(*args)


def start_guarded(ctx: Any, target: Any, args: tuple, name: str) -> tuple[Any, Any]:
    """Start ``target(*args)`` in a process of ``ctx`` that dies with this one; returns (process, lifeline write
    end), the write end to be closed once the process has ended."""
    reader, writer = ctx.Pipe(duplex=False)
    inherited = writer if ctx.get_start_method() == 'fork' else None
    proc = ctx.Process(target=run_guarded, args=(reader, inherited, os.getpid(), target, *args), name=name)
    proc.start()
    reader.close()
    return proc, writer


def _train_in_child(opt: dict, conn: Any) -> None:
    """The trial's own process: train on the resolved options ``opt``, send every validation to the worker and
    stop when it says so."""
    # train.py's training on options already resolved by the front end (what train_pipeline runs once
    # parse_options has read the file); a trial is one process: rank 0 of 1
    from codes.train import run_training

    def on_validation(current_iter: int, results: dict[str, dict[str, float]]) -> bool:
        conn.send(('val', current_iter, results))
        return bool(conn.recv())

    try:
        args = build_arg_parser(is_train=True).parse_args(['-opt', opt['opt_file']])
        run_training(opt, args, 0, 1, on_validation)
    except Exception as exc:
        reason = failure_reason(exc)
        # the logger still writes to the trial's own log: the traceback goes there
        logging.getLogger('codes.train').exception('Trial failed: %s', reason)
        conn.send(('error', reason))
    else:
        conn.send(('done',))
    finally:
        conn.close()


def _relay(parent: Any, proc: Any, reporter: Any) -> tuple | None:
    """Answer the child's validations with ``reporter`` until it sends its outcome (or dies: None)."""
    while True:
        if not parent.poll(0.5):
            if not proc.is_alive() and not parent.poll(0):
                return None
            continue
        try:
            msg = parent.recv()
        except EOFError:
            return None
        if msg[0] != 'val':
            return msg
        parent.send(bool(reporter(msg[1], msg[2])))


def run_trial_process(opt: dict, start_method: str, reporter: Any) -> str | None:
    """Train the resolved options ``opt`` in a child process started by ``start_method`` (a crash there, e.g. a
    segfault of a native kernel on NaN input or the kernel's OOM killer, fails the trial, not the worker); relay
    its validations to ``reporter(current_iter, results) -> stop``. Returns the failure reason, or None."""
    import multiprocessing
    import signal
    ctx = multiprocessing.get_context(start_method)
    if start_method == 'forkserver':  # the server imports torch and the runner once; each trial forks from it
        ctx.set_forkserver_preload([__name__, 'codes.train'])
    parent, child = ctx.Pipe()
    proc, lifeline = start_guarded(ctx, _train_in_child, (opt, child), 'tune-trial')
    child.close()
    try:
        outcome = _relay(parent, proc, reporter)
        proc.join()
    except BaseException:  # Ctrl-C or an error here: do not leave the trial running
        proc.terminate()
        proc.join()
        raise
    finally:
        parent.close()
        lifeline.close()
    if outcome is None:
        code = proc.exitcode
        how = f'signal {signal.Signals(-code).name}' if code is not None and code < 0 else f'exit code {code}'
        return (f'the trial process died ({how}) without a result: a native crash (e.g. a kernel given NaN/inf '
                'input by a diverging run) or the out-of-memory killer; see the end of its log')
    return outcome[1] if outcome[0] == 'error' else None


# ------------------------------------------------------------------------------------------------- one trial
def _write_trial_file(plan: StudyPlan, number: int, tree: dict, trial_file: Path) -> None:
    """``trial.yml``: the sampled options and budget of trial ``number``, an option file train.py accepts."""
    atomic_write_text(trial_file, f'# trial {number} of study {plan.study_name} (generated by tune.py from '
                      f'{plan.file})\n' + yaml.safe_dump(tree, sort_keys=False))


def run_trial(trial: Any, plan: StudyPlan, worker: str) -> tuple[Any, float | None, dict[str, Any]]:
    """Sample, resolve and train one trial; returns (Optuna state, value or None, user attributes)."""
    from optuna.trial import TrialState
    trial_dir = plan.study_dir / f'trial_{trial.number}'
    trial_dir.mkdir(parents=True, exist_ok=True)
    attrs: dict[str, Any] = {'worker': worker, 'trial_dir': str(trial_dir)}
    sampled = {p.key: p.suggest(trial) for p in plan.params}
    tree = apply_params(with_budget(plan.base, plan.tune), plan.params, sampled)
    tree['name'] = f'{plan.study_name}_trial_{trial.number}'
    set_path(tree, 'path.experiments_root', str(trial_dir))
    trial_file = trial_dir / 'trial.yml'
    _write_trial_file(plan, trial.number, tree, trial_file)
    logger.info('Trial %d (%s): %s', trial.number, trial_dir,
                ', '.join(f'{p.key}={p.describe(sampled[p.key])}' for p in plan.params))
    try:
        opt = resolve_trial_options(tree, plan.root, str(trial_file))
    except OptionError as exc:
        return TrialState.FAIL, None, {**attrs, 'fail_reason': f'invalid sampled combination: {exc}'}
    reporter = ValidationReporter(trial, plan.metric, plan.dataset)
    t0 = time.time()
    reason = run_trial_process(opt, plan.tune['start_method'], reporter)
    attrs['seconds'] = round(time.time() - t0, 1)
    return _outcome(plan, reporter, reason, attrs)


def _outcome(plan: StudyPlan, reporter: ValidationReporter, reason: str | None, attrs: dict[str, Any]
             ) -> tuple[Any, float | None, dict[str, Any]]:
    """(state, value, user attributes) of a trial whose process ended with failure ``reason`` (or None)."""
    from optuna.trial import TrialState
    history = reporter.history
    if history:
        attrs['iterations'] = history[-1][0]
    if reason is None and reporter.missing:
        reason = reporter.missing
    if reason is None and history and not math.isfinite(history[-1][1]):
        reason = f'{plan.metric} is {history[-1][1]} at iteration {history[-1][0]} (diverged)'
    if reason is not None:
        return TrialState.FAIL, None, {**attrs, 'fail_reason': reason[:2000]}
    if reporter.pruned_at is not None:
        return TrialState.PRUNED, None, {**attrs, 'pruned_at': reporter.pruned_at}
    if not history:
        return TrialState.FAIL, None, {**attrs, 'fail_reason': 'the run ended without a validation'}
    values = [v for _, v in history]
    better = max if plan.direction == 'maximize' else min
    value = values[-1] if plan.tune['objective'] == 'last' else better(values)
    return TrialState.COMPLETE, value, attrs
