"""Checkpoint I/O that fails loudly: atomic writes, ``weights_only`` reads, foreign weight layouts, RNG states.

Weights live in ``models/net_g_<iter>.pth`` as ``{'params': ..., 'params_ema': ...}`` (BasicSR's layout); the
training state (optimisers, schedulers, scaler, RNG states, iteration) lives apart in
``training_states/<iter>.state``; the one-line pointer ``<experiments_root>/last_checkpoint`` names the state of
the last completed save. Every file is written to a temporary name in the same folder, fsynced and renamed, so a
killed run never leaves a truncated file under a real name.
"""
from __future__ import annotations

import errno
import logging
import os
import pickle
import random
import re
from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Callable, Collection, Iterator, Mapping

import numpy as np
import torch
import torch.nn as nn

from codes.utils.errors import UserError
from codes.utils.files import atomic_open, atomic_write_text
from codes.utils.safe_pickle import TRAINER_RECORDS_ALLOWED, safe_torch_load

__all__ = ['atomic_save', 'write_pointer', 'read_pointer', 'load_file', 'load_weights_only', 'refusal_detail',
           'extract_state_dict', 'load_network', 'load_state_dict_strict', 'unwrap_checkpoint', 'get_rng_states',
           'set_rng_states', 'find_resume_state', 'STATE_KEYS', 'POINTER_NAME', 'CheckpointError',
           'CheckpointLayoutError', 'SaveError', 'CheckpointNotFoundError']

logger = logging.getLogger(__name__)


class CheckpointError(UserError, RuntimeError):
    """A file that is not the checkpoint it should be; the message names the file."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """A checkpoint path that names no file."""


class CheckpointLayoutError(CheckpointError, ValueError):
    """A loaded checkpoint whose layout (wrapping, entries) is not the one expected; the message says what was found."""


class SaveError(CheckpointError, OSError):
    """A checkpoint that could not be written (disk full, no permission, ...); the previous files are intact."""


def _os_cause(exc: BaseException) -> OSError | None:
    """The OSError behind ``exc`` (itself, or in its chain: ``torch.save`` wraps a failed write in RuntimeError)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OSError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


@contextmanager
def _saving(path: Path) -> Iterator[None]:
    """Turn a failed write of ``path`` for a reason of the system into one-line ``SaveError``."""
    try:
        yield
    except BaseException as exc:
        cause = _os_cause(exc) if isinstance(exc, Exception) else None
        if cause is None:
            raise
        what = 'no space left on the device' if cause.errno == errno.ENOSPC else (cause.strerror or str(cause))
        previous = 'the previous file under that name is intact' if path.exists() else 'nothing was written'
        raise SaveError(f'could not write {path}: {what}; {previous}, and the checkpoints written before it are '
                        'intact (free space, then continue with --auto_resume)') from exc


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file in the same folder, fsync, then rename over ``path``.

    Raises:
        SaveError naming ``path`` when the write fails for a reason of the system (no space left on the device, no
        permission, ...): the temporary file is removed and whatever ``path`` held before is left as it was.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SaveError(f'could not create the folder of {path}: {exc.strerror or exc}') from exc
    with _saving(path):
        with atomic_open(path, 'wb') as f:
            torch.save(obj, f)


#: the file, in the experiment folder, that names the training state of the last completed save
POINTER_NAME = 'last_checkpoint'
_STATE_NAME = re.compile(r'(\d+)\.state')


def write_pointer(pointer: str | os.PathLike, state_path: str | os.PathLike) -> None:
    """Write ``pointer`` (the ``last_checkpoint`` file): one line, the path of ``state_path``, atomically.

    Raises:
        SaveError, as :func:`atomic_save` does, when the write fails.
    """
    pointer = Path(pointer)
    with _saving(pointer):
        atomic_write_text(pointer, f'{state_path}\n')


def read_pointer(pointer: str | os.PathLike, states_dir: str | os.PathLike) -> Path | None:
    """The training state ``pointer`` names, looked up by file name in ``states_dir`` (so that a moved experiment
    folder still resolves), or None when the pointer is missing, unreadable or names no ``<iter>.state``."""
    try:
        text = Path(pointer).read_text(encoding='utf-8').strip()
    except (OSError, UnicodeDecodeError):
        return None
    name = Path(text).name if text else ''
    return Path(states_dir) / name if _STATE_NAME.fullmatch(name) else None


