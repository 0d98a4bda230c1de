"""The one option front end of train, test, tune and infer: safe YAML loading, typed ``key.path=value``
overrides, one schema holding every default, validation that reports every problem at once, normalisation.

An option file is data. It is read with a safe loader that also reads ``1e-4`` as a float (YAML 1.1 reads it
as a string), overridden with ``--set train.optim_g.lr=2e-4`` (BasicSR's ``--force_yml train:optim_g:lr=2e-4``
works too; values are parsed as YAML, keys may be added), checked against :data:`SCHEMA` and against the
constructors of every ``type`` it names (networks, datasets, losses, metrics, optimizers, schedulers: each
component's signature contributes its keys; each model class adds its own blocks through ``option_schema``),
and normalised once into a new dict with the schema's defaults filled in and the run's paths derived.
Every problem is reported with the file and the key path, all of them in one :class:`OptionErrors`.
"""
from __future__ import annotations

import argparse
import copy
import difflib
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import yaml

from codes.utils.files import atomic_write_text
from codes.utils.build import OptionError, OptionErrors, check_kwargs, coerce_value
from codes.utils.registry import (ARCH_REGISTRY, DATASET_REGISTRY, LOSS_REGISTRY, METRIC_REGISTRY, MODEL_REGISTRY,
                                  OPTIMIZER_REGISTRY, SCHEDULER_REGISTRY)

__all__ = ['load_yaml', 'dump_yaml', 'apply_overrides', 'validate_options', 'validate_block', 'normalize_options',
           'fill_defaults', 'read_options', 'parse_options', 'build_arg_parser', 'add_common_flags', 'print_options',
           'check_limit', 'set_by_path', 'model_schema', 'Key', 'PRECISIONS', 'OptionError', 'OptionErrors', 'SCHEMA',
           'LOADER_SCHEMA']

PRECISIONS = ('fp32', 'fp16', 'bf16')
DATASETS_README = 'datasets/README.md'


class _SafeLoader(yaml.SafeLoader):
    """SafeLoader that also resolves ``1e-4`` / ``5e3`` (no dot) as floats."""


_SafeLoader.add_implicit_resolver(
    'tag:yaml.org,2002:float',
    re.compile(r'''^(?:[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?(?:[eE][-+]?[0-9]+)
                   |[-+]?(?:[0-9][0-9_]*)\.[0-9_]*
                   |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                   |[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$''', re.X),
    list('-+0123456789.'))


def load_yaml(path: str | os.PathLike) -> dict:
    """Read an option file safely; the result must be a mapping."""
    path = Path(path)
    if not path.is_file():
        raise OptionError('', 'option file not found' if not path.exists() else 'not a file', str(path))
    try:
        text = path.read_text(encoding='utf-8')
    except (OSError, UnicodeDecodeError) as exc:
        raise OptionError('', f'cannot read the option file: {exc}', str(path)) from None
    try:
        data = yaml.load(text, Loader=_SafeLoader)
    except yaml.YAMLError as exc:
        detail = ' '.join(str(exc).split())  # one line
        raise OptionError('', f'not valid YAML: {detail}', str(path)) from None
    if data is None:
        raise OptionError('', 'the option file is empty', str(path))
    if not isinstance(data, dict):
        raise OptionError('', f'the top level must be a mapping of option keys, got a {type(data).__name__}',
                          str(path))
    return data


def parse_value(text: str) -> Any:
    """Parse one override value as YAML (``1e-4`` -> float, ``[1, 2]`` -> list, ``~`` -> None)."""
    return yaml.load(text, Loader=_SafeLoader) if text.strip() else ''


