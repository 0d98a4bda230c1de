"""The search-space language of a tune option file: the ``search_space`` block parsed into :class:`SearchParam`
objects, sampled values written into an option tree, and every parameter checked against the option schema.

A list is a categorical choice (``train.optim_g.type: [Adam, AdamW]``); ``{low, high[, log][, step][, type:
float|int]}`` is a range (int when both bounds are ints); ``{choices: [...]}`` is a categorical too, and for a
``....type`` key ``{choices: {Name: {other keys of that block}}}`` replaces the whole block with the chosen type
and its own arguments (for schedulers whose arguments differ).

A *sampled value* is what Optuna stores for a parameter: the number of a range, or the label of a choice.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import yaml

from codes.utils.build import ConstructorOptionError, OptionErrors
from codes.utils.options import OptionError, set_by_path, validate_options

__all__ = ['SearchParam', 'parse_search_space', 'apply_params', 'check_search_space', 'set_path']

_PRIMITIVE = (type(None), bool, int, float, str)
_RANGE_KEYS = ('low', 'high', 'log', 'step', 'type')
_FORMS = ('expected a list of choices, {choices: [...]}, {choices: {TypeName: {...}}} (for a .type key) or '
          '{low: ..., high: ...[, log: true][, step: ...][, type: float|int]}')


@dataclass(frozen=True)
class SearchParam:
    """One sampled option: ``key`` (an option key path) and its distribution.

    Categorical choices are passed to Optuna as ``labels`` (None/bool/int/float/str, which every storage keeps);
    ``values`` maps each label back to the option value (a list such as milestones is labelled by its YAML text;
    a per-choice ``type`` block by its type name).
    """

    key: str
    kind: str  # 'float' | 'int' | 'categorical'
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    labels: tuple = ()
    values: dict = field(default_factory=dict)
    per_choice: bool = False  # values are whole blocks that replace the parent of ``key``

    def suggest(self, trial: Any) -> Any:
        """Ask the Optuna ``trial`` for this parameter; returns the sampled value (a label or a number)."""
        if self.kind == 'float':
            return trial.suggest_float(self.key, self.low, self.high, log=self.log, step=self.step)
        if self.kind == 'int':
            return trial.suggest_int(self.key, self.low, self.high, log=self.log, step=self.step or 1)
        return trial.suggest_categorical(self.key, list(self.labels))

    def decode(self, sampled: Any) -> Any:
        """The option value of a sampled value."""
        return copy.deepcopy(self.values[sampled]) if self.kind == 'categorical' else sampled

    def describe(self, sampled: Any) -> str:
        """A short text of a sampled value for logs and tables (the type name for a per-choice block)."""
        if self.per_choice:
            return str(sampled)
        value = self.decode(sampled)
        return f'{value:.4g}' if isinstance(value, float) else str(value)

    def probes(self) -> list[Any]:
        """Sampled values checked before the study starts: every choice, or both ends of a range."""
        return list(self.labels) if self.kind == 'categorical' else [self.low, self.high]

    def encode(self, value: Any, where: str, file: str | None) -> Any:
        """The sampled value of an option value given by the user (``tune.enqueue``); checks it is in the space."""
        if self.kind == 'categorical':
            for label, v in self.values.items():
                if (v if not self.per_choice else label) == value or label == value:
                    return label
            raise OptionError(where, f'{value!r} is not one of the choices {list(self.labels)}', file)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not self.low <= value <= self.high:
            raise OptionError(where, f'expected a number in [{self.low}, {self.high}], got {value!r}', file)
        return int(value) if self.kind == 'int' else float(value)


def _label(value: Any) -> Any:
    if isinstance(value, _PRIMITIVE):
        return value
    return yaml.safe_dump(value, default_flow_style=True, sort_keys=False).strip()


def parse_search_space(block: Any, file: str | None = None) -> list[SearchParam]:
    """Parse the ``search_space`` block (key path -> spec) into parameters; errors name the file and the key."""
    if not isinstance(block, Mapping) or not block:
        raise OptionError('search_space', 'expected a mapping of option key paths to what to sample, e.g. '
                          '"train.optim_g.lr: {low: 1.0e-5, high: 1.0e-3, log: true}"', file)
    params = []
    for key, spec in block.items():
        where = f'search_space.{key}'
        if not isinstance(key, str) or not key or any(not part for part in key.split('.')):
            raise OptionError(where, 'keys are option key paths such as train.optim_g.lr', file)
        params.append(_parse_spec(key, spec, where, file))
    return params


def _parse_spec(key: str, spec: Any, where: str, file: str | None) -> SearchParam:
    if isinstance(spec, Mapping) and set(spec) == {'choices'}:
        spec = spec['choices']
        if isinstance(spec, Mapping):
            return _parse_type_choices(key, spec, where, file)
    if isinstance(spec, (list, tuple)):
        return _parse_choices(key, spec, where, file)
    if not isinstance(spec, Mapping) or 'low' not in spec or 'high' not in spec:
        raise OptionError(where, f'{_FORMS}, got {spec!r}', file)
    return _parse_range(key, spec, where, file)


def _parse_type_choices(key: str, spec: Mapping, where: str, file: str | None) -> SearchParam:
    """``{choices: {TypeName: {other keys}}}`` of a ``.type`` key: each choice is a whole block."""
    if key.split('.')[-1] != 'type':
        raise OptionError(where, 'choices given as a mapping (choice -> block) are for a ".type" key', file)
    if not spec:
        raise OptionError(where, 'no choices given', file)
    values = {}
    for name, settings in spec.items():
        if not isinstance(name, str):
            raise OptionError(f'{where}.choices', f'a type name must be a string, got {name!r}', file)
        if settings is None:
            settings = {}
        if not isinstance(settings, Mapping) or 'type' in settings:
            raise OptionError(f'{where}.choices.{name}', 'expected a mapping of the other keys of the block '
                              '(without "type"), or ~', file)
        values[name] = {'type': name, **copy.deepcopy(dict(settings))}
    return SearchParam(key, 'categorical', labels=tuple(values), values=values, per_choice=True)


def _parse_choices(key: str, spec: list | tuple, where: str, file: str | None) -> SearchParam:
    if not spec:
        raise OptionError(where, 'no choices given', file)
    values = {}
    for value in spec:
        label = _label(value)
        if label in values:
            raise OptionError(where, f'choice {value!r} is listed twice', file)
        values[label] = copy.deepcopy(value)
    return SearchParam(key, 'categorical', labels=tuple(values), values=values)


def _parse_range(key: str, spec: Mapping, where: str, file: str | None) -> SearchParam:
    unknown = [k for k in spec if k not in _RANGE_KEYS]
    if unknown:
        raise OptionError(f'{where}.{unknown[0]}', f'unknown key; a range has {", ".join(_RANGE_KEYS)}', file)
    low, high, log, step = spec['low'], spec['high'], spec.get('log', False), spec.get('step')
    for name, v in (('low', low), ('high', high)) + ((('step', step),) if step is not None else ()):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise OptionError(f'{where}.{name}', f'expected a finite number, got {v!r}', file)
    if not isinstance(log, bool):
        raise OptionError(f'{where}.log', f'expected true or false, got {log!r}', file)
    kind = spec.get('type')
    if kind is None:
        kind = 'int' if all(isinstance(v, int) for v in (low, high) + ((step,) if step is not None else ())) \
            else 'float'
    if kind not in ('float', 'int'):
        raise OptionError(f'{where}.type', f"must be float or int, got {kind!r}", file)
    if kind == 'int':
        if any(isinstance(v, float) and not v.is_integer() for v in (low, high, step) if v is not None):
            raise OptionError(where, 'an int range needs integer low, high and step', file)
        low, high = int(low), int(high)
        step = int(step) if step is not None else None
    else:
        low, high = float(low), float(high)
        step = float(step) if step is not None else None
    if low > high:
        raise OptionError(where, f'low ({low}) is above high ({high})', file)
    if log and low <= 0:
        raise OptionError(f'{where}.low', f'a log range needs low > 0, got {low}', file)
    if step is not None and step <= 0:
        raise OptionError(f'{where}.step', f'must be > 0, got {step}', file)
    if log and step is not None and (kind == 'float' or step != 1):
        raise OptionError(where, 'log and step cannot be combined', file)
    return SearchParam(key, kind, low=low, high=high, log=log, step=step)


def set_path(tree: dict, key: str, value: Any) -> None:
    """Set the dotted option key path ``key`` of ``tree`` to ``value`` in place (missing blocks are added)."""
    set_by_path(tree, key.split('.'), value)


def apply_params(base: Mapping[str, Any], params: list[SearchParam], sampled: Mapping[str, Any]) -> dict:
    """A copy of ``base`` with the sampled values of ``params`` (key path -> sampled value) written at their key
    paths.

    Per-choice ``type`` blocks are written first (they replace their whole block), then every other value.
    """
    tree = copy.deepcopy(dict(base))
    for p in sorted((p for p in params if p.key in sampled), key=lambda p: not p.per_choice):
        value = p.decode(sampled[p.key])
        if p.per_choice:
            parent = p.key.rsplit('.', 1)[0]
            set_path(tree, parent, value)
        else:
            set_path(tree, p.key, value)
    return tree


def check_search_space(base: Mapping[str, Any], params: list[SearchParam], file: str | None = None) -> None:
    """Check every parameter's key path and values against the option schema, one parameter at a time.

    ``base`` must itself be valid. A value passes if the base with that value validates; a key under a block
    whose ``type`` is sampled too passes if it validates with at least one of those types. A constructor's value
    check (``check_options``, e.g. BSRT's embed_dim divisible by num_heads) does not refuse a value, since it may
    hold with the other sampled values; a trial that samples an impossible combination fails with its reason.
    """
    by_key = {p.key: p for p in params}
    for p in params:
        parent = p.key.rsplit('.', 1)[0] if '.' in p.key else ''
        sibling_type = by_key.get(f'{parent}.type') if parent and not p.key.endswith('.type') else None
        contexts = [{}] + ([{sibling_type.key: t} for t in sibling_type.labels] if sibling_type else [])
        for probe in p.probes():
            first: OptionError | None = None
            for ctx in contexts:
                try:
                    validate_options(apply_params(base, params, {**ctx, p.key: probe}))
                    break
                except OptionError as exc:
                    errors = [e for e in OptionErrors.flatten(exc) if not isinstance(e, ConstructorOptionError)]
                    if not errors:  # a constructor's value check may hinge on other sampled keys: left to trials
                        break
                    first = first or errors[0]
            else:
                shown = p.values[probe] if p.kind == 'categorical' else probe
                at = f' (at {first.where})' if first.where and first.where != p.key else ''
                raise OptionError(f'search_space.{p.key}', f'the value {shown!r} is not valid here{at}: '
                                  f'{first.detail}', file)