def refusal_detail(exc: pickle.UnpicklingError) -> str:
    """What ``torch.load(weights_only=True)`` refused, from its error (``Trying to load unsupported GLOBAL
    posix.system ...``, ``Unsupported operand 149``), without torch's boilerplate.

    torch's message also advises loading with ``weights_only=False``, which would run the file's code; no line
    that mentions ``weights_only`` is kept."""
    kept = []
    for line in (ln.strip() for ln in str(exc).splitlines()):
        if 'WeightsUnpickler error:' in line:
            line = line.split('WeightsUnpickler error:', 1)[1].strip()
        elif line.startswith(('Weights only load failed', 'Check the documentation', 'Please file an issue')):
            continue
        if line and 'weights_only' not in line:
            kept.append(line)
    return '; '.join(kept).rstrip('.') or type(exc).__name__


def load_weights_only(f: str | os.PathLike | IO[bytes], source: str, *,
                      error: Callable[[str], Exception] = CheckpointError,
                      advice: str = 'use weights from a source you trust, saved as a state_dict',
                      fallback: Callable[[], Any] | None = None) -> Any:
    """``torch.load(f, map_location='cpu', weights_only=True)``; a refused or unreadable file raises ``error``.

    The one place where a ``weights_only`` refusal becomes a user error: checkpoints (:func:`load_file`), the
    SpyNet weights and the tensors inside dataset pickles all load through it, so each refusal is one line naming
    ``source`` and what was refused, and nothing beyond tensors and plain containers is unpickled.

    Args:
        f: a file path or a binary stream.
        source: names the file in messages (for a stream: where its bytes come from).
        error: the exception class raised (a :class:`UserError` subclass, so the entry points print one line).
        advice: the end of the refusal message, what to do instead.
        fallback: called when ``weights_only`` refuses the file, for a second, still restricted reader; its result
            is returned, and its own refusal (an ``UnpicklingError``) is the one reported.
    """
    try:
        return torch.load(f, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as exc:
        detail = refusal_detail(exc)
    except Exception as exc:
        raise error(_unreadable(source, exc)) from None
    if fallback is not None:
        try:
            return fallback()
        except pickle.UnpicklingError as exc:
            detail = str(exc).replace(f'{source}: ', '', 1).splitlines()[0] if str(exc) else detail
        except Exception as exc:
            raise error(_unreadable(source, exc)) from None
    raise error(f'{source}: cannot be loaded safely: it holds objects other than tensors and plain containers '
                f'({detail}), and loading it would run code from the file. It was not loaded; {advice}')


def _unreadable(source: str, exc: Exception) -> str:
    return f'{source}: not a readable PyTorch checkpoint (truncated or another format): {type(exc).__name__}: {exc}'


#: file suffixes of bare weights read without pickle
SAFETENSORS_SUFFIXES = ('.safetensors', )


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file (no pickle: a JSON header and raw buffers)."""
    try:
        from safetensors import SafetensorError
        from safetensors.torch import load_file as st_load
    except ImportError:
        raise CheckpointError(f'{path}: reading safetensors weights needs the package safetensors: pip install '
                              '"burstsr-toolkit[export]" (or pip install safetensors)') from None
    try:
        return st_load(str(path), device='cpu')
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f'{path}: not a readable safetensors file (truncated or another format): '
                              f'{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}') from None


def load_file(path: str | os.PathLike) -> Any:
    """``torch.load(path, map_location='cpu', weights_only=True)`` with errors that name the file.

    A file that loader refuses is read once more with :func:`codes.utils.safe_pickle.safe_torch_load`, admitting
    the trainer classes of ``TRAINER_RECORDS_ALLOWED`` as inert records (DBSR's official checkpoints); anything
    else it names is refused with a ``CheckpointError``, and no code from the file runs.

    A ``.safetensors`` file is read with ``safetensors`` instead (no pickle at all) and gives its bare state_dict;
    an ``.onnx`` file is refused (it is a graph for ``infer.py``, not weights a network can load).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointNotFoundError(f'checkpoint not found: {path}' + (' (a folder, not a file)' if path.is_dir()
                                                                         else ''))
    if path.suffix.lower() in SAFETENSORS_SUFFIXES:
        return _load_safetensors(path)
    if path.suffix.lower() == '.onnx':
        raise CheckpointError(f'{path}: an ONNX graph holds no weights a PyTorch network can load; only infer.py '
                              'runs it (--weights model.onnx). Give a .pth or .safetensors file here')
    # a trainer checkpoint that pickles its bookkeeping classes (DBSR's) is read again with the restricted
    # unpickler, which admits those classes only as inert records
    return load_weights_only(path, str(path), fallback=lambda: safe_torch_load(path, TRAINER_RECORDS_ALLOWED))


def extract_state_dict(ckpt: Any, param_key: str = 'params', source: str = 'checkpoint') -> dict[str, torch.Tensor]:
    """The network state_dict inside ``ckpt``: a bare state_dict, or ``{'params'|'params_ema': ...}`` (also
    ``'state_dict'``, ``'model'``, ``'model_state_dict'`` and ``'net'`` (DBSR's trainer) wrappers of other
    trainers); a ``module.`` prefix (DataParallel/DDP) is stripped."""
    if not isinstance(ckpt, Mapping):
        raise CheckpointError(f'{source}: expected a dict of tensors, got {type(ckpt).__name__}')
    if param_key in ckpt and isinstance(ckpt[param_key], Mapping):
        sd = ckpt[param_key]
    else:
        wrapped = [k for k in ('params', 'params_ema', 'state_dict', 'model', 'model_state_dict', 'net')
                   if isinstance(ckpt.get(k), Mapping)]
        if wrapped:
            if param_key not in ('params', 'params_ema') or wrapped[0] != param_key:
                logger.warning('%s has no %r entry; loading %r instead', source, param_key, wrapped[0])
            sd = ckpt[wrapped[0]]
        else:
            sd = ckpt
    bad = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f'{source}: not a state_dict: entries {bad[:5]} are not tensors')
    return {(k[7:] if k.startswith('module.') else k): v for k, v in sd.items()}


def unwrap_checkpoint(ckpt: Any, family: str, source: str = 'checkpoint', param_key: str = 'params',
                      prefixes: tuple[str, ...] = ('module.', 'model.')) -> 'OrderedDict[str, torch.Tensor]':
    """The bare state_dict inside an official checkpoint of ``family`` (or one of ours), prefixes stripped.

    Takes the first mapping among ``param_key``, ``params``, ``params_ema``, ``model_state_dict`` (a plain training
    loop's ``{'epoch', 'model_state_dict', 'optimizer_state_dict'}``) and ``state_dict`` (a PyTorch-Lightning
    ``.ckpt``), else ``ckpt`` itself as a bare state_dict. Raises :class:`CheckpointLayoutError` naming ``source``,
    ``family`` and the top-level keys found when that is not a dict of tensors.
    """
    if not isinstance(ckpt, Mapping):
        raise CheckpointLayoutError(f'{source}: expected a dict, found a {type(ckpt).__name__}')
    sd = ckpt
    for key in (param_key, 'params', 'params_ema', 'model_state_dict', 'state_dict'):
        if isinstance(ckpt.get(key), Mapping):
            sd = ckpt[key]
            break
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for k, v in sd.items():
        if not isinstance(v, torch.Tensor):
            raise CheckpointLayoutError(
                f"{source}: not a {family} checkpoint: entry {k!r} is a {type(v).__name__}, not a tensor; expected a "
                f"bare state_dict or one under 'state_dict' (Lightning .ckpt), 'model_state_dict' (real-track file) "
                f"or 'params'/'params_ema'; found top-level keys {list(ckpt)[:8]}")
        for prefix in prefixes:
            if k.startswith(prefix):
                k = k[len(prefix):]
        out[k] = v
    return out


def load_state_dict_strict(net: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str, *,
                           strict: bool = True, mismatch: str | None = None, hint: str | Callable[[], str] = '',
                           optional: Collection[str] = (), error: Callable[[str], Exception] = CheckpointError
                           ) -> None:
    """Load ``state_dict`` into ``net`` after comparing its keys and shapes with ``net.state_dict()``.

    A tensor of another shape, and with ``strict`` a missing or unexpected key, raises ``error`` with the message
    ``'<source>: <mismatch>: 2 missing (e.g. [...]); 1 unexpected (e.g. [...]); 1 with other shapes (e.g. [...])'``
    (only the parts that occur) followed by ``hint``. Without ``strict`` the differing keys are logged as a warning
    and the others are loaded.

    Args:
        source: the file (or other origin) the message names.
        mismatch: what the message says is wrong; default ``'does not fit <class of net>'``.
        hint: appended to the message; a callable is called only when there is a message.
        optional: keys of ``net`` that ``state_dict`` need not hold (they keep their values), such as buffers a
            published weight file leaves out.
        error: the exception class raised.
    """
    own = net.state_dict()
    missing = [k for k in own if k not in state_dict and k not in optional]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [f'{k}: file {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}'
              for k in own if k in state_dict and state_dict[k].shape != own[k].shape]
    if shapes or (strict and (missing or unexpected)):
        parts = []
        if missing:
            parts.append(f'{len(missing)} missing (e.g. {missing[:3]})')
        if unexpected:
            parts.append(f'{len(unexpected)} unexpected (e.g. {unexpected[:3]})')
        if shapes:
            parts.append(f'{len(shapes)} with other shapes (e.g. {shapes[:3]})')
        headline = mismatch if mismatch is not None else f'does not fit {type(net).__name__}'
        raise error(f'{source}: {headline}: ' + '; '.join(parts) + (hint() if callable(hint) else hint))
    if missing or unexpected:
        logger.warning('%s: loaded non-strictly; missing %s, unexpected %s', source, missing[:5], unexpected[:5])
    kept = [k for k in optional if k in own and k not in state_dict]
    net.load_state_dict(state_dict, strict=strict and not kept)


def load_network(net: nn.Module, path: str | os.PathLike, strict: bool = True, param_key: str = 'params',
                 describe: Callable[[Mapping[str, torch.Tensor]], str] | None = None) -> None:
    """Load weights from ``path`` into ``net`` (bare state_dict, BasicSR wrapper or ``module.`` prefix accepted).

    A checkpoint made for another architecture raises ``CheckpointError`` naming the file and the differing keys,
    followed by ``describe(state_dict)`` when given (``codes.archs.arch_detect.fitting_network_hint`` says which
    ``network_g`` the file fits).
    """
    sd = extract_state_dict(load_file(path), param_key, str(path))
    load_state_dict_strict(net, sd, str(path), strict=strict,
                           hint=lambda: '. Is it a checkpoint of another architecture or size (check network_g)?'
                           + (describe(sd) if describe is not None else ''))
    logger.info('Loaded %s [%s] into %s', path, param_key, type(net).__name__)


# ----------------------------------------------------------------------------------------------- RNG states
def get_rng_states() -> dict[str, Any]:
    """Python, NumPy, torch and CUDA RNG states in a form ``weights_only`` loading accepts."""
    py = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    states = {
        'python': [py[0], list(py[1]), py[2]],
        'numpy': {'name': name, 'keys': torch.from_numpy(keys.astype(np.int64)), 'pos': int(pos),
                  'has_gauss': int(has_gauss), 'cached_gaussian': float(cached)},
        'torch': torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states['cuda'] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: Mapping[str, Any]) -> None:
    """Restore what :func:`get_rng_states` returned."""
    py = states['python']
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = states['numpy']
    np.random.set_state((n['name'], n['keys'].numpy().astype(np.uint32), n['pos'], n['has_gauss'],
                         n['cached_gaussian']))
    torch.set_rng_state(states['torch'])
    if 'cuda' in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states['cuda'])


