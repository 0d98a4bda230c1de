"""Precision names (``fp32``, ``fp16``, ``bf16``) and the autocast context they stand for, used alike by
training, validation (``train.precision``, ``val.precision``) and inference (``infer.py --precision``)."""
from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch

__all__ = ['DTYPES', 'to_dtype', 'autocast']

#: precision name -> the dtype autocast runs in (fp32: no autocast at all)
DTYPES: dict[str, torch.dtype] = {'fp32': torch.float32, 'fp16': torch.float16, 'bf16': torch.bfloat16}


def to_dtype(precision: str | torch.dtype) -> torch.dtype:
    """The dtype of a precision name (a dtype is returned as it is)."""
    if isinstance(precision, torch.dtype):
        return precision
    try:
        return DTYPES[precision]
    except KeyError:
        raise ValueError(f'unknown precision {precision!r} (one of: {", ".join(DTYPES)})') from None


def autocast(device: torch.device | str, precision: str | torch.dtype) -> AbstractContextManager:
    """``torch.autocast`` on ``device``'s type in ``precision`` (a name or a dtype); a no-op context for fp32."""
    dtype = to_dtype(precision)
    if dtype == torch.float32:
        return nullcontext()
    device_type = device.type if isinstance(device, torch.device) else torch.device(device).type
    return torch.autocast(device_type, dtype=dtype)
