"""A restricted unpickler for the foreign pickles that datasets ship (``meta_info.pkl``).

``pickle.load`` on a downloaded file runs whatever callables the file names. ``safe_load_pickle`` admits only the
globals such files need: plain containers and numbers, ``collections.OrderedDict``, NumPy arrays, dtypes and
scalars, and torch tensors written by ``pickle.dump(tensor)``. Those reach ``torch.storage._load_from_bytes``, which
would call a full ``torch.load``; it is replaced by a version that loads with ``weights_only=True``
(``codes.utils.checkpoint.load_weights_only``). Anything else raises :class:`RefusedPickleError` naming the file
and the refused global, as does a truncated or corrupt file. It is a ``UserError`` (the entry points print it as one
line, exit status 2, no traceback) and a ``pickle.UnpicklingError``; a refused global is never called. Datasets
whose pickles carry other objects pass stand-ins through ``extra_allowed``; ``EXIFREAD_ALLOWED`` holds the
stand-ins for the ``exifread`` 2.x classes in BurstSR's ``meta_info.pkl`` (``exifread.classes.IfdTag`` and
``exifread.utils.Ratio``), so those pickles load without exifread and without running code.

``safe_torch_load`` reads a ``torch.save`` file (zip or legacy format) through the same admission rule, for
trainer checkpoints that pickle their own bookkeeping classes, which ``torch.load(weights_only=True)`` refuses.
Those classes are admitted only as :class:`ForeignRecord` stand-ins that keep the pickled attributes as data and
run none of the original code; ``TRAINER_RECORDS_ALLOWED`` names the ones of DBSR's pytracking-style trainer
(``goutamgmb/deep-burst-sr: admin/``).
"""
from __future__ import annotations

import collections
import fractions
import functools
import io
import os
import pickle
import types
from typing import Any, Mapping

from codes.utils.errors import UserError

__all__ = ['safe_load_pickle', 'safe_loads_pickle', 'safe_torch_load', 'SafeUnpickler', 'RefusedPickleError',
           'DEFAULT_ALLOWED', 'IfdTag', 'Ratio', 'EXIFREAD_ALLOWED', 'ForeignRecord', 'record_class',
           'TRAINER_RECORDS_ALLOWED']


class RefusedPickleError(UserError, pickle.UnpicklingError):
    """A pickle this reader refuses (a global it does not admit) or cannot read; the message names the file."""


_STORAGE_KEY = 'torch.storage._load_from_bytes'


def _load_storage_from_bytes(data: bytes, source: str = '<bytes>') -> Any:
    """Safe stand-in for ``torch.storage._load_from_bytes``: the payload is a ``torch.save`` stream."""
    from codes.utils.checkpoint import load_weights_only
    return load_weights_only(io.BytesIO(data), f'{source} (a tensor inside it)', error=RefusedPickleError,
                             advice='use data from a source you trust')


def _default_allowed() -> dict[str, Any]:
    import builtins
    allowed: dict[str, Any] = {
        f'builtins.{name}': getattr(builtins, name)
        for name in ('dict', 'list', 'tuple', 'set', 'frozenset', 'float', 'int', 'bool', 'complex', 'str',
                     'bytes', 'bytearray', 'slice', 'range')
    }
    allowed['collections.OrderedDict'] = collections.OrderedDict
    import codecs
    allowed['_codecs.encode'] = codecs.encode  # bytes in protocol-2 pickles
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy ships with torch
        np = None
    if np is not None:
        allowed['numpy.ndarray'] = np.ndarray
        allowed['numpy.dtype'] = np.dtype
        for mod in ('numpy.core.multiarray', 'numpy._core.multiarray'):
            allowed[f'{mod}._reconstruct'] = np.ndarray.__reduce__(np.zeros(0))[0]
            allowed[f'{mod}.scalar'] = np.float64(0).__reduce__()[0]
        frombuffer = _numpy_frombuffer()
        if frombuffer is not None:
            for mod in ('numpy.core.numeric', 'numpy._core.numeric'):
                allowed[f'{mod}._frombuffer'] = frombuffer
        # dtype classes pickled by NumPy >= 1.25 (``numpy.dtypes.Float32DType``)
        dtypes = getattr(np, 'dtypes', None)
        if dtypes is not None:
            for name in dir(dtypes):
                if name.endswith('DType'):
                    allowed[f'numpy.dtypes.{name}'] = getattr(dtypes, name)
    try:
        import torch
        import torch._utils
    except ImportError:  # pragma: no cover - torch is a hard dependency of the project
        return allowed
    allowed['torch._utils._rebuild_tensor_v2'] = torch._utils._rebuild_tensor_v2
    allowed['torch._utils._rebuild_tensor'] = torch._utils._rebuild_tensor
    allowed[_STORAGE_KEY] = _load_storage_from_bytes
    return allowed


