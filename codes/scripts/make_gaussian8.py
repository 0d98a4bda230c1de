"""Build the Gaussian8 blind-SR test sets (DCLS setting 1) from HR images.

``python -m codes.scripts.make_gaussian8 --hr DIR --scale 4 --out DIR [--overwrite]``

Protocol (IKC's Gaussian8, as used by DCLS): each HR image is read as 8-bit BGR, modcropped (top-left kept) to a
multiple of the scale, and for each of the eight σ of ``GAUSSIAN8_SIGMAS[scale]`` blurred with the isotropic
21×21 Gaussian (reflect padding), downsampled with MATLAB-compatible antialiased bicubic, clamped and rounded to
uint8. Outputs, under OUT:

* ``HR/<name>.png``: the modcropped HR, once per image;
* ``LRblur/sig<σ:.2f>_<name>.png``: the eight blurred LR images per HR image;
* ``LR/<name>.png``: plain bicubic LR (no blur);
* ``kernels/sig<σ:.2f>.npy`` (float32 21×21) and ``kernels/sig<σ:.2f>.png`` (viewable);
* ``gaussian8.json``: the scale, the exact σ values (full precision) with their file tags, and the file lists.

The file tags use a fixed two-decimal σ format, so names do not depend on float-to-string artefacts
(upstream writes ``sig2.4000000000000004_baby.png``); the exact σ are in ``gaussian8.json``. Read the set with
``PairedBlindSRDataset(dataroot_gt=OUT/HR, dataroot_lq=OUT/LRblur, lq_key_regex='sig[0-9.]+_(.+)')``, which pairs
every LR with its HR by name.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import torch

from codes.data.degradations import GAUSSIAN8_SIGMAS, blur, imresize, isotropic_gaussian_kernel
from codes.utils.files import IMAGE_EXTENSIONS

__all__ = ['sigma_tag', 'make_gaussian8', 'main', 'KERNEL_SIZE']

logger = logging.getLogger(__name__)

KERNEL_SIZE = 21
LQ_KEY_REGEX = 'sig[0-9.]+_(.+)'


def sigma_tag(sigma: float) -> str:
    """The file tag of a σ: ``sig2.40``."""
    return f'sig{sigma:.2f}'


def _to_uint8_bgr(x: torch.Tensor) -> np.ndarray:
    """(3, H, W) RGB float -> (H, W, 3) BGR uint8 (clamp, ×255, round half to even)."""
    arr = x.clamp(0, 1).mul(255.0).permute(1, 2, 0).cpu().numpy()
    return np.ascontiguousarray(np.round(arr).astype(np.uint8)[..., ::-1])


def _write(path: Path, img: np.ndarray) -> None:
    if not cv2.imwrite(str(path), img):
        raise OSError(f'could not write {path}')


def make_gaussian8(hr_dir: str | os.PathLike, scale: int, out_dir: str | os.PathLike,
                   sigmas: Sequence[float] | None = None, overwrite: bool = False) -> dict:
    """Generate the set (see the module docstring); returns the ``gaussian8.json`` record."""
    if scale not in GAUSSIAN8_SIGMAS and sigmas is None:
        raise ValueError(f'Gaussian8 is defined for scales {sorted(GAUSSIAN8_SIGMAS)}, got {scale}')
    sigmas = tuple(float(s) for s in (sigmas if sigmas is not None else GAUSSIAN8_SIGMAS[scale]))
    tags = [sigma_tag(s) for s in sigmas]
    if len(set(tags)) != len(tags):
        raise ValueError(f'σ values {sigmas} collide in the two-decimal file tags {tags}')
    hr_dir, out = Path(hr_dir), Path(out_dir)
    files = sorted(p for p in hr_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS) \
        if hr_dir.is_dir() else []
    if not files:
        raise FileNotFoundError(f'no images ({"/".join(IMAGE_EXTENSIONS)}) in {hr_dir}')
    names = [p.stem for p in files]
    if len(set(names)) != len(names):
        raise ValueError(f'{hr_dir}: several files share a name without extension')
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f'{out} is not empty; pass --overwrite to replace it')
        for sub in ('HR', 'LRblur', 'LR', 'kernels'):
            shutil.rmtree(out / sub, ignore_errors=True)
    for sub in ('HR', 'LRblur', 'LR', 'kernels'):
        (out / sub).mkdir(parents=True, exist_ok=True)
    kernels = {}
    for s, tag in zip(sigmas, tags):
        k = isotropic_gaussian_kernel(KERNEL_SIZE, s)
        kernels[tag] = torch.from_numpy(k)
        np.save(out / 'kernels' / f'{tag}.npy', k)
        view = np.round(k / k.max() * 255).astype(np.uint8)
        _write(out / 'kernels' / f'{tag}.png', np.kron(view, np.ones((4, 4), np.uint8)))
    lr_files = []
    for path, name in zip(files, names):
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise OSError(f'cannot decode image: {path}')
        h, w = bgr.shape[:2]
        bgr = bgr[:h - h % scale, :w - w % scale]
        if min(bgr.shape[:2]) < KERNEL_SIZE:
            raise ValueError(f'{path}: {h}x{w} is too small for the {KERNEL_SIZE}x{KERNEL_SIZE} blur')
        _write(out / 'HR' / f'{name}.png', bgr)
        hr = torch.from_numpy(np.ascontiguousarray(bgr[..., ::-1].transpose(2, 0, 1))).float().div(255.0)[None]
        _write(out / 'LR' / f'{name}.png', _to_uint8_bgr(imresize(hr, 1.0 / scale)[0]))
        for tag in tags:
            lr = imresize(blur(hr, kernels[tag]), 1.0 / scale)[0]
            _write(out / 'LRblur' / f'{tag}_{name}.png', _to_uint8_bgr(lr))
            lr_files.append(f'{tag}_{name}.png')
        logger.info('%s: %d LR images', name, len(tags))
    record = {'protocol': 'Gaussian8', 'scale': scale, 'kernel_size': KERNEL_SIZE,
              'sigmas': [{'tag': t, 'sigma': s} for t, s in zip(tags, sigmas)],
              'hr': [f'{n}.png' for n in names], 'lr_blur': lr_files, 'lq_key_regex': LQ_KEY_REGEX}
    (out / 'gaussian8.json').write_text(json.dumps(record, indent=2))
    return record


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description='Build a Gaussian8 blind-SR test set from a folder of HR images.')
    p.add_argument('--hr', required=True, help='folder of HR images (Set5, Set14, BSD100, Urban100, Manga109, ...)')
    p.add_argument('--scale', type=int, required=True, choices=sorted(GAUSSIAN8_SIGMAS))
    p.add_argument('--out', required=True, help='output folder (HR/, LRblur/, LR/, kernels/, gaussian8.json)')
    p.add_argument('--overwrite', action='store_true', help='replace a non-empty output folder')
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    rec = make_gaussian8(args.hr, args.scale, args.out, overwrite=args.overwrite)
    logger.info('Wrote %d HR and %d LR images to %s (σ: %s)', len(rec['hr']), len(rec['lr_blur']), args.out,
                ', '.join(s['tag'] for s in rec['sigmas']))


if __name__ == '__main__':
    main()
