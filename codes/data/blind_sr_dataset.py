"""Single-image blind-SR datasets (DCLS): HR images degraded on the fly, and paired LQ/GT sets paired by key.

Follows DCLS (upstream ``megvii-research/DCLS-SR: codes/data/GT_dataset.py``,
``LQGT_dataset.py``), with the upstream pitfalls fixed: LQ and GT are paired **by key**, never by sorted position
(DIV2KRK, DCLS issue #33), the pairing fails loudly when the key sets differ, and paired sets can train.

Every image is read through ``codes.data.io_backend`` (``io_backend: {type: disk}`` folders, or ``{type: lmdb}``:
our LMDBs, BasicSR's, and the legacy MMSR/DCLS ``x4HRblur.lmdb`` / ``x4LRblur.lmdb`` with ``meta_info.pkl``).
Samples are dicts of float32 RGB (C, H, W) tensors in [0, 1] plus the sample ``key``.

Randomness: each ``__getitem__`` makes its own NumPy generator, seeded from ``(seed, index)`` when ``seed`` is
given, else from the process's global NumPy generator (which the runner seeds per rank and per worker).
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from codes.data.dataset_checks import check_choice, check_min
from codes.data.degradations import random_batch_kernels
from codes.data.io_backend import check_io_backend, io_backend_problems, open_backend, to_bgr_uint8
from codes.utils.files import natural_key
from codes.utils.registry import DATASET_REGISTRY

__all__ = ['augment', 'BlindSRHRDataset', 'PairedBlindSRDataset']

logger = logging.getLogger(__name__)

#: Sub-folder names of a paired folder read with ``dataroot_lq`` unset (those ``create_lmdb --format paired`` takes).
GT_DIRS = ('GT', 'gt', 'HR')
LQ_DIRS = ('LQ', 'lq', 'LR')


def _rgb_float(img: np.ndarray) -> Tensor:
    """(H, W, C) BGR(A)/gray uint8 or uint16, as ``cv2.imread(IMREAD_UNCHANGED)`` gives it -> (3, H, W) RGB."""
    if img.dtype == np.uint16:
        arr = img.astype(np.float32) / 65535.0
        if arr.ndim == 2 or arr.shape[2] == 1:
            arr = np.repeat(arr.reshape(arr.shape[0], arr.shape[1], 1), 3, axis=2)
        arr = arr[..., :3]
    else:
        arr = to_bgr_uint8(img).astype(np.float32) / 255.0
    return torch.from_numpy(np.ascontiguousarray(arr[..., ::-1].transpose(2, 0, 1)))


def augment(images: list[Tensor], rng: np.random.Generator, hflip: bool = True, rot: bool = True) -> list[Tensor]:
    """The same random flips on every (C, H, W) image: hflip (reverse W), then with ``rot`` vflip (reverse H) and a
    transpose of H and W, each with probability 0.5, drawn in that order (draws are skipped for disabled flags)."""
    do_h = hflip and rng.random() < 0.5
    do_v = rot and rng.random() < 0.5
    do_t = rot and rng.random() < 0.5
    out = []
    for img in images:
        if do_h:
            img = img.flip(-1)
        if do_v:
            img = img.flip(-2)
        if do_t:
            img = img.transpose(-2, -1)
        out.append(img.contiguous())
    return out


class _SeededItems:
    """Per-item NumPy generators (see the module docstring)."""

    seed: int | None

    def _rng(self, index: int) -> np.random.Generator:
        if self.seed is not None:
            return np.random.default_rng([self.seed, index])
        return np.random.default_rng(np.random.randint(0, 2 ** 31 - 1, size=2))


@DATASET_REGISTRY.register()
class BlindSRHRDataset(_SeededItems, Dataset):
    """HR-only training set: random HR crops with a random blur kernel per sample (DCLS's ``GT`` mode).

    The blur, bicubic downsampling, noise and 8-bit rounding happen in the model, batched on its device
    (``codes.data.degradations.degrade``), as in DCLS; the dataset draws what is random per sample.

    Args:
        dataroot_gt: folder of HR images, or an LMDB with ``io_backend.type`` lmdb.
        scale: SR factor; ``gt_size`` must be a multiple of it.
        gt_size: HR crop side (DCLS: 64 × scale).
        kernel_size: blur kernel side (odd; 21 in setting 1, 11 / 31 in setting 2).
        sig_min, sig_max: σ range of the Gaussian kernels (per axis when anisotropic).
        rate_iso: 1 for isotropic kernels (setting 1), 0 for anisotropic ones (setting 2).
        random_disturb: multiplicative tap noise U(0, 0.25) on anisotropic kernels (setting 2).
        noise: add Gaussian noise to the LR.
        noise_high: the noise standard deviation on the [0, 1] scale (e.g. 15/255 = 0.0588).
        noise_random_level: draw each sample's standard deviation from U(0, noise_high) instead.
        use_hflip, use_rot: augmentation (DCLS: both on).
        dataset_enlarge_ratio: ``len`` is the image count times this.
        seed: fixed base seed (item i is then always the same sample); None draws from the global generator.
        io_backend: ``{type: disk}`` (default) or ``{type: lmdb, ...}``.
    """

    #: the io_backend block's problems, reported by option validation with the file's other ones
    check_options = staticmethod(io_backend_problems)

    def __init__(self, dataroot_gt: str, scale: int = 4, gt_size: int = 256, kernel_size: int = 21,
                 sig_min: float = 0.2, sig_max: float = 4.0, rate_iso: float = 1.0, random_disturb: bool = False,
                 noise: bool = False, noise_high: float = 0.0, noise_random_level: bool = False,
                 use_hflip: bool = True, use_rot: bool = True, dataset_enlarge_ratio: int = 1,
                 seed: int | None = None, io_backend: dict | None = None) -> None:
        if scale < 1 or gt_size % scale:
            raise ValueError(f'gt_size ({gt_size}) must be a multiple of scale ({scale})')
        if kernel_size % 2 == 0:
            raise ValueError(f'kernel_size must be odd, got {kernel_size}')
        if not 0 < sig_min <= sig_max:
            raise ValueError(f'need 0 < sig_min <= sig_max, got {sig_min}, {sig_max}')
        if noise and noise_high <= 0:
            raise ValueError('noise is on but noise_high is not positive')
        check_min('dataset_enlarge_ratio', dataset_enlarge_ratio, 1)
        self.scale, self.gt_size = scale, gt_size
        self.kernel_opt = dict(size=kernel_size, sig_min=sig_min, sig_max=sig_max, rate_iso=rate_iso,
                               random_disturb=random_disturb)
        self.noise, self.noise_high, self.noise_random_level = noise, float(noise_high), noise_random_level
        self.use_hflip, self.use_rot = use_hflip, use_rot
        self.enlarge, self.seed = dataset_enlarge_ratio, seed
        self.backend = open_backend(check_io_backend(io_backend), dataroot_gt, layout='images')
        self.keys = self.backend.keys()
        self.keys = [k for k in self.keys if not self.backend.name(k).endswith('.pkl')]
        if not self.keys:
            raise ValueError(f'no images in {dataroot_gt}')

    def __len__(self) -> int:
        return len(self.keys) * self.enlarge

    def __getitem__(self, index: int) -> dict[str, Any]:
        key = self.keys[index % len(self.keys)]
        rng = self._rng(index)
        hr = _rgb_float(self.backend.get(key))
        _, H, W = hr.shape
        size = self.gt_size
        if H < size or W < size:
            raise ValueError(f'{self.backend.describe(key)}: image {H}x{W} is smaller than gt_size {size}')
        top = int(rng.integers(0, H - size + 1))
        left = int(rng.integers(0, W - size + 1))
        (hr,) = augment([hr[:, top:top + size, left:left + size]], rng, self.use_hflip, self.use_rot)
        kernel = torch.from_numpy(random_batch_kernels(1, rng=rng, **self.kernel_opt)[0])
        std = 0.0
        if self.noise:
            std = float(rng.uniform(0, self.noise_high)) if self.noise_random_level else self.noise_high
        return {'gt': hr, 'kernel': kernel, 'noise_std': torch.tensor(std, dtype=torch.float32), 'key': key}


@DATASET_REGISTRY.register()
class PairedBlindSRDataset(_SeededItems, Dataset):
    """Paired LQ/GT images (validation, test, or paired training), matched by key.

    Keys are file paths relative to the root without extension (or LMDB keys). ``gt_key_regex`` and
    ``lq_key_regex`` (``re.fullmatch``; the first group, if any, is the pairing key) map keys with different
    names to one pairing key: DIV2KRK's ``img_1_gt`` / ``im_1`` with ``'img_(\\d+)_gt'`` and ``'im_(\\d+)'``;
    Gaussian8 folders with one HR per image and ``sig2.40_baby`` LRs with ``lq_key_regex: 'sig[0-9.]+_(.+)'``.
    Every LQ needs a GT and every GT must be used, otherwise the dataset refuses to build and lists the
    unmatched keys.

    Args:
        dataroot_gt: GT folder or LMDB.
        dataroot_lq: LQ folder or LMDB; None when ``dataroot_gt`` holds both (a ``create_lmdb --format paired``
            database, or a folder with ``GT``/``gt``/``HR`` and ``LQ``/``lq``/``LR`` sub-folders).
        scale: SR factor; GT must be LQ × scale after the modcrop.
        phase: 'train' (random aligned crops of ``gt_size`` and flips) or 'val'/'test' (whole images).
        gt_size: HR crop side in training.
        modcrop: crop the GT (top-left kept) to a multiple of ``scale`` before the size check (DCLS does).
        gt_key_regex, lq_key_regex: see above; None uses the key itself.
        use_hflip, use_rot: training augmentation.
        seed: fixed base seed for the training crops; None draws from the global generator.
        io_backend: ``{type: disk}`` (default) or ``{type: lmdb, ...}``.
        dataroot_kernel: a folder of the true blur kernels (``.npy``, or ``.mat`` with one 2-D array), shown beside
            the estimated kernel in the comparison panels (never used for scoring); samples then carry ``kernel``.
            Gaussian8 (``make_gaussian8``): ``<set>/kernels`` with ``kernel_key_regex: '(sig[0-9.]+)_.+'``;
            DIV2KRK: ``gt_k_x4`` with ``kernel_key_regex: 'im_(\\d+)'`` and ``kernel_name: 'kernel_{}'``.
        kernel_key_regex: ``re.fullmatch`` on the LQ name; its first group fills ``kernel_name``; None: the name.
        kernel_name: the kernel file's stem, ``{}`` standing for that group.
    """

    #: the io_backend block's problems, reported by option validation with the file's other ones
    check_options = staticmethod(io_backend_problems)

    def __init__(self, dataroot_gt: str, dataroot_lq: str | None = None, scale: int = 4, phase: str = 'val',
                 gt_size: int = 256, modcrop: bool = True, gt_key_regex: str | None = None,
                 lq_key_regex: str | None = None, use_hflip: bool = True, use_rot: bool = True,
                 seed: int | None = None, io_backend: dict | None = None, dataroot_kernel: str | None = None,
                 kernel_key_regex: str | None = None, kernel_name: str = '{}') -> None:
        check_choice('phase', phase, ('train', 'val', 'test'))
        if phase == 'train' and gt_size % scale:
            raise ValueError(f'gt_size ({gt_size}) must be a multiple of scale ({scale})')
        self.scale, self.phase, self.gt_size, self.modcrop = scale, phase, gt_size, modcrop
        self.use_hflip, self.use_rot, self.seed = use_hflip, use_rot, seed
        io = check_io_backend(io_backend)
        if dataroot_lq is None and io['type'] == 'disk':  # a folder with GT (or gt, HR) and LQ (or lq, LR) inside
            subs = [[d for d in names if (Path(dataroot_gt) / d).is_dir()] for names in (GT_DIRS, LQ_DIRS)]
            if not subs[0] or not subs[1]:
                raise FileNotFoundError(f'{dataroot_gt}: with dataroot_lq unset the folder must hold one of '
                                        f'{"/".join(GT_DIRS)} and one of {"/".join(LQ_DIRS)}')
            dataroot_gt, dataroot_lq = str(Path(dataroot_gt) / subs[0][0]), str(Path(dataroot_gt) / subs[1][0])
        if dataroot_lq is None:  # one create_lmdb --format paired database
            self.gt_backend = self.lq_backend = open_backend(io, dataroot_gt, layout='paired')
            gt_prefix, lq_prefix = 'gt/', 'lq/'
        else:
            self.gt_backend = open_backend(io, dataroot_gt, layout='images')
            self.lq_backend = open_backend(io, dataroot_lq, layout='images')
            gt_prefix = lq_prefix = ''
        gt_keys = [k for k in self.gt_backend.keys(gt_prefix) if not self.gt_backend.name(k).endswith('.pkl')]
        lq_keys = [k for k in self.lq_backend.keys(lq_prefix) if not self.lq_backend.name(k).endswith('.pkl')]
        where = f'{dataroot_gt} / {dataroot_lq}' if dataroot_lq else str(dataroot_gt)
        self.pairs = _pair(gt_keys, lq_keys, gt_prefix, lq_prefix, gt_key_regex, lq_key_regex, where)
        if not self.pairs:
            raise ValueError(f'{where}: no LQ/GT pairs found')
        self.kernel_files = (_kernel_files([name for _, _, name in self.pairs], dataroot_kernel, kernel_key_regex,
                                           kernel_name) if dataroot_kernel else None)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, Any]:
        lq_key, gt_key, name = self.pairs[index]
        if self.gt_backend is self.lq_backend:
            gt_img, lq_img = self.gt_backend.get_many([gt_key, lq_key])
        else:
            gt_img, lq_img = self.gt_backend.get(gt_key), self.lq_backend.get(lq_key)
        gt, lq = _rgb_float(gt_img), _rgb_float(lq_img)
        s = self.scale
        if self.modcrop:
            gt = gt[:, :gt.shape[1] - gt.shape[1] % s, :gt.shape[2] - gt.shape[2] % s]
        if gt.shape[1] != lq.shape[1] * s or gt.shape[2] != lq.shape[2] * s:
            raise ValueError(f'{self.gt_backend.describe(gt_key)} is {gt.shape[1]}x{gt.shape[2]} but '
                             f'{self.lq_backend.describe(lq_key)} is {lq.shape[1]}x{lq.shape[2]}: not x{s} '
                             '(wrong scale, or LQ and GT of different images?)')
        if self.phase == 'train':
            rng = self._rng(index)
            ls = self.gt_size // s
            if lq.shape[1] < ls or lq.shape[2] < ls:
                raise ValueError(f'{self.lq_backend.describe(lq_key)}: {lq.shape[1]}x{lq.shape[2]} is smaller '
                                 f'than the LQ crop {ls}')
            top = int(rng.integers(0, lq.shape[1] - ls + 1))
            left = int(rng.integers(0, lq.shape[2] - ls + 1))
            lq = lq[:, top:top + ls, left:left + ls]
            gt = gt[:, top * s:(top + ls) * s, left * s:(left + ls) * s]
            lq, gt = augment([lq, gt], rng, self.use_hflip, self.use_rot)
        out = {'lq': lq, 'gt': gt, 'key': name, 'gt_key': gt_key}
        if self.kernel_files is not None:
            out['kernel'] = torch.from_numpy(read_kernel(self.kernel_files[index]))
        return out


def read_kernel(path: str | Path) -> np.ndarray:
    """A blur kernel file (``.npy``, or ``.mat`` holding one 2-D numeric array) as float32 (ks, ks)."""
    path = Path(path)
    if path.suffix == '.mat':
        from scipy.io import loadmat
        arrays = [v for k, v in loadmat(str(path)).items() if not k.startswith('__') and getattr(v, 'ndim', 0) == 2]
        if len(arrays) != 1:
            raise ValueError(f'{path}: expected one 2-D array, found {len(arrays)}')
        array = arrays[0]
    else:
        array = np.load(path, allow_pickle=False)
    if array.ndim != 2 or not np.isfinite(array).all():
        raise ValueError(f'{path}: a kernel must be a finite 2-D array, got shape {array.shape}')
    return array.astype(np.float32)


def _kernel_files(names: list[str], root: str, regex: str | None, template: str) -> list[Path]:
    """The kernel file of every LQ name (see ``PairedBlindSRDataset``); all must exist."""
    pattern = re.compile(regex) if regex else None
    files, missing = [], []
    for name in names:
        stem = template.format(_pair_key(name, pattern, 'kernel', root))
        found = next((p for p in (Path(root) / f'{stem}.npy', Path(root) / f'{stem}.mat') if p.is_file()), None)
        if found is None:
            missing.append(f'{stem}.npy')
        files.append(found)
    if missing:
        raise ValueError(f'dataroot_kernel {root}: no kernel file for {len(missing)} LQ images, e.g. '
                         f'{", ".join(sorted(set(missing))[:3])} (set kernel_key_regex / kernel_name)')
    return files


def _pair_key(key: str, pattern: re.Pattern | None, side: str, where: str) -> str:
    if pattern is None:
        return key
    m = pattern.fullmatch(key)
    if m is None:
        raise ValueError(f'{where}: {side} key {key!r} does not match {side.lower()}_key_regex {pattern.pattern!r}')
    return m.group(1) if m.groups() else m.group(0)


def _pair(gt_keys: list[str], lq_keys: list[str], gt_prefix: str, lq_prefix: str, gt_regex: str | None,
          lq_regex: str | None, where: str) -> list[tuple[str, str, str]]:
    """(lq_key, gt_key, sample name) per LQ image, in natural order of the LQ keys."""
    gt_re = re.compile(gt_regex) if gt_regex else None
    lq_re = re.compile(lq_regex) if lq_regex else None
    gt_by_pair: dict[str, str] = {}
    for k in gt_keys:
        p = _pair_key(k[len(gt_prefix):], gt_re, 'GT', where)
        if p in gt_by_pair:
            raise ValueError(f'{where}: GT keys {gt_by_pair[p]!r} and {k!r} map to the same pairing key {p!r}')
        gt_by_pair[p] = k
    pairs, used, missing = [], set(), []
    for k in sorted(lq_keys, key=natural_key):
        name = k[len(lq_prefix):]
        p = _pair_key(name, lq_re, 'LQ', where)
        if p not in gt_by_pair:
            missing.append(name)
            continue
        used.add(p)
        pairs.append((k, gt_by_pair[p], name))
    unused = sorted(set(gt_by_pair) - used, key=natural_key)
    if missing or unused:
        raise ValueError(f'{where}: LQ and GT keys do not pair up: {len(missing)} LQ without GT {missing[:5]}, '
                         f'{len(unused)} GT without LQ {unused[:5]}. Pairing is by key, not by position; set '
                         'gt_key_regex / lq_key_regex when the names differ.')
    return pairs
