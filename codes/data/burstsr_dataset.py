"""BurstSR: real Samsung Galaxy S8 RAW bursts against a Canon DSLR ground truth (the NTIRE BurstSR real track).

Follows the upstream code (not copied): DBSR's
``goutamgmb/deep-burst-sr`` (``dataset/burstsr_dataset.py``, ``data/processing.py``) and the data code of
``Algolzw/BSRT`` (``code/real/bsrt/datasets/burstsr_dataset.py``); paper: Bhat et al., "Deep Burst
Super-Resolution", CVPR 2021.

On-disk layout of one pre-processed crop, ``{root}/{train|val}/{SSSS_CCCC}/``:

* ``samsung_{00..13}/im_raw.png``: 4-channel uint16 PNG, packed RGGB, 80×80, 10-bit counts;
  ``samsung_XX/meta_info.pkl``: ``black_level`` (4), ``cam_wb``, ``daylight_wb``, ``color_matrix``, ``exif_data``…
* ``canon/im_raw.png``: 3-channel uint16 PNG (R, G, B), 640×640, 14-bit; ``canon/meta_info.pkl``.

The PNGs are read with OpenCV's ``IMREAD_UNCHANGED``, which undoes OpenCV's on-disk BGR(A) swap. The pickles hold
``exifread`` 2.x objects and are read with ``safe_load_pickle`` admitting only stand-ins for those two classes.
"""
from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from codes.data.camera_pipeline import pack_raw, unpack_raw
from codes.data.dataset_checks import check_choice, check_min, check_range
from codes.utils.registry import DATASET_REGISTRY
from codes.data.io_backend import check_io_backend, check_png16, io_backend_problems, open_backend, read_png16
from codes.utils.safe_pickle import EXIFREAD_ALLOWED, safe_load_pickle, safe_loads_pickle

__all__ = ['BurstSRDataset', 'BurstFiles', 'KNOWN_BAD_CROPS', 'SAMSUNG_NORM', 'CANON_NORM',
           'exif_value', 'exposure_scale', 'normalize_samsung', 'normalize_canon', 'bayer_flip']

logger = logging.getLogger(__name__)

#: Training crops whose Canon ground truth is flat (``goutamgmb/deep-burst-sr`` #27).
KNOWN_BAD_CROPS = ('0004_0006', '0026_0002', '0130_0041', '0168_0018')
SAMSUNG_NORM = 1023.0  #: 10-bit Samsung sensor counts
CANON_NORM = 16383.0  #: 14-bit Canon counts
NUM_FRAMES = 14
SAMSUNG_EXIF = ('Image ExposureTime', 'Image FNumber', 'Image ISOSpeedRatings')
CANON_EXIF = ('EXIF ExposureTime', 'EXIF FNumber', 'EXIF ISOSpeedRatings')
_DATA_HINT = ('see README.md, BurstSR real-world track (or run `python -m codes.scripts.make_burstsr_sample` '
              'for a small offline set in the same format)')


class BurstFiles(NamedTuple):
    """Everything read from storage for one burst (what an I/O backend returns)."""
    frames: list  #: one (h, w, 4) uint16 array per selected Samsung frame, in the requested order
    frame_meta: list  #: the Samsung ``meta_info.pkl`` dict of each selected frame
    canon: np.ndarray  #: (8h, 8w, 3) uint16 Canon image
    canon_meta: dict  #: the Canon ``meta_info.pkl`` dict


# ---------------------------------------------------------------------------------------------------- helpers
def exif_value(exif: Mapping[str, Any], tag: str, source: str) -> float:
    """``exif[tag].values[0]`` as a float (``.decimal()`` of a rational); errors name ``source`` and the tag."""
    if not isinstance(exif, Mapping) or tag not in exif:
        raise KeyError(f'{source}: EXIF tag {tag!r} missing from exif_data')
    values = getattr(exif[tag], 'values', None)
    if isinstance(values, (list, tuple)):
        if not values:
            raise ValueError(f'{source}: EXIF tag {tag!r} has no values')
        values = values[0]
    try:
        value = values.decimal() if hasattr(values, 'decimal') else float(values)
    except (TypeError, ValueError, ZeroDivisionError) as exc:
        raise ValueError(f'{source}: EXIF tag {tag!r} is not a number ({values!r}): {exc}') from None
    if not np.isfinite(value) or value <= 0:
        raise ValueError(f'{source}: EXIF tag {tag!r} must be positive, got {value}')
    return value


