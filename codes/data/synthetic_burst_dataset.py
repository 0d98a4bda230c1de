"""Synthetic RAW bursts for burst super-resolution: on-the-fly training bursts and the SyntheticBurstVal set.

Upstream: DBSR's ``goutamgmb/deep-burst-sr`` (``dataset/synthetic_burst_train_set.py``,
``dataset/synthetic_burst_val_set.py``) and the identical data code of ``Algolzw/BSRT``
(``code/synthetic/bsrt/datasets/``). :class:`SyntheticBurstDataset` reads sRGB images, takes a random crop of
``crop_size + 2·border_crop`` and turns it into a burst with :func:`codes.data.burst_synthesis.rgb_to_raw_burst`;
:class:`SyntheticBurstValDataset` reads the stored validation bursts.
"""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from codes.data.burst_synthesis import WARP_BACKENDS, random_crop, rgb_to_raw_burst
from codes.data.dataset_checks import check_choice, check_min, check_multiple
from codes.utils.registry import DATASET_REGISTRY
from codes.data.io_backend import (Backend, check_io_backend, check_png16, io_backend_problems, open_backend,
                                  read_png16, to_bgr_uint8)
from codes.utils.files import IMAGE_EXTENSIONS, natural_key
from codes.utils.safe_pickle import safe_load_pickle, safe_loads_pickle

__all__ = ['read_image', 'SyntheticBurstDataset', 'SyntheticBurstValDataset']

_DATA_HINT = 'see datasets/README.md (or run `python -m codes.scripts.make_sample_data` for a small offline set)'


# ---------------------------------------------------------------------------------------------------- files
def read_image(path: str | os.PathLike, channel_order: str = 'bgr') -> np.ndarray:
    """8-bit 3-channel image (H, W, 3) read with ``cv2.imread``: 'bgr' keeps OpenCV's order, 'rgb' converts."""
    image = cv2.imread(os.fspath(path), cv2.IMREAD_COLOR)
    if image is None:
        if not os.path.isfile(path):
            raise FileNotFoundError(f'image not found: {path}')
        raise OSError(f'cannot decode image: {path}')
    if channel_order == 'rgb':
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return image


def _to_collatable(value: Any) -> Any:
    """NumPy arrays -> tensors and NumPy scalars -> Python numbers, so ``default_collate`` can batch the meta."""
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.array(value))
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    return value


def _check_uint16(image: np.ndarray, channels: int, where: str) -> Tensor:
    """(C, H, W) float32 = (H, W, C) uint16 array / 2^14; ``where`` names the file or database key in errors."""
    return torch.from_numpy(check_png16(image, channels, where).astype(np.float32)).permute(2, 0, 1) / 2 ** 14


def _read_uint16_png(path: Path, channels: int) -> Tensor:
    """(C, H, W) float32 = uint16 PNG / 2^14, read with ``IMREAD_UNCHANGED`` (undoes OpenCV's on-disk BGR(A))."""
    return _check_uint16(read_png16(path, channels), channels, str(path))


def _meta_dict(meta: Any, where: str) -> dict:
    if not isinstance(meta, dict):
        raise ValueError(f'{where}: expected a dict, got {type(meta).__name__}')
    return {str(k): _to_collatable(v) for k, v in meta.items()}


