"""Shared network pieces: flow warping, modulated deformable convolutions (DCNv2) and SpyNet.

* ``flow_warp`` and the DCNs follow BSRT (``Algolzw/BSRT``, MIT). The DCNs keep the full, ungrouped DCNv2 weight,
  so the official weights load unchanged, and have two implementations of the same operator (``impl``):
  ``torchvision.ops.deform_conv2d`` ('reference', the test oracle) and bilinear sampling of the taps with
  ``grid_sample`` followed by one matrix product ('fast', the default).
* ``GroupedDeformConv`` is torchvision's ``DeformConv2d`` layout (grouped weight, bias) through the same operator,
  for the networks of Dudhane et al. (Burstormer, BIPNet), whose offsets and mask come from a bias-free conv
  (:func:`dcn_offset_mask`).
* ``SpyNet`` follows Ranjan & Black (CVPR 2017), in the BasicSR/VRT layout,, so the Sintel-final
  weight file ``spynet_sintel_final-3d2a1287.pth`` loads with :func:`load_spynet_weights`. Nothing is downloaded.

Precision: flow warping and the DCNs always compute in float32 (float64 stays float64) with autocast disabled, and
return the dtype of their input, so the networks run under CPU bf16 and CUDA fp16/bf16 autocast.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Literal, Sequence, get_args

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint
from torchvision.ops import deform_conv2d

from codes.utils.checkpoint import (CheckpointError, CheckpointNotFoundError, load_state_dict_strict,
                                    load_weights_only)

__all__ = [
    'Impl', 'IMPLS', 'resolve_impl', 'flow_warp', 'modulated_deform_conv2d', 'dcn_offset_mask', 'FlowGuidedDCN',
    'DCNSep', 'GroupedDeformConv', 'SpyNet', 'load_spynet_weights', 'SpyNetWeightsError'
]

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _fp32(t: torch.Tensor) -> torch.Tensor:
    """``t`` in float32 if it is fp16/bf16; float32 and float64 are kept."""
    return t.float() if t.dtype in _LOW_PRECISION else t


def _no_autocast(device: torch.device) -> torch.autocast:
    return torch.autocast(device_type=device.type, enabled=False)


# ----------------------------------------------------------------------------------------------------- functions
def flow_warp(x: torch.Tensor, flow: torch.Tensor, padding_mode: str = 'zeros',
              interp_mode: str = 'bilinear') -> torch.Tensor:
    """Warp ``x`` by ``flow`` with ``grid_sample`` (align_corners=True), in float32.

    Args:
        x: (n, c, h, w) features or images.
        flow: (n, h, w, 2) displacement in pixels, channel 0 = dx (horizontal), 1 = dy. Output pixel (y, x) reads
            ``x`` at (y + dy, x + dx).
        padding_mode: 'zeros' (taps outside the map are 0) or 'border' (coordinates clamped to the map).
        interp_mode: 'bilinear' or 'nearest'.

    Returns:
        (n, c, h, w) in the dtype of ``x``.
    """
    if x.ndim != 4 or flow.ndim != 4 or flow.shape[-1] != 2 or x.shape[-2:] != flow.shape[1:3] \
            or x.shape[0] != flow.shape[0]:
        raise ValueError(f'flow_warp expects x (n, c, h, w) and flow (n, h, w, 2), got {tuple(x.shape)} and '
                         f'{tuple(flow.shape)}')
    dtype = x.dtype
    _, _, h, w = x.shape
    with _no_autocast(x.device):
        x = _fp32(x)
        grid_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        ys, xs = torch.meshgrid(torch.arange(h, device=x.device, dtype=grid_dtype),
                                torch.arange(w, device=x.device, dtype=grid_dtype), indexing='ij')
        vx = xs + flow[..., 0].to(grid_dtype)  # (n, h, w)
        vy = ys + flow[..., 1].to(grid_dtype)
        gx = 2.0 * vx / max(w - 1, 1) - 1.0
        gy = 2.0 * vy / max(h - 1, 1) - 1.0
        grid = torch.stack((gx, gy), dim=3).to(x.dtype)  # (n, h, w, 2)
        out = F.grid_sample(x, grid, mode=interp_mode, padding_mode=padding_mode, align_corners=True)
    return out.to(dtype)


#: The implementations of the DCNs and window attention (``impl``), as a type the option schema checks.
Impl = Literal['auto', 'fast', 'reference']
IMPLS: tuple[str, ...] = get_args(Impl)

# Byte budget of one chunk's column buffer in the fast DCN. Below glibc's largest mmap threshold (32 MiB) the buffer
# is recycled from the heap instead of being mapped and page-faulted afresh on every call, and it stays near the
# caches: on a 2-core CPU one frame per chunk (9 MiB at BSRT's level 1) was ~2x faster than all 28 frames at once.
_CPU_CHUNK_BYTES = 24 * 2**20
_CUDA_CHUNK_BYTES = 512 * 2**20


def resolve_impl(impl: str, device: torch.device | str) -> str:
    """'fast' or 'reference' for ``impl`` in :data:`IMPLS` on ``device`` ('auto' picks 'fast' everywhere)."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {', '.join(IMPLS)}, got {impl!r}")
    return 'fast' if impl == 'auto' else impl


