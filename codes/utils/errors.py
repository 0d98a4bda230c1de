"""User errors and the one top-level handler of the entry points.

A :class:`UserError` is a problem with what the user gave (an option file, a flag, a data folder, a weights
file, a database): the entry point prints its message on one line, without a traceback, and exits with status 2.
Every other exception is a bug and keeps its traceback. The specific errors of the toolkit
(``OptionError``, ``CheckpointError``, the LMDB errors, ...) derive from it, so one ``except`` serves them all.
"""
from __future__ import annotations

import sys
from typing import Callable, TypeVar

__all__ = ['UserError', 'run_cli']

T = TypeVar('T')


class UserError(Exception):
    """Bad input from the user; ``str(exc)`` is the whole message, naming the file, key or option concerned."""


def run_cli(main: Callable[[], T], prog: str) -> T:
    """Call ``main()``; a :class:`UserError` is printed as ``prog: error: message`` and exits with status 2.

    A message of several lines (several problems at once) is printed as it is, one problem a line.
    """
    try:
        return main()
    except UserError as exc:
        print(f'{prog}: error: {exc}', file=sys.stderr, flush=True)
        raise SystemExit(2) from None
