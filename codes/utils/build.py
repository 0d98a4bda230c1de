"""One way to build anything from an option dict: copy it, pop ``type``, check the rest, call ``Cls(**rest)``.

The keyword arguments are checked against the constructor's signature and type hints before the call, so an
option file with a misspelt or mistyped key fails with a message that names the file and the key path, not with
a ``TypeError`` from deep inside a constructor. Numeric strings such as ``1e-4`` (a string in YAML 1.1) are
converted where the hint asks for a number.

**Value checks of a constructor** (a number that must divide another, a file that must exist) are declared, not
buried in ``__init__``: a class that has them defines

    @classmethod
    def check_options(cls, args: Mapping[str, Any]) -> list[tuple[str, str]]:
        ...  # the problems of args (every constructor argument, given or default) as (key, message) pairs

and calls :func:`raise_option_problems` (``raise_option_problems(Cls, locals())``) first thing in its
``__init__``. The option validation (:mod:`codes.utils.option_validation`) and :func:`build_from_registry` call the
same method through :func:`option_problems` once the signature and types are right, so each problem is one line
naming ``<block>.<key>`` (``network_g.embed_dim``), reported with the other problems of the file; built directly,
the class raises :class:`ConstructorOptionError` naming the bare key. Only these declared checks are user errors:
anything else a constructor or ``check_options`` raises is a bug and keeps its traceback. Every network of
``codes/archs`` follows this; a new one adds its checks the same way.
"""
from __future__ import annotations

import collections.abc
import difflib
import inspect
import types
import typing
from typing import Any, Mapping

from codes.utils.errors import UserError
from codes.utils.registry import Registry

__all__ = ['OptionError', 'OptionErrors', 'ConstructorOptionError', 'OptionProblems', 'build_from_registry',
           'check_kwargs', 'coerce_value', 'option_problems', 'raise_option_problems']


class OptionError(UserError, ValueError):
    """A wrong option file: the message names the file (when known) and the key path."""

    def __init__(self, where: str, message: str, file: str | None = None) -> None:
        self.where, self.detail, self.file = where, message, file
        super().__init__(self._text())

    def _text(self) -> str:
        loc = f'{self.file}: ' if self.file else ''
        return f"{loc}option '{self.where}': {self.detail}" if self.where else f'{loc}{self.detail}'

    def with_file(self, file: str) -> 'OptionError':
        """The same error, naming ``file``."""
        return OptionError(self.where, self.detail, file)


class OptionErrors(OptionError):
    """Several problems of one option file, reported together: the message holds one line per problem."""

    def __init__(self, errors: list[OptionError]) -> None:
        self.errors = [e for exc in errors for e in OptionErrors.flatten(exc)]
        first = self.errors[0]
        self.where, self.detail, self.file = first.where, first.detail, first.file
        lines = '\n'.join(f'  {e}' for e in self.errors)
        UserError.__init__(self, f'{len(self.errors)} problems in the options:\n{lines}')

    def with_file(self, file: str) -> 'OptionErrors':
        """The same errors, each naming ``file`` (unless it names another one already)."""
        return OptionErrors([e if e.file else e.with_file(file) for e in self.errors])

    @staticmethod
    def flatten(exc: OptionError) -> list[OptionError]:
        """The single errors an ``OptionError`` stands for."""
        return list(exc.errors) if isinstance(exc, OptionErrors) else [exc]

    @staticmethod
    def raise_all(errors: list[OptionError]) -> None:
        """Raise nothing for no error, the error itself for one, an ``OptionErrors`` for several."""
        if len(errors) == 1:
            raise errors[0]
        if errors:
            raise OptionErrors(errors)


class ConstructorOptionError(OptionError):
    """A value a constructor's ``check_options`` refuses; ``where`` is the key (``network_g.<key>`` in option
    files, the bare argument name when the class is built directly)."""


#: What ``check_options`` returns: (argument name, what is wrong with its value) pairs.
OptionProblems = list[tuple[str, str]]


