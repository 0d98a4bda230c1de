"""Reading the user's own bursts for inference (``infer.py``): discovery, the three burst formats, frame counts.

Each burst becomes frames (M, 4, h, w): packed RGGB, linear, in [0, 1], frame 0 the reference (the first file in
natural order), and a :class:`~codes.data.srgb_render.Render` that says how its result is viewed:

* ``png``: a folder of challenge-format frames, 4-channel uint16 PNGs holding packed RGGB × 2^14, read with
  OpenCV's ``IMREAD_UNCHANGED`` (the SyntheticBurstVal / NTIRE layout);
* ``burstsr``: a BurstSR burst folder with ``samsung_{00..13}/im_raw.png`` and ``meta_info.pkl``, black level
  subtracted and divided by 1023;
* ``raw``: a folder of RAW files (DNG and the other formats LibRaw reads, via ``rawpy``): the Bayer pattern is
  brought to RGGB by dropping the first row and/or column where needed, per-channel black level subtracted and
  divided by (white − black); the as-shot white balance and the camera's colour matrix are kept for rendering.

The model's burst size is fixed when it is built; :func:`select_frames` is the rule for other frame counts.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np
import torch

from codes.data.camera_pipeline import pack_raw
from codes.data.input_errors import InputError, InputNotFoundError, InputReadError, MissingPackageError
from codes.data.srgb_render import Render
from codes.utils.files import natural_key

__all__ = ['RAW_EXTENSIONS', 'SRGB_TO_XYZ', 'Burst', 'select_frames', 'read_png_burst', 'read_raw_frame',
           'read_raw_burst', 'read_burstsr_burst', 'burst_kind', 'find_bursts', 'read_burst']

logger = logging.getLogger(__name__)

#: File endings LibRaw reads (case-insensitive).
RAW_EXTENSIONS = frozenset({
    '.dng', '.cr2', '.cr3', '.crw', '.nef', '.nrw', '.arw', '.srf', '.sr2', '.raf', '.orf', '.rw2', '.rwl', '.pef',
    '.ptx', '.srw', '.3fr', '.fff', '.iiq', '.mos', '.mef', '.mrw', '.x3f', '.erf', '.kdc', '.dcr', '.raw', '.gpr'})
#: sRGB (D65) -> XYZ (IEC 61966-2-1).
SRGB_TO_XYZ = np.array([[0.4124564, 0.3575761, 0.1804375],
                        [0.2126729, 0.7151522, 0.0721750],
                        [0.0193339, 0.1191920, 0.9503041]])


@dataclass
class Burst:
    """One burst read from disk: ``frames`` (M, 4, h, w) float32 packed RGGB in [0, 1], frame 0 the reference."""
    name: str
    kind: str
    frames: torch.Tensor
    render: Render
    files: list[str] = field(default_factory=list)



def select_frames(num_frames: int, burst_size: int) -> tuple[list[int], str | None]:
    """The frame-count rule: which of ``num_frames`` frames fill a model built for ``burst_size``.

    * equal: all frames, in order;
    * more: the first ``burst_size`` frames (frame 0 stays the reference; the frames nearest to it in time);
    * fewer: frame 0, then frames 1 … M−1 repeated cyclically (frame 0 repeated when it is alone), since the
      fusion layer needs exactly ``burst_size`` frames and a repeated frame adds no new content.

    Returns the indices and a message (None when nothing changed).
    """
    if num_frames < 1:
        raise InputError('a burst needs at least one frame')
    if num_frames == burst_size:
        return list(range(num_frames)), None
    if num_frames > burst_size:
        dropped = (f'frame {burst_size}' if num_frames == burst_size + 1
                   else f'frames {burst_size}-{num_frames - 1}')
        return (list(range(burst_size)),
                f'{num_frames} frames but the model takes {burst_size}: using frames 0-{burst_size - 1} '
                f'(frame 0 is the reference) and dropping {dropped}')
    others = list(range(1, num_frames)) or [0]
    idx = [0] + [others[i % len(others)] for i in range(burst_size - 1)]
    return idx, (f'{num_frames} frame(s) but the model takes {burst_size}: repeating frames cyclically as {idx} '
                 f'(frame 0 is the reference)')


# ------------------------------------------------------------------------------------------------- PNG frames
def _read_png_frame(path: Path) -> torch.Tensor:
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise InputReadError(f'cannot decode image: {path}')
    if image.dtype != np.uint16 or image.ndim != 3 or image.shape[2] != 4:
        raise InputError(f'{path}: a challenge-format frame is a 4-channel uint16 PNG (packed RGGB x 2^14), got '
                         f'dtype {image.dtype} and shape {image.shape}')
    return torch.from_numpy(image.astype(np.float32)).permute(2, 0, 1) / 2 ** 14


def _gray_world(reference: torch.Tensor, source: str) -> Render:
    """Gray-world gains from a packed reference frame (4, h, w), for bursts that carry no white balance."""
    r, g, b = (reference[0].mean().item(), ((reference[1] + reference[2]) / 2).mean().item(),
               reference[3].mean().item())
    eps = 1e-6
    return Render(red_gain=g / max(r, eps), blue_gain=g / max(b, eps), normalize_max=True,
                  source=f'{source} (no metadata: gray-world white balance, divided by the maximum)')


def _synthetic_render(path: Path) -> Render:
    """The synthetic post-processing from a SyntheticBurstVal-style ``meta_info.pkl``."""
    from codes.utils.safe_pickle import safe_load_pickle
    meta = safe_load_pickle(path)
    try:
        cam2rgb = np.asarray(meta['cam2rgb'], dtype=np.float64).reshape(3, 3)
        return Render(red_gain=float(meta['red_gain']), blue_gain=float(meta['blue_gain']),
                      rgb_gain=float(meta['rgb_gain']), cam2rgb=tuple(tuple(float(v) for v in r) for r in cam2rgb),
                      gamma=bool(meta.get('gamma', True)), smoothstep=bool(meta.get('smoothstep', True)),
                      source=f'{path} (synthetic gains and cam2rgb)')
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f'{path}: expected the synthetic meta_info keys rgb_gain, red_gain, blue_gain, cam2rgb '
                         f'({type(exc).__name__}: {exc})') from None


def read_png_burst(folder: str | os.PathLike) -> Burst:
    """A folder of challenge-format frames (``*.png``, natural order; frame 0 the reference). A ``meta_info.pkl``
    beside them (SyntheticBurstVal's, read with the restricted unpickler) drives the rendering; without one the
    rendering uses gray-world white balance."""
    folder = Path(folder)
    files = sorted((p for p in folder.iterdir() if p.suffix.lower() == '.png'),
                   key=lambda p: natural_key(p.name.lower()))
    if not files:
        raise InputNotFoundError(f'{folder}: no PNG frames')
    frames = [_read_png_frame(p) for p in files]
    _check_same_size(frames, files)
    frames_t = torch.stack(frames)
    meta = folder / 'meta_info.pkl'
    render = _synthetic_render(meta) if meta.is_file() else _gray_world(frames_t[0], 'challenge PNG frames')
    return Burst(folder.name, 'png', frames_t, render, [str(p) for p in files])


def _check_same_size(frames: Sequence[torch.Tensor], files: Sequence[Any]) -> None:
    for f, p in zip(frames, files):
        if f.shape != frames[0].shape:
            raise InputError(f'{p}: frame size {tuple(f.shape)} differs from {files[0]} ({tuple(frames[0].shape)}); '
                             'all frames of a burst must have the same size')


# ------------------------------------------------------------------------------------------------- RAW files
def _cam2rgb_from_xyz(cam_xyz: np.ndarray) -> np.ndarray:
    """Camera->sRGB from an XYZ->camera matrix (3, 3), as LibRaw does: rows of cam·sRGB2XYZ normalised to 1,
    inverted."""
    cam_rgb = cam_xyz @ SRGB_TO_XYZ
    cam_rgb = cam_rgb / cam_rgb.sum(axis=1, keepdims=True)
    return np.linalg.inv(cam_rgb)


def read_raw_frame(path: str | os.PathLike) -> tuple[torch.Tensor, Render, tuple[int, int]]:
    """One RAW file -> packed RGGB (4, h, w) in [0, 1], its rendering (as-shot WB, colour matrix) and the (row,
    column) offset cropped to reach RGGB. Raises ``ValueError`` naming the file for non-Bayer sensors."""
    try:
        import rawpy
    except ImportError as exc:
        raise MissingPackageError('reading RAW files needs rawpy: pip install rawpy') from exc
    path = Path(path)
    if not path.is_file():
        raise InputNotFoundError(f'RAW file not found: {path}')
    try:
        raw = rawpy.imread(str(path))
    except Exception as exc:  # rawpy raises LibRawError subclasses
        raise InputError(f'{path}: LibRaw cannot read this file ({type(exc).__name__}: {exc})') from None
    with raw:
        pattern = raw.raw_pattern
        desc = raw.color_desc.decode('ascii', 'replace')
        if pattern is None or np.asarray(pattern).shape != (2, 2) or raw.num_colors != 3:
            raise InputError(f'{path}: not a 2x2 Bayer sensor (pattern {pattern}, colours {desc!r}); BSRT takes '
                             'RGGB Bayer bursts (X-Trans, Foveon, 4-colour and linear DNGs are not supported)')
        letters = [[desc[int(c)] for c in row] for row in np.asarray(pattern)]
        rpos = [(y, x) for y in range(2) for x in range(2) if letters[y][x] == 'R']
        if len(rpos) != 1:
            raise InputError(f'{path}: Bayer pattern {letters} has no single red site')
        ry, rx = rpos[0]
        if letters[1 - ry][1 - rx] != 'B' or letters[ry][1 - rx] != 'G' or letters[1 - ry][rx] != 'G':
            raise InputError(f'{path}: unsupported colour filter pattern {letters}')
        image = raw.raw_image_visible.astype(np.float32)
        colors = raw.raw_colors_visible
        black = np.asarray(raw.black_level_per_channel, dtype=np.float32)[colors]
        white_pc = raw.camera_white_level_per_channel
        white = (np.asarray(white_pc, dtype=np.float32)[colors] if white_pc is not None and any(white_pc)
                 else np.float32(raw.white_level))
        wb = [float(v) for v in raw.camera_whitebalance]
        wb_source = 'as-shot white balance'
        if not wb[1] or not all(v > 0 for v in wb[:3]):
            wb = [float(v) for v in raw.daylight_whitebalance]
            wb_source = 'daylight white balance (no as-shot value in the file)'
            if not wb[1] or not all(v > 0 for v in wb[:3]):
                wb, wb_source = [1.0, 1.0, 1.0, 1.0], 'no white balance in the file'
        cmatrix = np.asarray(raw.color_matrix, dtype=np.float64)[:3, :3]
        cam_xyz = np.asarray(raw.rgb_xyz_matrix, dtype=np.float64)[:3, :3]
        if np.abs(cmatrix).sum() > 0:
            cam2rgb, ccm_source = cmatrix, 'colour matrix'
        elif np.abs(cam_xyz).sum() > 0:
            cam2rgb, ccm_source = _cam2rgb_from_xyz(cam_xyz), 'colour matrix from the XYZ->camera matrix'
        else:
            cam2rgb, ccm_source = None, 'no colour matrix in the file'
    scale = np.maximum(white - black, 1.0)
    linear = np.clip((image - black) / scale, 0.0, 1.0)
    h, w = linear.shape
    h2, w2 = (h - ry) // 2 * 2, (w - rx) // 2 * 2
    if h2 < 2 or w2 < 2:
        raise InputError(f'{path}: image too small ({h}x{w})')
    linear = linear[ry:ry + h2, rx:rx + w2]
    packed = pack_raw(torch.from_numpy(np.ascontiguousarray(linear)))
    render = Render(red_gain=wb[0] / wb[1], blue_gain=wb[2] / wb[1],
                    cam2rgb=None if cam2rgb is None else tuple(tuple(float(v) for v in row) for row in cam2rgb),
                    source=f'RAW ({wb_source}, {ccm_source})')
    return packed, render, (ry, rx)


def read_raw_burst(files: str | os.PathLike | Sequence[str | os.PathLike]) -> Burst:
    """A folder of RAW files (natural order; frame 0 the reference), or one RAW file (a 1-frame burst). The
    rendering comes from the reference frame."""
    if isinstance(files, (str, os.PathLike)):
        p = Path(files)
        name = p.name if p.is_dir() else p.stem
        files = (sorted((f for f in p.iterdir() if f.suffix.lower() in RAW_EXTENSIONS),
                        key=lambda f: natural_key(f.name.lower())) if p.is_dir() else [p])
    else:
        files = [Path(f) for f in files]
        name = files[0].parent.name
    if not files:
        raise InputNotFoundError(f'no RAW files ({", ".join(sorted(RAW_EXTENSIONS))})')
    frames, render, offset0 = [], None, None
    for f in files:
        packed, r, offset = read_raw_frame(f)
        if render is None:
            render, offset0 = r, offset
        elif offset != offset0:
            raise InputError(f'{f}: Bayer phase differs from {files[0]}; all frames must come from one camera mode')
        frames.append(packed)
    _check_same_size(frames, files)
    if offset0 != (0, 0):
        logger.info('%s: Bayer pattern brought to RGGB by dropping %d row(s) and %d column(s) at the top-left',
                    name, *offset0)
    return Burst(name, 'raw', torch.stack(frames), render, [str(f) for f in files])


# ------------------------------------------------------------------------------------------------- BurstSR
def read_burstsr_burst(folder: str | os.PathLike) -> Burst:
    """A BurstSR burst folder (``samsung_XX/im_raw.png`` + ``meta_info.pkl``), normalised as ``BurstSRDataset``
    does (black level subtracted, ÷ 1023, not clamped); rendered as BurstSR's post-processing (camera white
    balance, ÷ max, gamma, smoothstep, no colour matrix)."""
    from codes.data.burstsr_dataset import normalize_samsung
    from codes.data.io_backend import read_png16
    from codes.utils.safe_pickle import EXIFREAD_ALLOWED, safe_load_pickle
    folder = Path(folder)
    dirs = sorted((d for d in folder.iterdir() if d.is_dir() and d.name.startswith('samsung_')),
                  key=lambda d: natural_key(d.name.lower()))
    if not dirs:
        raise InputNotFoundError(f'{folder}: no samsung_XX frame folders')
    frames, wb = [], None
    for d in dirs:
        meta_path = d / 'meta_info.pkl'
        meta = safe_load_pickle(meta_path, extra_allowed=EXIFREAD_ALLOWED) if meta_path.is_file() else None
        if not isinstance(meta, dict) or 'black_level' not in meta:
            raise InputError(f'{meta_path}: a BurstSR frame needs its meta_info.pkl with black_level (and cam_wb)')
        frames.append(normalize_samsung(read_png16(d / 'im_raw.png', 4), meta['black_level']))
        if wb is None:
            cam_wb = np.asarray(meta.get('cam_wb', [1.0, 1.0, 1.0]), dtype=np.float64).reshape(-1)
            wb = [float(v) for v in cam_wb]
    _check_same_size(frames, dirs)
    render = Render(red_gain=wb[0] / wb[1], blue_gain=wb[-1] / wb[1], normalize_max=True,
                    source='BurstSR meta_info (camera white balance, divided by the maximum)')
    return Burst(folder.name, 'burstsr', torch.stack(frames), render, [str(d) for d in dirs])


# ------------------------------------------------------------------------------------------------- discovery
def burst_kind(folder: Path) -> str | None:
    """'burstsr', 'raw' or 'png' when ``folder`` itself holds one burst of that kind, else None."""
    if not folder.is_dir():
        return None
    entries = list(folder.iterdir())
    if any(e.is_dir() and e.name.startswith('samsung_') for e in entries):
        return 'burstsr'
    if any(e.is_file() and e.suffix.lower() in RAW_EXTENSIONS for e in entries):
        return 'raw'
    if any(e.is_file() and e.suffix.lower() == '.png' for e in entries):
        return 'png'
    return None


_READERS = {'png': read_png_burst, 'raw': read_raw_burst, 'burstsr': read_burstsr_burst}


def find_bursts(path: str | os.PathLike, kind: str = 'auto') -> list[tuple[str, Path]]:
    """The bursts under ``path`` as (kind, path): one RAW file; a burst folder; or a folder of burst folders.

    ``kind`` forces 'png', 'raw' or 'burstsr' instead of detecting it.
    """
    path = Path(path)
    if not path.exists():
        raise InputNotFoundError(f'input not found: {path}')
    if kind not in ('auto', *_READERS):
        raise InputError(f"input kind must be 'auto' or one of {sorted(_READERS)}, got {kind!r}")
    if path.is_file():
        if path.suffix.lower() in RAW_EXTENSIONS:
            return [('raw', path)]
        raise InputError(f'{path}: a burst model takes a burst folder (PNG frames, RAW files or a BurstSR '
                         f'samsung_XX burst) or one RAW file ({", ".join(sorted(RAW_EXTENSIONS))})')
    own = burst_kind(path)
    if own is not None:
        return [(own if kind == 'auto' else kind, path)]
    subs = sorted((d for d in path.iterdir() if d.is_dir()), key=lambda d: natural_key(d.name.lower()))
    found = []
    for d in subs:
        own = burst_kind(d)
        if own is not None:
            found.append((own if kind == 'auto' else kind, d))
    if not found:
        raise InputNotFoundError(f'{path}: no burst found; expected 4-channel PNG frames, RAW files or samsung_XX '
                                'folders in it or in its sub-folders')
    return found


def read_burst(kind: str, path: Path) -> Burst:
    """Read one burst found by :func:`find_bursts`."""
    return _READERS[kind](path)
