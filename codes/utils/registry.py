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

__all__ = ['Registry', 'ARCH_REGISTRY', 'DATASET_REGISTRY', 'MODEL_REGISTRY', 'LOSS_REGISTRY', 'METRIC_REGISTRY',
           'OPTIMIZER_REGISTRY', 'SCHEDULER_REGISTRY']


def _registered_names(path: Path) -> list[str]:
    """Names registered by the top-level classes/functions of ``path`` decorated with ``<something>.register(...)``:
    the ``name=`` given to the decorator (a string literal), else the object's own name.

    Raises ``SyntaxError`` when the file does not parse (the registry then fails only that file's names).
    """
    tree = ast.parse(path.read_text(encoding='utf-8'), filename=str(path))
    names = []
    for node in tree.body:
        if not isinstance(node, (ast.ClassDef, ast.FunctionDef)):
            continue
        for dec in node.decorator_list:
            func = dec.func if isinstance(dec, ast.Call) else dec
            if isinstance(func, ast.Attribute) and func.attr == 'register':
                given = [k.value for k in getattr(dec, 'keywords', ()) if k.arg == 'name']
                literal = given and isinstance(given[0], ast.Constant) and isinstance(given[0].value, str)
                names.append(given[0].value if literal else node.name)
                break
    return names


class Registry:
    """A mapping from names to objects, filled by the ``@REGISTRY.register()`` decorator.

    Args:
        name: what the registry holds, used in messages ('arch', 'dataset', ...).
        package: dotted package whose files are discovered lazily (``codes.archs``).
        suffix: file-name suffix of the discoverable modules (``_arch.py``).
        locations: modules imported on the first lookup because they register names in ways a static scan cannot
            see (a loop over ``torch.optim``, say), as mmengine's ``Registry(locations=[...])``.
    """

    def __init__(self, name: str, package: str | None = None, suffix: str | None = None,
                 locations: tuple[str, ...] = ()) -> None:
        self.name = name
        self.package = package
        self.suffix = suffix
        self.locations = tuple(locations)
        self._obj_map: dict[str, Any] = {}
        self._origin: dict[str, str] = {}
        self._index: dict[str, str] | None = None  # name -> module, from the static scan
        self._broken: dict[str, str] = {}  # module -> why its names could not be read (a syntax error)
        self._refused: dict[str, str] = {}  # name -> why it cannot be used, and what to use instead
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

    def refuse(self, key: str, why: str) -> None:
        """Make ``get(key)`` fail with ``why`` (a name users will try that cannot work here)."""
        self._refused[key] = why

    # ------------------------------------------------------------------ discovery
    def _scan(self) -> dict[str, str]:
        with self._lock:
            if self._index is None:
                for module in self.locations:
                    importlib.import_module(module)
                index: dict[str, str] = {}
                if self.package and self.suffix:
                    pkg = importlib.import_module(self.package)
                    for path in sorted(Path(pkg.__path__[0]).glob(f'*{self.suffix}')):
                        module = f'{self.package}.{path.stem}'
                        try:
                            found = _registered_names(path)
                        except SyntaxError as exc:  # only this file's names are lost, as for an import error
                            self._broken[module] = f'SyntaxError: {exc.msg} (line {exc.lineno})'
                            continue
                        for key in found:
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
        if key in self._refused:
            raise KeyError(f"{self.name} '{key}' cannot be used here: {self._refused[key]}")
        if key not in self._obj_map:
            known = self.keys()
            close = difflib.get_close_matches(str(key), known, n=3)
            hint = f' Did you mean {", ".join(map(repr, close))}?' if close else ''
            broken = ''.join(f' ({m} could not be read: {why})' for m, why in self._broken.items())
            raise KeyError(f"No {self.name} named '{key}'.{hint} Registered {self.name}s: {', '.join(known)}{broken}")
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
#: every ``torch.optim`` optimizer and ``torch.optim.lr_scheduler`` scheduler by class name, plus the BasicSR restart
#: schedulers (all registered by ``codes.models.optim``)
OPTIMIZER_REGISTRY = Registry('optimizer', locations=('codes.models.optim',))
SCHEDULER_REGISTRY = Registry('scheduler', locations=('codes.models.optim',))