def _dcn_grid(offset: torch.Tensor, h: int, w: int, kernel_size: int, stride: int, padding: int,
              dilation: int) -> torch.Tensor:
    """``grid_sample`` grid (B·G, k²·H', W', 2) of the sampling points of every tap of every offset group.

    Pixel p maps to (2p + 1) / size - 1 (align_corners=False): the same points as DCNv2's bilinear sampling with
    zero padding, and also right for a size of 1, which align_corners=True would map to a single pixel.
    """
    b, _, ho, wo = offset.shape
    kk = kernel_size * kernel_size
    g = offset.shape[1] // (2 * kk)
    dev, dt = offset.device, offset.dtype
    taps = torch.arange(kernel_size, device=dev, dtype=dt) * dilation
    # base point of tap t = k·i + j at output (y, x): (y·stride - padding + i·dilation, x·stride - ... + j·dil.)
    by = taps.repeat_interleave(kernel_size).view(kk, 1, 1) + (torch.arange(ho, device=dev, dtype=dt) * stride
                                                              - padding).view(1, ho, 1)
    bx = taps.repeat(kernel_size).view(kk, 1, 1) + (torch.arange(wo, device=dev, dtype=dt) * stride
                                                   - padding).view(1, 1, wo)
    base = torch.stack(((2 * bx + 1).expand(kk, ho, wo) / w - 1, (2 * by + 1).expand(kk, ho, wo) / h - 1))  # x, y
    scale = torch.tensor([2.0 / w, 2.0 / h], device=dev, dtype=dt).view(2, 1, 1, 1)
    # offset channel 18g + 2t = dy, 18g + 2t + 1 = dx -> (B, G, 2 = (dx, dy), k², H', W') in one gather
    off = offset.view(b, g, kk, 2, ho, wo).flip(3).transpose(2, 3)
    grid = torch.addcmul(base, off, scale)  # (B, G, 2, k², H', W')
    return grid.permute(0, 1, 3, 4, 5, 2).reshape(b * g, kk * ho, wo, 2)


