"""What a ``create_lmdb`` build stores: the entries (key, recorded name, source file) of each input layout.

One collector per layout walks the source folder and checks it: ``images`` (every image under the folder),
``synburst_val`` (SyntheticBurstVal: ``bursts/`` and ``gt/``), ``burstsr`` (BurstSR: ``train/``/``val/`` or one
split's ``SSSS_CCCC/samsung_XX`` and ``canon`` folders) and ``paired`` (blind-SR GT/LQ folders that pair by key).
Keys are relative paths without the extension, ``/``-separated, unique and never one of the format's own records.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import NamedTuple, Sequence

from codes.data.io_backend import FORMAT_KEY, LAYOUTS, META_PREFIX, key_from_name
from codes.utils.errors import UserError
from codes.utils.files import IMAGE_EXTENSIONS, natural_key

__all__ = ['Entry', 'BuildError', 'MAX_KEY_BYTES', 'collect_entries']

logger = logging.getLogger(__name__)

MAX_KEY_BYTES = 511 - len(META_PREFIX)  # LMDB's default maximum key size, less the meta prefix


class Entry(NamedTuple):
    """One value to store: its key, the source name recorded in meta_info, the file it comes from."""
    key: str
    name: str
    path: str

    @property
    def is_pickle(self) -> bool:
        return self.path.lower().endswith('.pkl')


class BuildError(UserError, ValueError):
    """Bad input for a build (layout, duplicate keys, existing output, ...)."""


class _Collector:
    """Entries with unique keys (a duplicate names both files)."""

    def __init__(self) -> None:
        self.entries: list[Entry] = []
        self.seen: dict[str, str] = {}

    def add(self, key: str, name: str, path: Path | str) -> None:
        if key == FORMAT_KEY or key.startswith(META_PREFIX):
            raise BuildError(f'{path}: key {key!r} is reserved by the database format')
        if len(key.encode('utf-8')) > MAX_KEY_BYTES:
            raise BuildError(f'{path}: key {key!r} is longer than {MAX_KEY_BYTES} bytes')
        if key in self.seen:
            raise BuildError(f'duplicate key {key!r}: {self.seen[key]} and {path} (keys are relative paths without '
                             'the extension; rename one of them)')
        self.seen[key] = str(path)
        self.entries.append(Entry(key, name, str(path)))


def _image_files(root: Path) -> list[str]:
    """Relative paths of the images under ``root`` (recursive, natural order, ``*.lmdb`` folders skipped)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.endswith('.lmdb')]
        for fn in filenames:
            if os.path.splitext(fn)[1].lower() in IMAGE_EXTENSIONS:
                out.append(os.path.relpath(os.path.join(dirpath, fn), root).replace(os.sep, '/'))
    return sorted(out, key=natural_key)


def _collect_images(root: Path, col: _Collector, prefix: str = '') -> int:
    files = _image_files(root)
    for rel in files:
        col.add(prefix + key_from_name(rel), prefix + rel, root / rel)
    return len(files)


def _subdirs(path: Path) -> list[Path]:
    return sorted((p for p in path.iterdir() if p.is_dir()), key=lambda p: natural_key(p.name))


def _require(path: Path) -> Path:
    if not path.is_file():
        raise BuildError(f'layout error: {path} is missing')
    return path


def _collect_synburst_val(root: Path, col: _Collector) -> dict:
    base = next((b for b in (root, root / 'val') if (b / 'bursts').is_dir()), None)
    if base is None:
        raise BuildError(f'{root}: not the SyntheticBurstVal layout (no bursts/ folder in it or in its val/)')
    bursts = _subdirs(base / 'bursts')
    if not bursts:
        raise BuildError(f'{base / "bursts"}: no burst folders')
    has_gt = (base / 'gt').is_dir()
    num_frames = None
    for burst in bursts:
        frames = sorted(burst.glob('im_raw_*.png'), key=lambda p: natural_key(p.name))
        if not frames:
            raise BuildError(f'layout error: {burst} holds no im_raw_XX.png frames')
        if num_frames is not None and len(frames) != num_frames:
            raise BuildError(f'layout error: {burst} has {len(frames)} frames, {bursts[0]} has {num_frames}')
        num_frames = len(frames)
        for f in frames:
            col.add(f'bursts/{burst.name}/{f.stem}', f'bursts/{burst.name}/{f.name}', f)
        if has_gt:
            gt = base / 'gt' / burst.name
            col.add(f'gt/{burst.name}/im_rgb', f'gt/{burst.name}/im_rgb.png', _require(gt / 'im_rgb.png'))
            col.add(f'gt/{burst.name}/meta_info', f'gt/{burst.name}/meta_info.pkl', _require(gt / 'meta_info.pkl'))
    return {'num_samples': len(bursts), 'num_frames': num_frames, 'has_gt': has_gt,
            'root': os.path.relpath(base, root).replace(os.sep, '/')}


def _is_burstsr_burst(path: Path) -> bool:
    return (path / 'samsung_00').is_dir()


