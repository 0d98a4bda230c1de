"""Blind-SR datasets: HR crops with kernels, pairing by key (DIV2KRK names, Gaussian8), the legacy DCLS LMDB,
aligned training crops, loud errors; the Gaussian8 builder."""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import cv2
import lmdb
import numpy as np
import pytest
import torch

from codes.data import build_dataset
from codes.data.blind_sr_dataset import BlindSRHRDataset, PairedBlindSRDataset
from codes.data.degradations import GAUSSIAN8_SIGMAS, blur, imresize, isotropic_gaussian_kernel
from codes.scripts.make_gaussian8 import make_gaussian8


def _photo(seed: int, h: int, w: int) -> np.ndarray:
    from skimage import data
    img = data.astronaut()
    r = np.random.default_rng(seed)
    y, x = int(r.integers(0, 512 - h)), int(r.integers(0, 512 - w))
    return np.ascontiguousarray(img[y:y + h, x:x + w])  # RGB uint8


def _write(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def _rgb_tensor(rgb: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(rgb.transpose(2, 0, 1).copy()).float() / 255


def test_hr_dataset_crops_kernels_and_seeding(tmp_path: Path) -> None:
    for i in range(3):
        _write(tmp_path / 'HR' / f'im{i}.png', _photo(i, 40, 50))
    ds = build_dataset({'type': 'BlindSRHRDataset', 'dataroot_gt': str(tmp_path / 'HR'), 'scale': 4, 'gt_size': 32,
                        'kernel_size': 11, 'sig_min': 0.6, 'sig_max': 5.0, 'rate_iso': 0.0, 'random_disturb': True,
                        'noise': True, 'noise_high': 0.05, 'noise_random_level': True, 'seed': 7,
                        'dataset_enlarge_ratio': 2}, 'datasets.train')
    assert len(ds) == 6
    s = ds[4]
    assert s['gt'].shape == (3, 32, 32) and s['kernel'].shape == (11, 11) and s['key'] == 'im1'
    assert float(s['kernel'].sum()) == pytest.approx(1.0, abs=1e-5)
    assert 0 <= float(s['noise_std']) <= 0.05
    again = ds[4]
    assert torch.equal(s['gt'], again['gt']) and torch.equal(s['kernel'], again['kernel'])
    assert not torch.equal(ds[1]['kernel'], s['kernel'])
    # without augmentation the crop is a window of the image
    plain = BlindSRHRDataset(str(tmp_path / 'HR'), scale=4, gt_size=32, use_hflip=False, use_rot=False, seed=1)
    crop, full = plain[1]['gt'], _rgb_tensor(_photo(1, 40, 50))
    assert any(torch.equal(full[:, y:y + 32, x:x + 32], crop) for y in range(9) for x in range(19))
    with pytest.raises(ValueError, match='multiple of scale'):
        BlindSRHRDataset(str(tmp_path / 'HR'), scale=3, gt_size=32)
    small = BlindSRHRDataset(str(tmp_path / 'HR'), scale=4, gt_size=48)
    with pytest.raises(ValueError, match='smaller than gt_size'):
        small[0]


def test_paired_by_name_not_position_div2krk(tmp_path: Path) -> None:
    """DIV2KRK names differ between GT and LR; sorted positions disagree (img_10_gt < img_1_gt, im_1 < im_10)."""
    sizes = {1: (24, 28), 2: (20, 24), 10: (28, 20)}
    for n, (h, w) in sizes.items():
        hr = _photo(n, 2 * h, 2 * w)
        _write(tmp_path / 'gt' / f'img_{n}_gt.png', hr)
        _write(tmp_path / 'lr_x2' / f'im_{n}.png', hr[::2, ::2])
    ds = PairedBlindSRDataset(str(tmp_path / 'gt'), str(tmp_path / 'lr_x2'), scale=2,
                              gt_key_regex=r'img_(\d+)_gt', lq_key_regex=r'im_(\d+)')
    assert [p[2] for p in ds.pairs] == ['im_1', 'im_2', 'im_10']
    for i, n in enumerate((1, 2, 10)):
        s = ds[i]
        assert s['gt_key'] == f'img_{n}_gt' and s['lq'].shape[1:] == sizes[n]
        assert torch.equal(s['lq'], s['gt'][:, ::2, ::2])
    # without the regexes the names do not pair, and the error lists them
    with pytest.raises(ValueError, match="LQ without GT.*im_1.*GT without LQ.*img_1_gt"):
        PairedBlindSRDataset(str(tmp_path / 'gt'), str(tmp_path / 'lr_x2'), scale=2)
    (tmp_path / 'lr_x2' / 'im_2.png').unlink()
    with pytest.raises(ValueError, match="GT without LQ \\['2'\\]"):
        PairedBlindSRDataset(str(tmp_path / 'gt'), str(tmp_path / 'lr_x2'), scale=2,
                             gt_key_regex=r'img_(\d+)_gt', lq_key_regex=r'im_(\d+)')


def test_paired_size_mismatch_and_training_crops(tmp_path: Path) -> None:
    lr = _photo(0, 16, 20)
    _write(tmp_path / 'lq' / 'a.png', lr)
    _write(tmp_path / 'gt' / 'a.png', np.kron(lr, np.ones((3, 3, 1), np.uint8)))  # exact pixel repetition
    _write(tmp_path / 'lq' / 'b.png', lr)
    _write(tmp_path / 'gt' / 'b.png', _photo(1, 40, 40))
    ds = PairedBlindSRDataset(str(tmp_path / 'gt'), str(tmp_path / 'lq'), scale=3, phase='train', gt_size=24,
                              seed=0)
    for _ in range(3):
        s = ds[0]
        assert s['lq'].shape == (3, 8, 8) and s['gt'].shape == (3, 24, 24)
        assert torch.equal(s['gt'][:, ::3, ::3], s['lq']) and torch.equal(s['gt'][:, 1::3, 2::3], s['lq'])
    with pytest.raises(ValueError, match=r'b\.png is 39x39 but .*b\.png is 16x20: not x3'):
        ds[1]


def _write_legacy_dcls_lmdb(path: Path, images: dict[str, np.ndarray]) -> None:
    """The MMSR/DCLS layout: raw BGR uint8 HWC bytes under ASCII keys, and meta_info.pkl."""
    env = lmdb.open(str(path), map_size=1 << 24)
    with env.begin(write=True) as txn:
        for key, rgb in images.items():
            txn.put(key.encode('ascii'), np.ascontiguousarray(rgb[..., ::-1]).tobytes())
    env.close()
    res = sorted({f'3_{a.shape[0]}_{a.shape[1]}' for a in images.values()})
    meta = {'name': path.stem, 'keys': sorted(images),
            'resolution': res if len(res) == 1 else [f'3_{a.shape[0]}_{a.shape[1]}' for _, a in sorted(images.items())]}
    with open(path / 'meta_info.pkl', 'wb') as f:
        pickle.dump(meta, f)


def test_legacy_dcls_lmdb_pair(tmp_path: Path) -> None:
    hr = {f'sig{s}_img{i}': _photo(i, 24, 24) for i in range(2) for s in ('1.8', '3.2')}
    lr = {k: v[::4, ::4] for k, v in hr.items()}
    _write_legacy_dcls_lmdb(tmp_path / 'x4HRblur.lmdb', hr)
    _write_legacy_dcls_lmdb(tmp_path / 'x4LRblur.lmdb', lr)
    ds = build_dataset({'type': 'PairedBlindSRDataset', 'dataroot_gt': str(tmp_path / 'x4HRblur.lmdb'),
                        'dataroot_lq': str(tmp_path / 'x4LRblur.lmdb'), 'scale': 4, 'io_backend': {'type': 'lmdb'}},
                       'datasets.val')
    assert len(ds) == 4
    s = ds[1]
    assert s['key'] == 'sig1.8_img1'
    assert torch.equal(s['gt'], _rgb_tensor(hr['sig1.8_img1']))
    assert torch.equal(s['lq'], _rgb_tensor(lr['sig1.8_img1']))


def test_make_gaussian8(tmp_path: Path) -> None:
    _write(tmp_path / 'HR' / 'baby.png', _photo(0, 50, 45))  # modcropped to 48x44
    _write(tmp_path / 'HR' / 'bird.png', _photo(1, 40, 40))
    rec = make_gaussian8(tmp_path / 'HR', 4, tmp_path / 'G8')
    out = tmp_path / 'G8'
    assert [s['sigma'] for s in rec['sigmas']] == list(GAUSSIAN8_SIGMAS[4])
    assert [s['tag'] for s in rec['sigmas']][:3] == ['sig1.80', 'sig2.00', 'sig2.20']
    assert json.loads((out / 'gaussian8.json').read_text())['scale'] == 4
    assert len(list((out / 'LRblur').glob('*.png'))) == 16 and len(list((out / 'HR').glob('*.png'))) == 2
    hr = cv2.imread(str(out / 'HR' / 'baby.png'))
    assert hr.shape == (48, 44, 3)
    lr = cv2.imread(str(out / 'LRblur' / 'sig2.40_baby.png'))
    t = torch.from_numpy(hr[..., ::-1].transpose(2, 0, 1).copy()).float()[None] / 255
    ref = imresize(blur(t, torch.from_numpy(isotropic_gaussian_kernel(21, GAUSSIAN8_SIGMAS[4][3]))), 0.25)[0]
    ref = np.round(ref.clamp(0, 1).mul(255).permute(1, 2, 0).numpy()).astype(np.uint8)[..., ::-1]
    assert np.array_equal(lr, ref)
    ds = PairedBlindSRDataset(str(out / 'HR'), str(out / 'LRblur'), scale=4, lq_key_regex=rec['lq_key_regex'])
    assert len(ds) == 16 and ds[0]['gt'].shape == (3, 48, 44) and ds[0]['lq'].shape == (3, 12, 11)
    with pytest.raises(FileExistsError):
        make_gaussian8(tmp_path / 'HR', 4, out)


def test_blind_sr_sample_set(tmp_path: Path) -> None:
    from codes.scripts.make_blind_sr_sample import make_blind_sr_sample
    out = tmp_path / 'sample_blind'
    rec = make_blind_sr_sample(out, scales=(2,))
    assert rec['train'] == 48 and len(list((out / 'train' / 'HR').glob('*.png'))) == 48
    marker = (out / 'blind_sr_sample.json').stat().st_mtime_ns
    assert make_blind_sr_sample(out, scales=(2,)) == rec and (out / 'blind_sr_sample.json').stat().st_mtime_ns == marker
    ds = PairedBlindSRDataset(str(out / 'val' / 'x2' / 'HR'), str(out / 'val' / 'x2' / 'LRblur'), scale=2,
                              lq_key_regex='sig[0-9.]+_(.+)')
    assert len(ds) == 32 and ds[0]['gt'].shape == (3, 128, 128)
    hr = BlindSRHRDataset(str(out / 'train' / 'HR'), scale=2, gt_size=64, sig_max=2.0)
    assert hr[0]['gt'].shape == (3, 64, 64)


def test_paired_lmdb_of_our_format(tmp_path: Path) -> None:
    """One ``create_lmdb --format paired`` database (keys gt/<k>, lq/<k>) read with ``dataroot_lq: ~``."""
    from codes.scripts.create_lmdb import create_lmdb
    for i in range(2):
        hr = _photo(i, 24, 32)
        _write(tmp_path / 'GT' / f'p{i}.png', hr)
        _write(tmp_path / 'LQ' / f'p{i}.png', hr[::2, ::2])
    create_lmdb('paired', tmp_path, tmp_path / 'pairs.lmdb', progress=False, log=lambda *_: None)
    ds = PairedBlindSRDataset(str(tmp_path / 'pairs.lmdb'), None, scale=2, io_backend={'type': 'lmdb'})
    assert [p[2] for p in ds.pairs] == ['p0', 'p1']
    s = ds[1]
    assert torch.equal(s['gt'], _rgb_tensor(_photo(1, 24, 32))) and torch.equal(s['lq'], s['gt'][:, ::2, ::2])
    folder = PairedBlindSRDataset(str(tmp_path), None, scale=2)  # the same folder pair on disk
    assert [p[2] for p in folder.pairs] == ['p0', 'p1'] and torch.equal(folder[1]['lq'], s['lq'])
    with pytest.raises(FileNotFoundError, match='must hold one of'):
        PairedBlindSRDataset(str(tmp_path / 'GT'), None, scale=2)
