"""What inference writes: 16-bit linear and 8-bit sRGB images streamed band by band, and DCLS kernels."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import cv2
import numpy as np
import torch

from codes.utils.image_writers import row_writer

__all__ = ['linear_to_uint16', 'save_linear', 'MEMORY_HINT', 'stream_outputs', 'save_srgb', 'save_kernel']


def linear_to_uint16(image: torch.Tensor) -> np.ndarray:
    """(3, H, W) image in [0, 1] -> (H, W, 3) uint16 RGB: clamp to [0, 1], × 65535, rounded."""
    array = (image.detach().float().cpu().clamp(0, 1) * 65535).round().to(torch.int32).permute(1, 2, 0).numpy()
    return array.astype(np.uint16)


def save_linear(image: torch.Tensor, path: Path) -> None:
    """(3, H, W) image in [0, 1] (linear RGB for BSRT) -> 16-bit PNG or TIFF (by suffix): clamp to [0, 1], × 65535,
    rounded, channels in RGB order on disk."""
    array = np.ascontiguousarray(linear_to_uint16(image)[..., ::-1])  # OpenCV writes BGR order as RGB on disk
    if not cv2.imwrite(str(path), array):
        raise OSError(f'could not write {path}')


#: What to change when an output does not fit (the accumulators hold one row of tiles across the whole width).
MEMORY_HINT = 'use --tile (or a smaller one), or free memory'


def stream_outputs(rows: Iterator[tuple[int, torch.Tensor]], size: tuple[int, int], srgb_path: Path,
                   linear_path: Path | None, to_srgb: Callable[[torch.Tensor, float | None], np.ndarray],
                   norm_of: Callable[[torch.Tensor], float] | None = None) -> None:
    """Write the bands of ``rows`` (``tiled_forward_rows``) as they come: the 8-bit sRGB PNG ``to_srgb(band,
    norm)`` and the 16-bit linear file (:func:`linear_to_uint16`), each under a temporary name until complete.

    With ``norm_of`` (a per-band maximum, for a render that divides by the image's maximum), the sRGB image needs
    every band first: the bands go to an unnamed temporary float32 file beside the output (disk, not memory) and
    are rendered in a second pass with the maximum of them all.
    """
    import tempfile
    out_h, out_w = size
    srgb = row_writer(srgb_path, out_w, out_h, 3, np.uint8)
    linear = row_writer(linear_path, out_w, out_h, 3, np.uint16) if linear_path is not None else None
    spill = tempfile.TemporaryFile(dir=srgb_path.parent) if norm_of is not None else None
    try:
        norm, spans = None, []
        for _, band in rows:
            if linear is not None:
                linear.write(linear_to_uint16(band))
            if spill is None:
                srgb.write(to_srgb(band, None))
            else:
                m = norm_of(band)
                norm = m if norm is None else max(norm, m)
                spill.write(band.contiguous().numpy().tobytes())
                spans.append(band.shape[1])
        if spill is not None:
            spill.seek(0)
            for n in spans:
                buf = bytearray(spill.read(3 * n * out_w * 4))
                srgb.write(to_srgb(torch.frombuffer(buf, dtype=torch.float32).reshape(3, n, out_w), norm))
        if linear is not None:
            linear.close()
        srgb.close()
    except BaseException:
        srgb.abort()
        if linear is not None:
            linear.abort()
        raise
    finally:
        if spill is not None:
            spill.close()


def save_srgb(array: np.ndarray, path: Path) -> None:
    """(H, W, 3) uint8 RGB -> 8-bit PNG."""
    if not cv2.imwrite(str(path), np.ascontiguousarray(array[..., ::-1])):
        raise OSError(f'could not write {path}')


def save_kernel(kernel: torch.Tensor, stem: Path) -> tuple[Path, Path]:
    """(1, 1, ks, ks) -> ``<stem>_kernel.npy`` (exact values) and ``<stem>_kernel.png`` (÷ max, ×8 nearest)."""
    k = kernel[0, 0].double().numpy()
    npy, png = stem.with_name(f'{stem.name}_kernel.npy'), stem.with_name(f'{stem.name}_kernel.png')
    np.save(npy, k)
    view = np.clip(k / max(k.max(), 1e-12), 0, 1)
    view = np.kron((view * 255).round().astype(np.uint8), np.ones((8, 8), dtype=np.uint8))
    if not cv2.imwrite(str(png), view):
        raise OSError(f'could not write {png}')
    return npy, png
