"""Labelled comparison panels: what a validation, a test or an inference run saves as its picture of a sample.

A panel is a grid of tiles, each with a text strip above it (OpenCV's Hershey font, white on dark grey, about 11 px
capitals, so it reads at 100 % zoom):

* row 1: every view at full size (the simple-way input, the prediction(s), the ground truth), the crop region drawn
  as a green box, then the error map of the last prediction against the ground truth;
* row 2: the same crop of every view, enlarged by pixel repetition (nearest neighbour) to the width of a full tile;
* row 3 (optional): extra tiles, e.g. DCLS's estimated and true blur kernels.

A view's label carries its full-image value of the metric (given by the caller, so it is the number the metric
logged) and its crop tile the PSNR of the crop against the ground truth's crop (data range 1). The crop is given, or
chosen where the error of the last prediction is largest (outside ``border``); without ground truth, where the last
two views differ most. Images too small for their labels are shown enlarged by an integer factor (said in the label).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np

__all__ = ['View', 'PanelTile', 'Panel', 'comparison_panel', 'select_crop', 'crop_psnr', 'kernel_tile',
           'error_map', 'label_tile', 'write_rgb', 'save_sample_pictures', 'panel_metric', 'CROP_COLOR']

#: RGB colour of the crop box drawn on the full-size tiles.
CROP_COLOR = (0, 255, 0)
BACKGROUND = 32
TEXT_COLOR = (255, 255, 255)
FONT = cv2.FONT_HERSHEY_SIMPLEX
FONT_SCALE = 0.5
MIN_FONT_SCALE = 0.35
LINE_HEIGHT = 18
PAD = 4
MIN_TILE_WIDTH = 192
MIN_LABEL_WIDTH = 224


@dataclass
class View:
    """One image of a sample.

    Args:
        name: the tile's title ('bilinear input', 'prediction', 'ground truth', ...).
        srgb: (H, W, 3) uint8 RGB rendering.
        data: (H, W, C) float array in the metric's space (e.g. linear RGB in [0, 1]) for crop PSNR and the error
            map; None uses ``srgb`` / 255.
        value: the full-image metric value against the ground truth (None: not shown).
        metric: the name shown with ``value``.
    """
    name: str
    srgb: np.ndarray
    data: np.ndarray | None = None
    value: float | None = None
    metric: str = 'PSNR'

    def array(self) -> np.ndarray:
        return self.data if self.data is not None else self.srgb.astype(np.float32) / 255.0


@dataclass
class PanelTile:
    """Where a tile's image lies in the panel: ``box`` = (x, y, w, h) in panel pixels, its label lines."""
    name: str
    label: list[str]
    box: tuple[int, int, int, int]


@dataclass
class Panel:
    """The panel image (H, W, 3) uint8 RGB, its tiles in reading order and the crop (top, left, size) in image
    pixels."""
    image: np.ndarray
    tiles: list[PanelTile] = field(default_factory=list)
    crop: tuple[int, int, int] = (0, 0, 0)
    zoom: int = 1
    display_scale: int = 1

    def tile(self, name: str) -> PanelTile:
        """The tile called ``name``."""
        for t in self.tiles:
            if t.name == name:
                return t
        raise KeyError(f'no tile {name!r} (tiles: {[t.name for t in self.tiles]})')


def crop_psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR (data range 1) of two same-shaped float arrays; inf when equal."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else -10.0 * math.log10(mse)