def _numpy_frombuffer() -> Any:
    import numpy as np
    for mod in ('numpy._core.numeric', 'numpy.core.numeric'):
        try:
            module = __import__(mod, fromlist=['_frombuffer'])
        except ImportError:
            continue
        fn = getattr(module, '_frombuffer', None)
        if fn is not None:
            return fn
    return getattr(np, '_frombuffer', None)


DEFAULT_ALLOWED: dict[str, Any] = _default_allowed()


class SafeUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose ``find_class`` admits only ``allowed`` (``'module.name' -> object``)."""

    def __init__(self, file: Any, allowed: Mapping[str, Any], source: str = '<stream>') -> None:
        super().__init__(file)
        self.allowed = allowed
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        key = f'{module}.{name}'
        if key in self.allowed:
            found = self.allowed[key]
            if found is _load_storage_from_bytes:  # its refusals name this file too
                return functools.partial(_load_storage_from_bytes, source=self.source)
            return found
        raise RefusedPickleError(
            f'{self.source}: refusing to unpickle the global {key!r}; this reader admits only plain data, NumPy '
            f'arrays and torch tensors (pass extra_allowed to admit more)')

    def persistent_load(self, pid: Any) -> Any:
        raise RefusedPickleError(f'{self.source}: persistent ids are not supported ({pid!r})')

    def load(self) -> Any:
        """Unpickle; a refusal or an unreadable stream raises :class:`RefusedPickleError` naming the source."""
        try:
            return super().load()
        except RefusedPickleError:
            raise
        except (pickle.UnpicklingError, EOFError) as exc:  # truncated, or not a pickle at all
            raise RefusedPickleError(f'{self.source}: not a readable pickle (truncated or another format): '
                                     f'{type(exc).__name__}: {exc}') from None


def safe_load_pickle(path: str | os.PathLike, extra_allowed: Mapping[str, Any] | None = None) -> Any:
    """Unpickle ``path`` admitting only the globals of ``DEFAULT_ALLOWED`` plus ``extra_allowed``.

    Args:
        path: the pickle file.
        extra_allowed: more admitted globals, keyed by ``'module.name'`` (as the pickle names them) and mapped to
            the object to use, which may be a stand-in (``{'exifread.classes.IfdTag': MyIfdTag}``).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        RefusedPickleError: the file names a global that is not admitted (the message names file and global), or
            it is not a readable pickle. A ``UserError`` and a ``pickle.UnpicklingError``.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f'pickle file not found: {path}')
    allowed = dict(DEFAULT_ALLOWED)
    if extra_allowed:
        allowed.update(extra_allowed)
    with open(path, 'rb') as f:
        return SafeUnpickler(f, allowed, source=path).load()


def safe_loads_pickle(data: bytes, extra_allowed: Mapping[str, Any] | None = None, source: str = '<bytes>') -> Any:
    """``safe_load_pickle`` for a pickle held in memory (an LMDB value); ``source`` names it in errors."""
    allowed = dict(DEFAULT_ALLOWED)
    if extra_allowed:
        allowed.update(extra_allowed)
    return SafeUnpickler(io.BytesIO(data), allowed, source=source).load()


def safe_torch_load(path: str | os.PathLike, extra_allowed: Mapping[str, Any] | None = None) -> Any:
    """``torch.load(path, map_location='cpu')`` whose unpickler admits only ``DEFAULT_ALLOWED`` + ``extra_allowed``.

    torch's own loader restores the tensor storages (persistent ids); every other global the file names goes
    through the admission rule, so nothing outside the admitted set is imported or called.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        RefusedPickleError: the file names a global that is not admitted (message names file and global).
    """
    import torch
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f'checkpoint file not found: {path}')
    allowed = dict(DEFAULT_ALLOWED)
    if extra_allowed:
        allowed.update(extra_allowed)

    class _Restricted(pickle.Unpickler):
        # no persistent_load here: torch.load assigns its own to every unpickler it makes
        def find_class(self, module: str, name: str) -> Any:
            key = f'{module}.{name}'
            if key in allowed:
                return allowed[key]
            raise RefusedPickleError(f'{path}: refusing to unpickle the global {key!r} (not plain data, '
                                     'tensors or an admitted stand-in)')

    def _load(file: Any, **kwargs: Any) -> Any:
        return _Restricted(file, **kwargs).load()

    # torch.load takes any object with Unpickler and load as its pickle module; weights_only=False is what lets it
    # use this one, whose find_class is the restriction (stricter than torch's own allow-list, since it admits no
    # torch globals beyond the tensor rebuilders)
    module = types.SimpleNamespace(__name__=__name__, Unpickler=_Restricted, load=_load)
    return torch.load(path, map_location='cpu', weights_only=False, pickle_module=module)


