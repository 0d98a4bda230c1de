"""LMDB storage: create_lmdb round trips per format, resume, refusal, legacy formats, bad input, datasets."""
import json
import os
import pickle
import shutil
import zlib
from pathlib import Path

import cv2
import lmdb
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from codes.data import io_backend as iob
from codes.data import synthetic_burst_dataset as sb
from codes.scripts import create_lmdb as cl


# ---------------------------------------------------------------------------------------------------- data
def _photo(h: int, w: int, seed: int = 0) -> np.ndarray:
    from skimage import data
    img = data.astronaut()
    r = np.random.RandomState(seed)
    y, x = r.randint(0, 512 - h), r.randint(0, 512 - w)
    return np.ascontiguousarray(img[y:y + h, x:x + w, ::-1])  # BGR uint8


def _write(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), array)
    return path


def _images_dir(root: Path) -> Path:
    """Nested images of every kind, two with the same file name in different folders."""
    _write(root / 'a' / '0001.png', _photo(20, 24, 0))
    _write(root / 'b' / '0001.png', _photo(20, 24, 1))
    _write(root / 'c' / 'gray.png', _photo(16, 16, 2)[..., 0])
    _write(root / 'c' / 'deep.png', _photo(12, 10, 3).astype(np.uint16) * 257)
    _write(root / 'c' / 'rgba.png', np.dstack([_photo(8, 8, 4), np.full((8, 8), 200, np.uint8)]))
    _write(root / 'd' / 'photo 1.jpg', _photo(24, 24, 5))
    return root


def _burstsr_dir(root: Path, frames: int = 3) -> Path:
    """A miniature BurstSR layout: train/ and val/ with SSSS_CCCC/samsung_XX and canon."""
    rng = np.random.RandomState(0)
    for split, names in (('train', ('0000_0001', '0000_0002')), ('val', ('0001_0000',))):
        for name in names:
            for f in range(frames):
                d = root / split / name / f'samsung_{f:02d}'
                _write(d / 'im_raw.png', rng.randint(0, 1024, (8, 8, 4)).astype(np.uint16))
                with open(d / 'meta_info.pkl', 'wb') as fh:
                    pickle.dump({'black_level': [64, 64, 64, 64], 'cam_wb': np.ones(3), 'frame': f}, fh)
            d = root / split / name / 'canon'
            _write(d / 'im_raw.png', rng.randint(0, 16384, (64, 64, 3)).astype(np.uint16))
            with open(d / 'meta_info.pkl', 'wb') as fh:
                pickle.dump({'black_level': [2048] * 4, 'rgb_xyz_matrix': np.eye(3)}, fh)
    return root


@pytest.fixture(scope='module')
def synval(sample_data, tmp_path_factory) -> Path:
    """Two bursts of the SyntheticBurstVal-format sample, under a val/ level (as BSRT lays it out)."""
    root = tmp_path_factory.mktemp('synval') / 'SyntheticBurstVal'
    src = sample_data / 'SyntheticBurstVal'
    for sub in ('bursts', 'gt'):
        for name in ('0000', '0001'):
            shutil.copytree(src / sub / name, root / 'val' / sub / name)
    return root


def _build(fmt: str, src: Path, out: Path, *extra: str) -> None:
    assert cl.main(['--format', fmt, '--input', str(src), '--output', str(out), '--quiet', *extra]) == 0


def _assert_round_trip(db: Path, src: Path, expected_keys: int, folders: dict | None = None) -> iob.LmdbBackend:
    backend = iob.open_lmdb(db)
    assert isinstance(backend, iob.LmdbBackend) and len(backend) == expected_keys
    for key in backend.keys():
        top, _, rest = backend.name(key).partition('/')
        path = src / folders[top] / rest if folders else src / backend.name(key)
        value = backend.get(key)
        if path.suffix == '.pkl':
            assert value == path.read_bytes()
        else:
            source = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
            assert value.dtype == source.dtype and value.shape == source.shape and value.flags.writeable
            assert value.tobytes() == source.tobytes(), key
    backend.close()
    return backend