# ---------------------------------------------------------------------------------------------------- datasets
@DATASET_REGISTRY.register()
class SyntheticBurstDataset(Dataset):
    """Synthetic RAW bursts generated on the fly from sRGB images (BSRT / DBSR training data).

    Each item is ``{'lq': (burst_size, 4, h, w), 'gt': (3, 8h, 8w), 'meta_info': dict, 'key': str}`` with
    h = crop_size / (2·downsample_factor); ``lq`` is packed RGGB in [0, 1], ``gt`` linear RGB in [0, 1].

    Source images: ``dataroot/train/canon/*.jpg`` (Zurich RAW-to-RGB; ``test/canon`` when ``phase`` is not
    'train') if that folder exists, else every image under ``dataroot`` (recursive, sorted).

    Randomness: each ``__getitem__`` makes its own ``random.Random`` and ``torch.Generator``. With ``seed=None``
    they are seeded from the process's global Python and torch generators (``random.getrandbits(64)`` and
    ``torch.randint``), so the runner's per-worker seeding makes a run reproducible; with a ``seed`` they are
    derived from ``(seed, index)``, so item ``i`` is always the same burst (used when ``phase`` is not 'train').

    Args:
        dataroot: folder of source images (see above).
        burst_size: frames per burst; frame 0 is the reference.
        crop_size: HR crop (GT size); a multiple of 2·downsample_factor. 256 in BSRT.
        phase: 'train', or 'val'/'test' (Zurich ``test/canon`` and a fixed ``seed`` of 0 unless one is given).
        channel_order: 'bgr' feeds the inverse ISP OpenCV's BGR data, as BSRT and the NTIRE toolkits do (their
            training distribution); 'rgb' converts first, as DBSR's loader does (physically meaningful colours).
        max_translation, max_rotation, max_shear, max_ar_factor, max_scale: frame geometry ranges (HR px,
            degrees, shear, log factors).
        border_crop: HR pixels cropped from each side after warping.
        downsample_factor: HR -> LR RGB factor (the packed RAW is half of that again).
        noise: add shot and read noise.
        random_ccm, random_gains, smoothstep, gamma: inverse-ISP switches (all True upstream).
        warp_backend: 'auto', 'opencv' or 'fixed_point' (see ``codes.data.burst_synthesis.warp_affine``).
        seed: fixed base seed (see Randomness); None draws from the global generators.
        dataset_enlarge_ratio: ``len`` is the image count times this (one random crop per item).
        io_backend: ``{'type': 'disk'}`` (default) or ``{'type': 'lmdb', ...}`` (see ``codes/data/io_backend/``):
            ``dataroot`` is then an ``images`` LMDB (``create_lmdb --format images``; or ``dataroot.lmdb`` beside
            it) holding the same relative paths, from which the same images are selected; the decoded pixels are
            those ``cv2.imread`` gives, so an item is the same burst from either backend.
    """

    #: the io_backend block's problems, reported by option validation with the file's other ones
    check_options = staticmethod(io_backend_problems)

    def __init__(self, dataroot: str, burst_size: int = 14, crop_size: int = 256, phase: str = 'train',
                 channel_order: str = 'bgr', max_translation: float = 24.0, max_rotation: float = 1.0,
                 border_crop: int = 24, downsample_factor: int = 4, noise: bool = True, max_shear: float = 0.0,
                 max_ar_factor: float = 0.0, max_scale: float = 0.0, random_ccm: bool = True,
                 random_gains: bool = True, smoothstep: bool = True, gamma: bool = True,
                 warp_backend: str = 'auto', seed: int | None = None, dataset_enlarge_ratio: int = 1,
                 io_backend: dict | None = None) -> None:
        super().__init__()
        check_min('burst_size', burst_size, 1)
        check_min('downsample_factor', downsample_factor, 1)
        check_multiple('crop_size', crop_size, 2 * downsample_factor, '2*downsample_factor')
        check_min('border_crop', border_crop, 0)
        check_choice('channel_order', channel_order, ('bgr', 'rgb'))
        check_choice('phase', phase, ('train', 'val', 'test'))
        check_choice('warp_backend', warp_backend, WARP_BACKENDS)
        check_min('dataset_enlarge_ratio', dataset_enlarge_ratio, 1)
        self.io_backend = check_io_backend(io_backend)
        self.dataroot = str(dataroot)
        self.burst_size = burst_size
        self.crop_size = crop_size
        self.phase = phase
        self.channel_order = channel_order
        self.border_crop = border_crop
        self.downsample_factor = downsample_factor
        self.noise = noise
        self.geometry = dict(max_translation=max_translation, max_rotation=max_rotation, max_shear=max_shear,
                             max_ar_factor=max_ar_factor, max_scale=max_scale)
        self.isp = dict(random_ccm=random_ccm, random_gains=random_gains, smoothstep=smoothstep, gamma=gamma)
        self.warp_backend = warp_backend
        self.seed = seed if seed is not None or phase == 'train' else 0
        self.dataset_enlarge_ratio = dataset_enlarge_ratio
        self.backend = None
        if self.io_backend['type'] == 'lmdb':
            self.backend = open_backend(self.io_backend, self.dataroot, layout='images')
            self.keys = self._find_keys(self.backend, phase)
            self.paths = [self.backend.name(k) for k in self.keys]
        else:
            self.paths = self._find_images(Path(self.dataroot), phase)

    @staticmethod
    def _find_images(root: Path, phase: str) -> list[str]:
        if not root.is_dir():
            raise FileNotFoundError(f'SyntheticBurstDataset: dataroot {str(root)!r} is not a folder; {_DATA_HINT}')
        zurich = root / ('train' if phase == 'train' else 'test') / 'canon'
        if phase != 'train' and not zurich.is_dir() and (root / 'train' / 'canon').is_dir():
            raise FileNotFoundError(f'SyntheticBurstDataset: {str(root)!r} has the Zurich layout but no test/canon '
                                    f"for phase {phase!r} (the public zip has no test split); validate on "
                                    f'SyntheticBurstValDataset instead; {_DATA_HINT}')
        if zurich.is_dir():
            paths = [p for p in zurich.iterdir() if p.suffix.lower() in ('.jpg', '.jpeg') and p.is_file()]
        else:
            paths = [p for p in root.rglob('*') if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()]
        rel = sorted((p.relative_to(root).as_posix() for p in paths), key=natural_key)
        if not rel:
            raise FileNotFoundError(f'SyntheticBurstDataset: no images found in {str(root)!r} (looked for '
                                    f'{zurich.relative_to(root).as_posix()}/*.jpg, then any '
                                    f'{"/".join(IMAGE_EXTENSIONS)} file); {_DATA_HINT}')
        return rel

    @staticmethod
    def _find_keys(backend: Backend, phase: str) -> list[str]:
        """The LMDB counterpart of ``_find_images``: ``{train|test}/canon/*.jpg`` keys if there are any, else all."""
        def zurich(split: str) -> list[str]:
            return [k for k in backend.keys(f'{split}/canon/') if '/' not in k[len(split) + 7:]
                    and os.path.splitext(backend.name(k))[1].lower() in ('.jpg', '.jpeg')]
        split = 'train' if phase == 'train' else 'test'
        keys = zurich(split)
        if not keys and phase != 'train' and zurich('train'):
            raise FileNotFoundError(f'SyntheticBurstDataset: {backend.path!r} has the Zurich layout but no test/canon '
                                    f"for phase {phase!r}; validate on SyntheticBurstValDataset instead; {_DATA_HINT}")
        keys = keys or backend.keys()
        if not keys:
            raise FileNotFoundError(f'SyntheticBurstDataset: {backend.path!r} holds no images; {_DATA_HINT}')
        return sorted(keys, key=natural_key)

    def __len__(self) -> int:
        return len(self.paths) * self.dataset_enlarge_ratio

    def _read(self, index: int) -> np.ndarray:
        """(H, W, 3) uint8 in ``channel_order``, the same array from disk and from an LMDB."""
        if self.backend is None:
            return read_image(os.path.join(self.dataroot, self.paths[index]), self.channel_order)
        image = to_bgr_uint8(self.backend.get(self.keys[index]))
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB) if self.channel_order == 'rgb' else image

    def _generators(self, index: int) -> tuple[random.Random, torch.Generator]:
        if self.seed is None:
            rng = random.Random(random.getrandbits(64))
            torch_seed = int(torch.randint(0, 2 ** 62, (1,)).item())
        else:
            base = random.Random(f'{self.seed}/{index}')
            rng = random.Random(base.getrandbits(64))
            torch_seed = base.getrandbits(62)
        return rng, torch.Generator().manual_seed(torch_seed)

    def __getitem__(self, index: int) -> dict[str, Any]:
        rel = self.paths[index % len(self.paths)]
        image = self._read(index % len(self.paths))
        rng, generator = self._generators(index)
        image = torch.from_numpy(image).permute(2, 0, 1)  # (3, H, W) uint8
        crop = random_crop(image, self.crop_size + 2 * self.border_crop, rng)
        sample = rgb_to_raw_burst(crop, self.burst_size, rng, generator, downsample_factor=self.downsample_factor,
                                  border_crop=self.border_crop, add_noise=self.noise,
                                  warp_backend=self.warp_backend, **self.geometry, **self.isp)
        return {'lq': sample.burst, 'gt': sample.gt, 'meta_info': sample.meta_info, 'key': f'{rel}_{index:06d}'}


