"""Argument checks of the dataset constructors: each raises ``ValueError`` naming the argument and the value.

``owner`` (a class name) prefixes the message when given: ``'BurstSRDataset: split must be 'train' or 'val', got
'test''``. The option front end has already checked the types, so these check values only.
"""
from __future__ import annotations

from typing import Any, Sequence

__all__ = ['check_min', 'check_range', 'check_choice', 'check_multiple']


def _fail(owner: str, message: str) -> None:
    raise ValueError(f'{owner}: {message}' if owner else message)


def check_min(name: str, value: int | float, minimum: int | float, owner: str = '') -> None:
    """``value >= minimum``, else ``'<name> must be >= <minimum>, got <value>'``."""
    if value < minimum:
        _fail(owner, f'{name} must be >= {minimum}, got {value}')


def check_range(name: str, value: int | float, low: int | float, high: int | float, owner: str = '') -> None:
    """``low <= value <= high``, else ``'<name> must be in <low>..<high>, got <value>'``."""
    if not low <= value <= high:
        _fail(owner, f'{name} must be in {low}..{high}, got {value}')


def check_choice(name: str, value: Any, choices: Sequence[Any], owner: str = '') -> None:
    """``value in choices``, else ``"<name> must be 'a', 'b' or 'c', got 'x'"``."""
    if value not in choices:
        quoted = [repr(c) for c in choices]
        allowed = quoted[0] if len(quoted) == 1 else f'{", ".join(quoted[:-1])} or {quoted[-1]}'
        _fail(owner, f'{name} must be {allowed}, got {value!r}')


def check_multiple(name: str, value: int, factor: int, factor_name: str = '', owner: str = '') -> None:
    """``value`` a positive multiple of ``factor``, else ``'<name> must be a positive multiple of <factor_name> =
    <factor>, got <value>'`` (just the factor when it has no name)."""
    if value <= 0 or value % factor:
        what = f'{factor_name} = {factor}' if factor_name else str(factor)
        _fail(owner, f'{name} must be a positive multiple of {what}, got {value}')
