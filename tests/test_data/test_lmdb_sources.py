"""``codes.scripts.lmdb_sources``: the entries each layout yields, and the names ``create_lmdb`` still offers."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from codes.scripts import create_lmdb as cl
from codes.scripts import lmdb_sources as src


def _png(path, shape=(4, 4, 3), dtype=np.uint8):
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.zeros(shape, dtype))


def test_create_lmdb_offers_the_same_objects():
    for name in ('Entry', 'BuildError', 'collect_entries'):
        assert getattr(cl, name) is getattr(src, name)
        assert name in cl.__all__


def test_images_natural_order_skips_lmdb_folders(tmp_path):
    for rel in ('a/img10.png', 'a/img2.png', 'b.jpg', 'old.lmdb/x.png'):
        _png(tmp_path / rel)
    (tmp_path / 'notes.txt').write_text('not an image')
    entries, facts = src.collect_entries('images', tmp_path)
    assert [e.key for e in entries] == ['a/img2', 'a/img10', 'b']
    assert [e.name for e in entries] == ['a/img2.png', 'a/img10.png', 'b.jpg']
    assert facts == {'num_samples': 3}


def test_paired_keys_and_unpaired_error(tmp_path):
    for rel in ('GT/0001.png', 'GT/0002.png', 'LQ/0001.png', 'LQ/0002.png'):
        _png(tmp_path / rel)
    entries, facts = src.collect_entries('paired', tmp_path)
    assert [e.key for e in entries] == ['gt/0001', 'gt/0002', 'lq/0001', 'lq/0002']
    assert facts['num_samples'] == 2 and facts['num_lq'] == 2
    _png(tmp_path / 'LQ/0003.png')
    with pytest.raises(src.BuildError, match=r"do not pair by key: 0 only in GT \[\], 1 only in LQ \['0003'\]"):
        src.collect_entries('paired', tmp_path)


def test_synburst_val_frame_count_must_match(tmp_path):
    for burst, frames in (('0000', 2), ('0001', 3)):
        for i in range(frames):
            _png(tmp_path / 'val' / 'bursts' / burst / f'im_raw_{i:02d}.png', (4, 4, 4), np.uint16)
    with pytest.raises(src.BuildError, match='0001 has 3 frames'):
        src.collect_entries('synburst_val', tmp_path)


def test_unknown_format_and_lq_outside_paired(tmp_path):
    with pytest.raises(src.BuildError, match='unknown format'):
        src.collect_entries('zarr', tmp_path)
    with pytest.raises(src.BuildError, match='--lq only applies'):
        src.collect_entries('images', tmp_path, lq_dir=tmp_path)
