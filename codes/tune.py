"""Hyperparameter search: Optuna trials of the training pipeline, stored in a database that many workers share.

``python tune.py -opt options/tune_synthetic.yml [--storage URL] [--n-trials N] [--study-name NAME]``

The option file is an ordinary training option file plus two blocks:

* ``search_space``: option key path -> what to sample there. A list is a categorical choice
  (``train.optim_g.type: [Adam, AdamW]``); ``{low, high[, log][, step][, type: float|int]}`` is a range (int
  when both bounds are ints); ``{choices: [...]}`` is a categorical too, and for a ``....type`` key
  ``{choices: {Name: {other keys of that block}}}`` replaces the whole block with the chosen type and its own
  arguments (for schedulers whose arguments differ). Every key path and every value is checked against the option
  schema before the study starts, and every sampled option tree is validated again before its trial runs.
* ``tune``: the study (name, storage, number of trials, sampler, pruner), the objective (a validation metric and its
  direction) and the per-trial budget (``max_iters``, ``limit_train_batches``, ``limit_val_batches``); see
  :data:`TUNE_SCHEMA` and the README.

Trials are counted per study, across workers and runs: ``--n-trials 20`` means "until the study holds 20 trials",
so re-running resumes an interrupted study and several workers (``--storage postgresql://...``) share the work.
Each trial trains in a child process of the worker
(``tune.start_method``, default spawn), so even a native crash fails only that trial. Proposing a trial is
serialised between workers (an advisory lock on PostgreSQL/MySQL, a file lock for SQLite), so
the study ends with exactly the requested number of trials and no trial runs twice. Each trial trains in
``experiments/<study>/trial_<n>/`` (log, TensorBoard events, checkpoints, ``trial.yml``); a trial that fails
(invalid sampled combination, non-finite loss, out of memory, any exception) is recorded as failed with its reason
and the study goes on. At the end the worker prints the table of trials, writes ``trials.csv`` and ``best.yml``
(the base options with the best trial's values and the full training budget, ready for ``train.py``).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import csv
import hashlib
import io
import logging
import math
import os
import socket
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

import yaml

from codes.scripts.sample_data import prepare_from_options
from codes.utils.file_lock import exclusive_lock
from codes.utils.logger import setup_logging
from codes.utils.options import (LIMIT, Key, OptionError, add_common_flags, apply_overrides, fill_defaults,
                                 load_yaml, normalize_options, parse_value, print_options, set_by_path,
                                 validate_block, validate_options)

__all__ = ['tune_pipeline', 'build_tune_parser', 'SearchParam', 'parse_search_space', 'apply_params',
           'check_search_space', 'TUNE_SCHEMA', 'trials_table', 'storage_url', 'fail_stale_trials', 'start_guarded',
           'die_with_worker']

logger = logging.getLogger('codes.tune')

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
_PRIMITIVE = (type(None), bool, int, float, str)
_RANGE_KEYS = ('low', 'high', 'log', 'step', 'type')


# ------------------------------------------------------------------------------------------------ search space
@dataclass(frozen=True)
class SearchParam:
    """One sampled option: ``key`` (an option key path) and its distribution.

    Categorical choices are passed to Optuna as ``labels`` (None/bool/int/float/str, which every storage keeps);
    ``values`` maps each label back to the option value (a list such as milestones is labelled by its YAML text;
    a per-choice ``type`` block by its type name).
    """

    key: str
    kind: str  # 'float' | 'int' | 'categorical'
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    labels: tuple = ()
    values: dict = field(default_factory=dict)
    per_choice: bool = False  # values are whole blocks that replace the parent of ``key``

    def suggest(self, trial: Any) -> Any:
        """Ask the Optuna ``trial`` for this parameter; returns the raw (label or number) value."""
        if self.kind == 'float':
            return trial.suggest_float(self.key, self.low, self.high, log=self.log, step=self.step)
        if self.kind == 'int':
            return trial.suggest_int(self.key, self.low, self.high, log=self.log, step=self.step or 1)
        return trial.suggest_categorical(self.key, list(self.labels))

    def decode(self, raw: Any) -> Any:
        """The option value of a raw sampled value."""
        return copy.deepcopy(self.values[raw]) if self.kind == 'categorical' else raw

    def describe(self, raw: Any) -> str:
        """A short text of a raw value for logs and tables (the type name for a per-choice block)."""
        if self.per_choice:
            return str(raw)
        value = self.decode(raw)
        return f'{value:.4g}' if isinstance(value, float) else str(value)

    def probes(self) -> list[Any]:
        """Raw values checked before the study starts: every choice, or both ends of a range."""
        return list(self.labels) if self.kind == 'categorical' else [self.low, self.high]

    def encode(self, value: Any, where: str, file: str | None) -> Any:
        """The raw value for an option value given by the user (``tune.enqueue``); checks it is in the space."""
        if self.kind == 'categorical':
            for label, v in self.values.items():
                if (v if not self.per_choice else label) == value or label == value:
                    return label
            raise OptionError(where, f'{value!r} is not one of the choices {list(self.labels)}', file)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not self.low <= value <= self.high:
            raise OptionError(where, f'expected a number in [{self.low}, {self.high}], got {value!r}', file)
        return int(value) if self.kind == 'int' else float(value)


def _label(value: Any) -> Any:
    if isinstance(value, _PRIMITIVE):
        return value
    return yaml.safe_dump(value, default_flow_style=True, sort_keys=False).strip()


def parse_search_space(block: Any, file: str | None = None) -> list[SearchParam]:
    """Parse the ``search_space`` block (key path -> spec) into parameters; errors name the file and the key."""
    if not isinstance(block, Mapping) or not block:
        raise OptionError('search_space', 'expected a mapping of option key paths to what to sample, e.g. '
                          '"train.optim_g.lr: {low: 1.0e-5, high: 1.0e-3, log: true}"', file)
    params = []
    for key, spec in block.items():
        where = f'search_space.{key}'
        if not isinstance(key, str) or not key or any(not part for part in key.split('.')):
            raise OptionError(where, 'keys are option key paths such as train.optim_g.lr', file)
        params.append(_parse_spec(key, spec, where, file))
    return params


def _parse_spec(key: str, spec: Any, where: str, file: str | None) -> SearchParam:
    forms = ('expected a list of choices, {choices: [...]}, {choices: {TypeName: {...}}} (for a .type key) or '
             '{low: ..., high: ...[, log: true][, step: ...][, type: float|int]}')
    if isinstance(spec, Mapping) and set(spec) == {'choices'}:
        spec = spec['choices']
        if isinstance(spec, Mapping):
            if key.split('.')[-1] != 'type':
                raise OptionError(where, 'choices given as a mapping (choice -> block) are for a ".type" key', file)
            if not spec:
                raise OptionError(where, 'no choices given', file)
            values = {}
            for name, settings in spec.items():
                if not isinstance(name, str):
                    raise OptionError(f'{where}.choices', f'a type name must be a string, got {name!r}', file)
                if settings is None:
                    settings = {}
                if not isinstance(settings, Mapping) or 'type' in settings:
                    raise OptionError(f'{where}.choices.{name}', 'expected a mapping of the other keys of the block '
                                      '(without "type"), or ~', file)
                values[name] = {'type': name, **copy.deepcopy(dict(settings))}
            return SearchParam(key, 'categorical', labels=tuple(values), values=values, per_choice=True)
    if isinstance(spec, (list, tuple)):
        if not spec:
            raise OptionError(where, 'no choices given', file)
        values = {}
        for value in spec:
            label = _label(value)
            if label in values:
                raise OptionError(where, f'choice {value!r} is listed twice', file)
            values[label] = copy.deepcopy(value)
        return SearchParam(key, 'categorical', labels=tuple(values), values=values)
    if not isinstance(spec, Mapping) or 'low' not in spec or 'high' not in spec:
        raise OptionError(where, f'{forms}, got {spec!r}', file)
    unknown = [k for k in spec if k not in _RANGE_KEYS]
    if unknown:
        raise OptionError(f'{where}.{unknown[0]}', f'unknown key; a range has {", ".join(_RANGE_KEYS)}', file)
    low, high, log, step = spec['low'], spec['high'], spec.get('log', False), spec.get('step')
    for name, v in (('low', low), ('high', high)) + ((('step', step),) if step is not None else ()):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise OptionError(f'{where}.{name}', f'expected a finite number, got {v!r}', file)
    if not isinstance(log, bool):
        raise OptionError(f'{where}.log', f'expected true or false, got {log!r}', file)
    kind = spec.get('type')
    if kind is None:
        kind = 'int' if all(isinstance(v, int) for v in (low, high) + ((step,) if step is not None else ())) \
            else 'float'
    if kind not in ('float', 'int'):
        raise OptionError(f'{where}.type', f"must be float or int, got {kind!r}", file)
    if kind == 'int':
        if any(isinstance(v, float) and not v.is_integer() for v in (low, high, step) if v is not None):
            raise OptionError(where, 'an int range needs integer low, high and step', file)
        low, high = int(low), int(high)
        step = int(step) if step is not None else None
    else:
        low, high = float(low), float(high)
        step = float(step) if step is not None else None
    if low > high:
        raise OptionError(where, f'low ({low}) is above high ({high})', file)
    if log and low <= 0:
        raise OptionError(f'{where}.low', f'a log range needs low > 0, got {low}', file)
    if step is not None and step <= 0:
        raise OptionError(f'{where}.step', f'must be > 0, got {step}', file)
    if log and step is not None and (kind == 'float' or step != 1):
        raise OptionError(where, 'log and step cannot be combined', file)
    return SearchParam(key, kind, low=low, high=high, log=log, step=step)


def _set_path(tree: dict, key: str, value: Any) -> None:
    set_by_path(tree, key.split('.'), value)


def apply_params(base: Mapping[str, Any], params: list[SearchParam], raw: Mapping[str, Any]) -> dict:
    """A copy of ``base`` with the sampled raw values of ``params`` written at their key paths.

    Per-choice ``type`` blocks are written first (they replace their whole block), then every other value.
    """
    tree = copy.deepcopy(dict(base))
    for p in sorted((p for p in params if p.key in raw), key=lambda p: not p.per_choice):
        value = p.decode(raw[p.key])
        if p.per_choice:
            parent = p.key.rsplit('.', 1)[0]
            _set_path(tree, parent, value)
        else:
            _set_path(tree, p.key, value)
    return tree


def check_search_space(base: Mapping[str, Any], params: list[SearchParam], file: str | None = None) -> None:
    """Check every parameter's key path and values against the option schema, one parameter at a time.

    ``base`` must itself be valid. A value passes if the base with that value validates; a key under a block
    whose ``type`` is sampled too passes if it validates with at least one of those types.
    """
    by_key = {p.key: p for p in params}
    for p in params:
        parent = p.key.rsplit('.', 1)[0] if '.' in p.key else ''
        sibling_type = by_key.get(f'{parent}.type') if parent and not p.key.endswith('.type') else None
        contexts = [{}] + ([{sibling_type.key: t} for t in sibling_type.labels] if sibling_type else [])
        for raw in p.probes():
            first: OptionError | None = None
            for ctx in contexts:
                try:
                    validate_options(apply_params(base, params, {**ctx, p.key: raw}))
                    break
                except OptionError as exc:
                    first = first or exc
            else:
                shown = p.values[raw] if p.kind == 'categorical' else raw
                at = f' (at {first.where})' if first.where and first.where != p.key else ''
                raise OptionError(f'search_space.{p.key}', f'the value {shown!r} is not valid here{at}: '
                                  f'{first.detail}', file)


# ------------------------------------------------------------------------------------------------- database
def storage_url(url: str) -> str:
    """``url`` with the PostgreSQL driver made explicit: a plain ``postgresql://`` URL means psycopg2 (which
    ``requirements.txt`` installs), not SQLAlchemy 2.1's default psycopg 3; ``postgresql+<driver>://`` is kept.
    Anything that is not a URL is returned as it is (and reported when the study is opened)."""
    try:
        from sqlalchemy.engine import make_url
        parsed = make_url(url)
    except Exception:
        return url
    if parsed.drivername == 'postgresql':
        return parsed.set(drivername='postgresql+psycopg2').render_as_string(hide_password=False)
    return url


def _display_url(url: str) -> str:
    try:
        from sqlalchemy.engine import make_url
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


@contextlib.contextmanager
def _study_lock(url: str, study_name: str, engine: Any) -> Iterator[None]:
    """Serialise study set-up and trial proposal between workers of the same study.

    SQLite: an exclusive ``flock`` on ``<database>.lock`` (workers on one machine). PostgreSQL:
    ``pg_advisory_xact_lock``; MySQL/MariaDB: ``GET_LOCK``, both held by a connection of their own. Other
    databases get no lock (a few extra trials may then be proposed when workers finish together).
    """
    from sqlalchemy import text
    from sqlalchemy.engine import make_url
    backend = make_url(url).get_backend_name()
    digest = hashlib.sha256(f'codes.tune:{study_name}'.encode()).digest()
    if backend == 'sqlite':
        database = make_url(url).database
        if not database or database == ':memory:':
            yield
            return
        with exclusive_lock(f'{database}.lock'):
            yield
    elif backend == 'postgresql':
        key = int.from_bytes(digest[:8], 'big', signed=True)
        with engine.begin() as conn:  # the lock lasts until this transaction ends
            conn.execute(text('SELECT pg_advisory_xact_lock(:k)'), {'k': key})
            yield
    elif backend in ('mysql', 'mariadb'):
        name = f'codes.tune.{digest.hex()[:40]}'
        with engine.connect() as conn:
            got = conn.execute(text('SELECT GET_LOCK(:n, 600)'), {'n': name}).scalar()
            if got != 1:
                raise TimeoutError(f'could not take the study lock {name} within 600 s')
            try:
                yield
            finally:
                conn.execute(text('SELECT RELEASE_LOCK(:n)'), {'n': name})
    else:
        yield


@contextlib.contextmanager
def _heartbeat(storage: Any, trial_id: int, interval: int) -> Iterator[None]:
    """Record the trial's heartbeat every ``interval`` s, so a worker that dies leaves a trial other workers can
    mark as failed (``optuna.storages.fail_stale_trials``)."""
    if interval <= 0:
        yield
        return
    stop = threading.Event()

    def beat() -> None:
        while True:
            try:
                storage.record_heartbeat(trial_id)
            except Exception as exc:  # a lost connection must not kill the training thread
                logger.warning('Could not record the heartbeat of trial id %d: %s', trial_id, exc)
            if stop.wait(interval):
                return

    thread = threading.Thread(target=beat, name='tune-heartbeat', daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


# ---------------------------------------------------------------------------------------------- the pipeline
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


@dataclass
class _Setup:
    root: Path
    file: str
    base: dict  # the training options of a full run (no search_space/tune blocks)
    params: list[SearchParam]
    cfg: dict  # the validated tune block
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
        return int(self.cfg['max_iters'] or self.base['train']['total_iter'])


def _prepare(root: Path, args: argparse.Namespace) -> _Setup:
    """Read, validate and resolve everything before any database or training work."""
    file = str(args.opt)
    # search_space keys are key paths themselves: 'search_space.train.optim_g.lr={low: 1.0e-5, high: 1.0e-3}'
    # sets the entry 'train.optim_g.lr'; every other override is applied as train.py applies it
    space_overrides = [o for o in args.force_yml if o.startswith(('search_space.', 'search_space:')) and '=' in o]
    raw = apply_overrides(load_yaml(file), [o for o in args.force_yml if o not in space_overrides], file)
    for block in ('search_space', 'tune'):
        if block not in raw:
            raise OptionError(block, f'a tune option file needs a {block} block (see the README)', file)
    if space_overrides:
        if not isinstance(raw['search_space'], dict):
            raise OptionError('search_space', 'expected a mapping of option key paths', file)
        for item in space_overrides:
            key, text = item.split('=', 1)
            raw['search_space'][key[len('search_space.'):].strip().replace(':', '.')] = parse_value(text)
    params = parse_search_space(raw.pop('search_space'), file)
    given = validate_block(raw.pop('tune') or {}, TUNE_SCHEMA, 'tune', file)
    cfg = fill_defaults(given, TUNE_SCHEMA, None)
    prepare_from_options(raw)  # the sample data the file asks for (burst or blind), before its folders are checked
    base = raw
    validate_options(base, file)  # the base alone (full budget) must be a valid training file
    budgeted = _with_budget(base, cfg)
    checked = validate_options(budgeted, file)
    check_search_space(budgeted, params, file)

    metrics = checked.get('val', {}).get('metrics', {})
    metric = cfg['metric']
    if metric not in metrics:
        raise OptionError('tune.metric', f"'{metric}' is not a validation metric of this file; val.metrics has: "
                          f"{', '.join(metrics) or 'none'}", file)
    val_sets = [ds.get('name', phase) for phase, ds in checked.get('datasets', {}).items() if phase.startswith('val')]
    if not val_sets:
        raise OptionError('datasets', 'the objective needs a validation set (a datasets.val block)', file)
    dataset = cfg['dataset'] or val_sets[0]
    if dataset not in val_sets:
        raise OptionError('tune.dataset', f"'{dataset}' is not a validation set name; one of: {', '.join(val_sets)}",
                          file)
    direction = cfg['direction'] or ('minimize' if metrics[metric].get('better') == 'lower' else 'maximize')
    if cfg['direction'] is None and 'better' not in metrics[metric] and 'lpips' in metrics[metric]['type'].lower():
        logger.warning('tune.metric %s looks like LPIPS (lower is better) but neither tune.direction nor '
                       'val.metrics.%s.better is set: maximizing it', metric, metric)
    pruner = given.get('pruner', {})  # the keys the file gives (the defaults of every pruner are filled in cfg)
    ptype = cfg['pruner']['type']
    for k in pruner:
        if k != 'type' and k not in _PRUNER_KEYS[ptype]:
            raise OptionError(f'tune.pruner.{k}', f"does not apply to the {ptype} pruner (its keys: "
                              f"{', '.join(_PRUNER_KEYS[ptype]) or 'none'})", file)
    if ptype != 'none' and not checked.get('val', {}).get('val_freq'):
        logger.warning('tune.pruner is %s but val.val_freq is not set: trials are validated only at the end, so '
                       'nothing can be pruned', ptype)
    by_key = {p.key: p for p in params}
    for i, entry in enumerate(cfg['enqueue']):
        for k, v in entry.items():
            if k not in by_key:
                raise OptionError(f'tune.enqueue[{i}].{k}', 'is not a key of search_space', file)
            by_key[k].encode(v, f'tune.enqueue[{i}].{k}', file)

    study_name = args.study_name or cfg['study_name'] or base['name']
    explicit_root = base.get('path', {}).get('experiments_root')
    experiments = Path(explicit_root).parent if explicit_root else root / 'experiments'
    study_dir = experiments / study_name
    url = storage_url(args.storage or cfg['storage'] or f"sqlite:///{(study_dir / 'study.db').resolve()}")
    n_trials = args.n_trials if args.n_trials is not None else cfg['n_trials']
    if n_trials < 0:
        raise OptionError('tune.n_trials', f'must be >= 0, got {n_trials}', file)
    return _Setup(root, file, base, params, cfg, study_name, study_dir, url, n_trials, metric, dataset, direction)


def _with_budget(base: Mapping[str, Any], cfg: Mapping[str, Any]) -> dict:
    tree = copy.deepcopy(dict(base))
    if cfg.get('max_iters') is not None:
        _set_path(tree, 'train.total_iter', cfg['max_iters'])
    if cfg.get('limit_train_batches') is not None:
        _set_path(tree, 'train.limit_train_batches', cfg['limit_train_batches'])
    if cfg.get('limit_val_batches') is not None:
        _set_path(tree, 'val.limit_val_batches', cfg['limit_val_batches'])
    return tree


def _make_sampler(cfg: Mapping[str, Any], seed_offset: int) -> Any:
    import optuna
    sampler = cfg['sampler']
    seed = sampler['seed']
    seed = None if seed is None else seed + seed_offset
    if sampler['type'] == 'random':
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=sampler['n_startup_trials'],
                                      multivariate=sampler['multivariate'])


def _make_pruner(cfg: Mapping[str, Any], max_iters: int) -> Any:
    import optuna
    pruner = cfg['pruner']
    ptype = pruner['type']
    if ptype == 'median':
        return optuna.pruners.MedianPruner(n_startup_trials=pruner['n_startup_trials'],
                                           n_warmup_steps=pruner['n_warmup_steps'],
                                           interval_steps=pruner['interval_steps'])
    if ptype == 'hyperband':
        return optuna.pruners.HyperbandPruner(min_resource=pruner['min_resource'], max_resource=max_iters,
                                              reduction_factor=pruner['reduction_factor'])
    return optuna.pruners.NopPruner()


def _open_study(s: _Setup) -> tuple[Any, Any, Any, int]:
    """(study, storage, lock engine, heartbeat interval), creating the study if it does not exist."""
    import optuna
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url
    from sqlalchemy.pool import NullPool
    try:
        backend = make_url(s.url).get_backend_name()
    except Exception as exc:
        raise OptionError('tune.storage', f'--storage / tune.storage is not a database URL ({exc}): {s.url!r}',
                          s.file) from None
    if backend == 'sqlite':
        s.study_dir.mkdir(parents=True, exist_ok=True)
        database = make_url(s.url).database
        if database and database != ':memory:':
            try:
                Path(database).parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                blocked = ' (a file is in the way)' if isinstance(exc, (FileExistsError, NotADirectoryError)) else ''
                raise OptionError('tune.storage', f'cannot create the folder of the SQLite database {database} '
                                  f'(--storage / tune.storage): {exc.strerror or exc}{blocked}', s.file) from None
        engine_kwargs: dict[str, Any] = {'connect_args': {'timeout': 300}}
    else:
        engine_kwargs = {'pool_pre_ping': True}
    interval = int(s.cfg['heartbeat_interval'])
    grace = s.cfg['grace_period']
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    lock_engine = None
    try:
        lock_engine = None if backend == 'sqlite' else create_engine(s.url, poolclass=NullPool)
        with _study_lock(s.url, s.study_name, lock_engine), warnings.catch_warnings():
            warnings.simplefilter('ignore', optuna.exceptions.ExperimentalWarning)
            storage = optuna.storages.RDBStorage(
                s.url, engine_kwargs=engine_kwargs, heartbeat_interval=interval if interval > 0 else None,
                grace_period=(grace if grace else None) if interval > 0 else None)
            study = optuna.create_study(storage=storage, study_name=s.study_name, direction=s.direction,
                                        sampler=_make_sampler(s.cfg, 0),
                                        pruner=_make_pruner(s.cfg, s.budget_iters), load_if_exists=True)
    except OptionError:
        raise
    except Exception as exc:
        raise OptionError('tune.storage', f'cannot open the study database {_display_url(s.url)} (--storage / '
                          f'tune.storage): {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ""}',
                          s.file) from None
    if study.direction.name.lower() != s.direction:
        raise OptionError('tune.direction', f"study '{s.study_name}' in {_display_url(s.url)} was created to "
                          f'{study.direction.name.lower()}, this file asks to {s.direction}; use another '
                          '--study-name', s.file)
    return study, storage, lock_engine, interval


def fail_stale_trials(study: Any) -> list[int]:
    """Fail the running trials whose worker stopped recording heartbeats (killed, or its machine or database
    connection lost), recording why in their ``fail_reason``; returns their numbers. Optuna's own
    ``fail_stale_trials`` gives no reason."""
    import optuna
    from optuna.trial import TrialState
    storage = study._storage
    stale_ids = getattr(storage, '_get_stale_trial_ids', None)
    if stale_ids is None:  # another storage: Optuna's function, without the reason
        optuna.storages.fail_stale_trials(study)
        return []
    grace = storage.get_heartbeat_interval() if hasattr(storage, 'get_heartbeat_interval') else None
    failed = []
    for trial_id in stale_ids(study._study_id):
        try:
            trial = storage.get_trial(trial_id)
            worker = trial.user_attrs.get('worker', 'its worker')
            storage.set_trial_user_attr(trial_id, 'fail_reason', f'the worker {worker} stopped sending heartbeats '
                                        f'(every {grace} s) during the trial: killed, or its machine or database '
                                        'connection was lost; its trial process ends with it')
            if storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
                failed.append(trial.number)
        except optuna.exceptions.UpdateFinishedTrialError:  # another worker failed it first
            pass
    for number in failed:
        logger.warning('Trial %d failed: its worker stopped sending heartbeats', number)
    return failed


def _next_trial(study: Any, s: _Setup, lock_engine: Any, heartbeat: bool, first: bool) -> Any | None:
    """Under the study lock: fail stale trials, enqueue ``tune.enqueue`` into a new study, and propose the next
    trial unless the study already holds ``n_trials``."""
    import optuna
    from optuna.trial import TrialState
    with _study_lock(s.url, s.study_name, lock_engine), warnings.catch_warnings():
        warnings.simplefilter('ignore', optuna.exceptions.ExperimentalWarning)
        if heartbeat:
            fail_stale_trials(study)
        trials = study.get_trials(deepcopy=False)
        if not trials and s.cfg['enqueue']:
            by_key = {p.key: p for p in s.params}
            for entry in s.cfg['enqueue']:
                study.enqueue_trial({k: by_key[k].encode(v, k, s.file) for k, v in entry.items()})
            trials = study.get_trials(deepcopy=False)
        started = [t for t in trials if t.state != TrialState.WAITING]
        if len(started) >= s.n_trials:
            return None
        if first and s.cfg['sampler']['seed'] is not None:
            # a seeded sampler per worker, offset by the trials so far: one worker is reproducible, and workers
            # that join a study do not propose the same points
            study.sampler = _make_sampler(s.cfg, len(trials))
        with warnings.catch_warnings():  # heartbeats are recorded by _heartbeat, not by Study.optimize
            warnings.filterwarnings('ignore', message='Heartbeat of storage is supposed to be used')
            return study.ask()


class _Reporter:
    """The ``on_validation`` callback of a trial: reports the objective metric and asks the pruner."""

    def __init__(self, trial: Any, metric: str, dataset: str) -> None:
        self.trial, self.metric, self.dataset = trial, metric, dataset
        self.history: list[tuple[int, float]] = []
        self.pruned_at: int | None = None
        self.missing: str | None = None

    def __call__(self, current_iter: int, results: dict[str, dict[str, float]]) -> bool:
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


def _classify(exc: BaseException) -> str:
    """The failure reason recorded for a trial's exception."""
    import torch
    if isinstance(exc, FloatingPointError):
        return f'non-finite loss: {exc}'
    if isinstance(exc, (torch.cuda.OutOfMemoryError, MemoryError)):
        return f'out of memory: {exc}'.strip()
    if isinstance(exc, OptionError):
        return f'invalid sampled combination: {exc}'
    return f'{type(exc).__name__}: {exc}'


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