def _constructor_args(cls: type, given: Mapping[str, Any]) -> dict[str, Any]:
    """Every named argument of ``cls.__init__``: the ones in ``given``, the others at their defaults."""
    params = inspect.signature(cls.__init__).parameters
    out = {}
    for name, p in params.items():
        if name == 'self' or p.kind not in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            continue
        if name in given:
            out[name] = given[name]
        elif p.default is not p.empty:
            out[name] = p.default
    return out


def option_problems(cls: Any, kwargs: Mapping[str, Any], where: str = '') -> list[ConstructorOptionError]:
    """The problems ``cls.check_options`` finds in ``kwargs`` (checked constructor arguments; absent ones take
    their defaults), each a :class:`ConstructorOptionError` naming ``<where>.<key>``; none for a class without
    ``check_options``."""
    check = getattr(cls, 'check_options', None) if inspect.isclass(cls) else None
    if check is None:
        return []
    return [ConstructorOptionError(f'{where}.{key}' if where else key, message)
            for key, message in check(_constructor_args(cls, kwargs))]


def raise_option_problems(cls: type, args: Mapping[str, Any]) -> None:
    """For the first line of a constructor (``raise_option_problems(Cls, locals())``): raise what
    ``cls.check_options`` finds in its arguments, one :class:`ConstructorOptionError` (an ``OptionError`` and a
    ``ValueError``) naming the key, or an :class:`OptionErrors` for several."""
    OptionErrors.raise_all(list(option_problems(cls, args)))


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is not None or isinstance(tp, types.UnionType):
        return str(tp).replace('typing.', '')
    return getattr(tp, '__name__', str(tp))


def coerce_value(value: Any, tp: Any, where: str) -> Any:
    """Return ``value`` converted to the hinted type ``tp`` where that is lossless, else raise ``OptionError``."""
    if tp is Any or tp is inspect.Parameter.empty:
        return value
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return _coerce_union(value, tp, where)
    if origin in (list, tuple, collections.abc.Sequence):
        return _coerce_sequence(value, tp, where)
    if origin in (dict, collections.abc.Mapping):
        if not isinstance(value, Mapping):
            raise OptionError(where, f'expected a mapping, got {value!r}')
        return dict(value)
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            raise OptionError(where, f'expected one of {list(typing.get_args(tp))}, got {value!r}')
        return value
    scalar = _SCALARS.get(tp) if isinstance(tp, type) else None
    if scalar is not None:
        return scalar(value, where)
    if isinstance(tp, type) and not isinstance(value, tp):
        raise OptionError(where, f'expected {_type_name(tp)}, got {value!r} ({type(value).__name__})')
    return value


def _coerce_union(value: Any, tp: Any, where: str) -> Any:
    """The first member of the union ``tp`` that ``value`` converts to; else the most precise message."""
    args = typing.get_args(tp)
    if value is None and type(None) in args:
        return None
    errors = []
    for arg in (a for a in args if a is not type(None)):
        try:
            return coerce_value(value, arg, where)
        except OptionError as exc:
            errors.append((arg, exc))
    plain = [exc for arg, exc in errors if arg in (bool, int, float, str)]
    if len(errors) == 1 or len(plain) == 1:  # Optional[X], float | Tensor: X's own message is the most precise
        raise (plain or [errors[0][1]])[0]
    raise OptionError(where, f'expected {_type_name(tp)}, got {value!r} ({type(value).__name__})')


def _coerce_sequence(value: Any, tp: Any, where: str) -> list | tuple:
    """A list or tuple hint: each item converted (a fixed-length tuple checks its length and each position)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if not isinstance(value, (list, tuple)):
        raise OptionError(where, f'expected a list, got {value!r} ({type(value).__name__})')
    if origin is tuple and args and args[-1] is not Ellipsis:
        if len(args) != len(value):
            raise OptionError(where, f'expected {len(args)} values, got {len(value)}')
        return tuple(coerce_value(v, a, f'{where}[{i}]') for i, (v, a) in enumerate(zip(value, args)))
    item = args[0] if args else Any
    out = [coerce_value(v, item, f'{where}[{i}]') for i, v in enumerate(value)]
    return tuple(out) if origin is tuple else out


def _coerce_bool(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    raise OptionError(where, f'expected true or false, got {value!r}')


def _coerce_float(value: Any, where: str) -> float:
    """A number (not a bool) or a numeric string such as ``'1e-4'`` (YAML 1.1 reads it as a string)."""
    if isinstance(value, bool):
        raise OptionError(where, f'expected a number, got {value!r}')
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    raise OptionError(where, f'expected a number, got {value!r} ({type(value).__name__})')


def _coerce_int(value: Any, where: str) -> int:
    """An int (not a bool), or a float or numeric string with an integral value."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            f = float(value)
            if f.is_integer():
                return int(f)
        except ValueError:
            pass
    raise OptionError(where, f'expected an integer, got {value!r} ({type(value).__name__})')


