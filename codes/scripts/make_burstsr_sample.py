"""Write a small BurstSR-format data set (same folders, PNGs and pickles) with synthetic content.

``python -m codes.scripts.make_burstsr_sample [--out datasets/burstsr_sample] [--num-train 6] [--num-val 3]
[--crop-size 80] [--seed 0] [--overwrite]`` makes ``OUT/{train,val}/{SSSS_CCCC}/`` crops in the layout of the
pre-processed BurstSR set (Bhat et al. CVPR 2021, ``goutamgmb/deep-burst-sr``), readable by ``BurstSRDataset``:

* ``samsung_{00..13}/im_raw.png``: 4-channel uint16 packed RGGB, ``crop-size``² (80 in the real set), 10-bit
  counts = round(900·x + black_level), x a synthetic RAW burst (Brooks et al. pipeline: random CCM and gains,
  inverse ISP, frames shifted by up to ±2 packed px and ±0.5°, shot/read noise) of a scikit-image photograph;
* ``samsung_XX/meta_info.pkl``: ``black_level`` (4), ``cam_wb``, ``daylight_wb``, ``color_matrix``,
  ``exif_data`` (``Image ExposureTime``, ``Image FNumber``, ``Image ISOSpeedRatings``, ``Image Tag 0xC761``),
  ``crop_info``, ``im_preview``;
* ``canon/im_raw.png``: 3-channel uint16 RGB at 8× the packed size, 14-bit counts of the linear ground truth
  *as another camera sees it*: shifted by a random sub-pixel offset (up to ±1.5 px), mixed by a random 3×3 colour
  matrix near identity and exposed differently, so that only the aligned metrics compare it fairly;
* ``canon/meta_info.pkl``: ``black_level`` (4), ``cam_wb``, ``daylight_wb``, ``rgb_xyz_matrix``, ``exif_data``
  (``EXIF ExposureTime``, ``EXIF FNumber``, ``EXIF ISOSpeedRatings``), ``crop_info``.

The EXIF tags are pickled as the real files are, as ``exifread.classes.IfdTag`` objects with
``exifread.utils.Ratio`` rationals (exifread 2.x names), using the stand-ins of ``codes.utils.safe_pickle``, so the
restricted unpickler is exercised exactly as on the real data. The training split also gets the known bad crop
``0004_0006`` (flat GT), which the dataset must skip. Everything is seeded; a complete output (marker
``burstsr_sample.json`` plus every file it implies) is left alone unless ``--overwrite``.
"""
from __future__ import annotations

import argparse
import logging
import os
import pickle
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from codes.scripts.make_sample_data import install_sample, read_marker

__all__ = ['make_burstsr_sample', 'ensure_burstsr_sample', 'is_complete', 'dump_exif_pickle', 'main']

logger = logging.getLogger(__name__)

MARKER = 'burstsr_sample.json'
FORMAT_VERSION = 1
NUM_FRAMES = 14
BAD_CROP = '0004_0006'
SAMSUNG_WHITE = 900.0  #: counts of a linear value of 1 above the black level (10-bit sensor)
PHOTOS = ('astronaut', 'coffee', 'chelsea', 'rocket', 'motorcycle_left', 'immunohistochemistry', 'hubble_deep_field',
          'retina')
_GLOBAL_NAMES = {'IfdTag': ('exifread.classes', 'IfdTag'), 'Ratio': ('exifread.utils', 'Ratio')}


class _ExifPickler(pickle._Pickler):
    """Pure-Python pickler that writes the exifread stand-ins under the exifread 2.x names."""

    def save_global(self, obj: Any, name: str | None = None) -> None:
        from codes.utils import safe_pickle
        target = None
        if obj is safe_pickle.IfdTag or obj is safe_pickle.Ratio:
            target = _GLOBAL_NAMES[obj.__name__]
        if target is None:
            super().save_global(obj, name)
            return
        module, qualname = target
        self.write(pickle.GLOBAL + f'{module}\n{qualname}\n'.encode('ascii'))
        self.memoize(obj)