def _trial_child(root: str, trial_file: str, conn: Any) -> None:
    """The trial's own process: train, send every validation to the worker and stop when it says so."""
    from codes.train import train_pipeline

    def on_validation(current_iter: int, results: dict[str, dict[str, float]]) -> bool:
        conn.send(('val', current_iter, results))
        return bool(conn.recv())

    try:
        train_pipeline(root, ['-opt', trial_file], on_validation=on_validation)
    except Exception as exc:
        reason = _classify(exc)
        # the logger still writes to the trial's own log: the traceback goes there
        logging.getLogger('codes.train').exception('Trial failed: %s', reason)
        conn.send(('error', reason))
    else:
        conn.send(('done',))
    finally:
        conn.close()


def _run_child(s: _Setup, trial_file: Path, reporter: '_Reporter') -> str | None:
    """Run the trial in a child process (a crash there, e.g. a segfault of a native kernel on NaN input or the
    kernel's OOM killer, fails the trial, not the worker); relay its validations to ``reporter``. Returns the
    failure reason, or None."""
    import multiprocessing
    import signal
    method = s.cfg['start_method']
    ctx = multiprocessing.get_context(method)
    if method == 'forkserver':  # the server imports torch and the runner once; each trial forks from it
        ctx.set_forkserver_preload(['codes.tune', 'codes.train'])
    parent, child = ctx.Pipe()
    proc, lifeline = start_guarded(ctx, _trial_child, (str(s.root), str(trial_file), child), 'tune-trial')
    child.close()
    outcome = None
    try:
        while outcome is None:
            if not parent.poll(0.5):
                if not proc.is_alive() and not parent.poll(0):
                    break
                continue
            try:
                msg = parent.recv()
            except EOFError:
                break
            if msg[0] == 'val':
                parent.send(bool(reporter(msg[1], msg[2])))
            else:
                outcome = msg
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


