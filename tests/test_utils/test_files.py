"""codes.utils.files: atomic writes keep the previous file on failure and leave no temporary file; natural order."""
from __future__ import annotations

from pathlib import Path

import pytest

from codes.utils.files import IMAGE_EXTENSIONS, atomic_open, atomic_write_bytes, atomic_write_text, natural_key


def test_atomic_write_replaces_whole_file(tmp_path: Path) -> None:
    path = tmp_path / 'a.txt'
    atomic_write_text(path, 'first\n')
    atomic_write_text(path, 'second\n')
    assert path.read_text() == 'second\n'
    atomic_write_bytes(tmp_path / 'b.bin', b'\x00\x01')
    assert (tmp_path / 'b.bin').read_bytes() == b'\x00\x01'
    assert sorted(p.name for p in tmp_path.iterdir()) == ['a.txt', 'b.bin']


def test_failed_write_keeps_the_previous_file(tmp_path: Path) -> None:
    path = tmp_path / 'state.txt'
    path.write_text('good')
    with pytest.raises(RuntimeError, match='boom'):
        with atomic_open(path, 'w', encoding='utf-8') as f:
            f.write('half')
            raise RuntimeError('boom')
    assert path.read_text() == 'good'
    assert [p.name for p in tmp_path.iterdir()] == ['state.txt']  # the temporary file is gone
    with pytest.raises(ValueError, match='mode'):
        with atomic_open(path, 'rb'):
            pass


def test_natural_key_and_extensions() -> None:
    names = ['img10.png', 'img2.png', 'img1.png', 'a', 'img2a.png']
    assert sorted(names, key=natural_key) == ['a', 'img1.png', 'img2.png', 'img2a.png', 'img10.png']
    assert IMAGE_EXTENSIONS[0] == '.png' and len(set(IMAGE_EXTENSIONS)) == len(IMAGE_EXTENSIONS)
    assert all(e == e.lower() and e.startswith('.') for e in IMAGE_EXTENSIONS)
