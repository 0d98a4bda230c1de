"""The command line shared by train, test, tune and infer: the common flags, the train/test parser,
:func:`parse_options` (command line -> read, override, validate, normalise) and :func:`print_options`
(``--print-options``, with the defaults of every constructor an option block names).
"""
from __future__ import annotations

import argparse
import inspect
import os
import sys
from typing import Any, Callable, Mapping

import yaml

from codes.utils.option_schema import (DATASETS, SCHEMA, SUPPLIED_ARGS, TYPED_REGISTRIES, TYPED_SCHED, as_key,
                                       model_schema)
from codes.utils.option_validation import normalize_options, validate_options
from codes.utils.option_yaml import read_options, to_plain
from codes.utils.registry import DATASET_REGISTRY

__all__ = ['add_common_flags', 'build_arg_parser', 'parse_options', 'print_options']


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
    key = as_key(spec)
    s = key.spec
    if isinstance(s, str) and s in TYPED_REGISTRIES and isinstance(node, Mapping) and 'type' in node:
        try:
            cls = TYPED_REGISTRIES[s].get(node['type'])
        except (KeyError, ImportError):
            return node
        out = {**node, **{k: v for k, v in _signature_defaults(cls, SUPPLIED_ARGS.get(s, ())).items() if k not in node}}
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
    (stream or sys.stdout).write(yaml.safe_dump(to_plain(opt), sort_keys=False))