def _run_trial(trial: Any, s: _Setup, worker: str) -> tuple[Any, float | None, dict[str, Any]]:
    """Sample, validate and train one trial; returns (Optuna state, value or None, user attributes)."""
    from optuna.trial import TrialState
    trial_dir = s.study_dir / f'trial_{trial.number}'
    trial_dir.mkdir(parents=True, exist_ok=True)
    attrs: dict[str, Any] = {'worker': worker, 'trial_dir': str(trial_dir)}
    raw = {p.key: p.suggest(trial) for p in s.params}
    opt = apply_params(_with_budget(s.base, s.cfg), s.params, raw)
    opt['name'] = f'{s.study_name}_trial_{trial.number}'
    _set_path(opt, 'path.experiments_root', str(trial_dir))
    trial_file = trial_dir / 'trial.yml'
    trial_file.write_text(f'# trial {trial.number} of study {s.study_name} (generated by tune.py from {s.file})\n'
                          + yaml.safe_dump(opt, sort_keys=False), encoding='utf-8')
    logger.info('Trial %d (%s): %s', trial.number, trial_dir,
                ', '.join(f'{p.key}={p.describe(raw[p.key])}' for p in s.params))
    try:
        validate_options(opt, str(trial_file))
    except OptionError as exc:
        return TrialState.FAIL, None, {**attrs, 'fail_reason': f'invalid sampled combination: {exc}'}
    reporter = _Reporter(trial, s.metric, s.dataset)
    t0 = time.time()
    reason = _run_child(s, trial_file, reporter)
    attrs['seconds'] = round(time.time() - t0, 1)
    if reporter.history:
        attrs['iterations'] = reporter.history[-1][0]
    if reason is None and reporter.missing:
        reason = reporter.missing
    if reason is None and reporter.history and not math.isfinite(reporter.history[-1][1]):
        reason = f'{s.metric} is {reporter.history[-1][1]} at iteration {reporter.history[-1][0]} (diverged)'
    if reason is not None:
        return TrialState.FAIL, None, {**attrs, 'fail_reason': reason[:2000]}
    if reporter.pruned_at is not None:
        return TrialState.PRUNED, None, {**attrs, 'pruned_at': reporter.pruned_at}
    if not reporter.history:
        return TrialState.FAIL, None, {**attrs, 'fail_reason': 'the run ended without a validation'}
    values = [v for _, v in reporter.history]
    better = max if s.direction == 'maximize' else min
    value = values[-1] if s.cfg['objective'] == 'last' else better(values)
    return TrialState.COMPLETE, value, attrs


