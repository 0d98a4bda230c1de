"""Logging set-up for the entry points. Modules log through ``logging.getLogger(__name__)``; only ``train.py`` and
``test.py`` call :func:`setup_logging`, and only rank 0 writes below WARNING."""
from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

__all__ = ['setup_logging', 'append_jsonl', 'format_options']

FORMAT = '%(asctime)s %(levelname)s: %(message)s'


def setup_logging(log_file: str | os.PathLike | None, rank: int = 0, level: int = logging.INFO) -> logging.Logger:
    """Configure the ``codes`` logger: console on every rank (WARNING and up on ranks > 0), file on rank 0."""
    logger = logging.getLogger('codes')
    for h in list(logger.handlers):
        logger.removeHandler(h)
        h.close()
    logger.setLevel(level if rank == 0 else logging.WARNING)
    logger.propagate = False
    console = logging.StreamHandler(sys.stdout)
    console.setFormatter(logging.Formatter(FORMAT if rank == 0 else f'[rank {rank}] {FORMAT}'))
    logger.addHandler(console)
    if log_file is not None and rank == 0:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(log_file, mode='a', encoding='utf-8')
        fh.setFormatter(logging.Formatter(FORMAT))
        logger.addHandler(fh)
    return logger


def append_jsonl(path: str | os.PathLike, record: dict[str, Any]) -> None:
    """Append one JSON record as a line (flushed and fsynced, so a killed run keeps what it logged)."""
    with open(path, 'a', encoding='utf-8') as f:
        f.write(json.dumps(record, sort_keys=False) + '\n')
        f.flush()
        os.fsync(f.fileno())


def format_options(opt: dict, indent: int = 0) -> str:
    """Options as an indented multi-line string for the log."""
    lines = []
    for k, v in opt.items():
        if isinstance(v, dict):
            lines.append(' ' * indent + f'{k}:')
            lines.append(format_options(v, indent + 2))
        else:
            lines.append(' ' * indent + f'{k}: {v}')
    return '\n'.join(lines)
