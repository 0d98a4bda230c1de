"""Study set-up: the ``tune`` block, the study plan read and checked from a tune option file before any database
or training work, the trial budget, the sampler and pruner, opening the study and proposing the next trial."""
from __future__ import annotations

import argparse
import copy
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from codes.scripts.sample_data import prepare_from_options
from codes.tune.search_space import SearchParam, check_search_space, parse_search_space, set_path
from codes.tune.storage import display_url, fail_stale_trials, storage_url, study_lock
from codes.utils.options import (LIMIT, Key, OptionError, apply_overrides, fill_defaults, load_yaml,
                                 normalize_options, parse_value, validate_block, validate_options)

__all__ = ['TUNE_SCHEMA', 'StudyPlan', 'read_study_plan', 'with_budget', 'resolve_trial_options', 'make_sampler',
           'make_pruner', 'open_study', 'next_trial']

logger = logging.getLogger(__name__)

#: The ``tune`` block. Budget keys are written into every trial's options (``max_iters`` -> ``train.total_iter``,
#: ``limit_train_batches`` -> ``train.limit_train_batches``, ``limit_val_batches`` -> ``val.limit_val_batches``).
TUNE_SCHEMA: dict[str, Any] = {
    'study_name': Key(str | None, None), 'storage': Key(str | None, None), 'n_trials': Key(int, 20, minimum=0),
    'metric': Key(str, 'psnr'), 'dataset': Key(str | None, None),
    'direction': Key(('maximize', 'minimize', None), None),  # None: from val.metrics.<metric>.better
    'objective': Key(('last', 'best'), 'last'),
    'max_iters': Key(int | None, None, minimum=1), 'limit_train_batches': LIMIT, 'limit_val_batches': LIMIT,
    'sampler': {'type': Key(('tpe', 'random'), 'tpe'), 'seed': Key(int | None, None),
                'n_startup_trials': Key(int, 10, minimum=0), 'multivariate': Key(bool, False)},
    'pruner': {'type': Key(('none', 'median', 'hyperband'), 'none'), 'n_startup_trials': Key(int, 5, minimum=0),
               'n_warmup_steps': Key(int, 0, minimum=0), 'interval_steps': Key(int, 1, minimum=1),
               'min_resource': Key(int, 1, minimum=1), 'reduction_factor': Key(int, 3, minimum=2)},
    'heartbeat_interval': Key(int, 60, minimum=0), 'grace_period': Key(int | None, None),
    'enqueue': Key(list[dict], []), 'start_method': Key(('spawn', 'forkserver', 'fork'), 'spawn'),
}
_PRUNER_KEYS = {'none': (), 'median': ('n_startup_trials', 'n_warmup_steps', 'interval_steps'),
                'hyperband': ('min_resource', 'reduction_factor')}


@dataclass
class StudyPlan:
    """Everything a worker needs to run its share of a study, read and checked from the tune option file."""

    root: Path
    file: str
    base: dict  # the training options of a full run (no search_space/tune blocks)
    params: list[SearchParam]
    tune: dict  # the validated tune block, defaults filled in
    study_name: str
    study_dir: Path
    url: str
    n_trials: int
    metric: str
    dataset: str
    direction: str

    @property
    def budget_iters(self) -> int:
        """Iterations of one trial (``tune.max_iters``, else ``train.total_iter``): Hyperband's max_resource."""
        return int(self.tune['max_iters'] or self.base['train']['total_iter'])


def read_study_plan(root: Path, args: argparse.Namespace) -> StudyPlan:
    """Read, validate and resolve everything from the command line ``args`` before any database or training work."""
    file = str(args.opt)
    options, space_block, tune_block = _read_tune_file(file, args.force_yml)
    params = parse_search_space(space_block, file)
    given = validate_block(tune_block or {}, TUNE_SCHEMA, 'tune', file)
    tune = fill_defaults(given, TUNE_SCHEMA, None)
    prepare_from_options(options)  # the sample data the file asks for (burst or blind), before its folders are checked
    base = options
    validate_options(base, file)  # the base alone (full budget) must be a valid training file
    budgeted = with_budget(base, tune)
    checked = validate_options(budgeted, file)
    check_search_space(budgeted, params, file)
    metric, dataset, direction = _objective(checked, tune, file)
    _check_pruner(given.get('pruner', {}), tune, checked, file)
    _check_enqueue(tune['enqueue'], params, file)

    study_name = args.study_name or tune['study_name'] or base['name']
    explicit_root = base.get('path', {}).get('experiments_root')
    experiments = Path(explicit_root).parent if explicit_root else root / 'experiments'
    study_dir = experiments / study_name
    url = storage_url(args.storage or tune['storage'] or f"sqlite:///{(study_dir / 'study.db').resolve()}")
    n_trials = args.n_trials if args.n_trials is not None else tune['n_trials']
    if n_trials < 0:
        raise OptionError('tune.n_trials', f'must be >= 0, got {n_trials}', file)
    return StudyPlan(root, file, base, params, tune, study_name, study_dir, url, n_trials, metric, dataset,
                     direction)