def _collect_burstsr(root: Path, col: _Collector) -> dict:
    if not root.is_dir():
        raise BuildError(f'{root}: not a folder')
    children = _subdirs(root)
    if any(_is_burstsr_burst(c) for c in children):
        groups = [('', root)]
    else:
        groups = [(c.name + '/', c) for c in children if any(_is_burstsr_burst(b) for b in _subdirs(c))]
    if not groups:
        raise BuildError(f'{root}: not the BurstSR layout (no SSSS_CCCC/samsung_00 folders in it or in its '
                         'train/ or val/)')
    has_canon = None
    count = 0
    for prefix, split in groups:
        for burst in _subdirs(split):
            if not _is_burstsr_burst(burst):
                logger.warning('%s: no samsung_00 folder, skipped', burst)
                continue
            frames = sorted((d for d in burst.iterdir() if d.is_dir() and d.name.startswith('samsung_')),
                            key=lambda p: natural_key(p.name))
            for frame in frames:
                rel = f'{prefix}{burst.name}/{frame.name}'
                col.add(f'{rel}/im_raw', f'{rel}/im_raw.png', _require(frame / 'im_raw.png'))
                col.add(f'{rel}/meta_info', f'{rel}/meta_info.pkl', _require(frame / 'meta_info.pkl'))
            canon = (burst / 'canon').is_dir()
            if has_canon is not None and canon != has_canon:
                raise BuildError(f'layout error: {burst} {"has" if canon else "lacks"} a canon/ folder, unlike the '
                                 'bursts before it')
            has_canon = canon
            if canon:
                rel = f'{prefix}{burst.name}/canon'
                col.add(f'{rel}/im_raw', f'{rel}/im_raw.png', _require(burst / 'canon' / 'im_raw.png'))
                col.add(f'{rel}/meta_info', f'{rel}/meta_info.pkl', _require(burst / 'canon' / 'meta_info.pkl'))
            count += 1
    return {'num_samples': count, 'splits': [p.rstrip('/') for p, _ in groups if p], 'has_gt': bool(has_canon)}


def _find_sub(root: Path, names: Sequence[str]) -> Path | None:
    for name in names:
        for cand in (name, name.lower()):
            if (root / cand).is_dir():
                return root / cand
    return None


def _collect_paired(root: Path, lq: Path | None, col: _Collector) -> dict:
    if lq is None:
        gt, lq = _find_sub(root, ('GT', 'HR')), _find_sub(root, ('LQ', 'LR'))
        if gt is None or lq is None:
            raise BuildError(f'{root}: the paired format needs GT/ (or HR/) and LQ/ (or LR/) subfolders, or '
                             '--input GT_DIR --lq LQ_DIR')
    else:
        gt = root
    if not lq.is_dir():
        raise BuildError(f'LQ folder not found: {lq}')
    n_gt = _collect_images(gt, col, 'gt/')
    n_lq = _collect_images(lq, col, 'lq/')
    keys_gt = {e.key[3:] for e in col.entries if e.key.startswith('gt/')}
    keys_lq = {e.key[3:] for e in col.entries if e.key.startswith('lq/')}
    if keys_gt != keys_lq:
        only_gt, only_lq = sorted(keys_gt - keys_lq, key=natural_key), sorted(keys_lq - keys_gt, key=natural_key)
        raise BuildError(f'GT {gt} and LQ {lq} do not pair by key: {len(only_gt)} only in GT {only_gt[:5]}, '
                         f'{len(only_lq)} only in LQ {only_lq[:5]}')
    if not n_gt:
        raise BuildError(f'{gt}: no images')
    return {'num_samples': n_gt, 'gt_dir': str(gt), 'lq_dir': str(lq), 'num_lq': n_lq}


def collect_entries(fmt: str, input_dir: str | os.PathLike, lq_dir: str | os.PathLike | None = None
                    ) -> tuple[list[Entry], dict]:
    """The entries of a build and the layout facts for the format record.

    Raises:
        BuildError: unknown format, layout error, duplicate or reserved keys, unpaired GT/LQ.
    """
    root = Path(input_dir)
    if not root.is_dir():
        raise BuildError(f'input folder not found: {root}')
    if lq_dir is not None and fmt != 'paired':
        raise BuildError('--lq only applies to --format paired')
    col = _Collector()
    if fmt == 'images':
        if not _collect_images(root, col):
            raise BuildError(f'{root}: no images ({"/".join(IMAGE_EXTENSIONS)})')
        facts: dict = {'num_samples': len(col.entries)}
    elif fmt == 'synburst_val':
        facts = _collect_synburst_val(root, col)
    elif fmt == 'burstsr':
        facts = _collect_burstsr(root, col)
    elif fmt == 'paired':
        facts = _collect_paired(root, Path(lq_dir) if lq_dir is not None else None, col)
    else:
        raise BuildError(f'unknown format {fmt!r}; one of {", ".join(LAYOUTS)}')
    return col.entries, facts
