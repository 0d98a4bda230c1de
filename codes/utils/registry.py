"""Name -> class/function registries with lazy, per-module discovery.

Each registry knows a package and a file suffix (``codes.archs`` and ``_arch.py``, say). Discovery reads the
package's files as *text* (``ast``) to learn which names each file registers, and imports a file only when one of
its names is asked for. A broken or optional module therefore fails only the option file that names it, never
``import codes`` and never a lookup of another name.
"""
from __future__ import annotations

import ast
import difflib
import importlib
import threading
from pathlib import Path
from typing import Any, Callable, Iterator

__all__ = ['Registry', 'ARCH_REGISTRY', 'DATASET_REGISTRY', 'MODEL_REGISTRY', 'LOSS_REGISTRY', 'METRIC_REGISTRY']


def _registered_names(path: Path) -> list[str]:
    """Names of the top-level classes/functions of ``path`` decorated with ``<something>.register(...)``."""
    tree = ast.parse(path.read_text(encoding='utf-8'), filename=str(path))
    names = []
    for node in tree.body:
        if not isinstance(node, (ast.ClassDef, ast.FunctionDef)):
            continue
        for dec in node.decorator_list:
            func = dec.func if isinstance(dec, ast.Call) else dec
            if isinstance(func, ast.Attribute) and func.attr == 'register':
                names.append(node.name)
                break
    return names


class Registry:
    """A mapping from names to objects, filled by the ``@REGISTRY.register()`` decorator.

    Args:
        name: what the registry holds, used in messages ('arch', 'dataset', ...).
        package: dotted package whose files are discovered lazily (``codes.archs``).
        suffix: file-name suffix of the discoverable modules (``_arch.py``).
    """

    def __init__(self, name: str, package: str | None = None, suffix: str | None = None) -> None:
        self.name = name
        self.package = package
        self.suffix = suffix
        self._obj_map: dict[str, Any] = {}
        self._origin: dict[str, str] = {}
        self._index: dict[str, str] | None = None  # name -> module, from the static scan
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ registration
    def register(self, obj: Any = None, name: str | None = None) -> Callable:
        """Register ``obj`` under its ``__name__`` (or ``name``); usable as ``@register()`` or ``register(obj)``."""

        def deco(o: Any) -> Any:
            key = name or o.__name__
            module = getattr(o, '__module__', '?')
            if key in self._obj_map and self._obj_map[key] is not o:
                raise KeyError(f"{self.name} registry: '{key}' is registered twice, "
                               f'in {self._origin[key]} and in {module}')
            self._obj_map[key] = o
            self._origin[key] = module
            return o

        return deco(obj) if obj is not None else deco

    # ------------------------------------------------------------------ discovery
    def _scan(self) -> dict[str, str]:
        with self._lock:
            if self._index is None:
                index: dict[str, str] = {}
                if self.package and self.suffix:
                    pkg = importlib.import_module(self.package)
                    for path in sorted(Path(pkg.__path__[0]).glob(f'*{self.suffix}')):
                        module = f'{self.package}.{path.stem}'
                        for key in _registered_names(path):
                            if key in index:
                                raise KeyError(f"{self.name} registry: '{key}' is registered twice, "
                                               f'in {index[key]} and in {module}')
                            index[key] = module
                self._index = index
        return self._index

    def _load(self, key: str) -> None:
        module = self._scan().get(key)
        if module is None or key in self._obj_map:
            return
        try:
            importlib.import_module(module)
        except Exception as exc:  # the module is broken or needs an optional package
            raise ImportError(f"{self.name} '{key}' is defined in {module}, which failed to import: "
                              f'{type(exc).__name__}: {exc}') from exc

    # ------------------------------------------------------------------ lookup
    def keys(self) -> list[str]:
        """All known names: registered ones and those discovered (not yet imported) in the package."""
        return sorted(set(self._obj_map) | set(self._scan()))

    def get(self, key: str) -> Any:
        """The object registered as ``key``; a ``KeyError`` listing the known names if there is none."""
        if key not in self._obj_map:
            self._load(key)
        if key not in self._obj_map:
            known = self.keys()
            close = difflib.get_close_matches(str(key), known, n=3)
            hint = f' Did you mean {", ".join(map(repr, close))}?' if close else ''
            raise KeyError(f"No {self.name} named '{key}'.{hint} Registered {self.name}s: {', '.join(known)}")
        return self._obj_map[key]

    def __contains__(self, key: str) -> bool:
        return key in self._obj_map or key in self._scan()

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __repr__(self) -> str:
        return f'Registry({self.name!r}, {self.keys()})'


ARCH_REGISTRY = Registry('arch', 'codes.archs', '_arch.py')
DATASET_REGISTRY = Registry('dataset', 'codes.data', '_dataset.py')
MODEL_REGISTRY = Registry('model', 'codes.models', '_model.py')
LOSS_REGISTRY = Registry('loss', 'codes.losses', '_loss.py')
METRIC_REGISTRY = Registry('metric', 'codes.metrics', '_metric.py')
