"""The spec's state_dict key lists (``key<TAB>shape`` per line), shipped in ``tests/data/spec_keys/``."""
from __future__ import annotations

from pathlib import Path

KEYS_DIR = Path(__file__).resolve().parent / 'data' / 'spec_keys'


def read_spec_keys(name: str) -> list[tuple[str, tuple[int, ...]]]:
    """``[(key, shape), ...]`` of ``KEYS_DIR/name``, in state_dict order."""
    rows = []
    for line in (KEYS_DIR / name).read_text().splitlines():
        key, shape = line.split('\t')
        rows.append((key, tuple(int(s) for s in shape.strip('()').split(',') if s.strip())))
    return rows
