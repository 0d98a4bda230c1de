"""The inputs of inference: reading errors as one-line option errors, and the refusal of RAW bursts for DCLS."""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from codes.utils.build import OptionError

__all__ = ['input_errors', 'check_image_input']


@contextmanager
def input_errors(opt: dict, model: str) -> Iterator[None]:
    """Errors reading the input (missing, unreadable, of another kind) as one-line errors naming ``input``."""
    try:
        yield
    except OptionError:
        raise
    except (FileNotFoundError, NotADirectoryError, ValueError, ImportError) as exc:
        raise OptionError('input', f'{exc} ({model} weights {opt["weights"]})', opt.get('opt_file')) from None
    except OSError as exc:  # cannot decode image
        raise OptionError('input', str(exc), opt.get('opt_file')) from None


def _packed_raw_frame(path: Path) -> bool:
    """Whether ``path`` is a challenge-format RAW frame (4-channel uint16 PNG of packed RGGB), not a photograph."""
    if path.suffix.lower() != '.png':
        return False
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    return image is not None and image.dtype == np.uint16 and image.ndim == 3 and image.shape[2] == 4


def check_image_input(path: str | Path, files: list[Path]) -> None:
    """Refuse a RAW burst given to an image model (DCLS): RAW files, BurstSR samsung_XX folders or packed RAW
    frames. Raises OptionError naming ``input``."""
    from codes.data.burst_readers import RAW_EXTENSIONS, burst_kind
    path = Path(path)
    kind = burst_kind(path) if path.is_dir() else ('raw' if path.suffix.lower() in RAW_EXTENSIONS else None)
    raw = kind in ('raw', 'burstsr') or any(_packed_raw_frame(f) for f in files[:1])
    if raw:
        raise OptionError('input', f'{path} is a RAW burst (packed RGGB frames), but the weights are for DCLS, '
                          'which super-resolves RGB images; run a BSRT checkpoint on bursts, or give DCLS '
                          'photographs (PNG/JPEG/TIFF)')