def trials_table(study: Any, params: list[SearchParam], metric: str) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of every trial of ``study``: number, state, value, iterations, seconds, worker, parameters,
    and the failure reason."""
    header = ['trial', 'state', metric, 'iter', 'seconds', 'worker'] + [p.key for p in params] + ['note']
    rows = []
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        value = '' if t.value is None else f'{t.value:.4f}'
        if t.state.name == 'PRUNED' and t.intermediate_values:
            step = max(t.intermediate_values)
            value = f'({t.intermediate_values[step]:.4f})'
        cells = [str(t.number), t.state.name, value, str(t.user_attrs.get('iterations', '')),
                 str(t.user_attrs.get('seconds', '')), str(t.user_attrs.get('worker', ''))]
        cells += [p.describe(t.params[p.key]) if p.key in t.params else '' for p in params]
        note = t.user_attrs.get('fail_reason', '')
        if t.state.name == 'PRUNED':
            note = f"pruned at iteration {t.user_attrs.get('pruned_at', max(t.intermediate_values or [0]))}"
        cells.append(note.splitlines()[0][:120] if note else '')
        rows.append(cells)
    return header, rows


def _format_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    lines = ['  '.join(h.ljust(w) for h, w in zip(header, widths)).rstrip()]
    lines += ['  '.join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return '\n'.join(lines)


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.name}.', suffix='.tmp')
    with os.fdopen(fd, 'w', encoding='utf-8') as f:
        f.write(text)
    os.replace(tmp, path)


def _write_results(study: Any, s: _Setup) -> None:
    """Log the table of trials, write ``trials.csv`` and (when a trial completed) ``best.yml``."""
    header, rows = trials_table(study, s.params, s.metric)
    logger.info('Study %s (%s, %s %s on %s): %d trials\n%s', s.study_name, _display_url(s.url), s.direction,
                s.metric, s.dataset, len(rows), _format_table(header, rows))
    buf = io.StringIO()
    csv.writer(buf).writerows([header] + rows)
    _write_atomic(s.study_dir / 'trials.csv', buf.getvalue())
    from optuna.trial import TrialState
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        logger.warning('No trial has completed yet: best.yml not written')
        return
    best = study.best_trial
    opt = apply_params(s.base, s.params, best.params)
    opt['name'] = f'{s.study_name}_best'
    if s.base.get('path', {}).get('experiments_root'):
        opt['path']['experiments_root'] = str(s.study_dir.parent / opt['name'])
    values = ', '.join(f'{p.key}={p.describe(best.params[p.key])}' for p in s.params if p.key in best.params)
    head = (f'# Best trial {best.number} of study {s.study_name} ({s.metric} {best.value:.4f} on {s.dataset}, '
            f'{s.direction}) found by tune.py\n# from {s.file}: {values}\n'
            f'# Full training budget (train.total_iter {opt["train"]["total_iter"]}); run: python train.py -opt '
            f'{s.study_dir / "best.yml"}\n')
    _write_atomic(s.study_dir / 'best.yml', head + yaml.safe_dump(opt, sort_keys=False))
    logger.info('Best: trial %d, %s = %.4f; options in %s', best.number, s.metric, best.value,
                s.study_dir / 'best.yml')


def _write_study_plots(study: Any, s: _Setup) -> None:
    """``optimization_history.png`` and ``param_importances.png`` in the study folder; a failure is only logged."""
    try:
        from codes.visualization.plots import plot_study
        for path in plot_study(study, s.study_dir):
            logger.info('Plot: %s', path)
    except Exception as exc:  # matplotlib missing, a storage hiccup: the study itself is fine
        logger.warning('Study plots not written: %s: %s', type(exc).__name__, exc)


def tune_pipeline(root_path: str | Path, argv: list[str] | None = None) -> Any:
    """Run (or join, or resume) a study from the command line ``argv``; returns the Optuna study."""
    from optuna.trial import TrialState
    args = build_tune_parser().parse_args(argv)
    if int(os.environ.get('WORLD_SIZE', 1)) > 1:
        raise RuntimeError('tune.py runs each trial in one process: start one tune.py per GPU '
                           '(CUDA_VISIBLE_DEVICES=i python tune.py ... --storage <shared URL>), not under torchrun')
    root = Path(root_path)
    s = _prepare(root, args)
    if args.print_options or args.dry_run:
        trial = normalize_options(validate_options(_with_budget(s.base, s.cfg), s.file), root, is_train=True)
        trial['opt_file'] = s.file
        if args.print_options:  # the tune block with its defaults, then the options of a trial (budget applied)
            print_options({'tune': s.cfg, 'search_space': {p.key: p.kind for p in s.params}, 'study': {
                'name': s.study_name, 'storage': _display_url(s.url), 'metric': s.metric, 'dataset': s.dataset,
                'direction': s.direction, 'n_trials': s.n_trials}})
            print_options({'trial': trial})
            return None
        from codes.train import dry_run
        dry_run(trial)  # one training step of a trial with the file's own values (no study is opened)
        return None
    s.study_dir.mkdir(parents=True, exist_ok=True)
    log_file = s.study_dir / f"tune_{time.strftime('%Y%m%d_%H%M%S')}_{os.getpid()}.log"
    setup_logging(log_file)
    study, storage, lock_engine, interval = _open_study(s)
    worker = f'{socket.gethostname()}:{os.getpid()}'
    logger.info('Study %s in %s (%s %s on %s); worker %s; runs until the study holds %d trials', s.study_name,
                _display_url(s.url), s.direction, s.metric, s.dataset, worker, s.n_trials)
    study_id = storage.get_study_id_from_name(s.study_name)
    first = True
    try:
        while True:
            trial = _next_trial(study, s, lock_engine, interval > 0, first)
            first = False
            if trial is None:
                break
            trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
            trial.set_user_attr('worker', worker)  # named by the failure reason if this worker dies
            with _heartbeat(storage, trial_id, interval):
                try:
                    state, value, attrs = _run_trial(trial, s, worker)
                except BaseException as exc:  # Ctrl-C, a lost database connection: record the trial as failed
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
            logger.info('Trial %d %s%s', trial.number, state.name.lower(),
                        f': {s.metric} = {value:.4f}' if value is not None else
                        f": {attrs.get('fail_reason') or 'pruned at iteration %s' % attrs.get('pruned_at')}")
    finally:
        _write_results(study, s)
        _write_study_plots(study, s)
        if lock_engine is not None:
            lock_engine.dispose()
    return study

