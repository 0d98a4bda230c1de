"""Option files: safe YAML loading, typed ``key.path=value`` overrides, schema validation and normalisation.

An option file is data. It is read with a safe loader that also reads ``1e-4`` as a float (YAML 1.1 reads it
as a string), overridden with ``--force_yml train.optim_g.lr=2e-4`` (BasicSR's ``train:optim_g:lr=2e-4`` works
too; values are parsed as YAML, keys may be added), checked against the schema below and against the
constructors of every ``type`` it names, and normalised once into a new dict (derived paths added).
Every error names the file and the key path.
"""
from __future__ import annotations

import argparse
import copy
import difflib
import fcntl
import os
import re
from pathlib import Path
from typing import Any, Mapping

import yaml

from codes.utils.build import OptionError, check_kwargs, coerce_value

__all__ = ['load_yaml', 'dump_yaml', 'apply_overrides', 'validate_options', 'validate_block', 'normalize_options',
           'parse_options', 'build_arg_parser', 'check_limit', 'prepare_sample_data', 'set_by_path', 'PRECISIONS',
           'OptionError', 'SCHEMA']

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
        raise FileNotFoundError(f'option file not found: {path}')
    try:
        data = yaml.load(path.read_text(encoding='utf-8'), Loader=_SafeLoader)
    except yaml.YAMLError as exc:
        raise OptionError('', f'not valid YAML: {exc}', str(path)) from None
    if not isinstance(data, dict):
        raise OptionError('', 'the top level must be a mapping of option keys', str(path))
    return data


def parse_value(text: str) -> Any:
    """Parse one override value as YAML (``1e-4`` -> float, ``[1, 2]`` -> list, ``~`` -> None)."""
    return yaml.load(text, Loader=_SafeLoader) if text.strip() else ''


