"""Console scripts of the installed package: ``bsr-train``, ``bsr-test``, ``bsr-infer``, ``bsr-tune`` and
``bsr-export``.

Each is the matching root script (``train.py``, ...) with the current directory as the root: experiments go to
``./experiments/<name>``, results to ``./results/<name>``, and relative paths in option files are read from there.
A user error (a wrong option file, a missing weights file) prints one line per problem and exits with status 2;
success exits with 0.
"""
from __future__ import annotations

import os
from pathlib import Path

from codes.utils.errors import run_cli

__all__ = ['train_main', 'test_main', 'infer_main', 'tune_main', 'export_main']


def train_main() -> None:
    """``bsr-train -opt FILE [--set k=v ...] [--auto_resume] [--print-options] [--dry-run]``."""
    from codes.train import train_pipeline
    run_cli(lambda: train_pipeline(Path(os.getcwd())), 'bsr-train')


def test_main() -> None:
    """``bsr-test -opt FILE [--set k=v ...] [--print-options] [--dry-run]``."""
    from codes.test import test_pipeline
    run_cli(lambda: test_pipeline(Path(os.getcwd())), 'bsr-test')


def infer_main() -> None:
    """``bsr-infer --weights W --input PATH --output DIR [...]`` or ``bsr-infer -opt FILE``."""
    from codes.infer import infer_pipeline
    run_cli(infer_pipeline, 'bsr-infer')


def tune_main() -> None:
    """``bsr-tune -opt FILE [--storage URL] [--n-trials N] [--print-options] [--dry-run]``."""
    from codes.tune import tune_pipeline
    run_cli(lambda: tune_pipeline(Path(os.getcwd())), 'bsr-tune')


def export_main() -> None:
    """``bsr-export --weights W --format onnx|torchscript|safetensors --output FILE [-opt FILE]``."""
    from codes.scripts.export import export_pipeline
    run_cli(export_pipeline, 'bsr-export')
