"""Write a small offline sample of the burst-SR data sets from the photographs bundled with scikit-image.

``python -m codes.scripts.make_sample_data [--out datasets/sample] [--num-val 8] [--seed 0] [--overwrite]`` makes:

* ``OUT/zurich/train/canon/{i}.jpg``: 40 crops of 448×448 (JPEG quality 95, written by OpenCV in BGR as the
  Zurich RAW-to-RGB originals are) of astronaut, coffee, rocket, hubble_deep_field, retina, the left motorcycle view,
  immunohistochemistry, colorwheel and the RGB part of logo (the two graphics teach saturated colours and clipped
  whites); read it with ``SyntheticBurstDataset(dataroot='OUT/zurich')``.
* ``OUT/SyntheticBurstVal/{bursts,gt}/XXXX/``: ``--num-val`` bursts in the official SyntheticBurstVal format (14
  frames of 48×48 packed RGGB, 384×384 GT; uint16 PNGs × 2^14 written by OpenCV, ``meta_info.pkl`` a plain pickle
  of the meta dict with torch tensors plus ``frame_num``), synthesised from *other* photographs (chelsea, the right
  motorcycle view, camera and brick; the last two are grey, made RGB) with DBSR's pipeline. They are fed in
  RGB order, as DBSR's generator (which made the official set) loads images. Read it with ``SyntheticBurstValDataset``.

No network is needed: ``skimage.data.<name>()`` loads the copies shipped in the wheel. Generation is seeded and
idempotent: a complete output (``sample_data.json`` plus the files it lists) is left alone unless ``--overwrite``.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import pickle
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

if TYPE_CHECKING:  # the heavy imports happen only when something is generated
    import numpy as np
    import torch

    from codes.data.burst_synthesis import SyntheticBurst

__all__ = ['ensure_sample_data', 'make_sample_data', 'is_complete', 'read_marker', 'install_sample',
           'synthesize_val_burst', 'main']

logger = logging.getLogger(__name__)

MARKER = 'sample_data.json'
FORMAT_VERSION = 2
TRAIN_SIZE = 448
VAL_BURST_SIZE = 14
VAL_CROP = 384
VAL_BORDER = 24
#: (photo, number of 448² crops); 40 in all.
TRAIN_PHOTOS = (('astronaut', 6), ('coffee', 5), ('rocket', 5), ('hubble_deep_field', 4), ('retina', 4),
                ('motorcycle_left', 6), ('immunohistochemistry', 4), ('colorwheel', 3), ('logo', 3))
#: Natural photographs only: the demo's validation should measure what the sample training set can teach.
VAL_PHOTOS = ('chelsea', 'motorcycle_right', 'camera', 'brick')


def _load_photo(name: str) -> np.ndarray:
    """An RGB uint8 (H, W, 3) photograph from ``skimage.data`` (bundled, no download)."""
    import numpy as np
    from skimage import data
    if name in ('motorcycle_left', 'motorcycle_right'):
        left, right, _ = data.stereo_motorcycle()
        image = left if name == 'motorcycle_left' else right
    else:
        image = getattr(data, name)()
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    return np.ascontiguousarray(image[..., :3])  # logo is RGBA (fully opaque)


def _train_crops(image: np.ndarray, count: int, rng: np.random.Generator) -> list[np.ndarray]:
    """``count`` random TRAIN_SIZE² crops; images with a shorter side are first upscaled (bicubic) to fit."""
    import cv2
    h, w = image.shape[:2]
    if min(h, w) < TRAIN_SIZE:
        scale = TRAIN_SIZE / min(h, w)
        size = (max(TRAIN_SIZE, round(w * scale)), max(TRAIN_SIZE, round(h * scale)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_CUBIC)
        h, w = image.shape[:2]
    crops = []
    for _ in range(count):
        r = int(rng.integers(0, h - TRAIN_SIZE + 1))
        c = int(rng.integers(0, w - TRAIN_SIZE + 1))
        crops.append(image[r:r + TRAIN_SIZE, c:c + TRAIN_SIZE])
    return crops


def _write_train(root: Path, seed: int) -> int:
    import cv2
    import numpy as np
    canon = root / 'zurich' / 'train' / 'canon'
    canon.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    index = 0
    for name, count in TRAIN_PHOTOS:
        for crop in _train_crops(_load_photo(name), count, rng):
            bgr = cv2.cvtColor(crop, cv2.COLOR_RGB2BGR)
            if not cv2.imwrite(str(canon / f'{index}.jpg'), bgr, [cv2.IMWRITE_JPEG_QUALITY, 95]):
                raise OSError(f'cannot write {canon / f"{index}.jpg"}')
            index += 1
    return index


def _write_png16(path: Path, image: torch.Tensor) -> None:
    """(C, H, W) in [0, 1] -> uint16 (× 2^14, truncated) PNG written by OpenCV (BGR(A) swap on disk)."""
    import cv2
    import numpy as np
    array = (image.permute(1, 2, 0) * 2 ** 14).numpy().astype(np.uint16)
    if not cv2.imwrite(str(path), array):
        raise OSError(f'cannot write {path}')


def synthesize_val_burst(index: int, seed: int, photos: dict | None = None) -> 'SyntheticBurst':
    """The ``index``-th validation burst of the sample made with ``seed`` (deterministic).

    Args:
        photos: ``{name: (3, H, W) float in [0, 1] RGB}`` for ``VAL_PHOTOS`` (loaded when None).
    """
    import torch

    from codes.data.burst_synthesis import random_crop, rgb_to_raw_burst
    name = VAL_PHOTOS[index % len(VAL_PHOTOS)]
    if photos is None or name not in photos:
        image = torch.from_numpy(_load_photo(name)).permute(2, 0, 1)
    else:
        image = photos[name]
    rng = random.Random(f'sample-val/{seed}/{index}')
    generator = torch.Generator().manual_seed(rng.getrandbits(62))
    crop = random_crop(image, VAL_CROP + 2 * VAL_BORDER, rng)
    return rgb_to_raw_burst(crop, VAL_BURST_SIZE, rng, generator, border_crop=VAL_BORDER)


def _write_val(root: Path, num_val: int, seed: int) -> int:
    import torch
    base = root / 'SyntheticBurstVal'
    photos = {name: torch.from_numpy(_load_photo(name)).permute(2, 0, 1) for name in VAL_PHOTOS}
    for i in range(num_val):
        sample = synthesize_val_burst(i, seed, photos)
        key = f'{i:04d}'
        burst_dir, gt_dir = base / 'bursts' / key, base / 'gt' / key
        burst_dir.mkdir(parents=True)
        gt_dir.mkdir(parents=True)
        for f, frame in enumerate(sample.burst):
            _write_png16(burst_dir / f'im_raw_{f:02d}.png', frame)
        _write_png16(gt_dir / 'im_rgb.png', sample.gt)
        meta = dict(sample.meta_info, frame_num=i)
        with open(gt_dir / 'meta_info.pkl', 'wb') as fh:
            pickle.dump(meta, fh)  # tensors pickled as the original generator did (plain pickle)
    return num_val


def _expected_files(num_train: int, num_val: int) -> list[str]:
    files = [f'zurich/train/canon/{i}.jpg' for i in range(num_train)]
    for i in range(num_val):
        files += [f'SyntheticBurstVal/bursts/{i:04d}/im_raw_{f:02d}.png' for f in range(VAL_BURST_SIZE)]
        files += [f'SyntheticBurstVal/gt/{i:04d}/im_rgb.png', f'SyntheticBurstVal/gt/{i:04d}/meta_info.pkl']
    return files


def read_marker(path: str | os.PathLike, version: int) -> dict | None:
    """The JSON marker dict at ``path`` if it is readable and of format ``version``, else None."""
    try:
        with open(path, encoding='utf-8') as f:
            marker = json.load(f)
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) and marker.get('version') == version else None


def _read_marker(out: Path) -> dict | None:
    return read_marker(out / MARKER, FORMAT_VERSION)


def install_sample(tmp: Path, out: Path, subdirs: Sequence[str], marker_name: str, marker: dict) -> None:
    """Move ``subdirs`` of the finished temporary folder ``tmp`` into ``out`` (replacing old ones; a subfolder
    missing from ``tmp`` becomes an empty one) and write the marker last, so ``out`` never looks complete early."""
    out.mkdir(exist_ok=True)
    (out / marker_name).unlink(missing_ok=True)
    for sub in subdirs:
        if (out / sub).exists():
            shutil.rmtree(out / sub)
        if (tmp / sub).exists():
            os.replace(tmp / sub, out / sub)
        else:
            (out / sub).mkdir()
    with open(out / marker_name, 'w', encoding='utf-8') as f:
        json.dump(marker, f, indent=2)


def is_complete(out: str | os.PathLike) -> bool:
    """Whether ``out`` holds a finished sample (its marker file and every file the marker implies)."""
    out = Path(out)
    marker = _read_marker(out)
    if marker is None:
        return False
    files = _expected_files(int(marker.get('num_train', 0)), int(marker.get('num_val', 0)))
    return all((out / f).is_file() for f in files)


def make_sample_data(out: str | os.PathLike = 'datasets/sample', num_val: int = 8, seed: int = 0,
                     overwrite: bool = False, log: Callable[[str], None] = print) -> bool:
    """Write the sample into ``out`` unless it is already complete; returns whether anything was written.

    The files are made in a temporary sibling folder and moved into place, the marker last, so an interrupted or
    concurrent run never leaves a folder that looks complete.
    """
    if num_val < 0:
        raise ValueError(f'num_val must be >= 0, got {num_val}')
    out = Path(out)
    if not overwrite and is_complete(out):
        marker = _read_marker(out) or {}
        log(f'{out}: sample data already complete ({marker.get("num_train")} training images, '
            f'{marker.get("num_val")} validation bursts, seed {marker.get("seed")}); nothing to do '
            f'(--overwrite to redo)')
        return False
    start = time.perf_counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f'.{out.name}.tmp-', dir=out.parent))
    try:
        num_train = _write_train(tmp, seed)
        _write_val(tmp, num_val, seed)
        marker = {'version': FORMAT_VERSION, 'num_train': num_train, 'num_val': num_val, 'seed': seed,
                  'train_photos': [name for name, _ in TRAIN_PHOTOS], 'val_photos': list(VAL_PHOTOS)}
        install_sample(tmp, out, ('zurich', 'SyntheticBurstVal'), MARKER, marker)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log(f'{out}: wrote {num_train} training images (zurich/train/canon, {TRAIN_SIZE}x{TRAIN_SIZE} JPEG) and '
        f'{num_val} validation bursts (SyntheticBurstVal, {VAL_BURST_SIZE} x 4 x {VAL_CROP // 8} x {VAL_CROP // 8} '
        f'packed, GT {VAL_CROP}x{VAL_CROP}), seed {seed}, in {time.perf_counter() - start:.1f} s')
    return True


def ensure_sample_data(out: str, num_val: int = 8, seed: int = 0) -> None:
    """Generate the sample into ``out`` on first use; a complete one (any size or seed) is kept."""
    make_sample_data(out, num_val=num_val, seed=seed, overwrite=False, log=logger.info)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--out', default='datasets/sample', help='output folder (default: datasets/sample)')
    parser.add_argument('--num-val', type=int, default=8, help='number of SyntheticBurstVal bursts (default: 8)')
    parser.add_argument('--seed', type=int, default=0, help='random seed (default: 0)')
    parser.add_argument('--overwrite', action='store_true', help='regenerate even if the output is complete')
    args = parser.parse_args(argv)
    make_sample_data(args.out, num_val=args.num_val, seed=args.seed, overwrite=args.overwrite)
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
