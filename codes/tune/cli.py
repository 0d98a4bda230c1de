"""The command line of ``tune.py`` (and ``bsr-tune``): read the study plan, then print it, dry-run one trial, or
run trials until the study holds the requested number, and report the study at the end."""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

from codes.tune.report import write_results, write_study_plots
from codes.tune.storage import display_url, heartbeat
from codes.tune.study import StudyPlan, next_trial, open_study, read_study_plan, resolve_trial_options, with_budget
from codes.tune.trial_runner import run_trial
from codes.utils.logger import setup_logging
from codes.utils.options import add_common_flags, print_options

__all__ = ['build_tune_parser', 'tune_pipeline']

logger = logging.getLogger(__name__)


def build_tune_parser() -> argparse.ArgumentParser:
    """The command line of ``tune.py``."""
    p = argparse.ArgumentParser(description='Hyperparameter search (Optuna) over option key paths: trains one trial '
                                'after another and shares the study with other workers through --storage.')
    add_common_flags(p, opt_help='option file with search_space and tune blocks')
    p.add_argument('--storage', default=None,
                   help='SQLAlchemy database URL shared by the workers (default: tune.storage, else '
                        'sqlite:///experiments/<study>/study.db)')
    p.add_argument('--n-trials', '--n_trials', type=int, default=None,
                   help='run until the study holds this many trials (default: tune.n_trials)')
    p.add_argument('--study-name', '--study_name', default=None,
                   help='study name (default: tune.study_name, else the option file\'s name)')
    return p


def tune_pipeline(root_path: str | Path, argv: list[str] | None = None) -> Any:
    """Run (or join, or resume) a study from the command line ``argv``; returns the Optuna study (None for
    ``--print-options`` and ``--dry-run``)."""
    args = build_tune_parser().parse_args(argv)
    if int(os.environ.get('WORLD_SIZE', 1)) > 1:
        raise RuntimeError('tune.py runs each trial in one process: start one tune.py per GPU '
                           '(CUDA_VISIBLE_DEVICES=i python tune.py ... --storage <shared URL>), not under torchrun')
    root = Path(root_path)
    plan = read_study_plan(root, args)
    if args.print_options or args.dry_run:
        _print_or_dry_run(plan, print_only=args.print_options)
        return None
    plan.study_dir.mkdir(parents=True, exist_ok=True)
    setup_logging(plan.study_dir / f"tune_{time.strftime('%Y%m%d_%H%M%S')}_{os.getpid()}.log")
    study, storage, lock_engine, interval = open_study(plan)
    worker = f'{socket.gethostname()}:{os.getpid()}'
    logger.info('Study %s in %s (%s %s on %s); worker %s; runs until the study holds %d trials', plan.study_name,
                display_url(plan.url), plan.direction, plan.metric, plan.dataset, worker, plan.n_trials)
    try:
        _run_trials(study, storage, plan, lock_engine, interval, worker)
    finally:
        write_results(study, plan)
        write_study_plots(study, plan)
        if lock_engine is not None:
            lock_engine.dispose()
    return study


def _print_or_dry_run(plan: StudyPlan, print_only: bool) -> None:
    """``--print-options``: the tune block with its defaults, then the options of a trial (budget applied);
    ``--dry-run``: one training step of a trial with the file's own values (no study is opened)."""
    trial = resolve_trial_options(with_budget(plan.base, plan.tune), plan.root, plan.file)
    if print_only:
        print_options({'tune': plan.tune, 'search_space': {p.key: p.kind for p in plan.params}, 'study': {
            'name': plan.study_name, 'storage': display_url(plan.url), 'metric': plan.metric,
            'dataset': plan.dataset, 'direction': plan.direction, 'n_trials': plan.n_trials}})
        print_options({'trial': trial})
        return
    from codes.train import dry_run
    dry_run(trial)


def _run_trials(study: Any, storage: Any, plan: StudyPlan, lock_engine: Any, interval: int, worker: str) -> None:
    """Propose and run trials until the study holds ``plan.n_trials``."""
    study_id = storage.get_study_id_from_name(plan.study_name)
    first = True
    while True:
        trial = next_trial(study, plan, lock_engine, interval > 0, first)
        first = False
        if trial is None:
            return
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        trial.set_user_attr('worker', worker)  # named by the failure reason if this worker dies
        with heartbeat(storage, trial_id, interval):
            state, value, attrs = _run_and_tell(study, trial, plan, worker)
        logger.info('Trial %d %s%s', trial.number, state.name.lower(),
                    f': {plan.metric} = {value:.4f}' if value is not None else
                    f": {attrs.get('fail_reason') or 'pruned at iteration %s' % attrs.get('pruned_at')}")


def _run_and_tell(study: Any, trial: Any, plan: StudyPlan, worker: str) -> tuple[Any, float | None, dict]:
    """Run ``trial`` and record its outcome in the study; a trial this worker cannot finish (Ctrl-C, a lost
    database connection) is recorded as failed before the exception goes on."""
    from optuna.trial import TrialState
    try:
        state, value, attrs = run_trial(trial, plan, worker)
    except BaseException as exc:
        with contextlib.suppress(Exception):
            trial.set_user_attr('fail_reason', f'the worker {worker} stopped: {type(exc).__name__}'
                                + (f': {exc}' if str(exc) else ''))
        with contextlib.suppress(Exception):
            study.tell(trial, state=TrialState.FAIL)
        raise
    for k, v in attrs.items():
        trial.set_user_attr(k, v)
    if state == TrialState.COMPLETE:
        study.tell(trial, value)
    else:
        study.tell(trial, state=state)
    return state, value, attrs