def _dcn_fast_chunk(x: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor, stride: int,
                    padding: int, dilation: int) -> torch.Tensor:
    """One chunk of the fast DCN: (B, Cout, H'·W') without the bias."""
    b, c, h, w = x.shape
    ho, wo = offset.shape[-2:]
    k = weight.shape[-1]
    g = offset.shape[1] // (2 * k * k)
    grid = _dcn_grid(offset, h, w, k, stride, padding, dilation)
    cols = F.grid_sample(x.reshape(b * g, c // g, h, w), grid, mode='bilinear', padding_mode='zeros',
                         align_corners=False)  # (B·G, Cin/G, k²·H', W'): rows (channel, tap)
    cols = (cols * mask.reshape(b * g, 1, k * k * ho, wo)).view(b, c * k * k, ho * wo)  # rows = weight's (Cin, tap)
    wg = c // weight.shape[1]  # convolution groups (Burstormer: 8; BSRT, EBSR: 1)
    if wg > 1:  # group j: output channels j·Cout/wg.., input rows j·(Cin/wg)·k².. (consecutive in cols)
        w3 = weight.reshape(wg, weight.shape[0] // wg, -1)
        out = torch.matmul(w3, cols.view(b, wg, -1, ho * wo))  # (B, wg, Cout/wg, H'·W')
        return out.reshape(b, weight.shape[0], ho * wo)
    w2 = weight.reshape(weight.shape[0], -1)
    if b == 1:
        return torch.mm(w2, cols[0]).unsqueeze(0)
    return torch.bmm(w2.expand(b, -1, -1), cols)


def _modulated_deform_conv2d_fast(x: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor,
                                  bias: torch.Tensor | None, stride: int, padding: int,
                                  dilation: int) -> torch.Tensor:
    """DCNv2 as ``grid_sample`` of the k² taps per offset group, then one matrix product with the weight.

    The batch is processed in chunks whose column buffer fits a fixed byte budget; under autograd each chunk is
    recomputed in backward (checkpointed), so only the inputs are kept, as torchvision's kernel does.
    """
    b = x.shape[0]
    cout = weight.shape[0]
    ho, wo = offset.shape[-2:]
    per_image = x.shape[1] * weight.shape[-1]**2 * ho * wo * x.element_size()
    budget = _CUDA_CHUNK_BYTES if x.device.type == 'cuda' else _CPU_CHUNK_BYTES
    chunk = max(1, min(b, budget // max(per_image, 1)))
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in (x, offset, mask, weight))
    outs = []
    # split (not slicing): its backward concatenates the chunks' gradients instead of adding full-size zeros
    for xs, os_, ms in zip(x.split(chunk), offset.split(chunk), mask.split(chunk)):
        args = (xs, os_, ms, weight, stride, padding, dilation)
        outs.append(checkpoint(_dcn_fast_chunk, *args, use_reentrant=False) if grad else _dcn_fast_chunk(*args))
    out = outs[0] if len(outs) == 1 else torch.cat(outs)
    if bias is not None:
        out = out + bias.view(1, cout, 1)
    return out.view(b, cout, ho, wo)


def modulated_deform_conv2d(x: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor,
                            bias: torch.Tensor | None, stride: int = 1, padding: int = 1, dilation: int = 1,
                            impl: str = 'auto') -> torch.Tensor:
    """Modulated deformable convolution (DCNv2), computed in float32 with autocast off.

    Args:
        x: (B, Cin, H, W) input.
        offset: (B, 2·G·k², H', W'); channel 18g + 2t is Δy and 18g + 2t + 1 is Δx of offset group g, tap t.
        mask: (B, G·k², H', W') modulation, channel 9g + t (for k = 3).
        weight: (Cout, Cin / groups, k, k): ungrouped for BSRT; grouped (groups inferred from the shape, as
            torchvision does) with dilation 2 for Burstormer.
        bias: (Cout,) or None.
        impl: 'reference' = ``torchvision.ops.deform_conv2d``; 'fast' = bilinear sampling (``grid_sample``) of
            the taps and one matrix product, equal to it up to float rounding (the bilinear weights are computed
            in a different order); 'auto' = 'fast'.

    Returns:
        (B, Cout, H', W') in the dtype of ``x``.
    """
    impl = resolve_impl(impl, x.device)
    dtype = x.dtype
    with _no_autocast(x.device):
        offset = _fp32(offset)
        # torchvision's CPU kernel crashes the process (segfault) on NaN or huge offsets, as a diverging run
        # produces. Offsets beyond ``bound`` sample only zero padding, so clamping them there changes nothing;
        # a NaN offset is neutralised for the kernel and then put back into the output (offset.sum() * 0), so a
        # diverged step still shows as NaN to the loss and the non-finite-gradient guard instead of a crash.
        # Both implementations do this, so they agree on such inputs too.
        bound = 2.0 * (max(x.shape[-2:]) + padding + dilation * weight.shape[-1])
        safe = torch.nan_to_num(offset, nan=0.0, posinf=bound, neginf=-bound).clamp(-bound, bound)
        args = (_fp32(x), safe, _fp32(mask), _fp32(weight), None if bias is None else _fp32(bias))
        if impl == 'fast':
            out = _modulated_deform_conv2d_fast(*args, stride, padding, dilation)
        else:
            out = deform_conv2d(args[0], args[1], args[3], args[4], stride=stride, padding=padding,
                                dilation=dilation, mask=args[2])
        out = out + offset.sum() * 0
    return out.to(dtype)


# ----------------------------------------------------------------------------------------------------- DCN
class _ModulatedDCN(nn.Module):
    """Parameters shared by the two DCN packs: ``weight``, ``bias`` and a zero-initialised ``conv_offset_mask``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1, padding: int = 1,
                 dilation: int = 1, deformable_groups: int = 8, impl: str = 'auto') -> None:
        super().__init__()
        resolve_impl(impl, 'cpu')
        self.impl = impl  # see modulated_deform_conv2d; an attribute, so it can be switched on a built model
        if in_channels % deformable_groups:
            raise ValueError(f'in_channels ({in_channels}) must be divisible by deformable_groups '
                             f'({deformable_groups})')
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.stride = stride
        self.padding = padding
        self.dilation = dilation
        self.deformable_groups = deformable_groups
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels))
        self.conv_offset_mask = nn.Conv2d(in_channels, 3 * deformable_groups * kernel_size**2, kernel_size, stride,
                                          padding, dilation)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """weight U(±1/sqrt(Cin·k²)), bias 0, ``conv_offset_mask`` all 0 (offset = flow, mask = 0.5 at start)."""
        stdv = 1.0 / math.sqrt(self.in_channels * self.kernel_size**2)
        nn.init.uniform_(self.weight, -stdv, stdv)
        nn.init.zeros_(self.bias)
        nn.init.zeros_(self.conv_offset_mask.weight)
        nn.init.zeros_(self.conv_offset_mask.bias)

    def _offset_mask(self, fea: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The three equal chunks (o1, o2, m) of ``conv_offset_mask(fea)``; call with autocast off."""
        conv = self.conv_offset_mask
        fea = _fp32(fea)
        if conv.weight.dtype == fea.dtype:
            out = conv(fea)
        else:  # e.g. a model cast to bf16 as a whole: the offsets are still computed in fp32
            out = F.conv2d(fea, conv.weight.to(fea.dtype), conv.bias.to(fea.dtype), conv.stride, conv.padding,
                           conv.dilation)
        return torch.chunk(out, 3, dim=1)

    def _deform(self, x: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return modulated_deform_conv2d(x, offset, mask, self.weight, self.bias, self.stride, self.padding,
                                       self.dilation, impl=self.impl)

    def extra_repr(self) -> str:
        return f'{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, ' \
               f'padding={self.padding}, deformable_groups={self.deformable_groups}, impl={self.impl}'


class DCNSep(_ModulatedDCN):
    """Modulated DCN whose offsets and mask come from separate features (``cas_dcnpack`` in BSRT).

    offset = cat(o1, o2) (unbounded), mask = sigmoid(m), with (o1, o2, m) = chunks of ``conv_offset_mask(fea)``.
    """

    def forward(self, x: torch.Tensor, fea: torch.Tensor) -> torch.Tensor:
        """x: (B, Cin, H, W) features to deform; fea: (B, Cin, H, W) offset features. Returns x's dtype."""
        dtype = x.dtype
        with _no_autocast(x.device):
            o1, o2, m = self._offset_mask(fea)
            out = self._deform(_fp32(x), torch.cat((o1, o2), dim=1), torch.sigmoid(m))
        return out.to(dtype)


class FlowGuidedDCN(_ModulatedDCN):
    """Modulated DCN whose offsets are a bounded residual on top of an optical flow (``L*_dcnpack`` in BSRT).

    offset = max_residue_magnitude·tanh(cat(o1, o2)) + flip(flow) repeated G·k² times (channels dy, dx, dy, ...),
    mask = sigmoid(m).

    Args:
        max_residue_magnitude: bound of the learned residual offset, in pixels. Default: 10.
        Others: as for the plain modulated DCN (in/out channels, kernel 3, stride 1, padding 1, 8 groups, impl).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1, padding: int = 1,
                 dilation: int = 1, deformable_groups: int = 8, max_residue_magnitude: float = 10.0,
                 impl: str = 'auto') -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, deformable_groups, impl)
        self.max_residue_magnitude = max_residue_magnitude

    def forward(self, x: torch.Tensor, fea: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
        """x: (B, Cin, H, W) un-warped features; fea: offset features; flow: (B, 2, H, W) with (dx, dy)."""
        dtype = x.dtype
        with _no_autocast(x.device):
            o1, o2, m = self._offset_mask(fea)
            offset = self.max_residue_magnitude * torch.tanh(torch.cat((o1, o2), dim=1))  # (B, 2·G·k², H, W)
            b, c2, h, w = offset.shape
            flow = flow.flip(1).to(offset.dtype)  # (dx, dy) -> (dy, dx)
            # + flow on every (dy, dx) channel pair: a broadcast, the same sums as adding flow.repeat(1, G·k², 1, 1)
            offset = (offset.view(b, c2 // 2, 2, h, w) + flow.unsqueeze(1)).view(b, c2, h, w)
            out = self._deform(_fp32(x), offset, torch.sigmoid(m))
        return out.to(dtype)


def dcn_offset_mask(feat: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Offsets and mask of a modulated DCN from a bias-free 3x3 conv (``offset_conv`` of Burstormer and BIPNet).

    The conv output (B, 3·G·k², H, W) is cut into three equal chunks (o1, o2, m): offset = cat[o1, o2] (unbounded),
    mask = sigmoid(m). Computed in float32 with autocast off (float64 stays float64).
    """
    with _no_autocast(feat.device):
        feat = _fp32(feat)
        o1, o2, m = F.conv2d(feat, weight.to(feat.dtype), None, 1, 1).chunk(3, dim=1)
        return torch.cat((o1, o2), dim=1), torch.sigmoid(m)


class GroupedDeformConv(nn.Module):
    """torchvision's ``DeformConv2d(c, c, k, padding=dilation·(k−1)/2, dilation, groups=g)``: a *grouped* weight
    (c, c/g, k, k) and bias, modulated by a mask; g offset groups (the same channels as the conv groups), through
    :func:`modulated_deform_conv2d` (float32, autocast off). State_dict keys ``weight``, ``bias`` as torchvision's.

    Burstormer uses dilation 2 (padding 2), BIPNet dilation 1 (padding 1); both 8 groups.
    ``impl`` ('auto', 'fast', 'reference') is an attribute, so it can be switched on a built model.
    """

    def __init__(self, channels: int, groups: int = 8, kernel_size: int = 3, dilation: int = 2,
                 impl: Impl = 'auto') -> None:
        super().__init__()
        if channels % groups:
            raise ValueError(f'channels ({channels}) must be divisible by the deformable groups ({groups})')
        resolve_impl(impl, 'cpu')
        self.impl = impl
        self.groups = groups
        self.dilation = dilation
        self.padding = dilation * (kernel_size - 1) // 2
        self.weight = nn.Parameter(torch.empty(channels, channels // groups, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(channels))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """torchvision's init: kaiming_uniform(a=√5) weight, bias U(±1/√fan_in) with fan_in = (c/g)·k²."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        bound = 1 / math.sqrt(self.weight[0].numel())
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x (B, c, H, W); offset (B, 2·g·k², H, W) in the DCNv2 layout (Δy, Δx per tap); mask (B, g·k², H, W)."""
        return modulated_deform_conv2d(x, offset, mask, self.weight, self.bias, stride=1, padding=self.padding,
                                       dilation=self.dilation, impl=self.impl)

    def extra_repr(self) -> str:
        c, cg, k, _ = self.weight.shape
        return (f'{c}, {c}, kernel_size={k}, padding={self.padding}, dilation={self.dilation}, groups={self.groups}, '
                f'impl={self.impl}')


# ----------------------------------------------------------------------------------------------------- SpyNet
class SpyNetBasicModule(nn.Module):
    """One pyramid level of SpyNet: five 7x7 convs (8->32->64->32->16->2) with ReLU in between."""

    def __init__(self) -> None:
        super().__init__()
        chans = (8, 32, 64, 32, 16, 2)
        layers: list[nn.Module] = []
        for i in range(5):
            layers.append(nn.Conv2d(chans[i], chans[i + 1], kernel_size=7, stride=1, padding=3))
            if i < 4:
                layers.append(nn.ReLU())
        self.basic_module = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, 8, H, W) = [ref (3), warped supp (3), flow (2)] -> (B, 2, H, W) flow residual."""
        return self.basic_module(x)


class SpyNet(nn.Module):
    """SpyNet optical flow (6-level pyramid), BasicSR/VRT layout (Ranjan & Black, CVPR 2017).

    Args:
        return_levels: pyramid levels to return (5 = finest, full size), in this order. Default: (5, 4, 3).
    """

    num_levels = 6

    def __init__(self, return_levels: Sequence[int] = (5, 4, 3)) -> None:
        super().__init__()
        if not return_levels or any(not 0 <= lv < self.num_levels for lv in return_levels):
            raise ValueError(f'return_levels must be levels in 0..5, got {return_levels}')
        self.return_levels = tuple(return_levels)
        self.basic_module = nn.ModuleList([SpyNetBasicModule() for _ in range(self.num_levels)])
        # Registered after the convs, as in the original: the Sintel weight file has no mean/std entries.
        self.register_buffer('mean', torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), persistent=True)
        self.register_buffer('std', torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1), persistent=True)

    def forward(self, ref: torch.Tensor, supp: torch.Tensor) -> list[torch.Tensor]:
        """Flow from ``ref`` to ``supp``: warping ``supp`` by it aligns ``supp`` to ``ref``.

        Args:
            ref, supp: (B, 3, H, W) images, H and W > 32 (the coarsest of the 6 levels must hold a 2x2 flow).

        Returns:
            One (B, 2, H // s, W // s) flow (dx, dy in pixels of that size) per level of ``return_levels``, with
            s = 2 ** (5 - level).
        """
        if ref.shape != supp.shape or ref.ndim != 4 or ref.shape[1] != 3:
            raise ValueError(f'SpyNet expects two (B, 3, H, W) images, got {tuple(ref.shape)} and '
                             f'{tuple(supp.shape)}')
        n, _, h, w = ref.shape
        hp, wp = math.ceil(h / 32) * 32, math.ceil(w / 32) * 32
        if hp < 64 or wp < 64:
            raise ValueError(f'SpyNet needs images larger than 32x32 (its coarsest level is 1/32 of the size '
                             f'rounded up to a multiple of 32 and must hold a 2x2 flow), got {h}x{w}')
        if (hp, wp) != (h, w):
            ref = F.interpolate(ref, size=(hp, wp), mode='bilinear', align_corners=False)
            supp = F.interpolate(supp, size=(hp, wp), mode='bilinear', align_corners=False)

        refs = [(ref - self.mean) / self.std]
        supps = [(supp - self.mean) / self.std]
        for _ in range(self.num_levels - 1):  # pyramid, coarsest first
            refs.insert(0, F.avg_pool2d(refs[0], kernel_size=2, stride=2, count_include_pad=False))
            supps.insert(0, F.avg_pool2d(supps[0], kernel_size=2, stride=2, count_include_pad=False))

        flow = refs[0].new_zeros(n, 2, hp // 64, wp // 64)
        level_flows = {}
        for level in range(self.num_levels):
            up = F.interpolate(flow, scale_factor=2, mode='bilinear', align_corners=True) * 2.0
            if up.shape[2] != refs[level].shape[2]:
                up = F.pad(up, (0, 0, 0, 1), mode='replicate')  # one row at the bottom
            if up.shape[3] != refs[level].shape[3]:
                up = F.pad(up, (0, 1, 0, 0), mode='replicate')  # one column at the right
            warped = flow_warp(supps[level], up.permute(0, 2, 3, 1), padding_mode='border')
            flow = self.basic_module[level](torch.cat((refs[level], warped, up), dim=1)) + up
            level_flows[level] = flow

        out = []
        for level in self.return_levels:
            f = level_flows[level]
            s = 2**(self.num_levels - 1 - level)
            if (hp, wp) != (h, w):  # back to the input size, flow rescaled to its pixels
                f = F.interpolate(f, size=(h // s, w // s), mode='bilinear', align_corners=False)
                f = torch.cat((f[:, :1] * ((w // s) / (wp // s)), f[:, 1:] * ((h // s) / (hp // s))), dim=1)
            out.append(f)
        return out


class SpyNetWeightsError(CheckpointError, ValueError):
    """A SpyNet weight file that is refused (it would run code), unreadable or not in the official layout."""


def load_spynet_weights(spynet: SpyNet, path: str | Path) -> None:
    """Load the official SpyNet file (``{'params': {60 conv tensors}}``, e.g. ``spynet_sintel_final-3d2a1287.pth``).

    ``mean``/``std`` are not in that file and keep their values. The file is read with ``weights_only=True``
    (:func:`codes.utils.checkpoint.load_weights_only`). Raises ``CheckpointNotFoundError`` for a missing file and
    :class:`SpyNetWeightsError` naming the file when it is refused, unreadable or not in that format; both are user
    errors (one line at the entry points).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointNotFoundError(f'SpyNet weight file not found: {path}')
    ckpt = load_weights_only(path, str(path), error=SpyNetWeightsError,
                             advice='use the official SpyNet weights (spynet_sintel_final-3d2a1287.pth)')
    fmt = (f"expected a dict with key 'params' holding the {len(list(spynet.parameters()))} tensors "
           "basic_module.{0..5}.basic_module.{0,2,4,6,8}.{weight,bias}")
    if not isinstance(ckpt, Mapping) or not isinstance(ckpt.get('params'), Mapping):
        keys = list(ckpt)[:5] if isinstance(ckpt, Mapping) else type(ckpt).__name__
        raise SpyNetWeightsError(f'{path}: not a SpyNet weight file: {fmt}; found {keys}')
    load_state_dict_strict(spynet, ckpt['params'], str(path), mismatch=f'not a SpyNet weight file ({fmt})',
                           optional=[name for name, _ in spynet.named_buffers()], error=SpyNetWeightsError)
