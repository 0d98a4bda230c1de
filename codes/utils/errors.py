"""User errors and the one top-level handler of the entry points.

A :class:`UserError` is a problem with what the user gave (an option file, a flag, a data folder, a weights
file, a database): the entry point prints its message on one line, without a traceback, and exits with status 2.
Every other exception is a bug and keeps its traceback. The specific errors of the toolkit
(``OptionError``, ``CheckpointError``, the LMDB errors, ...) derive from it, so one ``except`` serves them all.

A user error raised inside a DataLoader worker (a refused ``meta_info.pkl`` read by a dataset with
``num_worker_per_gpu > 0``) reaches the main process re-raised by torch as a new exception whose message is the
worker's whole traceback (or as a ``RuntimeError`` when the class cannot be rebuilt from one string); the handler
recognises it by the class named in that traceback and prints only the original message.
"""
from __future__ import annotations

import re
import sys
from typing import Callable, TypeVar

__all__ = ['UserError', 'run_cli', 'worker_user_error']

T = TypeVar('T')


class UserError(Exception):
    """Bad input from the user; ``str(exc)`` is the whole message, naming the file, key or option concerned."""


_WORKER = re.compile(r'Caught (\w+) in DataLoader worker process \d+\.\nOriginal Traceback')


def worker_user_error(exc: BaseException) -> str | None:
    """The message of the :class:`UserError` that a DataLoader worker raised, when ``exc`` is torch's re-raise of
    one in the main process; None for anything else (a bug in a worker keeps its traceback)."""
    text = str(exc)
    match = _WORKER.match(text)
    if match is None:
        return None
    lines = text.splitlines()
    for i in range(len(lines) - 1, 0, -1):  # the exception line of the worker's traceback: "module.Class: message"
        head, sep, rest = lines[i].partition(': ')
        if not sep or (head.rpartition('.')[2] != match.group(1)):
            continue
        module, _, name = head.rpartition('.')
        cls = getattr(sys.modules.get(module or 'builtins'), name, None)
        if isinstance(cls, type) and issubclass(cls, UserError):
            return '\n'.join([rest, *lines[i + 1:]]).rstrip()
        return None
    return None


def run_cli(main: Callable[[], T], prog: str) -> T:
    """Call ``main()``; a :class:`UserError` is printed as ``prog: error: message`` and exits with status 2 (also
    one raised in a DataLoader worker, see :func:`worker_user_error`).

    A message of several lines (several problems at once) is printed as it is, one problem a line.
    """
    try:
        return main()
    except UserError as exc:
        message = worker_user_error(exc) or str(exc)
    except Exception as exc:
        message = worker_user_error(exc)
        if message is None:
            raise
    print(f'{prog}: error: {message}', file=sys.stderr, flush=True)
    raise SystemExit(2) from None