def _camera_settings(meta: Mapping[str, Any], tags: Sequence[str], source: str) -> tuple[float, float, float]:
    """(exposure time, F-number, ISO) from a meta dict's ``exif_data``."""
    exif = meta.get('exif_data')
    return tuple(exif_value(exif, tag, source) for tag in tags)  # type: ignore[return-value]


def exposure_scale(samsung: tuple[float, float, float], canon: tuple[float, float, float]) -> float:
    """(t_s·ISO_s / f_s²) / (t_c·ISO_c / f_c²) for (exposure time, F-number, ISO) of each camera."""
    (ts, fs, iso_s), (tc, fc, iso_c) = samsung, canon
    return (ts * iso_s / fs ** 2) / (tc * iso_c / fc ** 2)


def _black_level(meta: Mapping[str, Any], count: int, source: str) -> np.ndarray:
    if 'black_level' not in meta:
        raise KeyError(f'{source}: meta_info has no black_level')
    level = np.asarray(meta['black_level'], dtype=np.float64).reshape(-1)
    if level.size not in (count, 4):
        raise ValueError(f'{source}: black_level must have {count} or 4 values, got {level.size}')
    return level


def normalize_samsung(raw: np.ndarray, black_level: Sequence[float]) -> Tensor:
    """(h, w, 4) uint16 packed RGGB -> (4, h, w) float32 = (int16(raw) − black_level) / 1023 (not clamped)."""
    level = np.asarray(black_level, dtype=np.float32).reshape(4, 1, 1)
    data = raw.astype(np.int16).transpose(2, 0, 1).astype(np.float32, order='C')  # one contiguous (4, h, w) copy
    data -= level
    data /= np.float32(SAMSUNG_NORM)
    return torch.from_numpy(data)


def normalize_canon(rgb: np.ndarray, black_level: Sequence[float]) -> Tensor:
    """(H, W, 3) uint16 RGB -> (3, H, W) float32 = (rgb − black_level) / 16383; of 4 levels, [0, 1, 3] are used."""
    level = np.asarray(black_level, dtype=np.float32).reshape(-1)
    if level.size == 4:
        level = level[[0, 1, 3]]
    data = rgb.transpose(2, 0, 1).astype(np.float32, order='C')  # one contiguous (3, H, W) copy, then in place
    data -= level.reshape(3, 1, 1)
    data /= np.float32(CANON_NORM)
    return torch.from_numpy(data)


def bayer_flip(burst: Tensor, gt: Tensor, horizontal: bool, vertical: bool) -> tuple[Tensor, Tensor]:
    """Flip a packed RGGB burst (N, 4, h, w) and its GT (3, 8h, 8w) without changing the Bayer phase.

    Each flipped axis of the raw mosaic loses one raw pixel at each end (so R stays at the top-left) and the GT
    two pixels at each end; the packed burst is then replicate-padded by 1 pixel and the GT by 4 pixels on the far
    side (right, bottom), so the shapes are unchanged.
    """
    if not (horizontal or vertical):
        return burst, gt
    raw = unpack_raw(burst)  # (N, 2h, 2w)
    pad_burst = [0, 0, 0, 0]  # left, right, top, bottom
    pad_gt = [0, 0, 0, 0]
    if horizontal:
        raw = raw.flip(-1)[..., :, 1:-1]
        gt = gt.flip(-1)[..., :, 2:-2]
        pad_burst[1], pad_gt[1] = 1, 4
    if vertical:
        raw = raw.flip(-2)[..., 1:-1, :]
        gt = gt.flip(-2)[..., 2:-2, :]
        pad_burst[3], pad_gt[3] = 1, 4
    h2, w2 = raw.shape[-2:]
    packed = pack_raw(raw[..., :h2 - h2 % 2, :w2 - w2 % 2])  # (N, 4, h − 1 or h, w − 1 or w)
    packed = F.pad(packed, pad_burst, mode='replicate')
    gt = F.pad(gt.unsqueeze(0), pad_gt, mode='replicate').squeeze(0)
    return packed.contiguous(), gt.contiguous()