# ---------------------------------------------------------------------------------------------------- round trips
@pytest.mark.parametrize('level', [None, 3])
def test_images_round_trip(tmp_path, level):
    src = _images_dir(tmp_path / 'imgs')
    out = tmp_path / 'imgs.lmdb'
    # the PNG build also reads and encodes with 2 threads
    _build('images', src, out, '--verify', *(['--compress-level', str(level), '--workers', '2'] if level else []))
    backend = _assert_round_trip(out, src, 6)
    assert backend.keys() == ['a/0001', 'b/0001', 'c/deep', 'c/gray', 'c/rgba', 'd/photo 1']
    assert backend.record['layout'] == 'images' and backend.record['compress_level'] == level
    lines = (out / 'meta_info.txt').read_text().splitlines()
    comp = 'raw' if level is None else str(level)
    assert lines[2].startswith(f'c/deep.png (12,10,3) {comp} uint16 ')
    assert lines[5].startswith('d/photo 1.jpg (24,24,3)')
    # BasicSR's reader takes the key as line.split('.')[0]
    assert [line.split('.')[0] for line in lines[:4]] == backend.keys()[:4]
    assert backend.get_many(['c/gray', 'a/0001'])[0].shape == (16, 16)


def test_synburst_val_round_trip_dataset_and_workers(synval, tmp_path):
    out = tmp_path / 'val.lmdb'
    _build('synburst_val', synval, out, '--verify')
    backend = _assert_round_trip(out, synval / 'val', 2 * 16)
    assert backend.keys('gt/0001/') == ['gt/0001/im_rgb', 'gt/0001/meta_info']
    disk = sb.SyntheticBurstValDataset(str(synval), burst_size=14)
    fast = sb.SyntheticBurstValDataset(str(out), burst_size=14, io_backend={'type': 'lmdb'})
    assert len(fast) == len(disk) == 2
    for i in range(2):
        a, b = disk[i], fast[i]
        assert a['key'] == b['key'] and torch.equal(a['lq'], b['lq']) and torch.equal(a['gt'], b['gt'])
        assert a['meta_info'].keys() == b['meta_info'].keys()
        torch.testing.assert_close(a['meta_info']['rgb2cam'], b['meta_info']['rgb2cam'], rtol=0, atol=0)
    # Two forked workers, each opening its own environment (the parent has one open after the reads above).
    loader = DataLoader(fast, batch_size=1, num_workers=2, persistent_workers=False)
    batches = {b['key'][0]: b for b in loader}
    assert sorted(batches) == ['0000', '0001']
    assert torch.equal(batches['0001']['lq'][0], disk[1]['lq'])
    # "nothing else changes": dataroot may stay the folder when <dataroot>.lmdb sits beside it
    beside = tmp_path / 'SyntheticBurstVal'
    shutil.copytree(out, tmp_path / 'SyntheticBurstVal.lmdb')
    assert len(sb.SyntheticBurstValDataset(str(beside), io_backend={'type': 'lmdb', 'max_readers': 8})) == 2
    with pytest.raises(ValueError, match='exceeds'):
        sb.SyntheticBurstValDataset(str(out), burst_size=15, io_backend={'type': 'lmdb'})


def test_synthetic_burst_dataset_lmdb_source(sample_data, tmp_path):
    out = tmp_path / 'zurich.lmdb'
    src = tmp_path / 'zurich'
    for i in range(3):  # a small Zurich layout plus an image outside train/canon that must not be picked
        _write(src / 'train' / 'canon' / f'{i}.jpg', cv2.imread(str(sample_data / f'zurich/train/canon/{i}.jpg')))
    _write(src / 'other' / 'x.png', _photo(64, 64))
    _build('images', src, out, '--compress-level', '1')
    kw = dict(crop_size=32, burst_size=3, seed=7)
    for order in ('bgr', 'rgb'):
        disk = sb.SyntheticBurstDataset(str(src), channel_order=order, **kw)
        fast = sb.SyntheticBurstDataset(str(out), channel_order=order, io_backend={'type': 'lmdb'}, **kw)
        assert len(disk) == len(fast) == 3
        a, b = disk[2], fast[2]
        assert a['key'] == b['key'] == 'train/canon/2.jpg_000002'
        assert torch.equal(a['lq'], b['lq']) and torch.equal(a['gt'], b['gt'])
    with pytest.raises(FileNotFoundError, match='test/canon'):
        sb.SyntheticBurstDataset(str(out), phase='val', io_backend={'type': 'lmdb'})
    # any images LMDB works (all keys), and gray / 16-bit / RGBA images are converted as IMREAD_COLOR would
    imgs = _images_dir(tmp_path / 'imgs')
    _build('images', imgs, tmp_path / 'imgs.lmdb')
    fast = sb.SyntheticBurstDataset(str(tmp_path / 'imgs.lmdb'), crop_size=8, burst_size=1, border_crop=0,
                                    io_backend={'type': 'lmdb'})
    assert len(fast) == 6
    for i, key in enumerate(fast.keys):
        want = cv2.imread(str(imgs / fast.paths[i]), cv2.IMREAD_COLOR)
        assert np.array_equal(fast._read(i), want), key