def dump_yaml(opt: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Write options as YAML (atomically)."""
    path = Path(path)
    tmp = path.with_name(path.name + '.tmp')
    tmp.write_text(yaml.safe_dump(_plain(opt), sort_keys=False), encoding='utf-8')
    os.replace(tmp, path)


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
# A schema node is a dict of key -> spec. A spec is a type (or tuple of choices), a nested dict, or a marker:
REQUIRED = object()
TYPED_ARCH, TYPED_LOSS, TYPED_METRIC, TYPED_OPTIM, TYPED_SCHED = 'arch', 'loss', 'metric', 'optim', 'sched'
DATASETS = 'datasets'
LIMIT = 'limit'  # limit_*_batches: a fraction in (0, 1] (float) or a count >= 1 (int)

SCHEMA: dict[str, Any] = {
    'name': (str, REQUIRED),
    'model_type': (str, REQUIRED),
    'scale': int,
    'num_gpu': int | str,
    'manual_seed': int,
    'prepare_sample_data': str | None,
    'prepare_blind_sample_data': str | None,
    'find_unused_parameters': bool,
    'cudnn_benchmark': bool,
    'dist_params': {'backend': str, 'timeout_minutes': float},
    'network_g': (TYPED_ARCH, REQUIRED),
    'datasets': DATASETS,
    'path': {
        'pretrain_network_g': str | None, 'strict_load_g': bool, 'param_key_g': str,
        'resume_state': str | None, 'experiments_root': str, 'results_root': str,
    },
    'train': {
        'total_iter': int, 'optim_g': TYPED_OPTIM, 'scheduler': TYPED_SCHED, 'pixel_opt': TYPED_LOSS,
        'kernel_opt': TYPED_LOSS, 'lr_estimator': float | None, 'warmup_iter': int,
        'precision': PRECISIONS, 'ema_decay': float, 'grad_clip_norm': float | None,
        'freeze': {'patterns': list[str], 'iters': int},
        'nan_skip_limit': int, 'limit_train_batches': LIMIT,
        'divergence_guard': {'metric': str, 'max_drop': float, 'lr_factor': float},
    },
    'val': {
        'val_freq': int, 'save_img': bool, 'max_save_img': int, 'save_submission': bool, 'precision': PRECISIONS,
        'metrics': {'*': TYPED_METRIC}, 'limit_val_batches': LIMIT,
        # RealBurstSRModel: how predictions are aligned to the BurstSR ground truth before scoring
        'alignment': {'flow_estimator': ('auto', 'pwcnet', 'dis'), 'pwcnet_path': str | None,
                      'dis_preset': ('ultrafast', 'fast', 'medium'), 'sr_factor': int},
    },
    'logger': {
        'print_freq': int, 'save_checkpoint_freq': int, 'use_tb_logger': bool, 'use_pbar': bool | None,
        'keep_last': int, 'wandb': {'project': str | None, 'entity': str | None, 'resume_id': str | None},
    },
}


#: The argument each builder supplies itself (not from the option file).
_SUPPLIED = {TYPED_OPTIM: ('params',), TYPED_SCHED: ('optimizer',)}


def check_limit(value: Any, where: str) -> int | float | None:
    """A ``limit_*_batches`` value: None, a float fraction in (0, 1] or an int count >= 1 (kept as given)."""
    if value is None:
        return None
    if isinstance(value, float) and 0.0 < value <= 1.0:
        return value
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    raise OptionError(where, f'expected a fraction in (0, 1] (e.g. 0.25) or a count >= 1 (e.g. 10), got {value!r}')


def _check_typed(kind: str, block: Any, where: str) -> dict:
    if not isinstance(block, Mapping):
        raise OptionError(where, f'expected a mapping with a "type" key, got {block!r}')
    if 'type' not in block:
        raise OptionError(where, 'missing key "type"')
    rest = {k: v for k, v in block.items() if k != 'type'}
    name = block['type']
    if kind in (TYPED_OPTIM, TYPED_SCHED):
        from codes.models.optim import OPTIMIZERS, SCHEDULERS
        table = OPTIMIZERS if kind == TYPED_OPTIM else SCHEDULERS
        if name not in table:
            raise OptionError(f'{where}.type', f"unknown type '{name}'; one of: {', '.join(table)}")
        return {'type': name, **check_kwargs(table[name], rest, where, supplied=_SUPPLIED[kind])}
    if kind == TYPED_ARCH:
        from codes.archs import ARCH_REGISTRY as reg
    elif kind == TYPED_LOSS:
        from codes.losses import LOSS_REGISTRY as reg
    else:
        from codes.metrics import METRIC_REGISTRY as reg
        rest.pop('better', None)
    try:
        cls = reg.get(name)
    except KeyError as exc:
        raise OptionError(f'{where}.type', exc.args[0]) from None
    except ImportError as exc:
        raise OptionError(f'{where}.type', str(exc)) from None
    checked = check_kwargs(cls, rest, where, supplied=('pred', 'gt') if kind == TYPED_METRIC else ())
    if kind == TYPED_METRIC and 'better' in block:
        checked['better'] = coerce_value(block['better'], str, f'{where}.better')
        if checked['better'] not in ('higher', 'lower'):
            raise OptionError(f'{where}.better', f"must be 'higher' or 'lower', got {block['better']!r}")
    return {'type': name, **checked}


def _check_dataset(block: Any, where: str) -> dict:
    from codes.data import DATASET_REGISTRY, LOADER_KEYS
    if not isinstance(block, Mapping) or 'type' not in block:
        raise OptionError(where, 'expected a mapping with a "type" key (a dataset class)')
    loader = {k: block[k] for k in LOADER_KEYS if k in block}
    loader_types = {'name': str, 'batch_size_per_gpu': int, 'num_worker_per_gpu': int, 'pin_memory': bool,
                    'persistent_workers': bool, 'prefetch_factor': int, 'shuffle': bool, 'timeout': float}
    for k, v in loader.items():
        loader[k] = coerce_value(v, loader_types[k], f'{where}.{k}')
    rest = {k: v for k, v in block.items() if k not in LOADER_KEYS and k != 'type'}
    try:
        cls = DATASET_REGISTRY.get(block['type'])
    except KeyError as exc:
        raise OptionError(f'{where}.type', exc.args[0]) from None
    except ImportError as exc:
        raise OptionError(f'{where}.type', str(exc)) from None
    checked = check_kwargs(cls, rest, where)
    lmdb = False
    if isinstance(checked.get('io_backend'), Mapping):
        from codes.data.io_backend import check_io_backend
        try:
            checked['io_backend'] = check_io_backend(checked['io_backend'])
        except ValueError as exc:
            raise OptionError(f'{where}.io_backend', str(exc)) from None
        lmdb = checked['io_backend']['type'] == 'lmdb'
    for k, v in checked.items():
        if lmdb and k.startswith('dataroot') and isinstance(v, str) and os.path.exists(v.rstrip('/') + '.lmdb'):
            continue  # io_backend lmdb reads <dataroot>.lmdb
        if k.startswith('dataroot') and isinstance(v, str) and not os.path.exists(v):
            raise OptionError(f'{where}.{k}', f"data folder '{v}' does not exist. See {DATASETS_README} for how to "
                              'obtain and prepare the datasets (or run python -m codes.scripts.make_sample_data '
                              'for the sample data).')
    return {'type': block['type'], **loader, **checked}


def _validate(node: Any, schema: Any, where: str) -> Any:
    if isinstance(schema, tuple) and len(schema) == 2 and schema[1] is REQUIRED:
        schema = schema[0]
    if schema in (TYPED_ARCH, TYPED_LOSS, TYPED_METRIC, TYPED_OPTIM, TYPED_SCHED):
        return _check_typed(schema, node, where)
    if schema == LIMIT:
        return check_limit(node, where)
    if schema == DATASETS:
        if not isinstance(node, Mapping):
            raise OptionError(where, 'expected a mapping of phase -> dataset block')
        return {k: _check_dataset(v, f'{where}.{k}') for k, v in node.items()}
    if isinstance(schema, dict):
        if not isinstance(node, Mapping):
            raise OptionError(where, f'expected a mapping, got {node!r}')
        out = {}
        for key, value in node.items():
            sub = schema.get(key, schema.get('*'))
            path = f'{where}.{key}' if where else str(key)
            if sub is None:
                close = difflib.get_close_matches(str(key), list(schema), n=2)
                hint = f' Did you mean {", ".join(map(repr, close))}?' if close else ''
                raise OptionError(path, f'unknown key.{hint} Known keys here: {", ".join(k for k in schema)}')
            out[key] = _validate(value, sub, path)
        for key, sub in schema.items():
            if isinstance(sub, tuple) and len(sub) == 2 and sub[1] is REQUIRED and key not in node:
                raise OptionError(f'{where}.{key}' if where else key, 'required key is missing')
        return out
    if isinstance(schema, tuple):  # choices
        if node not in schema:
            raise OptionError(where, f'must be one of {", ".join(schema)}, got {node!r}')
        return node
    return coerce_value(node, schema, where)


def validate_block(node: Any, schema: Mapping[str, Any], where: str, file: str | None = None) -> dict:
    """Check one option block against a schema written in the notation of :data:`SCHEMA` (for tools that add
    their own blocks, e.g. ``tune``); returns the converted copy or raises ``OptionError`` naming ``file``."""
    try:
        return _validate(node, dict(schema), where)
    except OptionError as exc:
        raise exc.with_file(file) if file and not exc.file else exc from None


def validate_options(opt: Mapping[str, Any], file: str | None = None, is_train: bool = True) -> dict:
    """Check ``opt`` against the schema and the constructors it names; returns a type-converted copy.

    Raises ``OptionError`` naming ``file`` and the key path on any unknown key, wrong type, missing required key
    or missing data folder.
    """
    try:
        out = _validate(opt, SCHEMA, '')
        if is_train:
            if 'train' not in out or 'total_iter' not in out['train']:
                raise OptionError('train.total_iter', 'required key is missing')
            if 'optim_g' not in out['train']:
                raise OptionError('train.optim_g', 'required key is missing')
            train_set = out.get('datasets', {}).get('train')
            if train_set is None:
                raise OptionError('datasets.train', 'a training run needs a datasets.train block')
            if 'batch_size_per_gpu' not in train_set:
                raise OptionError('datasets.train.batch_size_per_gpu', 'required key is missing')
        return out
    except OptionError as exc:
        raise exc.with_file(file) if file and not exc.file else exc from None


def normalize_options(opt: Mapping[str, Any], root: str | os.PathLike, is_train: bool, debug: bool = False) -> dict:
    """Derive the run's paths and defaults into a new dict (``opt`` is left unchanged)."""
    opt = copy.deepcopy(dict(opt))
    root = Path(root)
    opt['is_train'] = is_train
    if debug and not opt['name'].startswith('debug'):
        opt['name'] = f"debug_{opt['name']}"
    path = opt.setdefault('path', {})
    path.setdefault('strict_load_g', True)
    path.setdefault('param_key_g', 'params')
    if is_train:
        exp = Path(path.get('experiments_root') or root / 'experiments' / opt['name'])
        path['experiments_root'] = str(exp)
        for sub in ('models', 'training_states', 'visualization', 'tb_logger'):
            path[sub] = str(exp / sub)
        path['metrics_log'] = str(exp / 'metrics.jsonl')
    else:
        res = Path(path.get('results_root') or root / 'results' / opt['name'])
        path['results_root'] = str(res)
    train = opt.setdefault('train', {})
    train.setdefault('precision', 'fp32')
    train.setdefault('ema_decay', 0.0)
    train.setdefault('pixel_opt', {'type': 'L1Loss'})
    logger = opt.setdefault('logger', {})
    logger.setdefault('print_freq', 100)
    logger.setdefault('save_checkpoint_freq', 5000)
    logger.setdefault('use_tb_logger', True)
    logger.setdefault('keep_last', 0)
    val = opt.setdefault('val', {})
    val.setdefault('save_img', False)
    val.setdefault('max_save_img', 4)
    if 'name' in opt and 'debug' in opt['name']:
        val['val_freq'] = 8
        logger.update(print_freq=1, save_checkpoint_freq=8, use_tb_logger=False)
    opt.setdefault('manual_seed', 0)
    for phase, ds in opt.get('datasets', {}).items():
        ds.setdefault('name', phase)
    return opt


def build_arg_parser(description: str) -> argparse.ArgumentParser:
    """The command line shared by ``train.py`` and ``test.py``."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument('-opt', '--opt', required=True, help='path to the YAML option file')
    p.add_argument('--launcher', choices=['none', 'pytorch', 'slurm'], default='none',
                   help='accepted for compatibility; distributed runs are detected from the environment')
    p.add_argument('--auto_resume', '--auto-resume', action='store_true',
                   help='resume from the newest complete training state of this experiment')
    p.add_argument('--debug', action='store_true', help='debug_ name prefix; validate/save every 8 iterations')
    p.add_argument('--local_rank', '--local-rank', type=int, default=None,
                   help='accepted for torch.distributed.launch; LOCAL_RANK from the environment wins')
    p.add_argument('--force_yml', '--set', nargs='+', default=[], metavar='KEY.PATH=VALUE',
                   help='override options, e.g. train.optim_g.lr=2e-4 (values parsed as YAML; keys may be added)')
    return p


def prepare_sample_data(out: str, blind: bool = False) -> None:
    """Generate the sample data once, even when several ranks start together (a file lock serialises them).

    ``blind`` selects the single-image blind-SR sample set (``codes.scripts.make_blind_sr_sample``) instead of the
    burst one."""
    if blind:
        from codes.scripts.make_blind_sr_sample import ensure_blind_sr_sample as ensure
    else:
        from codes.scripts.make_sample_data import ensure_sample_data as ensure
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    with open(f'{out.rstrip(os.sep)}.lock', 'w') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        ensure(out)


def parse_options(root: str | os.PathLike, is_train: bool, argv: list[str] | None = None
                  ) -> tuple[dict, argparse.Namespace]:
    """Parse the command line, read, override, validate and normalise the option file."""
    args = build_arg_parser('train' if is_train else 'test').parse_args(argv)
    if args.local_rank is not None and 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    raw = apply_overrides(load_yaml(args.opt), args.force_yml, args.opt)
    if raw.get('prepare_sample_data'):
        prepare_sample_data(str(raw['prepare_sample_data']))
    if raw.get('prepare_blind_sample_data'):
        prepare_sample_data(str(raw['prepare_blind_sample_data']), blind=True)
    opt = validate_options(raw, args.opt, is_train)
    opt = normalize_options(opt, root, is_train, args.debug)
    opt['opt_file'] = str(args.opt)
    return opt, args
