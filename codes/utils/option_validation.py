"""Validation and normalisation of option trees against the schema of :mod:`codes.utils.option_schema`.

:func:`validate_options` checks a whole option tree (and :func:`validate_block` one block of a tool's own schema)
against the schema and the constructors of every ``type`` it names (their signatures, type hints and declared
value checks, ``check_options``: see :mod:`codes.utils.build`), and reports every problem at once in one
:class:`OptionErrors`; :func:`normalize_options` fills in the schema's defaults and derives the run's paths.
"""
from __future__ import annotations

import copy
import difflib
import os
from pathlib import Path
from typing import Any, Mapping

from codes.utils.build import OptionError, OptionErrors, check_kwargs, coerce_value, option_problems
from codes.utils.option_schema import (DATASETS, LOADER_SCHEMA, NO_DEFAULT, SUPPLIED_ARGS, TYPED_METRIC,
                                       TYPED_REGISTRIES, TYPED_SCHED, as_key, model_schema)
from codes.utils.registry import DATASET_REGISTRY, MODEL_REGISTRY

__all__ = ['validate_options', 'validate_block', 'fill_defaults', 'normalize_options', 'SAMPLE_HINT']

_BAD = object()  # the result of a check that failed (its error is recorded)
SAMPLE_HINT = ('See datasets/README.md for how to obtain and prepare the datasets (sample data: '
               'prepare_sample_data: <folder> for burst SR, prepare_blind_sample_data: <folder> for blind SR)')


class _Ctx:
    """Collects every problem of one validation."""

    def __init__(self, phase: str | None) -> None:
        self.phase = phase
        self.errors: list[OptionError] = []

    def add(self, exc: OptionError, hint: str = '') -> object:
        for e in OptionErrors.flatten(exc):  # the class is kept (a ConstructorOptionError stays one)
            self.errors.append(type(e)(e.where, f'{e.detail}. {hint}' if hint else e.detail, e.file))
        return _BAD

    def error(self, where: str, message: str) -> object:
        return self.add(OptionError(where, message))


def _join(where: str, key: Any) -> str:
    return f'{where}.{key}' if where else str(key)


def _validate(node: Any, spec: Any, where: str, ctx: _Ctx) -> Any:
    key = as_key(spec)
    if key.refuse:
        return ctx.error(where, key.refuse)
    if node is None and key.default is None:  # '~' for a key whose default is None: the default
        return None
    s = key.spec
    if isinstance(s, str) and s in TYPED_REGISTRIES:
        return _check_typed(s, node, where, ctx)
    if isinstance(s, str) and s == DATASETS:
        return _check_datasets(node, where, ctx)
    if isinstance(s, dict):
        return _validate_mapping(node, s, where, ctx)
    try:
        if key.check is not None:
            value = key.check(node, where)
        elif isinstance(s, tuple):  # choices
            if node not in s:
                raise OptionError(where, f'must be one of {", ".join(str(c) for c in s)}, got {node!r}')
            value = node
        else:
            value = coerce_value(node, s, where)
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if number and key.minimum is not None and value < key.minimum:
            raise OptionError(where, f'must be >= {key.minimum}, got {value!r}')
        if number and key.maximum is not None and value > key.maximum:
            raise OptionError(where, f'must be <= {key.maximum}, got {value!r}')
        return value
    except OptionError as exc:
        return ctx.add(exc, key.hint)


def _validate_mapping(node: Any, schema: Mapping[str, Any], where: str, ctx: _Ctx) -> Any:
    if not isinstance(node, Mapping):
        return ctx.error(where, f'expected a mapping, got {node!r}')
    out = {}
    for k, v in node.items():
        sub = schema.get(k, schema.get('*'))
        path = _join(where, k)
        if sub is None:
            known = [n for n in schema if n != '*']
            close = difflib.get_close_matches(str(k), known, n=2)
            hint = f' Did you mean {", ".join(map(repr, close))}?' if close else ''
            ctx.error(path, f'unknown key.{hint} Known keys here: {", ".join(known)}')
            continue
        value = _validate(v, sub, path, ctx)
        if value is not _BAD:
            out[k] = value
    for k, sub in schema.items():
        if k == '*' or k in node:
            continue
        key = as_key(sub)
        if key.required is True or (key.required and key.required == ctx.phase):
            ctx.error(_join(where, k), 'required key is missing')
        elif isinstance(key.spec, dict):
            _validate_mapping({}, key.spec, _join(where, k), ctx)  # reports its required keys, if any
    return out