def dump_yaml(opt: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Write options as YAML (atomically)."""
    atomic_write_text(path, yaml.safe_dump(_plain(opt), sort_keys=False))


def _plain(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def apply_overrides(opt: dict, overrides: list[str], file: str | None = None) -> dict:
    """Return a copy of ``opt`` with ``key.path=value`` (or ``key:path=value``) overrides applied."""
    opt = copy.deepcopy(opt)
    for item in overrides or []:
        if '=' not in item:
            raise OptionError('', f"override '{item}' must look like key.path=value", file)
        key, text = item.split('=', 1)
        parts = [p for p in re.split(r'[.:]', key.strip()) if p]
        if not parts:
            raise OptionError('', f"override '{item}' has an empty key", file)
        set_by_path(opt, parts, parse_value(text), file)
    return opt


def set_by_path(tree: dict, parts: list[str], value: Any, file: str | None = None) -> None:
    """Set ``tree[parts[0]][parts[1]]... = value`` in place, adding missing mappings; a non-mapping on the way is
    an ``OptionError`` naming the key path (and ``file``)."""
    node = tree
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif not isinstance(child, dict):
            raise OptionError('.'.join(parts[:i + 1]),
                              f"is {child!r}, not a mapping: cannot set '{'.'.join(parts)}'", file)
        node = child
    node[parts[-1]] = value


# ---------------------------------------------------------------------------------------------- schema
# A schema is a dict of key -> spec. A spec is a :class:`Key`, or (shorthand for ``Key(spec)``) a type such as
# ``int`` or ``str | None``, a tuple of choices, a nested schema dict, or one of the markers below.
REQUIRED = object()  # ``(spec, REQUIRED)``: shorthand for ``Key(spec, required=True)``
TYPED_ARCH, TYPED_LOSS, TYPED_METRIC, TYPED_OPTIM, TYPED_SCHED = 'arch', 'loss', 'metric', 'optim', 'sched'
DATASETS = 'datasets'
_TYPED = {TYPED_ARCH: ARCH_REGISTRY, TYPED_LOSS: LOSS_REGISTRY, TYPED_METRIC: METRIC_REGISTRY,
          TYPED_OPTIM: OPTIMIZER_REGISTRY, TYPED_SCHED: SCHEDULER_REGISTRY}
#: The argument each builder supplies itself (not from the option file).
_SUPPLIED = {TYPED_OPTIM: ('params',), TYPED_SCHED: ('optimizer',), TYPED_METRIC: ('pred', 'gt')}
_NO_DEFAULT = object()
_BAD = object()  # the result of a check that failed (its error is recorded)
SAMPLE_HINT = ('See datasets/README.md for how to obtain and prepare the datasets (sample data: '
               'prepare_sample_data: <folder> for burst SR, prepare_blind_sample_data: <folder> for blind SR)')


@dataclass(frozen=True)
class Key:
    """One option key of the schema.

    Args:
        spec: a type (``int``, ``str | None``, ``list[str]``), a tuple of choices, a nested schema dict or a
            marker (``TYPED_ARCH`` ... a block with a ``type`` checked against that constructor; ``DATASETS``).
        default: the value :func:`normalize_options` fills in when the key is absent. A nested schema without a
            default is filled in as a block of its own defaults.
        test_default: the default of evaluation runs (test.py), where it differs from training's.
        required: True, or the phase that needs it ('train' / 'test').
        minimum, maximum: bounds of a number.
        check: a function ``check(value, where) -> value`` used instead of ``spec``.
        hint: added to every error of this key (what to use instead, ...).
        refuse: the key is refused with this message (a habit from other toolkits that has no meaning here).
    """

    spec: Any = Any
    default: Any = _NO_DEFAULT
    test_default: Any = _NO_DEFAULT
    required: bool | str = False
    minimum: float | None = None
    maximum: float | None = None
    check: Callable[[Any, str], Any] | None = None
    hint: str = ''
    refuse: str = ''

    def default_for(self, phase: str | None) -> Any:
        """The default of ``phase`` ('train', 'test', ...), or ``_NO_DEFAULT``."""
        if phase not in (None, 'train') and self.test_default is not _NO_DEFAULT:
            return self.test_default
        return self.default


def _as_key(spec: Any) -> Key:
    if isinstance(spec, Key):
        return spec
    if isinstance(spec, tuple) and len(spec) == 2 and spec[1] is REQUIRED:
        return Key(spec[0], required=True)
    return Key(spec)


def check_limit(value: Any, where: str) -> int | float | None:
    """A ``limit_*_batches`` value: None, a float fraction in (0, 1] or an int count >= 1 (kept as given)."""
    if value is None:
        return None
    if isinstance(value, float) and 0.0 < value <= 1.0:
        return value
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    raise OptionError(where, f'expected a fraction in (0, 1] (e.g. 0.25) or a count >= 1 (e.g. 10), got {value!r}')


def _check_num_gpu(value: Any, where: str) -> int | str:
    if value == 'auto' or (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
        return value
    raise OptionError(where, f"expected 'auto' or a number of GPUs >= 0 (0: CPU), got {value!r}")


LIMIT = Key(check=check_limit, default=None)
PRECISIONS = ('fp32', 'fp16', 'bf16')

#: Keys of a ``datasets.<phase>`` block that configure the runner's DataLoader; the others go to the dataset class.
LOADER_SCHEMA: dict[str, Any] = {
    'name': Key(str),  # default: the phase key (train, val, val_2, test_1, ...)
    'batch_size_per_gpu': Key(int, minimum=1),  # required by datasets.train; validation batches hold one sample
    'num_worker_per_gpu': Key(int, 0, minimum=0),
    'pin_memory': Key(bool, False),
    'persistent_workers': Key(bool, False),
    'prefetch_factor': Key(int | None, None, minimum=1),
    'shuffle': Key(bool, True),
    'timeout': Key(float, 0.0, minimum=0),
    'prefetch_mode': Key(('cpu', None), None, hint="BasicSR's CUDA prefetcher is not needed here: set pin_memory: "
                         'true (batches are copied to the GPU with non_blocking=True) and num_worker_per_gpu'),
}

SCHEMA: dict[str, Any] = {
    'name': Key(str, required=True),
    'model_type': Key(str, required=True),
    'scale': Key(int, minimum=1),
    'num_gpu': Key(check=_check_num_gpu, default='auto'),
    'manual_seed': Key(int, 0),
    'prepare_sample_data': Key(str | None, None),
    'prepare_blind_sample_data': Key(str | None, None),
    'find_unused_parameters': Key(bool | None, None),  # None: on while train.freeze holds parameters
    'cudnn_benchmark': Key(bool, True),
    'dist_params': {'backend': Key(str | None, None), 'timeout_minutes': Key(float, 30.0, minimum=0),
                    'port': Key(int | None, None, minimum=1, maximum=65535)},  # MASTER_PORT unless the env has one
    'network_g': Key(TYPED_ARCH, required=True),
    'datasets': Key(DATASETS),
    'path': {
        'pretrain_network_g': Key(str | None, None), 'strict_load_g': Key(bool, True),
        'param_key_g': Key(str, 'params'), 'resume_state': Key(str | None, None),
        'experiments_root': Key(str), 'results_root': Key(str),
    },
    'train': {
        'total_iter': Key(int, required='train', minimum=1),
        'optim_g': Key(TYPED_OPTIM, required='train'),
        'scheduler': Key(TYPED_SCHED, None),
        'pixel_opt': Key(TYPED_LOSS, {'type': 'L1Loss'}),
        'warmup_iter': Key(int, 0, minimum=-1),  # -1 (BasicSR) or 0: none
        'precision': Key(PRECISIONS, 'fp32'),
        'ema_decay': Key(float, 0.0, minimum=0, maximum=1),
        'grad_clip_norm': Key(float | None, None),
        'freeze': {'patterns': Key(list[str], []), 'iters': Key(int, 0, minimum=0)},
        'nan_skip_limit': Key(int, 100, minimum=0),
        'limit_train_batches': LIMIT,
        'divergence_guard': {'metric': Key(str | None, None), 'max_drop': Key(float, 3.0),
                             'lr_factor': Key(float, 0.5)},
        'no_weight_decay': Key((None, 'named', 'named_and_1d'), None),  # codes.models.optim.weight_decay_groups
    },
    'val': {
        'val_freq': Key(int, 0, minimum=0),
        'save_img': Key(bool, False, test_default=True),
        'max_save_img': Key(int, 4, minimum=0),
        'save_submission': Key(bool | None, None),  # None: the model's choice (its writes_submission)
        'precision': Key(PRECISIONS, 'fp32'),
        'metrics': Key({'*': TYPED_METRIC}, {}),
        'limit_val_batches': LIMIT,
        'pbar': Key(bool | None, None),  # progress bar of test.py; None: when stderr is a terminal
    },
    'logger': {
        'print_freq': Key(int, 100, minimum=1), 'save_checkpoint_freq': Key(int, 5000, minimum=1),
        'use_tb_logger': Key(bool, True), 'use_pbar': Key(bool | None, None), 'keep_last': Key(int, 0, minimum=0),
        'wandb': Key({'project': Key(str | None, None), 'entity': Key(str | None, None),
                      'resume_id': Key(str | None, None)}, None),
    },
}


def _merge(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict:
    out = dict(base)
    for k, v in extra.items():
        cur = out.get(k)
        if isinstance(v, Mapping) and isinstance(cur, Mapping):
            out[k] = _merge(cur, v)
        else:
            out[k] = v
    return out


def model_schema(model_type: Any) -> dict:
    """:data:`SCHEMA` with the blocks the model class ``model_type`` adds (its ``option_schema``)."""
    if not isinstance(model_type, str):
        return SCHEMA
    try:
        cls = MODEL_REGISTRY.get(model_type)
    except (KeyError, ImportError):
        return SCHEMA
    return _merge(SCHEMA, getattr(cls, 'option_schema', {}) or {})


# ---------------------------------------------------------------------------------------------- validation
class _Ctx:
    """Collects every problem of one validation."""

    def __init__(self, phase: str | None) -> None:
        self.phase = phase
        self.errors: list[OptionError] = []

    def add(self, exc: OptionError, hint: str = '') -> object:
        for e in OptionErrors.flatten(exc):
            self.errors.append(OptionError(e.where, f'{e.detail}. {hint}' if hint else e.detail, e.file))
        return _BAD

    def error(self, where: str, message: str) -> object:
        return self.add(OptionError(where, message))


def _join(where: str, key: Any) -> str:
    return f'{where}.{key}' if where else str(key)


def _validate(node: Any, spec: Any, where: str, ctx: _Ctx) -> Any:
    key = _as_key(spec)
    if key.refuse:
        return ctx.error(where, key.refuse)
    if node is None and key.default is None:  # '~' for a key whose default is None: the default
        return None
    s = key.spec
    if isinstance(s, str) and s in _TYPED:
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
        key = _as_key(sub)
        if key.required is True or (key.required and key.required == ctx.phase):
            ctx.error(_join(where, k), 'required key is missing')
        elif isinstance(key.spec, dict):
            _validate_mapping({}, key.spec, _join(where, k), ctx)  # reports its required keys, if any
    return out


def _lookup(kind: str, name: Any, where: str, ctx: _Ctx) -> Any:
    try:
        return _TYPED[kind].get(name) if kind in _TYPED else DATASET_REGISTRY.get(name)
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
        return ctx.error(where, f'missing key "type" (one of: {", ".join(_TYPED[kind].keys())})')
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
        out.update(check_kwargs(cls, rest, where, supplied=_SUPPLIED.get(kind, ())))
    except OptionError as exc:
        return ctx.add(exc)
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
    lmdb = False
    if isinstance(checked.get('io_backend'), Mapping):
        from codes.data.io_backend import check_io_backend  # the io_backend block's own check
        try:
            checked['io_backend'] = check_io_backend(checked['io_backend'])
            lmdb = checked['io_backend']['type'] == 'lmdb'
        except ValueError as exc:
            ctx.error(f'{where}.io_backend', str(exc))
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


# ---------------------------------------------------------------------------------------------- defaults
def fill_defaults(opt: Mapping[str, Any], schema: Mapping[str, Any], phase: str | None) -> dict:
    """A copy of ``opt`` with every absent key that has a default in ``schema`` filled in (nested blocks too)."""
    out = copy.deepcopy(dict(opt))
    for k, sub in schema.items():
        if k == '*':
            continue
        key = _as_key(sub)
        if k in out:
            if isinstance(key.spec, dict) and isinstance(out[k], Mapping):
                out[k] = fill_defaults(out[k], key.spec, phase)
            elif key.spec == DATASETS and isinstance(out[k], Mapping):
                out[k] = {p: fill_defaults(b, LOADER_SCHEMA, phase) for p, b in out[k].items()}
            continue
        default = key.default_for(phase)
        if default is not _NO_DEFAULT:
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


# ---------------------------------------------------------------------------------------------- command line
def add_common_flags(p: argparse.ArgumentParser, opt_required: bool = True,
                     opt_help: str = 'path to the YAML option file') -> argparse.ArgumentParser:
    """The flags every entry point shares: ``-opt``, ``--set`` / ``--force_yml``, ``--print-options``,
    ``--dry-run``."""
    p.add_argument('-opt', '--opt', required=opt_required, help=opt_help)
    p.add_argument('--set', '--force_yml', '--force-yml', dest='force_yml', nargs='+', default=[],
                   metavar='KEY.PATH=VALUE', help='override options, e.g. train.optim_g.lr=2e-4 (values parsed as '
                   'YAML; keys may be added; BasicSR spelling train:optim_g:lr=2e-4 works too)')
    p.add_argument('--print-options', '--print_options', dest='print_options', action='store_true',
                   help='print the fully resolved options (defaults filled in) as YAML and exit')
    p.add_argument('--dry-run', '--dry_run', dest='dry_run', action='store_true',
                   help='validate the options, build data and model, run one batch, and exit (writes nothing)')
    return p


def _add_dist_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument('--launcher', choices=['none', 'pytorch', 'slurm'], default='none',
                   help='accepted for compatibility; distributed runs are detected from the environment')
    p.add_argument('--local_rank', '--local-rank', type=int, default=None,
                   help='accepted for torch.distributed.launch; LOCAL_RANK from the environment wins')


def build_arg_parser(description: str | None = None, is_train: bool = True, prog: str | None = None
                     ) -> argparse.ArgumentParser:
    """The command line of ``train.py`` (``is_train``) or ``test.py``."""
    if description is None or description in ('train', 'test'):
        description = ('Train a model from a YAML option file (single process, or torchrun for several GPUs).'
                       if is_train else 'Evaluate a checkpoint (path.pretrain_network_g) on every dataset of a YAML '
                       'option file; writes metrics.json (and images) under results/<name>/<dataset>/.')
    p = argparse.ArgumentParser(prog=prog, description=description)
    add_common_flags(p)
    _add_dist_flags(p)
    if is_train:
        p.add_argument('--auto_resume', '--auto-resume', action='store_true',
                       help='resume from the newest complete training state of this experiment')
        p.add_argument('--debug', action='store_true', help='debug_ name prefix; validate/save every 8 iterations')
    return p


def read_options(file: str | os.PathLike, overrides: list[str] | None = None) -> dict:
    """Read an option file and apply ``key.path=value`` overrides (nothing validated yet)."""
    return apply_overrides(load_yaml(file), overrides or [], str(file))


def parse_options(root: str | os.PathLike, is_train: bool, argv: list[str] | None = None,
                  prepare: Callable[[dict], None] | None = None, prog: str | None = None
                  ) -> tuple[dict, argparse.Namespace]:
    """Parse the command line, read, override, validate and normalise the option file.

    ``prepare(raw)`` is given by the entry point and called between reading and validating (it generates the
    sample data an option file asks for, so that its data folders exist when they are checked).
    """
    args = build_arg_parser(is_train=is_train, prog=prog).parse_args(argv)
    if args.local_rank is not None and 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    raw = read_options(args.opt, args.force_yml)
    if prepare is not None:
        prepare(raw)
    opt = validate_options(raw, args.opt, is_train)
    opt = normalize_options(opt, root, is_train, getattr(args, 'debug', False))
    opt['opt_file'] = str(args.opt)
    return opt, args


_PLAIN = (type(None), bool, int, float, str)


def _signature_defaults(cls: Any, supplied: tuple[str, ...] = ()) -> dict:
    """The keyword defaults of ``cls``'s constructor (or of a function) that an option file can hold."""
    import inspect
    target = cls.__init__ if inspect.isclass(cls) else cls
    try:
        params = inspect.signature(target).parameters.values()
    except (TypeError, ValueError):
        return {}
    out = {}
    for p in params:
        if p.name in ('self', *supplied) or p.default is p.empty or p.kind not in (p.POSITIONAL_OR_KEYWORD,
                                                                                     p.KEYWORD_ONLY):
            continue
        value = list(p.default) if isinstance(p.default, tuple) else p.default
        if isinstance(value, _PLAIN) or (isinstance(value, list) and all(isinstance(v, _PLAIN) for v in value)):
            out[p.name] = value
    return out


def _with_constructor_defaults(node: Any, spec: Any) -> Any:
    key = _as_key(spec)
    s = key.spec
    if isinstance(s, str) and s in _TYPED and isinstance(node, Mapping) and 'type' in node:
        try:
            cls = _TYPED[s].get(node['type'])
        except (KeyError, ImportError):
            return node
        out = {**node, **{k: v for k, v in _signature_defaults(cls, _SUPPLIED.get(s, ())).items() if k not in node}}
        if isinstance(out.get('schedulers'), list):
            out['schedulers'] = [_with_constructor_defaults(b, TYPED_SCHED) for b in out['schedulers']]
        return out
    if isinstance(s, str) and s == DATASETS and isinstance(node, Mapping):
        out = {}
        for phase, block in node.items():
            try:
                cls = DATASET_REGISTRY.get(block['type'])
                out[phase] = {**block, **{k: v for k, v in _signature_defaults(cls).items() if k not in block}}
            except (KeyError, ImportError, TypeError):
                out[phase] = block
        return out
    if isinstance(s, dict) and isinstance(node, Mapping):
        return {k: _with_constructor_defaults(v, s.get(k, s.get('*'))) if (k in s or '*' in s) else v
                for k, v in node.items()}
    return node


def print_options(opt: Mapping[str, Any], stream: Any = None, constructor_defaults: bool = True) -> None:
    """Write the resolved options as YAML (``--print-options``); with ``constructor_defaults`` every block that
    names a ``type`` also shows the defaults of that constructor's arguments it does not set."""
    if constructor_defaults and 'model_type' in opt:
        opt = _with_constructor_defaults(opt, model_schema(opt.get('model_type')))
        # what normalize_options derives is left out, so that the output is itself a valid option file
        opt = {k: v for k, v in opt.items() if k not in ('is_train', 'opt_file')}
        if isinstance(opt.get('path'), Mapping):
            opt['path'] = {k: v for k, v in opt['path'].items() if k in SCHEMA['path']}
    (stream or sys.stdout).write(yaml.safe_dump(_plain(opt), sort_keys=False))