def test_burstsr_round_trip(tmp_path):
    src = _burstsr_dir(tmp_path / 'burstsr')
    out = tmp_path / 'burstsr.lmdb'
    _build('burstsr', src, out, '--verify', '--compress-level', '1')
    backend = _assert_round_trip(out, src, 3 * (3 * 2 + 2))
    assert backend.record['splits'] == ['train', 'val'] and backend.record['num_samples'] == 3
    assert 'train/0000_0002/samsung_01/im_raw' in backend.keys('train/')
    assert backend.keys('val/0001_0000/canon/') == ['val/0001_0000/canon/im_raw', 'val/0001_0000/canon/meta_info']
    # one split folder as input: keys relative to it
    _build('burstsr', src / 'val', tmp_path / 'val.lmdb')
    assert iob.open_lmdb(tmp_path / 'val.lmdb').keys()[0] == '0001_0000/samsung_00/im_raw'
    (src / 'train' / '0000_0002' / 'samsung_01' / 'meta_info.pkl').unlink()
    with pytest.raises(cl.BuildError, match='samsung_01/meta_info.pkl is missing'):
        cl.create_lmdb('burstsr', src, tmp_path / 'bad.lmdb', progress=False)


def test_paired_round_trip(tmp_path):
    src = tmp_path / 'pairs'
    for name in ('0001', 'sub/0002'):
        _write(src / 'HR' / f'{name}.png', _photo(32, 32))
        _write(src / 'LR' / f'{name}.png', _photo(8, 8))
    out = tmp_path / 'pairs.lmdb'
    _build('paired', src, out, '--verify')
    backend = _assert_round_trip(out, src, 4, {'gt': 'HR', 'lq': 'LR'})
    assert backend.keys() == ['gt/0001', 'gt/sub/0002', 'lq/0001', 'lq/sub/0002']
    assert backend.name('lq/sub/0002') == 'lq/sub/0002.png'
    assert [k[3:] for k in backend.keys('gt/')] == [k[3:] for k in backend.keys('lq/')] == ['0001', 'sub/0002']
    gt, lq = backend.get_many(['gt/0001', 'lq/0001'])
    assert gt.shape == (32, 32, 3) and lq.shape == (8, 8, 3)
    # explicit --lq, and unpaired folders refused with the unmatched keys
    _build('paired', src / 'HR', tmp_path / 'p2.lmdb', '--lq', str(src / 'LR'))
    _write(src / 'LR' / 'extra.png', _photo(8, 8))
    with pytest.raises(cl.BuildError, match=r"1 only in LQ \['extra'\]"):
        cl.create_lmdb('paired', src, tmp_path / 'p3.lmdb', progress=False)


# ---------------------------------------------------------------------------------------------------- building
def test_resume_after_interruption(tmp_path, monkeypatch):
    src = _images_dir(tmp_path / 'imgs')
    out = tmp_path / 'imgs.lmdb'
    real = cl.encode_entry
    calls = []

    def flaky(entry, level):
        calls.append(entry.key)
        if len(calls) == 5:
            raise KeyboardInterrupt  # the user pressed Ctrl-C during the third batch
        return real(entry, level)

    monkeypatch.setattr(cl, 'encode_entry', flaky)
    with pytest.raises(KeyboardInterrupt):
        cl.create_lmdb('images', src, out, batch=2, map_size=1 << 20, progress=False)
    monkeypatch.setattr(cl, 'encode_entry', real)
    with pytest.raises(iob.LmdbFormatError, match='incomplete build.*--resume'):
        iob.open_lmdb(out)
    with pytest.raises(cl.BuildError, match='already exists.*--resume'):
        cl.create_lmdb('images', src, out, progress=False)
    with pytest.raises(cl.BuildError, match='compress_level'):
        cl.create_lmdb('images', src, out, resume=True, compress_level=1, progress=False)
    summary = cl.create_lmdb('images', src, out, resume=True, verify=True, batch=2, progress=False)
    assert (summary.skipped, summary.written, summary.verified) == (4, 2, 6)
    _assert_round_trip(out, src, 6)
    # resuming a complete build writes nothing
    assert cl.create_lmdb('images', src, out, resume=True, progress=False).written == 0


