"""Errors of the inference readers (bursts and images): each is a one-line ``UserError`` naming the file."""
from __future__ import annotations

from codes.utils.errors import UserError

__all__ = ['InputError', 'InputNotFoundError', 'InputReadError', 'MissingPackageError']


class InputError(UserError, ValueError):
    """An input (burst, RAW file, image) that cannot be used as it is; the message names the file."""


class InputNotFoundError(UserError, FileNotFoundError):
    """An input path that names nothing usable."""


class InputReadError(UserError, OSError):
    """An input file that cannot be decoded."""


class MissingPackageError(UserError, ImportError):
    """An optional package needed by this input is not installed."""