# ----------------------------------------------------------------------------------------------- trainer records
class ForeignRecord:
    """Inert stand-in for an instance of a foreign class: the pickled state becomes plain attributes.

    Building one runs no code of the original class (constructor arguments are kept in ``_args``, unused).
    ``pickled_as`` is the ``module.name`` the file gave.
    """

    pickled_as = ''

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.__dict__['_args'] = (args, kwargs)

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2 and (state[0] is None or isinstance(state[0], dict)):
            state = {**(state[0] or {}), **(state[1] or {})}  # (dict, slots) form
        if isinstance(state, dict):
            self.__dict__.update({str(k): v for k, v in state.items()})
        else:
            self.__dict__['_state'] = state

    def __repr__(self) -> str:
        fields = ', '.join(k for k in self.__dict__ if not k.startswith('_'))
        return f'<{self.pickled_as} record: {fields}>'


def record_class(qualified: str) -> type:
    """A :class:`ForeignRecord` subclass standing in for the class ``qualified`` (``'module.Name'``)."""
    return type(qualified.rsplit('.', 1)[-1], (ForeignRecord, ), {'pickled_as': qualified})


#: The bookkeeping classes DBSR's trainer pickles into its checkpoints (``goutamgmb/deep-burst-sr:
#: trainers/base_trainer.py``): the stored constructor call, the statistics and the settings with the user's
#: environment. Admitted only as inert records.
TRAINER_RECORDS_ALLOWED: dict[str, Any] = {name: record_class(name) for name in (
    'admin.model_constructor.NetConstructor', 'admin.stats.AverageMeter', 'admin.stats.StatValue',
    'admin.settings.Settings', 'admin.local.EnvironmentSettings', 'admin.environment.EnvSettings')}


# ----------------------------------------------------------------------------------------------- exifread stand-ins
class Ratio(fractions.Fraction):
    """Stand-in for ``exifread.utils.Ratio`` (exifread 2.x): a ``Fraction`` pickled as ``Ratio('num/den')``.

    Like the original, a zero denominator does not raise: the value keeps its numerator and denominator and only
    ``decimal()`` (or ``float``) fails.
    """

    def __new__(cls, numerator: Any = 0, denominator: Any = None) -> 'Ratio':
        try:
            return super().__new__(cls, numerator, denominator)
        except ZeroDivisionError:
            self = super().__new__(cls)
            if isinstance(numerator, str) and '/' in numerator:
                num, den = numerator.split('/', 1)
                numerator, denominator = int(num), int(den)
            self._numerator, self._denominator = int(numerator), int(denominator or 0)
            return self

    def __repr__(self) -> str:
        return f"Ratio('{self._numerator}/{self._denominator}')"

    def __reduce__(self) -> tuple:
        return type(self), (f'{self._numerator}/{self._denominator}',)

    @property
    def num(self) -> int:
        return self._numerator

    @property
    def den(self) -> int:
        return self._denominator

    def decimal(self) -> float:
        """The value as a float (ZeroDivisionError for a zero denominator)."""
        if self._denominator == 0:
            raise ZeroDivisionError(f'{self!r} has a zero denominator')
        return float(self)


class IfdTag:
    """Stand-in for ``exifread.classes.IfdTag`` (exifread 2.x): a plain record of one EXIF tag."""

    def __init__(self, printable: str = '', tag: int = 0, field_type: int = 0, values: Any = None,
                 field_offset: int = 0, field_length: int = 0) -> None:
        self.printable = printable
        self.tag = tag
        self.field_type = field_type
        self.values = values
        self.field_offset = field_offset
        self.field_length = field_length

    def __str__(self) -> str:
        return self.printable

    def __repr__(self) -> str:
        return f'IfdTag({self.printable!r}, tag={self.tag:#06x}, values={self.values!r})'


#: Admit exactly the two exifread 2.x classes of BurstSR's pickles (the 3.x module path of IfdTag too).
EXIFREAD_ALLOWED: dict[str, Any] = {
    'exifread.classes.IfdTag': IfdTag,
    'exifread.core.ifd_tag.IfdTag': IfdTag,
    'exifread.utils.Ratio': Ratio,
}