def test_refusal_and_overwrite(tmp_path, capsys):
    src = _images_dir(tmp_path / 'imgs')
    out = tmp_path / 'imgs.lmdb'
    _build('images', src, out)
    before = (out / 'data.mdb').read_bytes()
    with pytest.raises(SystemExit) as err:
        cl.main(['--format', 'images', '--input', str(src), '--output', str(out), '--quiet'])
    assert err.value.code == 1 and 'already exists' in capsys.readouterr().err
    assert (out / 'data.mdb').read_bytes() == before
    _build('images', src, out, '--overwrite', '--compress-level', '1')
    assert iob.open_lmdb(out).record['compress_level'] == 1
    notdb = tmp_path / 'precious.lmdb'
    notdb.mkdir()
    (notdb / 'thesis.txt').write_text('do not delete')
    with pytest.raises(cl.BuildError, match='refusing to delete'):
        cl.create_lmdb('images', src, notdb, overwrite=True, progress=False)
    assert (notdb / 'thesis.txt').exists()
    for kwargs, match in (({'resume': True, 'overwrite': True}, 'exclude'), ({}, 'must end in .lmdb'),
                          ({'compress_level': 12}, '0-9')):
        target = tmp_path / ('x.db' if match == 'must end in .lmdb' else 'y.lmdb')
        with pytest.raises(cl.BuildError, match=match):
            cl.create_lmdb('images', src, target, progress=False, **kwargs)
    with pytest.raises(cl.BuildError, match='does not exist'):
        cl.create_lmdb('images', src, tmp_path / 'none.lmdb', resume=True, progress=False)
    with pytest.raises(cl.BuildError, match='not the SyntheticBurstVal layout'):
        cl.create_lmdb('synburst_val', src, tmp_path / 'z.lmdb', progress=False)


def test_duplicate_and_reserved_keys(tmp_path):
    src = tmp_path / 'imgs'
    _write(src / 'x' / 'img.png', _photo(8, 8))
    _write(src / 'x' / 'img.jpg', _photo(8, 8))
    with pytest.raises(cl.BuildError, match=r"duplicate key 'x/img'.*img\.jpg.*img\.png|duplicate key 'x/img'"):
        cl.create_lmdb('images', src, tmp_path / 'o.lmdb', progress=False)
    assert not (tmp_path / 'o.lmdb').exists()
    other = tmp_path / 'reserved'
    _write(other / '__format__.png', _photo(8, 8))
    with pytest.raises(cl.BuildError, match='reserved'):
        cl.create_lmdb('images', other, tmp_path / 'r.lmdb', progress=False)


def test_map_size_grows_on_map_full(tmp_path):
    src = _images_dir(tmp_path / 'imgs')
    out = tmp_path / 'imgs.lmdb'
    summary = cl.create_lmdb('images', src, out, map_size=32 * 1024, batch=3, progress=False)
    assert summary.map_growths >= 1 and summary.map_size > 32 * 1024
    _assert_round_trip(out, src, 6)
    estimate = cl._estimate_map_size(cl.collect_entries('images', src)[0], None)
    assert estimate >= summary.raw_bytes


def test_growing_map_retries_a_full_write_and_grows_by_the_rule(tmp_path):
    env = lmdb.open(str(tmp_path / 'g.lmdb'), map_size=32 * 1024, subdir=True)
    try:
        db = cl.GrowingMap(env, 32 * 1024, 'g.lmdb')
        value = os.urandom(200 * 1024)  # far more than the map holds
        calls = []

        def put(txn):
            calls.append(1)
            txn.put(b'k', value)

        db.write(put, len(value))
        # each growth is max(2 x size, size + 2 x nbytes): the first already fits 200 KB
        assert db.growths == len(calls) - 1 >= 1 and db.size == 32 * 1024 + 2 * len(value)
        assert env.info()['map_size'] == db.size
        with env.begin() as txn:
            assert txn.get(b'k') == value
        db.write(lambda txn: txn.put(b'small', b'x'))  # fits: no growth, one call
        assert db.growths == len(calls) - 1
        def broken(txn):
            calls.append(1)
            raise ValueError('not a map-full error')

        with pytest.raises(ValueError, match='not a map-full error'):  # other errors are not retried
            db.write(broken)
        assert db.growths == len(calls) - 2
        with env.begin() as txn:
            assert txn.get(b'small') == b'x'
    finally:
        env.close()


