"""Write a small offline blind-SR sample set from the photographs bundled with scikit-image.

``python -m codes.scripts.make_blind_sr_sample [--out datasets/sample_blind] [--scales 4] [--seed 0] [--overwrite]``

* ``OUT/train/HR/<photo>_<i>.png``: 48 random 192×192 crops of astronaut, coffee, rocket, hubble_deep_field,
  immunohistochemistry, retina (8 each), the HR training images of ``BlindSRHRDataset``;
* ``OUT/val/HR_source/``: 128×128 crops of *other* photographs (chelsea, the right stereo-motorcycle view,
  camera, brick) and, per scale s, ``OUT/val/x<s>/``: their Gaussian8 set (``codes.scripts.make_gaussian8``), read
  with ``PairedBlindSRDataset``.

No network is needed (``skimage.data`` loads the copies shipped in the wheel). Generation is seeded and
idempotent: a complete output (``blind_sr_sample.json``) is left alone unless ``--overwrite``.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Sequence

__all__ = ['ensure_blind_sr_sample', 'make_blind_sr_sample', 'main']

logger = logging.getLogger(__name__)

MARKER = 'blind_sr_sample.json'
VERSION = 1
TRAIN_PHOTOS = ('astronaut', 'coffee', 'rocket', 'hubble_deep_field', 'immunohistochemistry', 'retina')
TRAIN_CROPS, TRAIN_SIZE = 8, 192
VAL_PHOTOS = ('chelsea', 'motorcycle_right', 'camera', 'brick')
VAL_SIZE = 128


def _photo(name: str):
    import numpy as np
    from skimage import data
    if name == 'motorcycle_right':
        img = data.stereo_motorcycle()[1]
    else:
        img = getattr(data, name)()
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    return np.ascontiguousarray(img[..., :3])


def _write_rgb(path: Path, rgb) -> None:
    import cv2
    if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise OSError(f'could not write {path}')


def make_blind_sr_sample(out: str | os.PathLike = 'datasets/sample_blind', scales: Sequence[int] = (4,),
                         seed: int = 0, overwrite: bool = False) -> dict:
    """Generate the sample set (see the module docstring); returns the marker record."""
    import numpy as np

    from codes.scripts.make_gaussian8 import make_gaussian8
    out = Path(out)
    marker = out / MARKER
    if marker.is_file() and not overwrite:
        record = json.loads(marker.read_text())
        if record.get('version') == VERSION and set(record.get('scales', [])) >= set(scales):
            return record
    if out.exists():
        shutil.rmtree(out)
    rng = np.random.default_rng(seed)
    train = out / 'train' / 'HR'
    train.mkdir(parents=True)
    for name in TRAIN_PHOTOS:
        img = _photo(name)
        h, w = img.shape[:2]
        for i in range(TRAIN_CROPS):
            r, c = int(rng.integers(0, h - TRAIN_SIZE + 1)), int(rng.integers(0, w - TRAIN_SIZE + 1))
            _write_rgb(train / f'{name}_{i}.png', img[r:r + TRAIN_SIZE, c:c + TRAIN_SIZE])
    src = out / 'val' / 'HR_source'
    src.mkdir(parents=True)
    for name in VAL_PHOTOS:
        img = _photo(name)
        h, w = img.shape[:2]
        r, c = (h - VAL_SIZE) // 2, (w - VAL_SIZE) // 2
        _write_rgb(src / f'{name}.png', img[r:r + VAL_SIZE, c:c + VAL_SIZE])
    for s in scales:
        make_gaussian8(src, s, out / 'val' / f'x{s}')
    record = {'version': VERSION, 'seed': seed, 'scales': sorted(set(scales)),
              'train': len(TRAIN_PHOTOS) * TRAIN_CROPS, 'val_hr': len(VAL_PHOTOS)}
    marker.write_text(json.dumps(record, indent=2))
    logger.info('Wrote the blind-SR sample set to %s', out)
    return record


def ensure_blind_sr_sample(out: str | os.PathLike, scales: Sequence[int] = (2, 3, 4)) -> None:
    """Generate the sample set into ``out`` unless it is already complete (used by ``prepare_blind_sample_data``)."""
    make_blind_sr_sample(out, scales=scales)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--out', default='datasets/sample_blind')
    p.add_argument('--scales', type=int, nargs='+', default=[4], choices=[2, 3, 4])
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--overwrite', action='store_true')
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    make_blind_sr_sample(args.out, args.scales, args.seed, args.overwrite)


if __name__ == '__main__':
    main()