def _lookup(kind: str, name: Any, where: str, ctx: _Ctx) -> Any:
    try:
        return TYPED_REGISTRIES[kind].get(name) if kind in TYPED_REGISTRIES else DATASET_REGISTRY.get(name)
    except KeyError as exc:
        return ctx.error(f'{where}.type', exc.args[0])
    except ImportError as exc:
        return ctx.error(f'{where}.type', str(exc))


def _check_typed(kind: str, block: Any, where: str, ctx: _Ctx) -> Any:
    if block is None and kind == TYPED_SCHED:
        return None
    if not isinstance(block, Mapping):
        return ctx.error(where, f'expected a mapping with a "type" key, got {block!r}')
    if 'type' not in block:
        return ctx.error(where, f'missing key "type" (one of: {", ".join(TYPED_REGISTRIES[kind].keys())})')
    cls = _lookup(kind, block['type'], where, ctx)
    if cls is _BAD:
        return _BAD
    rest = {k: v for k, v in block.items() if k != 'type'}
    out: dict[str, Any] = {'type': block['type']}
    if kind == TYPED_METRIC and 'better' in rest:
        better = rest.pop('better')
        if better not in ('higher', 'lower'):
            ctx.error(f'{where}.better', f"must be 'higher' or 'lower', got {better!r}")
        else:
            out['better'] = better
    nested = None
    if kind == TYPED_SCHED and 'schedulers' in rest:  # SequentialLR, ChainedScheduler: a list of scheduler blocks
        blocks = rest['schedulers']
        if not isinstance(blocks, list) or not blocks:
            ctx.error(f'{where}.schedulers', 'expected a list of scheduler blocks ({type: ..., ...})')
        else:
            nested = [_check_typed(TYPED_SCHED, b, f'{where}.schedulers[{i}]', ctx) for i, b in enumerate(blocks)]
        rest['schedulers'] = []  # stands in for the list in the signature check
    try:
        checked = check_kwargs(cls, rest, where, supplied=SUPPLIED_ARGS.get(kind, ()))
    except OptionError as exc:
        return ctx.add(exc)
    problems = option_problems(cls, checked, where)  # the constructor's declared value checks (build.py)
    for exc in problems:
        ctx.add(exc)
    if problems:
        return _BAD
    out.update(checked)
    if nested is not None:
        out['schedulers'] = nested
    return out


def _check_datasets(node: Any, where: str, ctx: _Ctx) -> Any:
    if not isinstance(node, Mapping):
        return ctx.error(where, 'expected a mapping of phase -> dataset block (train, val, val_2, test_1, ...)')
    out = {}
    for phase_key, block in node.items():
        path = _join(where, phase_key)
        phase = str(phase_key).split('_')[0]
        if phase not in ('train', 'val', 'test'):
            ctx.error(path, 'a dataset key starts with train, val or test (val_2, test_1, ...)')
            continue
        checked = _check_dataset(block, path, phase == 'train' and ctx.phase == 'train', ctx)
        if checked is not _BAD:
            out[phase_key] = checked
    return out


def _check_dataset(block: Any, where: str, needs_batch: bool, ctx: _Ctx) -> Any:
    if not isinstance(block, Mapping) or 'type' not in block:
        return ctx.error(where, 'expected a mapping with a "type" key (a dataset class)')
    loader = _validate_mapping({k: v for k, v in block.items() if k in LOADER_SCHEMA}, LOADER_SCHEMA, where, ctx)
    if needs_batch and 'batch_size_per_gpu' not in block:
        ctx.error(f'{where}.batch_size_per_gpu', 'required key is missing')
    cls = _lookup('dataset', block['type'], where, ctx)
    if cls is _BAD:
        return _BAD
    rest = {k: v for k, v in block.items() if k not in LOADER_SCHEMA and k != 'type'}
    try:
        checked = check_kwargs(cls, rest, where)
    except OptionError as exc:
        return ctx.add(exc)
    for exc in option_problems(cls, checked, where):
        ctx.add(exc)
    io_backend = checked.get('io_backend')  # its own check is the dataset class's check_options
    lmdb = isinstance(io_backend, Mapping) and io_backend.get('type') == 'lmdb'
    for k, v in checked.items():
        if not (k.startswith('dataroot') and isinstance(v, str)):
            continue
        if lmdb and os.path.exists(v.rstrip('/') + '.lmdb'):
            continue  # io_backend lmdb reads <dataroot>.lmdb
        if not os.path.exists(v):
            ctx.error(f'{where}.{k}', f"data folder '{v}' does not exist. {SAMPLE_HINT}")
    return {'type': block['type'], **(loader if loader is not _BAD else {}), **checked}