def test_verify_reports_a_changed_source(tmp_path):
    src = _images_dir(tmp_path / 'imgs')
    out = tmp_path / 'imgs.lmdb'
    cl.create_lmdb('images', src, out, progress=False)
    _write(src / 'b' / '0001.png', _photo(20, 24, 9))
    with pytest.raises(cl.BuildError, match=r"(?s)1 of 6 keys.*b/0001: differs"):
        cl.verify_lmdb(out, cl.collect_entries('images', src)[0], progress=False)


# ---------------------------------------------------------------------------------------------------- legacy
def _raw_lmdb(path: Path, items: dict) -> None:
    env = lmdb.open(str(path), map_size=1 << 24)
    with env.begin(write=True) as txn:
        for k, v in items.items():
            txn.put(k.encode('ascii'), v)
    env.close()


def test_legacy_basicsr_lmdb(tmp_path):
    imgs = {'0001': _photo(12, 16, 0), 'sub/0002': _photo(10, 10, 1)}
    db = tmp_path / 'DIV2K_train_HR_sub.lmdb'
    _raw_lmdb(db, {k: cv2.imencode('.png', v, [cv2.IMWRITE_PNG_COMPRESSION, 1])[1].tobytes()
                   for k, v in imgs.items()})
    (db / 'meta_info.txt').write_text('0001.png (12,16,3) 1\nsub/0002.png (10,10,3) 1\n')
    backend = iob.open_backend({'type': 'lmdb'}, db, layout='images')
    assert isinstance(backend, iob.BasicSRLmdbBackend) and backend.keys() == ['0001', 'sub/0002']
    for k, v in imgs.items():
        assert np.array_equal(backend.get(k), v)
    backend.close()
    _raw_lmdb(db, {'0001': b'\x89PNG garbage'})
    with pytest.raises(iob.CorruptValueError, match=r"DIV2K_train_HR_sub\.lmdb \[key '0001'\].*PNG"):
        backend.get('0001')
    with pytest.raises(iob.LmdbFormatError, match="layout 'images'"):
        iob.open_lmdb(db, layout='synburst_val')


def test_legacy_dcls_lmdb(tmp_path):
    same = {'img_a': _photo(6, 8, 0), 'img_b': _photo(6, 8, 1)}
    db = tmp_path / 'HR.lmdb'
    _raw_lmdb(db, {k: v.tobytes() for k, v in same.items()})
    with open(db / 'meta_info.pkl', 'wb') as f:  # one shared resolution, collapsed as the MMSR writer does
        pickle.dump({'name': 'DIV2K_HR', 'keys': list(same), 'resolution': ['3_6_8']}, f)
    backend = iob.open_backend({'type': 'lmdb'}, db)
    assert isinstance(backend, iob.DclsLmdbBackend) and backend.record['name'] == 'DIV2K_HR'
    for k, v in same.items():
        assert np.array_equal(backend.get(k), v)
    backend.close()
    mixed = {'x': _photo(4, 5, 2), 'y': _photo(7, 3, 3)}
    db2 = tmp_path / 'LR.lmdb'
    _raw_lmdb(db2, {'x': mixed['x'].tobytes(), 'y': mixed['y'].tobytes()[:-5]})  # y truncated
    with open(db2 / 'meta_info.pkl', 'wb') as f:
        pickle.dump({'name': 'LR', 'keys': ['x', 'y'], 'resolution': ['3_4_5', '3_7_3']}, f)
    backend = iob.open_lmdb(db2)
    assert np.array_equal(backend.get('x'), mixed['x'])
    with pytest.raises(iob.CorruptValueError, match=r"LR\.lmdb \[key 'y'\]: truncated value: 58 bytes"):
        backend.get('y')
    with pytest.raises(iob.MissingKeyError, match=r"LR\.lmdb \[key 'z'\]: key not in meta_info"):
        backend.get('z')
    backend.close()

    class Evil:
        def __reduce__(self):
            return os.system, ('echo pwned',)

    with open(db2 / 'meta_info.pkl', 'wb') as f:
        pickle.dump({'name': Evil(), 'keys': [], 'resolution': []}, f)
    with pytest.raises(pickle.UnpicklingError, match='system'):
        iob.open_lmdb(db2)