def _abs_error(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(a.astype(np.float32) - b.astype(np.float32)).mean(axis=-1)


def select_crop(error: np.ndarray, size: int, border: int = 0) -> tuple[int, int]:
    """(top, left) of the ``size`` x ``size`` window with the largest summed ``error`` (H, W), the window kept
    ``border`` pixels away from the edges when the image allows it; ties go to the first in raster order."""
    h, w = error.shape
    lo_y, lo_x = (border, border) if h - 2 * border >= size and w - 2 * border >= size else (0, 0)
    hi_y, hi_x = h - lo_y - size, w - lo_x - size  # last valid top / left
    integral = cv2.integral(error.astype(np.float64))  # (h+1, w+1)
    sums = (integral[size:, size:] - integral[:-size, size:] - integral[size:, :-size] + integral[:-size, :-size])
    window = sums[lo_y:hi_y + 1, lo_x:hi_x + 1]
    top, left = np.unravel_index(int(np.argmax(window)), window.shape)
    return int(top) + lo_y, int(left) + lo_x


def error_map(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, float]:
    """Mean absolute error over channels as an (H, W, 3) uint8 RGB heat map (inferno), scaled so its 99.5th
    percentile is white; returns the map and that scale."""
    return _heat_map(_abs_error(pred, gt))


def _heat_map(err: np.ndarray) -> tuple[np.ndarray, float]:
    scale = float(np.percentile(err, 99.5)) or float(err.max()) or 1.0
    gray = np.clip(err / scale * 255.0, 0, 255).astype(np.uint8)
    return cv2.cvtColor(cv2.applyColorMap(gray, cv2.COLORMAP_INFERNO), cv2.COLOR_BGR2RGB), scale


def kernel_tile(kernel: np.ndarray, size: int) -> np.ndarray:
    """(ks, ks) blur kernel -> (≈size, ≈size, 3) uint8: negative taps at 0, the maximum white, enlarged by pixel
    repetition to the largest integer factor that fits ``size``."""
    k = np.clip(np.asarray(kernel, dtype=np.float64).reshape(kernel.shape[-2:]), 0, None)
    peak = k.max()
    img = np.round(k / peak * 255.0).astype(np.uint8) if peak > 0 else np.zeros(k.shape, np.uint8)
    zoom = max(1, size // max(k.shape))
    img = np.kron(img, np.ones((zoom, zoom), np.uint8))
    return np.repeat(img[..., None], 3, axis=2)


def _fit_text(line: str, width: int) -> tuple[str, float]:
    scale = FONT_SCALE
    while scale > MIN_FONT_SCALE and cv2.getTextSize(line, FONT, scale, 1)[0][0] > width:
        scale = round(scale - 0.05, 2)
    while len(line) > 1 and cv2.getTextSize(line, FONT, scale, 1)[0][0] > width:
        line = line[:-2] + '~'
    return line, scale


def label_tile(image: np.ndarray, lines: Sequence[str], n_lines: int | None = None) -> np.ndarray:
    """``image`` (H, W, 3) uint8 under a dark strip holding ``lines`` (n_lines rows tall)."""
    n = max(len(lines), n_lines or 0)
    h, w = image.shape[:2]
    strip = np.full((n * LINE_HEIGHT + PAD, w, 3), BACKGROUND, np.uint8)
    for j, line in enumerate(lines):
        text, scale = _fit_text(line, w - 4)
        cv2.putText(strip, text, (2, (j + 1) * LINE_HEIGHT - 4), FONT, scale, TEXT_COLOR, 1, cv2.LINE_AA)
    return np.concatenate([strip, image], axis=0)


def _grid(rows: list[list[tuple[str, list[str], np.ndarray]]]) -> tuple[np.ndarray, list[PanelTile]]:
    """Rows of (name, label lines, image) -> one RGB image with PAD between tiles, and the tiles' image boxes."""
    n_lines = max((len(lab) for row in rows for _, lab, _ in row), default=1)
    strip = n_lines * LINE_HEIGHT + PAD
    row_imgs, tiles, y = [], [], PAD
    for row in rows:
        height = max(img.shape[0] for _, _, img in row) + strip
        parts, x = [], PAD
        for name, lab, img in row:
            wide = max(img.shape[1], MIN_LABEL_WIDTH)  # narrow tiles (kernels) get room for their label
            cell = label_tile(np.pad(img, ((0, 0), (0, wide - img.shape[1]), (0, 0)), constant_values=BACKGROUND),
                              lab, n_lines)
            cell = np.pad(cell, ((0, height - cell.shape[0]), (0, PAD), (0, 0)), constant_values=BACKGROUND)
            tiles.append(PanelTile(name, list(lab), (x, y + strip, img.shape[1], img.shape[0])))
            parts.append(cell)
            x += wide + PAD
        row_imgs.append(np.concatenate(parts, axis=1))
        y += height + PAD
    width = max(r.shape[1] for r in row_imgs) + PAD
    canvas = np.full((y, width, 3), BACKGROUND, np.uint8)
    yy = PAD
    for r in row_imgs:
        canvas[yy:yy + r.shape[0], PAD:PAD + r.shape[1]] = r
        yy += r.shape[0] + PAD
    return canvas, tiles


def _fmt(value: float | None, metric: str) -> str | None:
    if value is None:
        return None
    return f'{metric} {value:.2f} dB' if math.isfinite(value) else f'{metric} inf'


def comparison_panel(views: Sequence[View], gt: View | None = None, *, crop: tuple[int, int] | None = None,
                     crop_size: int | None = None, border: int = 0,
                     extra: Sequence[tuple[str, np.ndarray]] = ()) -> Panel:
    """The comparison panel of ``views`` (input first, the prediction to judge last) against ``gt``.

    Args:
        views: the images to compare, all of the ground truth's size.
        gt: the ground truth (None: no PSNR, no error map; the crop goes where the last two views differ most).
        crop: (top, left) of the crop in image pixels; None chooses it (see the module docstring).
        crop_size: side of the crop; default a quarter of the shorter side (at least 8 px).
        border: pixels the metric ignores on each side; a chosen crop stays out of them.
        extra: further (label, (h, w, 3) uint8) tiles for a third row (kernels).

    Returns:
        The :class:`Panel`; its tiles are named ``<view name>``, ``error``, ``<view name> crop`` and the labels of
        ``extra``.
    """
    if not views:
        raise ValueError('a panel needs at least one view')
    shown = list(views) + ([gt] if gt is not None else [])
    h, w = _check_views(shown)
    size = int(crop_size or max(8, min(h, w) // 4))
    size = max(1, min(size, h, w))
    err = _abs_error(views[-1].array(), gt.array()) if gt is not None else None
    top, left = _place_crop(views, err, crop, size, border, (h, w))
    scale = max(1, math.ceil(MIN_TILE_WIDTH / w))  # small images are shown enlarged so their labels fit
    zoom = max(2, (w * scale) // size)
    row1 = [_full_tile(v, gt, (top, left, size), scale) for v in shown]
    row2 = [_crop_tile(v, gt, (top, left, size), zoom) for v in shown]
    if gt is not None:
        emap, emax = _heat_map(err)
        row1.append(('error', [f'|{views[-1].name} - ground truth|', f'white = {emax:.3g}'], _enlarge(emap, scale)))
    rows = [row1, row2]
    if extra:
        rows.append([(name, [name], img) for name, img in extra])
    image, tiles = _grid(rows)
    return Panel(image, tiles, (top, left, size), zoom, scale)


def _check_views(shown: Sequence[View]) -> tuple[int, int]:
    """The (h, w) every view shares; a view of another size or not (h, w, 3) uint8 is a ``ValueError``."""
    h, w = shown[0].srgb.shape[:2]
    for v in shown:
        if v.srgb.shape[:2] != (h, w) or v.srgb.dtype != np.uint8 or v.srgb.ndim != 3:
            raise ValueError(f'view {v.name!r}: expected a ({h}, {w}, 3) uint8 image, got {v.srgb.shape} '
                             f'{v.srgb.dtype}')
    return h, w


def _place_crop(views: Sequence[View], err: np.ndarray | None, crop: tuple[int, int] | None, size: int,
                border: int, shape: tuple[int, int]) -> tuple[int, int]:
    """(top, left) of the crop: the given one (checked to fit), else where the error (or, without a ground truth,
    the difference of the last two views) is largest, else the centre."""
    h, w = shape
    if crop is None:
        diff = err if err is not None else (_abs_error(views[-1].array(), views[-2].array()) if len(views) >= 2
                                            else None)
        crop = select_crop(diff, size, border) if diff is not None else ((h - size) // 2, (w - size) // 2)
    top, left = int(crop[0]), int(crop[1])
    if not (0 <= top <= h - size and 0 <= left <= w - size):
        raise ValueError(f'crop ({top}, {left}) of size {size} does not fit a {h}x{w} image')
    return top, left


def _enlarge(img: np.ndarray, scale: int) -> np.ndarray:
    return img if scale == 1 else np.kron(img, np.ones((scale, scale, 1), np.uint8))


def _full_tile(v: View, gt: View | None, box: tuple[int, int, int], scale: int) -> tuple[str, list[str], np.ndarray]:
    """The first-row tile of ``v``: the whole image (enlarged ``scale`` times) with the crop's box, its name and its
    metric (the ground truth: its size)."""
    top, left, size = box
    h, w = v.srgb.shape[:2]
    img = np.array(_enlarge(v.srgb, scale), order='C')  # a copy: the box must not be drawn into the caller's image
    y0, x0 = top * scale, left * scale
    thick = max(1, (w * scale) // 256)
    cv2.rectangle(img, (x0, y0), (x0 + size * scale - 1, y0 + size * scale - 1), CROP_COLOR, thick)
    label = [v.name + ('' if scale == 1 else f' (shown x{scale})')]
    if v is not gt:
        label.append(_fmt(v.value, v.metric) or ('no ground truth' if gt is None else ''))
    else:
        label.append(f'{w}x{h}')
    return v.name, label, img


def _crop_tile(v: View, gt: View | None, box: tuple[int, int, int], zoom: int) -> tuple[str, list[str], np.ndarray]:
    """The second-row tile of ``v``: the crop enlarged ``zoom`` times, with its PSNR against the ground truth (the
    ground truth: the crop's place and size)."""
    top, left, size = box
    patch = v.srgb[top:top + size, left:left + size]
    crop_lines = [f'{v.name} crop x{zoom}']
    if gt is not None and v is not gt:
        ref = gt.array()[top:top + size, left:left + size]
        crop_lines.append(_fmt(crop_psnr(v.array()[top:top + size, left:left + size], ref), 'PSNR crop'))
    elif v is gt:
        crop_lines.append(f'({left}, {top}) {size}x{size} px')
    return f'{v.name} crop', crop_lines, np.kron(patch, np.ones((zoom, zoom, 1), np.uint8))


def write_rgb(path: str | os.PathLike, image: np.ndarray) -> None:
    """Write an (H, W, 3) uint8 RGB or (H, W) gray image as PNG (parent folders created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = image if image.ndim == 2 else cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2BGR)
    if not cv2.imwrite(str(path), arr):
        raise OSError(f'could not write {path}')


def save_sample_pictures(image_dir: str | os.PathLike | None, stem: str, panel: Panel,
                         files: dict[str, np.ndarray] | None = None, tb_writer: Any = None, tag: str = '',
                         step: int = 0) -> None:
    """Write ``<stem>_panel.png`` and each ``files`` entry as ``<stem><suffix>.png`` under ``image_dir``, and send
    the panel to ``tb_writer`` (TensorBoard or any writer with ``add_image``) under ``tag``."""
    if image_dir is not None:
        write_rgb(Path(image_dir) / f'{stem}_panel.png', panel.image)
        for suffix, image in (files or {}).items():
            write_rgb(Path(image_dir) / f'{stem}{suffix}.png', image)
    if tb_writer is not None:
        tb_writer.add_image(tag or stem, panel.image, step, dataformats='HWC')


def panel_metric(metrics: dict[str, dict]) -> str | None:
    """The validation metric a panel shows: ``psnr`` if configured, else the first whose type names a PSNR."""
    if 'psnr' in metrics:
        return 'psnr'
    return next((n for n, m in metrics.items() if 'psnr' in str(m.get('type', '')).lower()), None)