# ----------------------------------------------------------------------------------------------- resume
STATE_KEYS = ('iter', 'epoch', 'optimizers', 'schedulers', 'rng')


def _load_complete(state_path: Path, it: int, models_dir: Path) -> tuple[dict, Path]:
    """The training state of iteration ``it`` and its weights file, both checked to load; CheckpointError if not."""
    weights = models_dir / f'net_g_{it}.pth'
    state = load_file(state_path)
    missing = [k for k in STATE_KEYS if not isinstance(state, Mapping) or k not in state]
    if missing or state['iter'] != it:
        raise CheckpointError(f'{state_path}: incomplete training state (missing {missing})')
    load_file(weights)
    return state, weights


def find_resume_state(states_dir: str | os.PathLike, models_dir: str | os.PathLike,
                      skipped: list | None = None,
                      pointer: str | os.PathLike | None = None) -> tuple[dict, Path, Path] | None:
    """The newest complete training state: ``(state, state_path, weights_path)``, or None.

    The states are tried from the newest: files that fail to load (a truncated write, a foreign file) or whose
    weights file is missing or unreadable are skipped with a warning (and appended to ``skipped`` as
    ``(state_path, reason)``), and the next older state is tried. ``pointer`` (``last_checkpoint``) is checked
    against that order: the log says when the state taken is the newest one and the pointer names it, or that the
    pointer is missing or stale.
    """
    states_dir, models_dir = Path(states_dir), Path(models_dir)
    if not states_dir.is_dir():
        return None
    candidates = []
    for p in states_dir.glob('*.state'):
        m = _STATE_NAME.fullmatch(p.name)
        if m:
            candidates.append((int(m.group(1)), p))
    candidates.sort(reverse=True)
    named = read_pointer(pointer, states_dir) if pointer is not None else None
    if pointer is not None and candidates and named != candidates[0][1]:
        logger.info('%s %s: scanning %s', pointer, 'names an older state' if named is not None and named.is_file()
                    else 'is missing or names no training state', states_dir)
    for it, p in candidates:
        try:
            state, weights = _load_complete(p, it, models_dir)
        except (CheckpointError, FileNotFoundError) as exc:
            logger.warning('Skipping training state %s: %s', p, exc)
            if skipped is not None:
                skipped.append((p, str(exc)))
            continue
        if p == named == candidates[0][1]:
            logger.info('Resuming from %s, named by %s', named, pointer)
        return state, p, weights
    return None
