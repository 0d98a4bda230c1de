"""The option schema: :class:`Key`, the markers of typed blocks, :data:`SCHEMA` (every key of an option file and
its default), :data:`LOADER_SCHEMA` (the DataLoader keys of a dataset block) and :func:`model_schema` (SCHEMA with
the blocks a model class adds). The registries are imported as names only; nothing here imports a component.
"""
from __future__ import annotations

import signal
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from codes.utils.build import OptionError
from codes.utils.registry import (ARCH_REGISTRY, LOSS_REGISTRY, METRIC_REGISTRY, MODEL_REGISTRY, OPTIMIZER_REGISTRY,
                                  SCHEDULER_REGISTRY)

__all__ = ['Key', 'REQUIRED', 'TYPED_ARCH', 'TYPED_LOSS', 'TYPED_METRIC', 'TYPED_OPTIM', 'TYPED_SCHED', 'DATASETS',
           'TYPED_REGISTRIES', 'SUPPLIED_ARGS', 'NO_DEFAULT', 'as_key', 'check_limit', 'LIMIT', 'PRECISIONS',
           'LOADER_SCHEMA', 'SCHEMA', 'model_schema']

# A schema is a dict of key -> spec. A spec is a :class:`Key`, or (shorthand for ``Key(spec)``) a type such as
# ``int`` or ``str | None``, a tuple of choices, a nested schema dict, or one of the markers below.
REQUIRED = object()  # ``(spec, REQUIRED)``: shorthand for ``Key(spec, required=True)``
TYPED_ARCH, TYPED_LOSS, TYPED_METRIC, TYPED_OPTIM, TYPED_SCHED = 'arch', 'loss', 'metric', 'optim', 'sched'
DATASETS = 'datasets'
#: The registry of each typed-block marker.
TYPED_REGISTRIES = {TYPED_ARCH: ARCH_REGISTRY, TYPED_LOSS: LOSS_REGISTRY, TYPED_METRIC: METRIC_REGISTRY,
                    TYPED_OPTIM: OPTIMIZER_REGISTRY, TYPED_SCHED: SCHEDULER_REGISTRY}
#: The argument each builder supplies itself (not from the option file).
SUPPLIED_ARGS = {TYPED_OPTIM: ('params',), TYPED_SCHED: ('optimizer',), TYPED_METRIC: ('pred', 'gt')}
NO_DEFAULT = object()  # a Key without a default


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
    default: Any = NO_DEFAULT
    test_default: Any = NO_DEFAULT
    required: bool | str = False
    minimum: float | None = None
    maximum: float | None = None
    check: Callable[[Any, str], Any] | None = None
    hint: str = ''
    refuse: str = ''

    def default_for(self, phase: str | None) -> Any:
        """The default of ``phase`` ('train', 'test', ...), or ``NO_DEFAULT``."""
        if phase not in (None, 'train') and self.test_default is not NO_DEFAULT:
            return self.test_default
        return self.default


def as_key(spec: Any) -> Key:
    """The :class:`Key` a schema entry stands for (a bare spec, ``(spec, REQUIRED)`` or a ``Key``)."""
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


def _check_signals(value: Any, where: str) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise OptionError(where, f'expected a list of signal names such as [SIGTERM, SIGUSR1], got {value!r}')
    names = [v if v.startswith('SIG') else f'SIG{v}' for v in (x.upper() for x in value)]
    bad = [n for n in names if not isinstance(getattr(signal, n, None), signal.Signals) or n in ('SIGKILL', 'SIGSTOP')]
    if bad:
        raise OptionError(where, f"{', '.join(bad)}: not a signal a process can catch (e.g. SIGTERM, SIGUSR1)")
    return names


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
    'preemption': {'signals': Key(check=_check_signals, default=['SIGTERM', 'SIGUSR1']),
                   'exit_code': Key(int, 75, minimum=1, maximum=255)},  # codes.utils.preemption
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
        'deterministic': Key(bool, False),  # torch.use_deterministic_algorithms; README, Clusters
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
        'save_checkpoint_minutes': Key(float | None, None, minimum=0),  # also save by wall time (ranks agree)
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