def dump_exif_pickle(obj: Any, path: str | os.PathLike) -> None:
    """Pickle ``obj`` (protocol 3, as Python 3.6/3.7 wrote BurstSR's files) with exifread 2.x class names."""
    with open(path, 'wb') as f:
        _ExifPickler(f, protocol=3).dump(obj)


def _tag(printable: str, tag: int, field_type: int, values: Any) -> Any:
    from codes.utils.safe_pickle import IfdTag
    return IfdTag(printable=printable, tag=tag, field_type=field_type, values=values, field_offset=0,
                  field_length=len(values) if isinstance(values, list) else 1)


def _ratio_tag(value: str, tag: int) -> Any:
    from codes.utils.safe_pickle import Ratio
    return _tag(value, tag, 5, [Ratio(value)])


def _load_photo(name: str) -> Any:
    from codes.scripts.make_sample_data import _load_photo as load
    return load(name)


def _camera_settings(rng: random.Random) -> dict[str, Any]:
    """EXIF settings of one crop: Samsung (t, f, ISO) and Canon (t, f, ISO) as rational strings / ints."""
    samsung = (rng.choice(['1/30', '1/50', '1/60', '1/100']), rng.choice(['17/10']), rng.choice([50, 80, 100, 200]))
    canon = (rng.choice(['1/30', '1/60', '1/125', '1/250']), rng.choice(['4/1', '28/5', '8/1']),
             rng.choice([100, 200, 400]))
    return {'samsung': samsung, 'canon': canon}


def _scale(settings: dict[str, Any]) -> float:
    from fractions import Fraction
    (ts, fs, iso_s), (tc, fc, iso_c) = settings['samsung'], settings['canon']
    light_s = float(Fraction(ts)) * iso_s / float(Fraction(fs)) ** 2
    light_c = float(Fraction(tc)) * iso_c / float(Fraction(fc)) ** 2
    return light_s / light_c


def _write_png16(path: Path, array: Any) -> None:
    import cv2
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), array):
        raise OSError(f'cannot write {path}')


def _write_crop(folder: Path, photo: Any, crop_size: int, rng: random.Random, flat: bool = False) -> None:
    """One crop: 14 Samsung frames + meta and the misaligned, colour-changed, re-exposed Canon image + meta."""
    import torch

    from codes.data.burst_synthesis import random_crop, rgb_to_raw_burst
    border = 24
    hr = 8 * crop_size
    generator = torch.Generator().manual_seed(rng.getrandbits(62))
    crop = random_crop(photo, hr + 2 * border, rng)
    sample = rgb_to_raw_burst(crop, NUM_FRAMES, rng, generator, downsample_factor=4, max_translation=16.0,
                              max_rotation=0.5, border_crop=border, warp_backend='opencv')
    settings = _camera_settings(rng)
    cam_wb = [round(rng.uniform(1.6, 2.2), 4), 1.0, round(rng.uniform(1.3, 1.9), 4)]
    _write_samsung_frames(folder, sample.burst, settings, cam_wb, crop_size)
    _write_canon(folder, sample.gt, settings, hr, rng, flat)