def _raise(ctx: _Ctx, file: str | None) -> None:
    if ctx.errors:
        errors = [e if e.file or not file else e.with_file(file) for e in ctx.errors]
        OptionErrors.raise_all(errors)


def validate_block(node: Any, schema: Mapping[str, Any], where: str, file: str | None = None,
                   phase: str | None = None) -> dict:
    """Check one option block against a schema written in the notation of :data:`SCHEMA` (for tools that add
    their own blocks, e.g. ``tune``, ``infer``); returns the converted copy or raises ``OptionError`` (one
    problem) or ``OptionErrors`` (several), each naming ``file``."""
    ctx = _Ctx(phase)
    out = _validate_mapping(node, dict(schema), where, ctx)
    _raise(ctx, file)
    return out


def validate_options(opt: Mapping[str, Any], file: str | None = None, is_train: bool = True) -> dict:
    """Check ``opt`` against the schema (with its model's blocks) and the constructors it names; returns a
    type-converted copy (defaults are filled in by :func:`normalize_options`).

    Every unknown key, wrong type or value, missing required key or missing data folder is reported at once:
    ``OptionError`` for one problem, ``OptionErrors`` for several, each naming ``file`` and the key path.
    """
    ctx = _Ctx('train' if is_train else 'test')
    if not isinstance(opt, Mapping):
        raise OptionError('', 'the top level must be a mapping of option keys', file)
    model_type = opt.get('model_type')
    if isinstance(model_type, str):
        try:
            MODEL_REGISTRY.get(model_type)
        except KeyError as exc:
            ctx.error('model_type', exc.args[0])
        except ImportError as exc:
            ctx.error('model_type', str(exc))
    out = _validate_mapping(opt, model_schema(model_type), '', ctx)
    datasets = opt.get('datasets')
    if is_train and (datasets is None or isinstance(datasets, Mapping) and 'train' not in datasets):
        ctx.error('datasets.train', 'a training run needs a datasets.train block')
    if not is_train:
        if not datasets:
            ctx.error('datasets', 'list at least one dataset to evaluate (test_1, test_2, ...)')
        path = opt.get('path')
        if not isinstance(path, Mapping) or not path.get('pretrain_network_g'):
            ctx.error('path.pretrain_network_g', 'test.py needs the weights to evaluate')
    _raise(ctx, file)
    return out


def fill_defaults(opt: Mapping[str, Any], schema: Mapping[str, Any], phase: str | None) -> dict:
    """A copy of ``opt`` with every absent key that has a default in ``schema`` filled in (nested blocks too)."""
    out = copy.deepcopy(dict(opt))
    for k, sub in schema.items():
        if k == '*':
            continue
        key = as_key(sub)
        if k in out:
            if isinstance(key.spec, dict) and isinstance(out[k], Mapping):
                out[k] = fill_defaults(out[k], key.spec, phase)
            elif key.spec == DATASETS and isinstance(out[k], Mapping):
                out[k] = {p: fill_defaults(b, LOADER_SCHEMA, phase) for p, b in out[k].items()}
            continue
        default = key.default_for(phase)
        if default is not NO_DEFAULT:
            out[k] = copy.deepcopy(default)
        elif isinstance(key.spec, dict):
            out[k] = fill_defaults({}, key.spec, phase)
    return out


def normalize_options(opt: Mapping[str, Any], root: str | os.PathLike, is_train: bool, debug: bool = False) -> dict:
    """The schema's defaults (:func:`fill_defaults`) and the run's derived paths, in a new dict."""
    opt = fill_defaults(opt, model_schema(opt.get('model_type')), 'train' if is_train else 'test')
    root = Path(root)
    opt['is_train'] = is_train
    if debug and not opt['name'].startswith('debug'):
        opt['name'] = f"debug_{opt['name']}"
    path = opt['path']
    if is_train:
        exp = Path(path.get('experiments_root') or root / 'experiments' / opt['name'])
        path['experiments_root'] = str(exp)
        for sub in ('models', 'training_states', 'visualization', 'tb_logger'):
            path[sub] = str(exp / sub)
        path['metrics_log'] = str(exp / 'metrics.jsonl')
    else:
        res = Path(path.get('results_root') or root / 'results' / opt['name'])
        path['results_root'] = str(res)
    if 'debug' in opt['name']:  # BasicSR: any name containing 'debug'
        opt['val']['val_freq'] = 8
        opt['logger'].update(print_freq=1, save_checkpoint_freq=8, use_tb_logger=False)
    for phase, ds in opt.get('datasets', {}).items():
        ds['name'] = ds.get('name') or phase
    return opt
