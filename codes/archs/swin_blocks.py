"""Swin Transformer (V1) blocks as used by SwinIR and BSRT.

Follows SwinIR (Liang et al., ICCVW 2021; ``JingyunLiang/SwinIR: models/network_swinir.py``, Apache-2.0), which in
turn follows Swin (Liu et al., ICCV 2021), restricted to what BSRT (``Algolzw/BSRT``) needs:

* window and shift are fixed at construction (8 and 4 in BSRT), independent of the input size;
* the relative position index is a persistent buffer (the official BSRT checkpoints carry it);
* the shifted-window mask is computed from the actual feature size, never stored in the state_dict; it is built once
  per (size, device) and then reused (:func:`shift_mask`);
* attention has implementations of the same function (``impl``): the original's explicit
  softmax(q·kᵀ·scale + bias + mask)·v ('reference', the test oracle); ``scaled_dot_product_attention`` with the
  relative position bias and the shift mask as one additive mask ('fast'); and 'auto' (the default), which is
  'fast' except when training on CPU, where the fused kernel cannot give the bias table its gradient and the
  generic fallback is slower than the explicit product with the one pre-added mask;
* no dropout (all rates are 0 in BSRT) apart from stochastic depth (``DropPath``);
* ``PatchEmbed``/``PatchUnEmbed`` are patch size 1 (one token per pixel).

Tokens are laid out as (B, H*W, C) with token index y*W + x.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

__all__ = [
    'drop_path', 'DropPath', 'Mlp', 'window_partition', 'window_reverse', 'relative_position_index',
    'compute_shift_mask', 'shift_mask', 'WindowAttention', 'SwinTransformerBlock', 'BasicLayer', 'RSTB', 'PatchEmbed',
    'PatchUnEmbed'
]


# ----------------------------------------------------------------------------------------------------- functions
def drop_path(x: torch.Tensor, drop_prob: float = 0.0, training: bool = False) -> torch.Tensor:
    """Stochastic depth per sample: zero a sample's branch with probability ``drop_prob``, rescale the rest."""
    if drop_prob == 0.0 or not training:
        return x
    keep_prob = 1.0 - drop_prob
    shape = (x.shape[0], ) + (1, ) * (x.ndim - 1)  # one draw per sample
    keep = x.new_empty(shape).bernoulli_(keep_prob)
    if keep_prob > 0.0:
        keep.div_(keep_prob)
    return x * keep