def _coerce_str(value: Any, where: str) -> str:
    if isinstance(value, str):
        return value
    raise OptionError(where, f'expected a string, got {value!r} ({type(value).__name__})')


#: The conversion of each plain hinted type.
_SCALARS = {bool: _coerce_bool, float: _coerce_float, int: _coerce_int, str: _coerce_str}


def check_kwargs(fn: Any, kwargs: Mapping[str, Any], where: str, supplied: tuple[str, ...] = ()) -> dict[str, Any]:
    """Check ``kwargs`` against the signature of ``fn`` (a class or function): unknown keys, missing required keys,
    wrong types. ``supplied`` names the arguments the caller passes itself (not option keys). Returns the
    converted kwargs."""
    target = fn.__init__ if inspect.isclass(fn) else fn
    sig = inspect.signature(target)
    try:
        hints = typing.get_type_hints(target)
    except Exception:  # unresolvable annotations: skip type checks, keep key checks
        hints = {}
    params = {k: p for k, p in sig.parameters.items() if k != 'self'}
    has_var_kw = any(p.kind is p.VAR_KEYWORD for p in params.values())
    named = {k: p for k, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    out, errors = {}, []
    for key, value in kwargs.items():
        if key not in named:
            if has_var_kw:
                out[key] = value
                continue
            close = [k for k in named if k.lower() == str(key).lower()] or \
                difflib.get_close_matches(str(key), list(named), n=2)
            hint = f' Did you mean {", ".join(map(repr, close))}?' if close else ''
            errors.append(OptionError(f'{where}.{key}', f'unknown key for {fn.__name__}.{hint} '
                                      f'Accepted keys: {", ".join(k for k in named if k not in supplied)}'))
            continue
        if key in supplied:
            errors.append(OptionError(f'{where}.{key}', 'is set by the runner, not by the option file'))
            continue
        try:
            out[key] = coerce_value(value, hints.get(key, Any), f'{where}.{key}')
        except OptionError as exc:
            errors.append(exc)
    missing = [k for k, p in named.items() if p.default is p.empty and k not in kwargs and k not in supplied]
    if missing:
        errors.append(OptionError(where, f'{fn.__name__} needs the key(s) {", ".join(missing)}'))
    OptionErrors.raise_all(errors)
    return out


def build_from_registry(registry: Registry, opt: Mapping[str, Any], where: str = '', drop: tuple = (),
                        **extra: Any) -> Any:
    """Build ``registry.get(opt['type'])(**rest)``; ``opt`` is left unchanged.

    Args:
        registry: where ``type`` is looked up.
        opt: the option dict; keys in ``drop`` are removed before the call (runner-level keys).
        where: the option path of ``opt`` ('network_g', 'datasets.train'), used in error messages.
        extra: keyword arguments added by the caller, not from the option file.
    """
    if not isinstance(opt, Mapping):
        raise OptionError(where, f'expected a mapping with a "type" key, got {opt!r}')
    rest = {k: v for k, v in opt.items() if k not in drop}
    if 'type' not in rest:
        raise OptionError(where, f'missing key "type" (one of: {", ".join(registry.keys())})')
    name = rest.pop('type')
    try:
        cls = registry.get(name)
    except KeyError as exc:
        raise OptionError(f'{where}.type', exc.args[0]) from None
    kwargs = check_kwargs(cls, rest, where)
    OptionErrors.raise_all(list(option_problems(cls, kwargs, where)))
    return cls(**kwargs, **extra)