# ---------------------------------------------------------------------------------------------------- bad input
def _poke(db: Path, key: str, value: bytes | None) -> None:
    env = lmdb.open(str(db), map_size=1 << 26)
    with env.begin(write=True) as txn:
        if value is None:
            txn.delete(key.encode())
        else:
            txn.put(key.encode(), value)
    env.close()


def test_bad_values_and_keys_name_database_and_key(tmp_path):
    src = _images_dir(tmp_path / 'imgs')
    db = tmp_path / 'imgs.lmdb'
    cl.create_lmdb('images', src, db, progress=False)
    good = iob.open_lmdb(db).get('a/0001')
    where = r"imgs\.lmdb \[key 'a/0001'\]"
    _poke(db, 'a/0001', good.tobytes()[:-7])
    with pytest.raises(iob.CorruptValueError, match=where + ': corrupt value: CRC-32'):
        iob.open_lmdb(db).get('a/0001')
    with pytest.raises(iob.CorruptValueError, match=where + r': truncated value: 1433 bytes, but shape \(20, 24, 3\)'):
        iob.open_lmdb(db, check_crc=False).get('a/0001')
    flipped = bytearray(good.tobytes())
    flipped[100] ^= 1
    _poke(db, 'a/0001', bytes(flipped))
    with pytest.raises(iob.CorruptValueError, match=where + ': corrupt value: CRC-32'):
        iob.open_backend({'type': 'lmdb'}, db).get('a/0001')
    with pytest.raises(iob.MissingKeyError, match=r"imgs\.lmdb \[key 'a/0002'\]: key not in meta_info.*a/0001"):
        iob.open_lmdb(db).get('a/0002')
    _poke(db, 'a/0001', good.tobytes())
    _poke(db, 'c/gray', None)
    with pytest.raises(iob.MissingKeyError, match=r"\[key 'c/gray'\]: listed in meta_info but absent"):
        iob.open_lmdb(db).get_many(['a/0001', 'c/gray'])
    # a meta_info.txt from another database, then none
    text = (db / 'meta_info.txt').read_text()
    (db / 'meta_info.txt').write_text(text.replace('(16,16)', '(16,16,1)'))
    with pytest.raises(iob.LmdbFormatError, match='does not belong to this database'):
        iob.open_lmdb(db)
    (db / 'meta_info.txt').write_text('garbage line\n')
    with pytest.raises(iob.LmdbFormatError, match="meta_info.txt line 1: cannot parse 'garbage line'"):
        iob.open_lmdb(db)
    (db / 'meta_info.txt').unlink()
    with pytest.raises(iob.LmdbFormatError, match='meta_info.txt is missing'):
        iob.open_lmdb(db)


def test_database_of_another_format(tmp_path, synval):
    db = tmp_path / 'val.lmdb'
    cl.create_lmdb('synburst_val', synval, db, progress=False, compress_level=1)
    with pytest.raises(iob.LmdbFormatError, match=r"val\.lmdb: database of another format: layout 'synburst_val'"):
        sb.SyntheticBurstDataset(str(db), io_backend={'type': 'lmdb'})
    record = json.loads(bytes(lmdb.open(str(db), readonly=True, lock=False).begin().get(b'__format__')))
    for change, match in (({'format': 'mmagic'}, "another format \\('mmagic'"),
                          ({'version': 99}, 'version 99 is newer'), ({'complete': False}, 'incomplete build')):
        _poke(db, '__format__', json.dumps({**record, **change}).encode())
        with pytest.raises(iob.LmdbFormatError, match=match):
            sb.SyntheticBurstValDataset(str(db), io_backend={'type': 'lmdb'})
    _poke(db, '__format__', json.dumps(record).encode())
    # a corrupt PNG value of a compressed database
    _poke(db, 'gt/0000/im_rgb', b'\x89PNG\r\n\x1a\n' + b'\0' * 40)
    ds = sb.SyntheticBurstValDataset(str(db), io_backend={'type': 'lmdb', 'check_crc': False})
    with pytest.raises(iob.CorruptValueError, match=r"\[key 'gt/0000/im_rgb'\]: corrupt value: 48 bytes"):
        ds[0]
    # not an LMDB, and an LMDB of no known format
    with pytest.raises(FileNotFoundError, match='not an LMDB folder'):
        sb.SyntheticBurstValDataset(str(synval), io_backend={'type': 'lmdb'})
    bare = tmp_path / 'bare.lmdb'
    _raw_lmdb(bare, {'k': b'v'})
    with pytest.raises(iob.LmdbFormatError, match='bare.lmdb: database of unknown format'):
        iob.open_lmdb(bare)