def _read_tune_file(file: str, overrides: list[str]) -> tuple[dict, Any, Any]:
    """(training options, search_space block, tune block) of the file with the command line's overrides applied.

    ``search_space`` keys are key paths themselves: ``search_space.train.optim_g.lr={low: 1.0e-5, high: 1.0e-3}``
    sets the entry ``train.optim_g.lr``; every other override is applied as train.py applies it.
    """
    space_overrides = [o for o in overrides if o.startswith(('search_space.', 'search_space:')) and '=' in o]
    options = apply_overrides(load_yaml(file), [o for o in overrides if o not in space_overrides], file)
    for block in ('search_space', 'tune'):
        if block not in options:
            raise OptionError(block, f'a tune option file needs a {block} block (see the README)', file)
    if space_overrides:
        if not isinstance(options['search_space'], dict):
            raise OptionError('search_space', 'expected a mapping of option key paths', file)
        for item in space_overrides:
            key, text = item.split('=', 1)
            options['search_space'][key[len('search_space.'):].strip().replace(':', '.')] = parse_value(text)
    return options, options.pop('search_space'), options.pop('tune')


def _objective(checked: Mapping[str, Any], tune: Mapping[str, Any], file: str) -> tuple[str, str, str]:
    """(metric, validation set name, direction) of the objective, checked against the validated options."""
    metrics = checked.get('val', {}).get('metrics', {})
    metric = tune['metric']
    if metric not in metrics:
        raise OptionError('tune.metric', f"'{metric}' is not a validation metric of this file; val.metrics has: "
                          f"{', '.join(metrics) or 'none'}", file)
    val_sets = [ds.get('name', phase) for phase, ds in checked.get('datasets', {}).items() if phase.startswith('val')]
    if not val_sets:
        raise OptionError('datasets', 'the objective needs a validation set (a datasets.val block)', file)
    dataset = tune['dataset'] or val_sets[0]
    if dataset not in val_sets:
        raise OptionError('tune.dataset', f"'{dataset}' is not a validation set name; one of: {', '.join(val_sets)}",
                          file)
    direction = tune['direction'] or ('minimize' if metrics[metric].get('better') == 'lower' else 'maximize')
    if tune['direction'] is None and 'better' not in metrics[metric] and 'lpips' in metrics[metric]['type'].lower():
        logger.warning('tune.metric %s looks like LPIPS (lower is better) but neither tune.direction nor '
                       'val.metrics.%s.better is set: maximizing it', metric, metric)
    return metric, dataset, direction


def _check_pruner(given: Mapping[str, Any], tune: Mapping[str, Any], checked: Mapping[str, Any], file: str) -> None:
    """The pruner keys the file gives (``given``; ``tune`` has every pruner's defaults) must be its type's."""
    ptype = tune['pruner']['type']
    for k in given:
        if k != 'type' and k not in _PRUNER_KEYS[ptype]:
            raise OptionError(f'tune.pruner.{k}', f"does not apply to the {ptype} pruner (its keys: "
                              f"{', '.join(_PRUNER_KEYS[ptype]) or 'none'})", file)
    if ptype != 'none' and not checked.get('val', {}).get('val_freq'):
        logger.warning('tune.pruner is %s but val.val_freq is not set: trials are validated only at the end, so '
                       'nothing can be pruned', ptype)


def _check_enqueue(enqueue: list[dict], params: list[SearchParam], file: str) -> None:
    by_key = {p.key: p for p in params}
    for i, entry in enumerate(enqueue):
        for k, v in entry.items():
            if k not in by_key:
                raise OptionError(f'tune.enqueue[{i}].{k}', 'is not a key of search_space', file)
            by_key[k].encode(v, f'tune.enqueue[{i}].{k}', file)


def with_budget(base: Mapping[str, Any], tune: Mapping[str, Any]) -> dict:
    """A copy of ``base`` with the per-trial budget of the ``tune`` block written into it."""
    tree = copy.deepcopy(dict(base))
    if tune.get('max_iters') is not None:
        set_path(tree, 'train.total_iter', tune['max_iters'])
    if tune.get('limit_train_batches') is not None:
        set_path(tree, 'train.limit_train_batches', tune['limit_train_batches'])
    if tune.get('limit_val_batches') is not None:
        set_path(tree, 'val.limit_val_batches', tune['limit_val_batches'])
    return tree


def resolve_trial_options(tree: Mapping[str, Any], root: Path, file: str) -> dict:
    """The options a trial trains on: ``tree`` validated and normalised by the option front end, as train.py
    resolves its option file (``codes.utils.options.parse_options``), with ``opt_file`` set to ``file``.

    The sample data the options ask for was generated when the study plan was read.
    """
    opt = normalize_options(validate_options(tree, file, is_train=True), root, is_train=True)
    opt['opt_file'] = str(file)
    return opt


def make_sampler(tune: Mapping[str, Any], seed_offset: int) -> Any:
    """The Optuna sampler of ``tune.sampler``; a seed is offset by ``seed_offset``."""
    import optuna
    sampler = tune['sampler']
    seed = sampler['seed']
    seed = None if seed is None else seed + seed_offset
    if sampler['type'] == 'random':
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=sampler['n_startup_trials'],
                                      multivariate=sampler['multivariate'])