def _write_samsung_frames(folder: Path, burst: Any, settings: dict[str, Any], cam_wb: list[float],
                          crop_size: int) -> None:
    """``samsung_XX/im_raw.png`` (10-bit counts above a per-channel black level) and ``meta_info.pkl`` for each
    frame of ``burst`` (N, 4, h, w) linear RGGB."""
    import numpy as np

    black_s = np.array([62, 63, 65, 66], dtype=np.float64)
    daylight_wb = [2.0, 1.0, 1.55]
    color_matrix = np.array([[1.65, -0.55, -0.1], [-0.2, 1.45, -0.25], [0.02, -0.6, 1.58]], dtype=np.float32)
    ts, fs, iso_s = settings['samsung']
    for i, frame in enumerate(burst):
        counts = np.clip(np.round(frame.permute(1, 2, 0).numpy() * SAMSUNG_WHITE + black_s), 0, 1023)
        frame_dir = folder / f'samsung_{i:02d}'
        _write_png16(frame_dir / 'im_raw.png', counts.astype(np.uint16))
        preview = (np.clip(frame[[0, 1, 3]].permute(1, 2, 0).numpy(), 0, 1) ** (1 / 2.2) * 255).astype(np.uint8)
        meta = {
            'black_level': [int(v) for v in black_s], 'cam_wb': list(cam_wb), 'daylight_wb': list(daylight_wb),
            'color_matrix': color_matrix,
            'exif_data': {
                'Image ExposureTime': _ratio_tag(ts, 0x829A), 'Image FNumber': _ratio_tag(fs, 0x829D),
                'Image ISOSpeedRatings': _tag(str(iso_s), 0x8827, 3, [iso_s]),
                'Image Tag 0xC761': _tag('[1.2e-05, 2.1e-07, ...]', 0xC761, 12, [1.2e-05, 2.1e-07] * 3),
                'Image Make': _tag('samsung', 0x010F, 2, 'samsung'),
            },
            'crop_info': {'frame': i, 'size': crop_size},
            'im_preview': preview,
        }
        dump_exif_pickle(meta, frame_dir / 'meta_info.pkl')