def _as_float_tensor(value: Any, source: str, key: str) -> Tensor:
    try:
        return torch.as_tensor(np.asarray(value, dtype=np.float32))
    except (TypeError, ValueError) as exc:
        raise ValueError(f'{source}: meta_info[{key!r}] is not numeric: {exc}') from None


# ---------------------------------------------------------------------------------------------------- dataset
@DATASET_REGISTRY.register()
class BurstSRDataset(Dataset):
    """The pre-processed BurstSR crops (Bhat et al., CVPR 2021): Samsung RAW bursts, exposure-matched Canon GT.

    Each item is ``{'lq': (burst_size, 4, h, w), 'gt': (3, 8h, 8w), 'meta_info': dict, 'key': 'SSSS_CCCC'}``:

    * ``lq`` = (int16(raw) − black_level) / 1023 per frame, frame 0 first (the reference);
    * ``gt`` = (canon − black_level[0, 1, 3]) / 16383 · s with s = (t_s·ISO_s/f_s²) / (t_c·ISO_c/f_c²) from the
      EXIF of Samsung frame 0 and of the Canon; no white balance, no clamping;
    * ``meta_info``: frame 0's ``black_level``, ``cam_wb``, ``daylight_wb``, ``color_matrix`` (as tensors),
      ``exposure``, ``f_number``, ``iso``, ``norm_factor`` (1023), ``black_level_subtracted`` (True),
      ``while_balance_applied`` (False, the upstream spelling), and for the GT ``gt_norm_factor`` (16383 / s),
      ``gt_cam_wb``, ``gt_black_level``, ``exposure_scale`` (s).

    Frame order: frame 0 is always first; frames 1..13 are drawn with ``random.sample`` on every access when
    ``random_frame_order`` (upstream behaviour, in training *and* validation), else frames 1..burst_size−1 in order.
    Then, when ``crop_size`` < the stored size, a crop (centred if ``center_crop``, else random) of the burst and
    the matching 8× crop of the GT; then, with ``random_flip``, the Bayer-preserving horizontal and vertical flips
    (each when ``random.random() > 0.5``, horizontal drawn first).

    Randomness: with ``seed=None`` the draws use Python's global ``random`` (the runner seeds it per worker); with a
    ``seed`` item ``i`` always uses ``random.Random(f'{seed}/{i}')``, so it is the same sample on every rank and run.

    Args:
        dataroot: folder holding ``train/`` and ``val/`` (or directly the crops of one split).
        split: 'train' or 'val'.
        burst_size: frames per burst (1..14).
        crop_size: packed crop size (≤ the stored 80); the GT crop is 8× that.
        center_crop: centred instead of random crops.
        random_flip: Bayer-preserving flip augmentation.
        random_frame_order: draw frames 1..13 at random on each access (see above).
        exclude: crop names to skip; None skips ``KNOWN_BAD_CROPS`` (the four flat-GT training crops).
        seed: fixed base seed (see Randomness).
        io_backend: ``{'type': 'disk'}`` (default) or ``{'type': 'lmdb', ...}`` (``codes/data/io_backend/``):
            ``dataroot`` is then a ``burstsr`` LMDB (``create_lmdb --format burstsr``, built from the folder
            holding ``train/``/``val/`` or from one split's folder), and an item's frames, pickles and Canon image
            are read in one transaction.
    """

    #: the io_backend block's problems, reported by option validation with the file's other ones
    check_options = staticmethod(io_backend_problems)

    def __init__(self, dataroot: str, split: str = 'train', burst_size: int = 14, crop_size: int = 80,
                 center_crop: bool = False, random_flip: bool = False, random_frame_order: bool = True,
                 exclude: list[str] | None = None, seed: int | None = None,
                 io_backend: dict | None = None) -> None:
        super().__init__()
        check_choice('split', split, ('train', 'val'), owner='BurstSRDataset')
        check_range('burst_size', burst_size, 1, NUM_FRAMES, owner='BurstSRDataset')
        check_min('crop_size', crop_size, 1, owner='BurstSRDataset')
        self.io_backend = check_io_backend(io_backend)
        self.dataroot = str(dataroot)
        self.split = split
        self.burst_size = burst_size
        self.crop_size = crop_size
        self.center_crop = center_crop
        self.random_flip = random_flip
        self.random_frame_order = random_frame_order
        self.exclude = tuple(KNOWN_BAD_CROPS if exclude is None else exclude)
        self.seed = seed
        self.backend = None
        self.prefix = ''
        if self.io_backend['type'] == 'lmdb':
            self.backend = open_backend(self.io_backend, self.dataroot, layout='burstsr')
            splits = self.backend.record.get('splits') or []
            if splits and split not in splits:
                raise FileNotFoundError(f'BurstSRDataset: {self.backend.path} holds the split(s) {splits}, not '
                                        f'{split!r}')
            self.prefix = f'{split}/' if splits else ''
            self.root = Path(self.backend.path) / self.prefix  # for messages: database and key prefix
            names = sorted({k[len(self.prefix):].split('/')[0] for k in self.backend.keys(self.prefix)
                            if k.endswith('/canon/im_raw')})
        else:
            self.root = self._split_root(Path(self.dataroot), split)
            names = sorted(d.name for d in self.root.iterdir() if d.is_dir() and (d / 'canon').is_dir())
        skipped = [n for n in names if n in self.exclude]
        self.names = [n for n in names if n not in self.exclude]
        if skipped:
            logger.info('BurstSRDataset(%s): skipping %d known bad crop(s): %s', split, len(skipped),
                        ', '.join(skipped))
        if not self.names:
            raise FileNotFoundError(f'BurstSRDataset: no crops (folders with canon/ and samsung_XX/) in '
                                    f'{self.root}; {_DATA_HINT}')

    @staticmethod
    def _split_root(root: Path, split: str) -> Path:
        if not root.is_dir():
            raise FileNotFoundError(f'BurstSRDataset: dataroot {str(root)!r} is not a folder; {_DATA_HINT}')
        if (root / split).is_dir():
            return root / split
        if any((d / 'canon').is_dir() for d in root.iterdir() if d.is_dir()):
            return root
        raise FileNotFoundError(f'BurstSRDataset: {str(root)!r} has no {split}/ folder and no crop folders; '
                                f'{_DATA_HINT}')

    def __len__(self) -> int:
        return len(self.names)

    # ------------------------------------------------------------------------------------------ storage
    def _read_burst(self, name: str, frame_ids: Sequence[int]) -> BurstFiles:
        """Read the selected Samsung frames, their meta pickles and the Canon image and meta of crop ``name``.

        All storage access of one item happens here; from an LMDB, in one transaction.
        """
        if self.backend is not None:
            base_key = f'{self.prefix}{name}'
            keys = [f'{base_key}/{d}/{f}' for d in [f'samsung_{i:02d}' for i in frame_ids] + ['canon']
                    for f in ('im_raw', 'meta_info')]
            values = self.backend.get_many(keys)
            arrays = [check_png16(v, 4 if '/samsung_' in k else 3, self.backend.describe(k))
                      for k, v in zip(keys[::2], values[::2])]
            metas = [self._meta_from_bytes(v, self.backend.describe(k)) for k, v in zip(keys[1::2], values[1::2])]
            return BurstFiles(arrays[:-1], metas[:-1], arrays[-1], metas[-1])
        base = self.root / name
        frames, frame_meta = [], []
        for i in frame_ids:
            frames.append(read_png16(base / f'samsung_{i:02d}' / 'im_raw.png', 4))
            frame_meta.append(self._load_meta(base / f'samsung_{i:02d}' / 'meta_info.pkl'))
        canon = read_png16(base / 'canon' / 'im_raw.png', 3)
        return BurstFiles(frames, frame_meta, canon, self._load_meta(base / 'canon' / 'meta_info.pkl'))

    @staticmethod
    def _meta_from_bytes(data: bytes, source: str) -> dict:
        meta = safe_loads_pickle(data, extra_allowed=EXIFREAD_ALLOWED, source=source)
        if not isinstance(meta, dict):
            raise ValueError(f'{source}: expected a dict, got {type(meta).__name__}')
        return meta

    @staticmethod
    def _load_meta(path: Path) -> dict:
        meta = safe_load_pickle(path, extra_allowed=EXIFREAD_ALLOWED)
        if not isinstance(meta, dict):
            raise ValueError(f'{path}: expected a dict, got {type(meta).__name__}')
        return meta

    # ------------------------------------------------------------------------------------------ sampling
    def _frame_ids(self, rng: Any) -> list[int]:
        if self.random_frame_order:
            return [0] + rng.sample(range(1, NUM_FRAMES), self.burst_size - 1)
        return list(range(self.burst_size))

    def _crop_corner(self, h: int, w: int, rng: Any) -> tuple[int, int]:
        if self.center_crop:
            return (h - self.crop_size) // 2, (w - self.crop_size) // 2
        return rng.randint(0, h - self.crop_size), rng.randint(0, w - self.crop_size)

    def __getitem__(self, index: int) -> dict[str, Any]:
        name = self.names[index]
        rng: Any = random.Random(f'{self.seed}/{index}') if self.seed is not None else random  # module: global draws
        ids = self._frame_ids(rng)
        files = self._read_burst(name, ids)
        source = str(self.root / name)
        burst = torch.stack([normalize_samsung(f, _black_level(m, 4, f'{source}/samsung_{i:02d}'))
                             for i, f, m in zip(ids, files.frames, files.frame_meta)])
        canon_level = _black_level(files.canon_meta, 3, f'{source}/canon')
        gt = normalize_canon(files.canon, canon_level)
        h, w = burst.shape[-2:]
        if gt.shape[-2:] != (8 * h, 8 * w):
            raise ValueError(f'{source}: canon image is {tuple(gt.shape[-2:])}, expected 8x the {h}x{w} burst')
        if self.crop_size > min(h, w):
            raise ValueError(f'{source}: crop_size {self.crop_size} exceeds the stored crop of {h}x{w}')
        if self.crop_size < max(h, w):
            r, c = self._crop_corner(h, w, rng)
            s = self.crop_size
            burst = burst[..., r:r + s, c:c + s]
            gt = gt[..., 8 * r:8 * (r + s), 8 * c:8 * (c + s)]
        if self.random_flip:
            horizontal = rng.random() > 0.5
            vertical = rng.random() > 0.5
            burst, gt = bayer_flip(burst, gt, horizontal, vertical)
        samsung = _camera_settings(files.frame_meta[0], SAMSUNG_EXIF, f'{source}/samsung_{ids[0]:02d}/meta_info.pkl')
        canon = _camera_settings(files.canon_meta, CANON_EXIF, f'{source}/canon/meta_info.pkl')
        scale = exposure_scale(samsung, canon)
        gt = gt * scale
        meta = self._meta_info(files, samsung, canon_level, scale, source)
        return {'lq': burst.float().contiguous(), 'gt': gt.float().contiguous(), 'meta_info': meta, 'key': name}

    @staticmethod
    def _meta_info(files: BurstFiles, samsung: tuple[float, float, float], canon_level: np.ndarray, scale: float,
                   source: str) -> dict[str, Any]:
        """A collatable meta dict: frame 0's camera data and the GT's normalisation."""
        m0, mc = files.frame_meta[0], files.canon_meta
        meta: dict[str, Any] = {
            'black_level': _as_float_tensor(_black_level(m0, 4, source), source, 'black_level'),
            'exposure': samsung[0], 'f_number': samsung[1], 'iso': samsung[2],
            'norm_factor': SAMSUNG_NORM, 'black_level_subtracted': True, 'while_balance_applied': False,
            'gt_norm_factor': CANON_NORM / scale,
            'gt_black_level': _as_float_tensor(canon_level, source, 'black_level'),
            'exposure_scale': scale,
        }
        for key in ('cam_wb', 'daylight_wb', 'color_matrix'):
            if key in m0:
                meta[key] = _as_float_tensor(m0[key], f'{source}/samsung_00', key)
        if 'cam_wb' in mc:
            meta['gt_cam_wb'] = _as_float_tensor(mc['cam_wb'], f'{source}/canon', 'cam_wb')
        return meta