def make_pruner(tune: Mapping[str, Any], max_iters: int) -> Any:
    """The Optuna pruner of ``tune.pruner``; ``max_iters`` is Hyperband's maximum resource."""
    import optuna
    pruner = tune['pruner']
    ptype = pruner['type']
    if ptype == 'median':
        return optuna.pruners.MedianPruner(n_startup_trials=pruner['n_startup_trials'],
                                           n_warmup_steps=pruner['n_warmup_steps'],
                                           interval_steps=pruner['interval_steps'])
    if ptype == 'hyperband':
        return optuna.pruners.HyperbandPruner(min_resource=pruner['min_resource'], max_resource=max_iters,
                                              reduction_factor=pruner['reduction_factor'])
    return optuna.pruners.NopPruner()


def _engine_kwargs(plan: StudyPlan, backend: str) -> dict[str, Any]:
    """SQLAlchemy engine arguments of the study's storage; for SQLite, creates the database's folder."""
    if backend != 'sqlite':
        return {'pool_pre_ping': True}
    from sqlalchemy.engine import make_url
    plan.study_dir.mkdir(parents=True, exist_ok=True)
    database = make_url(plan.url).database
    if database and database != ':memory:':
        try:
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            blocked = ' (a file is in the way)' if isinstance(exc, (FileExistsError, NotADirectoryError)) else ''
            raise OptionError('tune.storage', f'cannot create the folder of the SQLite database {database} '
                              f'(--storage / tune.storage): {exc.strerror or exc}{blocked}', plan.file) from None
    return {'connect_args': {'timeout': 300}}


def open_study(plan: StudyPlan) -> tuple[Any, Any, Any, int]:
    """(study, storage, lock engine, heartbeat interval), creating the study if it does not exist."""
    import optuna
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url
    from sqlalchemy.pool import NullPool
    try:
        backend = make_url(plan.url).get_backend_name()
    except Exception as exc:
        raise OptionError('tune.storage', f'--storage / tune.storage is not a database URL ({exc}): {plan.url!r}',
                          plan.file) from None
    engine_kwargs = _engine_kwargs(plan, backend)
    interval = int(plan.tune['heartbeat_interval'])
    grace = plan.tune['grace_period']
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    lock_engine = None
    try:
        lock_engine = None if backend == 'sqlite' else create_engine(plan.url, poolclass=NullPool)
        with study_lock(plan.url, plan.study_name, lock_engine), warnings.catch_warnings():
            warnings.simplefilter('ignore', optuna.exceptions.ExperimentalWarning)
            storage = optuna.storages.RDBStorage(
                plan.url, engine_kwargs=engine_kwargs, heartbeat_interval=interval if interval > 0 else None,
                grace_period=(grace if grace else None) if interval > 0 else None)
            study = optuna.create_study(storage=storage, study_name=plan.study_name, direction=plan.direction,
                                        sampler=make_sampler(plan.tune, 0),
                                        pruner=make_pruner(plan.tune, plan.budget_iters), load_if_exists=True)
    except OptionError:
        raise
    except Exception as exc:
        raise OptionError('tune.storage', f'cannot open the study database {display_url(plan.url)} (--storage / '
                          f'tune.storage): {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ""}',
                          plan.file) from None
    if study.direction.name.lower() != plan.direction:
        raise OptionError('tune.direction', f"study '{plan.study_name}' in {display_url(plan.url)} was created to "
                          f'{study.direction.name.lower()}, this file asks to {plan.direction}; use another '
                          '--study-name', plan.file)
    return study, storage, lock_engine, interval


def next_trial(study: Any, plan: StudyPlan, lock_engine: Any, heartbeat: bool, first: bool) -> Any | None:
    """Under the study lock: fail stale trials, enqueue ``tune.enqueue`` into a new study, and propose the next
    trial unless the study already holds ``n_trials``."""
    import optuna
    from optuna.trial import TrialState
    with study_lock(plan.url, plan.study_name, lock_engine), warnings.catch_warnings():
        warnings.simplefilter('ignore', optuna.exceptions.ExperimentalWarning)
        if heartbeat:
            fail_stale_trials(study)
        trials = study.get_trials(deepcopy=False)
        if not trials and plan.tune['enqueue']:
            by_key = {p.key: p for p in plan.params}
            for entry in plan.tune['enqueue']:
                study.enqueue_trial({k: by_key[k].encode(v, k, plan.file) for k, v in entry.items()})
            trials = study.get_trials(deepcopy=False)
        started = [t for t in trials if t.state != TrialState.WAITING]
        if len(started) >= plan.n_trials:
            return None
        if first and plan.tune['sampler']['seed'] is not None:
            # a seeded sampler per worker, offset by the trials so far: one worker is reproducible, and workers
            # that join a study do not propose the same points
            study.sampler = make_sampler(plan.tune, len(trials))
        with warnings.catch_warnings():  # heartbeats are recorded by storage.heartbeat, not by Study.optimize
            warnings.filterwarnings('ignore', message='Heartbeat of storage is supposed to be used')
            return study.ask()
