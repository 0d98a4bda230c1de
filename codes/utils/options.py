"""The one option front end of train, test, tune and infer: safe YAML loading, typed ``key.path=value``
overrides, one schema holding every default, validation that reports every problem at once, normalisation.

An option file is data. It is read with a safe loader that also reads ``1e-4`` as a float (YAML 1.1 reads it
as a string), overridden with ``--set train.optim_g.lr=2e-4`` (BasicSR's ``--force_yml train:optim_g:lr=2e-4``
works too; values are parsed as YAML, keys may be added), checked against :data:`SCHEMA` and against the
constructors of every ``type`` it names (networks, datasets, losses, metrics, optimizers, schedulers: each
component's signature contributes its keys; each model class adds its own blocks through ``option_schema``),
and normalised once into a new dict with the schema's defaults filled in and the run's paths derived.
Every problem is reported with the file and the key path, all of them in one :class:`OptionErrors`.

The pieces live in one module each: :mod:`codes.utils.option_yaml` (reading, writing, overrides),
:mod:`codes.utils.option_schema` (``Key``, ``SCHEMA``), :mod:`codes.utils.option_validation` (validation, defaults,
normalisation) and :mod:`codes.utils.option_cli` (the shared command line, ``--print-options``); this module is
their one public import.
"""
from __future__ import annotations

from codes.utils.build import OptionError, OptionErrors
from codes.utils.option_cli import add_common_flags, build_arg_parser, parse_options, print_options
from codes.utils.option_schema import (DATASETS, LIMIT, LOADER_SCHEMA, PRECISIONS, REQUIRED, SCHEMA, TYPED_ARCH,
                                       TYPED_LOSS, TYPED_METRIC, TYPED_OPTIM, TYPED_SCHED, Key, check_limit,
                                       model_schema)
from codes.utils.option_validation import (SAMPLE_HINT, fill_defaults, normalize_options, validate_block,
                                           validate_options)
from codes.utils.option_yaml import apply_overrides, dump_yaml, load_yaml, parse_value, read_options, set_by_path

__all__ = ['load_yaml', 'dump_yaml', 'apply_overrides', 'validate_options', 'validate_block', 'normalize_options',
           'fill_defaults', 'read_options', 'parse_options', 'build_arg_parser', 'add_common_flags', 'print_options',
           'check_limit', 'set_by_path', 'model_schema', 'Key', 'PRECISIONS', 'OptionError', 'OptionErrors', 'SCHEMA',
           'LOADER_SCHEMA', 'parse_value', 'LIMIT', 'REQUIRED', 'DATASETS', 'TYPED_ARCH', 'TYPED_LOSS',
           'TYPED_METRIC', 'TYPED_OPTIM', 'TYPED_SCHED', 'SAMPLE_HINT']