def test_io_backend_options_and_pickling(tmp_path):
    assert iob.check_io_backend(None) == {'type': 'disk'}
    for bad, match in (({'type': 'ceph'}, 'io_backend.type'), ({'type': 'lmdb', 'max_reader': 4}, 'max_reader'),
                       ({'type': 'lmdb', 'max_readers': '4'}, 'expected int'), ({'max_readers': 4}, 'only apply'),
                       ({'type': 'lmdb', 'max_readers': 0}, '>= 1')):
        with pytest.raises(ValueError, match=match):
            iob.check_io_backend(bad)
    src = _images_dir(tmp_path / 'imgs')
    cl.create_lmdb('images', src, tmp_path / 'imgs.lmdb', progress=False)
    backend = iob.open_backend({'type': 'lmdb'}, src)  # imgs.lmdb beside imgs/
    first = backend.get('a/0001')
    clone = pickle.loads(pickle.dumps(backend))  # no environment travels with it
    assert clone._env is None and np.array_equal(clone.get('a/0001'), first)
    clone.close()
    backend.close()
    disk = iob.open_backend({'type': 'disk'}, src)
    assert disk.keys() == iob.open_lmdb(tmp_path / 'imgs.lmdb').keys()
    assert np.array_equal(disk.get('c/deep'), cv2.imread(str(src / 'c/deep.png'), cv2.IMREAD_UNCHANGED))
    assert iob.to_bgr_uint8(disk.get('c/deep')).dtype == np.uint8
    assert zlib.crc32(b'') == 0  # meta lines of empty values stay parseable
    assert iob.parse_meta_line(iob.format_meta_line(iob.ValueInfo('a b.pkl', (0,), None, 'bytes', 0))).name == 'a b.pkl'


# ---------------------------------------------------------------------------------------------------- runner
def test_option_file_switches_to_lmdb_and_trains(tmp_path, sample_data, synval):
    """``io_backend: {type: lmdb}`` in the option file and nothing else: a 2-iteration run with 2 loader workers
    and validation, both from LMDBs; option errors name the file and key."""
    from codes.train import train_pipeline
    from codes.utils.options import OptionError, validate_options
    from tests.test_runner.tiny import tiny_options, write_options
    zurich = tmp_path / 'zurich'
    shutil.copytree(sample_data / 'zurich', zurich)
    cl.create_lmdb('images', zurich, tmp_path / 'zurich.lmdb', progress=False)
    cl.create_lmdb('synburst_val', synval, tmp_path / 'val.lmdb', progress=False)
    shutil.rmtree(zurich)  # dataroot stays 'zurich'; the run must read zurich.lmdb beside it
    opt = tiny_options(tmp_path, sample_data, name='lmdb', total_iter=2)
    opt['datasets']['train'].update(dataroot=str(zurich), num_worker_per_gpu=2,
                                    io_backend={'type': 'lmdb'})
    opt['datasets']['val'].update(dataroot=str(tmp_path / 'val.lmdb'), io_backend={'type': 'lmdb'})
    opt['val'].update(val_freq=2, save_img=False)
    bad = json.loads(json.dumps(opt))
    bad['datasets']['val']['io_backend']['max_reader'] = 4
    with pytest.raises(OptionError, match=r"x\.yml: option 'datasets\.val\.io_backend': io_backend\.max_reader"):
        validate_options(bad, 'x.yml')
    root = Path(__file__).resolve().parents[2]
    train_pipeline(root, ['-opt', str(write_options(tmp_path / 'lmdb.yml', opt))])
    metrics = [json.loads(line) for line in (tmp_path / 'experiments' / 'lmdb' / 'metrics.jsonl').read_text()
               .splitlines()]
    assert metrics[-1]['num_samples'] == 2 and np.isfinite(metrics[-1]['psnr'])


