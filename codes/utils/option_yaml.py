"""Option files as data: a safe YAML loader that also reads ``1e-4`` as a float (YAML 1.1 reads it as a string),
atomic writing, and ``key.path=value`` overrides (``--set``; BasicSR's ``key:path=value`` too) parsed as YAML.
"""
from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import Any, Mapping

import yaml

from codes.utils.build import OptionError
from codes.utils.files import atomic_write_text

__all__ = ['load_yaml', 'parse_value', 'dump_yaml', 'to_plain', 'apply_overrides', 'set_by_path', 'read_options']


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
    atomic_write_text(path, yaml.safe_dump(to_plain(opt), sort_keys=False))


def to_plain(obj: Any) -> Any:
    """``obj`` with mappings as plain dicts (string keys) and tuples as lists, as YAML writes them."""
    if isinstance(obj, Mapping):
        return {str(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
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


def read_options(file: str | os.PathLike, overrides: list[str] | None = None) -> dict:
    """Read an option file and apply ``key.path=value`` overrides (nothing validated yet)."""
    return apply_overrides(load_yaml(file), overrides or [], str(file))