def window_partition(x: torch.Tensor, window_size: int) -> torch.Tensor:
    """Split (B, H, W, C) into windows (B*nW, ws, ws, C), windows row-major over the window grid."""
    b, h, w, c = x.shape
    x = x.view(b, h // window_size, window_size, w // window_size, window_size, c)
    # (B, H/ws, W/ws, ws, ws, C) -> (B*nW, ws, ws, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window_size, window_size, c)


def window_reverse(windows: torch.Tensor, window_size: int, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`window_partition`: (B*nW, ws, ws, C) -> (B, H, W, C)."""
    c = windows.shape[-1]
    b = windows.shape[0] // ((h // window_size) * (w // window_size))
    x = windows.view(b, h // window_size, w // window_size, window_size, window_size, c)
    # (B, H/ws, W/ws, ws, ws, C) -> (B, H/ws, ws, W/ws, ws, C) -> (B, H, W, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, c)


def relative_position_index(window_size: int) -> torch.Tensor:
    """(ws², ws²) int64 index into the (2ws-1)² bias table: [a, b] = (ya-yb+ws-1)*(2ws-1) + (xa-xb+ws-1)."""
    coords = torch.arange(window_size)
    ys, xs = torch.meshgrid(coords, coords, indexing='ij')
    yx = torch.stack((ys.flatten(), xs.flatten()))  # (2, ws²), token t = ws*y + x
    rel = yx[:, :, None] - yx[:, None, :]  # (2, ws², ws²): query minus key
    return (rel[0] + window_size - 1) * (2 * window_size - 1) + (rel[1] + window_size - 1)


def compute_shift_mask(h: int, w: int, window_size: int, shift_size: int,
                       device: torch.device | str | None = None) -> torch.Tensor | None:
    """Attention mask for shifted windows on an (h, w) grid: (nW, ws², ws²) float32 of 0 / -100.

    Returns ``None`` when ``shift_size`` is 0 (the mask would be all zeros).
    """
    if shift_size == 0:
        return None
    labels = torch.zeros(1, h, w, 1, device=device)
    slices = (slice(0, -window_size), slice(-window_size, -shift_size), slice(-shift_size, None))
    cnt = 0
    for hs in slices:
        for ws in slices:
            labels[:, hs, ws, :] = cnt
            cnt += 1
    win = window_partition(labels, window_size).view(-1, window_size * window_size)  # (nW, ws²)
    diff = win[:, None, :] - win[:, :, None]  # (nW, ws², ws²)
    return torch.zeros_like(diff).masked_fill_(diff != 0, -100.0)


_SHIFT_MASKS: dict[tuple, torch.Tensor] = {}


def shift_mask(h: int, w: int, window_size: int, shift_size: int,
               device: torch.device | str | None = None) -> torch.Tensor | None:
    """:func:`compute_shift_mask`, built once per (size, window, shift, device) and then reused; do not modify it."""
    if shift_size == 0:
        return None
    key = (h, w, window_size, shift_size, str(torch.device(device) if device is not None else 'cpu'))
    mask = _SHIFT_MASKS.get(key)
    if mask is None:
        if len(_SHIFT_MASKS) >= 64:  # many sizes (e.g. tiled inference): keep the cache small
            _SHIFT_MASKS.clear()
        mask = _SHIFT_MASKS[key] = compute_shift_mask(h, w, window_size, shift_size, device)
    return mask


def _check_impl(impl: str) -> str:
    if impl not in ('auto', 'fast', 'reference'):
        raise ValueError(f"impl must be one of auto, fast, reference, got {impl!r}")
    return impl


# ----------------------------------------------------------------------------------------------------- blocks
class DropPath(nn.Module):
    """Stochastic depth per sample (timm style); the identity in eval mode."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop_path(x, self.drop_prob, self.training)

    def extra_repr(self) -> str:
        return f'drop_prob={self.drop_prob:.3f}'


class Mlp(nn.Module):
    """Linear -> GELU (exact) -> Linear."""

    def __init__(self, in_features: int, hidden_features: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class WindowAttention(nn.Module):
    """Multi-head self-attention inside a window, with a learned relative position bias.

    Args:
        dim: number of channels C.
        window_size: window side ws (tokens per window = ws²).
        num_heads: number of heads; must divide ``dim``.
        qkv_bias: add a bias to the q, k, v projections.
        qk_scale: logit scale; None means head_dim ** -0.5.
        impl: 'reference' (explicit softmax), 'fast' (``scaled_dot_product_attention``) or 'auto' (see the module
            docstring).
    """

    def __init__(self, dim: int, window_size: int, num_heads: int, qkv_bias: bool = True,
                 qk_scale: float | None = None, impl: str = 'auto') -> None:
        super().__init__()
        self.impl = _check_impl(impl)  # an attribute, so it can be switched on a built model
        if dim % num_heads:
            raise ValueError(f'dim ({dim}) must be divisible by num_heads ({num_heads})')
        self.dim = dim
        self.window_size = window_size
        self.num_heads = num_heads
        self.scale = qk_scale or (dim // num_heads)**-0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1)**2, num_heads))
        self.register_buffer('relative_position_index', relative_position_index(window_size), persistent=True)
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B*nW, N, C) with N = ws²; mask: (nW, N, N) of 0 / -100, or None."""
        b_, n, c = x.shape
        qkv = self.qkv(x).reshape(b_, n, 3, self.num_heads, c // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B*nW, heads, N, d)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        bias = bias.view(n, n, -1).permute(2, 0, 1)  # (heads, N, N)
        impl = _check_impl(self.impl)
        if impl == 'reference':  # the original's operations, in its order: the test oracle
            attn = (q * self.scale) @ k.transpose(-2, -1)  # (B*nW, heads, N, N)
            attn = attn + bias.unsqueeze(0)
            if mask is not None:
                nw = mask.shape[0]
                attn = attn.view(b_ // nw, nw, self.num_heads, n, n) + mask[None, :, None]
                attn = attn.view(b_, self.num_heads, n, n)
            attn = attn.softmax(dim=-1)
            x = (attn.to(v.dtype) @ v).transpose(1, 2).reshape(b_, n, c)  # heads concatenated in order
            return self.proj(x)

        # one additive mask: bias (heads, N, N) + shift mask (nW, 1, N, N), shared by the images of the batch
        nw = 1 if mask is None else mask.shape[0]
        attn_mask = bias.unsqueeze(0) if mask is None else bias.unsqueeze(0) + mask.unsqueeze(1)
        q, k, v = (t.view(b_ // nw, nw, self.num_heads, n, c // self.num_heads) for t in (q, k, v))
        if impl == 'fast' or q.device.type != 'cpu' or not (torch.is_grad_enabled() and attn_mask.requires_grad):
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask.to(q.dtype), scale=self.scale)
        else:
            # 'auto' when training on CPU: its fused attention kernel has no gradient for an additive mask, and the
            # generic fallback was 3x slower than these three operations (softmax(q·kᵀ·scale + mask)·v)
            attn = torch.matmul(q * self.scale, k.transpose(-2, -1)) + attn_mask
            out = torch.matmul(attn.softmax(dim=-1).to(v.dtype), v)
        return self.proj(out.reshape(b_, self.num_heads, n, -1).transpose(1, 2).reshape(b_, n, c))

    def extra_repr(self) -> str:
        return f'dim={self.dim}, window_size={self.window_size}, num_heads={self.num_heads}, impl={self.impl}'


class SwinTransformerBlock(nn.Module):
    """x <- x + DropPath(W-MSA(LN(x))); x <- x + DropPath(MLP(LN(x))), with an optional cyclic shift.

    Args:
        dim: number of channels C.
        num_heads: attention heads.
        window_size: window side; fixed, whatever the input size.
        shift_size: cyclic shift (0 or window_size // 2).
        mlp_ratio: MLP hidden width / C.
        qkv_bias: bias in the q, k, v projections.
        qk_scale: logit scale override.
        drop_path: stochastic depth rate; exactly 0 gives an ``nn.Identity``.
        use_checkpoint: recompute this block in backward (gradient checkpointing) to save memory.
    """

    def __init__(self, dim: int, num_heads: int, window_size: int = 8, shift_size: int = 0, mlp_ratio: float = 2.0,
                 qkv_bias: bool = True, qk_scale: float | None = None, drop_path: float = 0.0,
                 use_checkpoint: bool = False) -> None:
        super().__init__()
        if not 0 <= shift_size < window_size:
            raise ValueError(f'shift_size ({shift_size}) must be in [0, window_size={window_size})')
        self.dim = dim
        self.num_heads = num_heads
        self.window_size = window_size
        self.shift_size = shift_size
        self.use_checkpoint = use_checkpoint
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window_size, num_heads, qkv_bias=qkv_bias, qk_scale=qk_scale)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, x_size: tuple[int, int], attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, H*W, C) tokens of an (H, W) grid; attn_mask: the shift mask for (H, W), computed if None."""
        if self.shift_size > 0 and attn_mask is None:
            attn_mask = shift_mask(*x_size, self.window_size, self.shift_size, x.device)
        if self.use_checkpoint and self.training and torch.is_grad_enabled():
            return checkpoint(self._forward, x, x_size, attn_mask, use_reentrant=False)
        return self._forward(x, x_size, attn_mask)

    def _forward(self, x: torch.Tensor, x_size: tuple[int, int], attn_mask: torch.Tensor | None) -> torch.Tensor:
        h, w = x_size
        b, length, c = x.shape
        if length != h * w:
            raise ValueError(f'got {length} tokens for a {h}x{w} grid')
        ws = self.window_size

        y = self.norm1(x).view(b, h, w, c)
        if self.shift_size > 0:
            y = torch.roll(y, shifts=(-self.shift_size, -self.shift_size), dims=(1, 2))
        windows = window_partition(y, ws).view(-1, ws * ws, c)  # (B*nW, ws², C)
        windows = self.attn(windows, mask=attn_mask if self.shift_size > 0 else None)
        y = window_reverse(windows.view(-1, ws, ws, c), ws, h, w)  # (B, H, W, C)
        if self.shift_size > 0:
            y = torch.roll(y, shifts=(self.shift_size, self.shift_size), dims=(1, 2))

        x = x + self.drop_path(y.reshape(b, h * w, c))
        return x + self.drop_path(self.mlp(self.norm2(x)))

    def extra_repr(self) -> str:
        return f'dim={self.dim}, num_heads={self.num_heads}, window_size={self.window_size}, ' \
               f'shift_size={self.shift_size}'


class BasicLayer(nn.Module):
    """A stack of Swin blocks; even-indexed blocks have shift 0, odd-indexed ones shift window_size // 2.

    Args:
        dim: number of channels C.
        depth: number of blocks.
        num_heads: attention heads.
        window_size: window side.
        mlp_ratio: MLP hidden width / C.
        qkv_bias: bias in the q, k, v projections.
        qk_scale: logit scale override.
        drop_path: one rate for all blocks, or one per block.
        use_checkpoint: gradient checkpointing per block.
    """

    def __init__(self, dim: int, depth: int, num_heads: int, window_size: int = 8, mlp_ratio: float = 2.0,
                 qkv_bias: bool = True, qk_scale: float | None = None, drop_path: float | Sequence[float] = 0.0,
                 use_checkpoint: bool = False) -> None:
        super().__init__()
        rates = [float(drop_path)] * depth if isinstance(drop_path, (int, float)) else [float(r) for r in drop_path]
        if len(rates) != depth:
            raise ValueError(f'got {len(rates)} drop_path rates for {depth} blocks')
        self.window_size = window_size
        self.shift_size = window_size // 2
        self.blocks = nn.ModuleList([
            SwinTransformerBlock(dim, num_heads, window_size=window_size, shift_size=0 if i % 2 == 0 else
                                 self.shift_size, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, qk_scale=qk_scale,
                                 drop_path=rates[i], use_checkpoint=use_checkpoint) for i in range(depth)
        ])

    def forward(self, x: torch.Tensor, x_size: tuple[int, int], attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, H*W, C); attn_mask: the shift mask for (H, W), computed once here if None."""
        if attn_mask is None and len(self.blocks) > 1:
            attn_mask = shift_mask(*x_size, self.window_size, self.shift_size, x.device)
        for blk in self.blocks:
            x = blk(x, x_size, attn_mask)
        return x


class PatchEmbed(nn.Module):
    """Image (B, C, H, W) -> tokens (B, H*W, C), patch size 1, then an optional LayerNorm ``norm``."""

    def __init__(self, embed_dim: int, use_norm: bool = False) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(embed_dim) if use_norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(2).transpose(1, 2)  # (B, C, H, W) -> (B, H*W, C)
        return self.norm(x) if self.norm is not None else x


class PatchUnEmbed(nn.Module):
    """Tokens (B, H*W, C) -> image (B, C, H, W); the exact inverse of an un-normed :class:`PatchEmbed`."""

    def forward(self, x: torch.Tensor, x_size: tuple[int, int]) -> torch.Tensor:
        b, _, c = x.shape
        return x.transpose(1, 2).reshape(b, c, *x_size)  # (B, H*W, C) -> (B, C, H, W)


class RSTB(nn.Module):
    """Residual Swin Transformer Block: tokens + embed(conv3x3(unembed(BasicLayer(tokens)))).

    The embed/unembed pair has no parameters (no norm). Arguments as in :class:`BasicLayer`.
    """

    def __init__(self, dim: int, depth: int, num_heads: int, window_size: int = 8, mlp_ratio: float = 2.0,
                 qkv_bias: bool = True, qk_scale: float | None = None, drop_path: float | Sequence[float] = 0.0,
                 use_checkpoint: bool = False) -> None:
        super().__init__()
        self.residual_group = BasicLayer(dim, depth, num_heads, window_size=window_size, mlp_ratio=mlp_ratio,
                                         qkv_bias=qkv_bias, qk_scale=qk_scale, drop_path=drop_path,
                                         use_checkpoint=use_checkpoint)
        self.conv = nn.Conv2d(dim, dim, 3, 1, 1)
        self.patch_embed = PatchEmbed(dim, use_norm=False)
        self.patch_unembed = PatchUnEmbed()

    def forward(self, x: torch.Tensor, x_size: tuple[int, int], attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, H*W, C) -> (B, H*W, C)."""
        y = self.residual_group(x, x_size, attn_mask)
        return self.patch_embed(self.conv(self.patch_unembed(y, x_size))) + x