def test_burstsr_dataset_from_lmdb_matches_disk(tmp_path):
    """BurstSRDataset (exifread pickles through the restricted unpickler) gives the same items from an LMDB."""
    from codes.data.burstsr_dataset import BurstSRDataset
    from codes.scripts.make_burstsr_sample import make_burstsr_sample
    src = tmp_path / 'bsr'
    make_burstsr_sample(src, num_train=2, num_val=1, crop_size=16, log=lambda _: None)
    cl.create_lmdb('burstsr', src, tmp_path / 'bsr.lmdb', progress=False, compress_level=1)
    cl.create_lmdb('burstsr', src / 'val', tmp_path / 'val.lmdb', progress=False)
    kw = dict(crop_size=12, seed=4, random_flip=True, burst_size=5)
    for split, db in (('train', 'bsr.lmdb'), ('val', 'bsr.lmdb'), ('val', 'val.lmdb')):
        disk = BurstSRDataset(str(src), split=split, **kw)
        fast = BurstSRDataset(str(tmp_path / db), split=split, io_backend={'type': 'lmdb'}, **kw)
        assert fast.names == disk.names and '0004_0006' not in fast.names
        for i in range(len(disk)):
            a, b = disk[i], fast[i]
            assert a['key'] == b['key'] and torch.equal(a['lq'], b['lq']) and torch.equal(a['gt'], b['gt'])
            assert a['meta_info']['exposure_scale'] == b['meta_info']['exposure_scale']
    shutil.rmtree(src / 'val')
    cl.create_lmdb('burstsr', src, tmp_path / 'train.lmdb', progress=False)
    with pytest.raises(FileNotFoundError, match=r"train\.lmdb holds the split\(s\) \['train'\], not 'val'"):
        BurstSRDataset(str(tmp_path / 'train.lmdb'), split='val', io_backend={'type': 'lmdb'})
    with pytest.raises(iob.LmdbFormatError, match="layout 'burstsr', this dataset reads 'synburst_val'"):
        sb.SyntheticBurstValDataset(str(tmp_path / 'train.lmdb'), io_backend={'type': 'lmdb'})


def test_truncated_data_mdb_is_refused_before_any_read(tmp_path):
    """A data.mdb shorter than its meta page says is an error naming the database, not a SIGBUS on first read."""
    db = tmp_path / 'imgs.lmdb'
    _build('images', _images_dir(tmp_path / 'src'), db)
    env = lmdb.open(str(db), readonly=True, lock=False)
    need = (env.info()['last_pgno'] + 1) * env.stat()['psize']
    psize = env.stat()['psize']
    env.close()
    assert os.path.getsize(db / 'data.mdb') >= need
    iob.open_lmdb(db).close()  # whole: opens
    os.truncate(db / 'data.mdb', need - psize)
    with pytest.raises(iob.LmdbFormatError, match=r'imgs\.lmdb: data\.mdb is truncated: .* bytes, but the database '
                       r'holds .* pages'):
        iob.open_lmdb(db)
    with pytest.raises(iob.LmdbFormatError, match='truncated'):
        iob.open_backend({'type': 'lmdb'}, db)


def test_every_reader_open_backend_returns_is_a_backend(tmp_path):
    import typing
    assert typing.get_type_hints(iob.open_backend)['return'] is iob.Backend
    src = _images_dir(tmp_path / 'imgs')
    cl.create_lmdb('images', src, tmp_path / 'imgs.lmdb', progress=False)
    basicsr = tmp_path / 'basicsr.lmdb'
    _raw_lmdb(basicsr, {'0001': cv2.imencode('.png', _photo(4, 4))[1].tobytes()})
    (basicsr / 'meta_info.txt').write_text('0001.png (4,4,3) 1\n')
    dcls = tmp_path / 'dcls.lmdb'
    _raw_lmdb(dcls, {'x': _photo(4, 4).tobytes()})
    with open(dcls / 'meta_info.pkl', 'wb') as f:
        pickle.dump({'name': 'x', 'keys': ['x'], 'resolution': ['3_4_4']}, f)
    readers = [iob.open_backend({'type': 'disk'}, src), iob.open_backend({'type': 'lmdb'}, src),
               iob.open_backend({'type': 'lmdb'}, basicsr), iob.open_backend({'type': 'lmdb'}, dcls)]
    assert [type(r) for r in readers] == [iob.DiskBackend, iob.LmdbBackend, iob.BasicSRLmdbBackend,
                                          iob.DclsLmdbBackend]
    for reader in readers:
        assert isinstance(reader, iob.Backend), type(reader).__name__
        key = reader.keys()[0]
        assert reader.get_many([key])[0].shape == reader.get(key).shape and reader.describe(key)
        reader.close()

    class NoGetMany:  # missing one method of the interface
        kind, path = 'disk', '.'

        def keys(self, prefix=''):
            return []

        def name(self, key):
            return key

        def describe(self, key):
            return key

        def get(self, key):
            return b''

        def close(self):
            pass
    assert not isinstance(NoGetMany(), iob.Backend)