@DATASET_REGISTRY.register()
class SyntheticBurstValDataset(Dataset):
    """The SyntheticBurstVal set (DBSR / NTIRE 2021 validation), from its folders or an LMDB of them.

    Layout under ``dataroot`` (or ``dataroot/val``, as BSRT uses): ``bursts/XXXX/im_raw_{00..13}.png`` (4-channel
    uint16, packed RGGB × 2^14), ``gt/XXXX/im_rgb.png`` (3-channel uint16, linear RGB × 2^14) and
    ``gt/XXXX/meta_info.pkl``. PNGs are read with OpenCV's ``IMREAD_UNCHANGED``, which undoes the BGR(A) swap
    OpenCV applied when writing them, so the channels come back in the generator's order (R, G_r, G_b, B and
    R, G, B). The meta pickle is read with ``safe_load_pickle``.

    Each item is ``{'lq': (burst_size, 4, h, w), 'gt': (3, 8h, 8w), 'meta_info': dict, 'key': 'XXXX'}``.

    Args:
        dataroot: the set's root (see above), or with ``io_backend.type`` lmdb a ``synburst_val`` LMDB
            (``create_lmdb --format synburst_val``), whose keys are the relative paths above without extension;
            a burst's frames, GT and meta are then read in one transaction.
        burst_size: use the first ``burst_size`` frames (frame 0 is the reference).
        io_backend: ``{'type': 'disk'}`` (default) or ``{'type': 'lmdb', ...}`` (see ``codes/data/io_backend/``).
    """

    #: the io_backend block's problems, reported by option validation with the file's other ones
    check_options = staticmethod(io_backend_problems)

    def __init__(self, dataroot: str, burst_size: int = 14, io_backend: dict | None = None) -> None:
        super().__init__()
        check_min('burst_size', burst_size, 1)
        self.io_backend = check_io_backend(io_backend)
        self.dataroot = str(dataroot)
        self.burst_size = burst_size
        self.backend = None
        if self.io_backend['type'] == 'lmdb':
            self.backend = open_backend(self.io_backend, self.dataroot, layout='synburst_val')
            self.root = Path(self.backend.path)
            self.names = sorted((k.split('/')[1] for k in self.backend.keys('bursts/') if k.endswith('/im_raw_00')),
                                key=natural_key)
            if not self.backend.record.get('has_gt', True):
                raise FileNotFoundError(f'SyntheticBurstValDataset: {self.backend.path} was built from a set without '
                                        'gt/; it cannot be used for validation')
            where = f'{self.backend.path} [bursts/{self.names[0] if self.names else "?"}]'
            num_frames = len(self.backend.keys(f'bursts/{self.names[0]}/im_raw_')) if self.names else 0
        else:
            root = Path(self.dataroot)
            candidates = [root, root / 'val']
            base = next((c for c in candidates if (c / 'bursts').is_dir()), None)
            if base is None:
                raise FileNotFoundError(f'SyntheticBurstValDataset: no bursts/ folder in {self.dataroot!r} or its '
                                        f'val/; {_DATA_HINT}')
            self.root = base
            self.names = sorted((d.name for d in (base / 'bursts').iterdir() if d.is_dir()), key=natural_key)
            where = str(base / 'bursts' / self.names[0]) if self.names else ''
            num_frames = len(list((base / 'bursts' / self.names[0]).glob('im_raw_*.png'))) if self.names else 0
        if not self.names:
            raise FileNotFoundError(f'SyntheticBurstValDataset: {self.root / "bursts"} holds no burst folders; '
                                    f'{_DATA_HINT}')
        if burst_size > num_frames:
            raise ValueError(f'burst_size={burst_size} exceeds the {num_frames} frames on disk in {where}')

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> dict[str, Any]:
        name = self.names[index]
        if self.backend is not None:
            keys = [f'bursts/{name}/im_raw_{i:02d}' for i in range(self.burst_size)]
            keys += [f'gt/{name}/im_rgb', f'gt/{name}/meta_info']
            values = self.backend.get_many(keys)  # one transaction for the whole sample
            burst = torch.stack([_check_uint16(v, 4, self.backend.describe(k)) for k, v in zip(keys, values)
                                 if k.startswith('bursts/')])
            gt = _check_uint16(values[-2], 3, self.backend.describe(keys[-2]))
            where = self.backend.describe(keys[-1])
            meta = safe_loads_pickle(values[-1], source=where)
        else:
            burst_dir = self.root / 'bursts' / name
            burst = torch.stack([_read_uint16_png(burst_dir / f'im_raw_{i:02d}.png', 4)
                                 for i in range(self.burst_size)])
            gt = _read_uint16_png(self.root / 'gt' / name / 'im_rgb.png', 3)
            where = str(self.root / 'gt' / name / 'meta_info.pkl')
            meta = safe_load_pickle(where)
        return {'lq': burst, 'gt': gt, 'meta_info': _meta_dict(meta, where), 'key': name}