def _write_canon(folder: Path, gt: Any, settings: dict[str, Any], hr: int, rng: random.Random, flat: bool) -> None:
    """``canon/im_raw.png`` and ``meta_info.pkl``: the scene ``gt`` (3, hr, hr) linear RGB through another camera
    (sub-pixel shift, 3x3 colour mix, other exposure; one flat grey if ``flat``)."""
    import cv2
    import numpy as np

    gt = gt.permute(1, 2, 0).numpy() * (SAMSUNG_WHITE / 1023.0)
    dx, dy = rng.uniform(-1.5, 1.5), rng.uniform(-1.5, 1.5)
    shifted = cv2.warpAffine(gt.astype(np.float32), np.float32([[1, 0, dx], [0, 1, dy]]), (hr, hr),
                             flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    mix = np.eye(3) * np.array([rng.uniform(0.85, 1.15) for _ in range(3)]) + \
        np.array([[rng.uniform(-0.06, 0.06) for _ in range(3)] for _ in range(3)]) * (1 - np.eye(3))
    seen = shifted.reshape(-1, 3) @ mix.T
    if flat:
        seen = np.full_like(seen, float(seen.mean()))
    black_c = np.array([2047, 2048, 2050, 2049], dtype=np.float64)
    scale = _scale(settings)
    counts = np.clip(np.round(seen / scale * 16383.0 + black_c[[0, 1, 3]]), 0, 16383).reshape(hr, hr, 3)
    _write_png16(folder / 'canon' / 'im_raw.png', counts.astype(np.uint16))
    tc, fc, iso_c = settings['canon']
    meta = {
        'black_level': [int(v) for v in black_c], 'cam_wb': [round(rng.uniform(1.8, 2.4), 4), 1.0, 1.5],
        'daylight_wb': [2.1, 1.0, 1.45],
        'rgb_xyz_matrix': np.array([[0.65, -0.1, -0.06], [-0.45, 1.25, 0.2], [-0.08, 0.18, 0.6], [0, 0, 0]],
                                   dtype=np.float32),
        'exif_data': {
            'EXIF ExposureTime': _ratio_tag(tc, 0x829A), 'EXIF FNumber': _ratio_tag(fc, 0x829D),
            'EXIF ISOSpeedRatings': _tag(str(iso_c), 0x8827, 3, [iso_c]),
            'Image Make': _tag('Canon', 0x010F, 2, 'Canon'),
        },
        'crop_info': {'shift': [round(dx, 4), round(dy, 4)], 'colour_mix': mix.round(4).tolist(), 'scale': scale},
    }
    dump_exif_pickle(meta, folder / 'canon' / 'meta_info.pkl')


def _names(num: int, first_scene: int) -> list[str]:
    return [f'{first_scene + i // 3:04d}_{i % 3:04d}' for i in range(num)]


def _expected_files(marker: dict) -> list[str]:
    files = []
    for split in ('train', 'val'):
        for name in marker.get(split, []):
            for i in range(NUM_FRAMES):
                files += [f'{split}/{name}/samsung_{i:02d}/im_raw.png', f'{split}/{name}/samsung_{i:02d}/meta_info.pkl']
            files += [f'{split}/{name}/canon/im_raw.png', f'{split}/{name}/canon/meta_info.pkl']
    return files


def _read_marker(out: Path) -> dict | None:
    return read_marker(out / MARKER, FORMAT_VERSION)


def is_complete(out: str | os.PathLike) -> bool:
    """Whether ``out`` holds a finished sample (its marker and every file the marker lists)."""
    out = Path(out)
    marker = _read_marker(out)
    return marker is not None and all((out / f).is_file() for f in _expected_files(marker))


def make_burstsr_sample(out: str | os.PathLike = 'datasets/burstsr_sample', num_train: int = 6, num_val: int = 3,
                        crop_size: int = 80, seed: int = 0, overwrite: bool = False,
                        log: Callable[[str], None] = print) -> bool:
    """Write the sample into ``out`` unless it is complete; returns whether anything was written.

    Args:
        num_train, num_val: crops per split (the training split also gets the bad crop ``0004_0006``).
        crop_size: packed size of the Samsung frames (80 in the real set; smaller is faster for tests).
    """
    if num_train < 0 or num_val < 0:
        raise ValueError(f'num_train and num_val must be >= 0, got {num_train} and {num_val}')
    if crop_size < 4:
        raise ValueError(f'crop_size must be >= 4, got {crop_size}')
    out = Path(out)
    if not overwrite and is_complete(out):
        log(f'{out}: BurstSR sample already complete; nothing to do (--overwrite to redo)')
        return False
    import torch
    start = time.perf_counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f'.{out.name}.tmp-', dir=out.parent))
    try:
        photos: dict[str, Any] = {}
        splits = {'train': _names(num_train, 0) + ([BAD_CROP] if num_train else []),
                  'val': _names(num_val, 200)}
        for s, (split, names) in enumerate(splits.items()):
            for j, name in enumerate(names):
                rng = random.Random(f'burstsr-sample/{seed}/{split}/{name}')
                photo_name = PHOTOS[(j + 3 * s) % len(PHOTOS)]
                if photo_name not in photos:
                    photos[photo_name] = torch.from_numpy(_load_photo(photo_name)).permute(2, 0, 1)
                _write_crop(tmp / split / name, photos[photo_name], crop_size, rng, flat=name == BAD_CROP)
        marker = {'version': FORMAT_VERSION, 'seed': seed, 'crop_size': crop_size, **splits}
        install_sample(tmp, out, tuple(splits), MARKER, marker)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log(f'{out}: wrote {num_train} (+1 bad) training and {num_val} validation BurstSR-format crops '
        f'({NUM_FRAMES} x 4 x {crop_size} x {crop_size} packed, GT {8 * crop_size}x{8 * crop_size}), seed {seed}, '
        f'in {time.perf_counter() - start:.1f} s')
    return True


def ensure_burstsr_sample(out: str, num_train: int = 6, num_val: int = 3, crop_size: int = 80, seed: int = 0) -> None:
    """Generate the sample into ``out`` on first use (a complete one is kept)."""
    make_burstsr_sample(out, num_train=num_train, num_val=num_val, crop_size=crop_size, seed=seed, log=logger.info)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--out', default='datasets/burstsr_sample', help='output folder')
    parser.add_argument('--num-train', type=int, default=6, help='training crops (default 6, plus the bad one)')
    parser.add_argument('--num-val', type=int, default=3, help='validation crops (default 3)')
    parser.add_argument('--crop-size', type=int, default=80, help='packed crop size (default 80, as the real set)')
    parser.add_argument('--seed', type=int, default=0, help='random seed (default 0)')
    parser.add_argument('--overwrite', action='store_true', help='regenerate even if the output is complete')
    args = parser.parse_args(argv)
    make_burstsr_sample(args.out, args.num_train, args.num_val, args.crop_size, args.seed, args.overwrite)
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
