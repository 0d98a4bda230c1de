"""Burstormer: Burst Image Restoration and Enhancement Transformer (burst super-resolution networks).

Paper: Dudhane, Zamir, Khan, Khan, Yang, "Burstormer: Burst Image Restoration and Enhancement Transformer",
CVPR 2023, arXiv 2304.01194. Upstream: ``akshaydudhane16/Burstormer`` at commit 59bbd2bc (no licence stated),
``Burst Super-resolution/Network.py`` (track 'synthetic', class ``burstormer``, 2,488,386 parameters) and
``Burst Super-resolution/Network_Real_burstSR.py`` (track 'real', class ``Base_Model``, 3,263,778 parameters).
Re-implemented so that the official state_dicts load strictly (same names and shapes). The two tracks differ only
in the reference-based back-projection of every alignment stage and in the two burst-fusion back-projections.

Input (B, N, 4, h, w): packed RGGB bursts in [0, 1], frame 0 the reference, h and w multiples of 4. Output
(B, 3, 8h, 8w): linear camera RGB, not clamped. Parts:

* ``conv1``: per-frame 3x3 features;
* ``align`` (enhanced deformable alignment, EDA): Restormer blocks at three scales, a grouped, dilated,
  modulated deformable conv per scale aligning every frame to frame 0 (coarse to fine, offset features passed up),
  each followed by a back-projection on the reference, then a cascade stage at full size;
* burst pooling: ``AdaptiveAvgPool1d(7·F)`` over the flattened frame·channel axis, plus the reference -> 8 frames;
* ``back_projection1/2`` (no-reference back-projection) fuse frame pairs, with 1x1 conv + pixel-shuffle ×2 steps.

Deviation from the original: every burst of a batch is processed (the original uses ``burst[0]`` only).
Mixed precision: LayerNorm, the attention's normalisation, product and softmax, the offset/mask conv and the
deformable conv compute in float32 with autocast off; the other convs follow autocast.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from codes.archs.arch_util import GroupedDeformConv, _fp32, _no_autocast, dcn_offset_mask
from codes.archs.burst_blocks import Frames
from codes.utils.checkpoint import CheckpointLayoutError, unwrap_checkpoint
from codes.utils.build import OptionProblems, raise_option_problems
from codes.utils.registry import ARCH_REGISTRY

__all__ = ['Burstormer', 'BURSTORMER_TRACKS', 'convert_burstormer_checkpoint', 'burstormer_track_of']

BURSTORMER_TRACKS = ('synthetic', 'real')
_FFN_EXPANSION = 2.66  # Restormer's GDFN expansion: hidden = int(2.66 · dim)
_POOLED_FRAMES = 7  # the burst pooling always gives 7 frames (+ the reference)


def _conv3(cin: int, cout: int, bias: bool) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, 1, 1, bias=bias)


def _conv_gelu(cin: int, cout: int, bias: bool) -> nn.Sequential:
    return nn.Sequential(_conv3(cin, cout, bias), nn.GELU())


def _f32_weight(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return t if t.dtype == dtype else t.to(dtype)


# ----------------------------------------------------------------------------------------------------- Restormer
class LayerNorm2d(nn.Module):
    """Restormer's 'WithBias' LayerNorm over the channels of (B, C, H, W), eps 1e-5, in float32 (key ``body.*``)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.body = nn.LayerNorm(dim, eps=1e-5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        with _no_autocast(x.device):
            xf = _fp32(x)
            w, b = _f32_weight(self.body.weight, xf.dtype), _f32_weight(self.body.bias, xf.dtype)
            y = F.layer_norm(xf.permute(0, 2, 3, 1), (xf.shape[1], ), w, b, self.body.eps).permute(0, 3, 1, 2)
        return y.to(dtype)


class MDTA(nn.Module):
    """Multi-Dconv-head transposed attention (Restormer, Zamir et al., CVPR 2022): channel attention per head,
    global over space; q and k L2-normalised over space, a learned temperature per head. No biases."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.qk = nn.Conv2d(dim, 2 * dim, 1, bias=False)
        self.qk_dwconv = nn.Conv2d(2 * dim, 2 * dim, 3, 1, 1, groups=2 * dim, bias=False)
        self.v = nn.Conv2d(dim, dim, 1, bias=False)
        self.v_dwconv = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim, bias=False)
        self.project_out = nn.Conv2d(dim, dim, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k = self.qk_dwconv(self.qk(x)).chunk(2, dim=1)
        v = self.v_dwconv(self.v(x))
        dtype = v.dtype
        with _no_autocast(x.device):  # sums over h·w and the softmax overflow or lose precision in fp16/bf16
            q, k, v = (_fp32(t).reshape(b, self.num_heads, c // self.num_heads, h * w) for t in (q, k, v))
            q = F.normalize(q, dim=-1)
            k = F.normalize(k, dim=-1)
            attn = (q @ k.transpose(-2, -1)) * _f32_weight(self.temperature, q.dtype)
            out = (attn.softmax(dim=-1) @ v).reshape(b, c, h, w)
        return self.project_out(out.to(dtype))


class GDFN(nn.Module):
    """Gated-Dconv feed-forward network (Restormer): GELU(x1) · x2 of a depthwise-conv expansion. No biases."""

    def __init__(self, dim: int, expansion: float = _FFN_EXPANSION) -> None:
        super().__init__()
        hidden = int(dim * expansion)
        self.project_in = nn.Conv2d(dim, 2 * hidden, 1, bias=False)
        self.dwconv = nn.Conv2d(2 * hidden, 2 * hidden, 3, 1, 1, groups=2 * hidden, bias=False)
        self.project_out = nn.Conv2d(hidden, dim, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = self.dwconv(self.project_in(x)).chunk(2, dim=1)
        return self.project_out(F.gelu(x1) * x2)


class RestormerBlock(nn.Module):
    """x + MDTA(LN(x)), then + GDFN(LN(x)): the burst feature attention block ("BFA") of Burstormer."""

    def __init__(self, dim: int, num_heads: int = 1) -> None:
        super().__init__()
        self.norm1 = LayerNorm2d(dim)
        self.attn = MDTA(dim, num_heads)
        self.norm2 = LayerNorm2d(dim)
        self.ffn = GDFN(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.ffn(self.norm2(x))


def _blocks(dim: int, num_heads: int = 1, n: int = 2) -> nn.Sequential:
    return nn.Sequential(*[RestormerBlock(dim, num_heads) for _ in range(n)])


# ----------------------------------------------------------------------------------------------------- alignment
class RefBackProjection(nn.Module):
    """Reference-based back-projection after each alignment (``ref_back_projection``).

    synthetic: e = blocks(y); u = cat[rep0(e), e]. real: u = blocks(cat[rep0(y), y]) at width 2F. Then
    fu = GELU(feat_fusion(u)); out = fu + GELU(diff_fusion(GELU(feat_expand(fu)) − u)).
    """

    def __init__(self, nf: int, track: str) -> None:
        super().__init__()
        self.track = track
        self.feat_fusion = _conv_gelu(2 * nf, nf, bias=True)
        self.encoder1 = _blocks(nf if track == 'synthetic' else 2 * nf)
        self.feat_expand = _conv_gelu(nf, 2 * nf, bias=True)
        self.diff_fusion = _conv_gelu(2 * nf, nf, bias=True)

    def forward(self, y: torch.Tensor, b: int) -> torch.Tensor:
        if self.track == 'synthetic':
            e = self.encoder1(y)
            u = torch.cat((Frames.ref(e, b), e), dim=1)
        else:
            u = self.encoder1(torch.cat((Frames.ref(y, b), y), dim=1))
        fu = self.feat_fusion(u)
        return fu + self.diff_fusion(self.feat_expand(fu) - u)


class AlignmentStage(nn.Module):
    """One deformable alignment of every frame to frame 0 (``feature_alignment`` / ``alignment``).

    Offset features of = GELU(bottleneck(cat[rep0(x), x])), refined with the upsampled offset features of the
    coarser level through ``bottleneck_o`` when built with ``memory``; offsets and mask from ``offset_conv``
    (no bias): offset = cat[o1, o2], mask = sigmoid(m); deformable conv; frame 0 keeps its input; back-projection.
    Returns (aligned, of).
    """

    def __init__(self, nf: int, groups: int, track: str, memory: bool) -> None:
        super().__init__()
        self.offset_conv = _conv3(nf, 3 * groups * 9, bias=False)
        self.deform = GroupedDeformConv(nf, groups)
        self.back_projection = RefBackProjection(nf, track)
        self.bottleneck = _conv_gelu(2 * nf, nf, bias=False)
        if memory:
            self.bottleneck_o = _conv_gelu(2 * nf, nf, bias=False)

    def offsets(self, of: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(offset, mask) from the offset features, in float32 with autocast off."""
        return dcn_offset_mask(of, self.offset_conv.weight)

    def forward(self, x: torch.Tensor, b: int, prev: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        of = self.bottleneck(torch.cat((Frames.ref(x, b), x), dim=1))
        if prev is not None:
            of = self.bottleneck_o(torch.cat((prev.to(of.dtype), of), dim=1))
        offset, mask = self.offsets(of)
        y = self.deform(x, offset, mask)
        y = Frames.keep_ref(y, x, b)
        return self.back_projection(y, b), of


class EDA(nn.Module):
    """Enhanced deformable alignment (``align``): a 3-level pyramid, aligned coarse to fine, then a cascade stage."""

    def __init__(self, nf: int, groups: int, track: str) -> None:
        super().__init__()

        def down() -> nn.Conv2d:
            return nn.Conv2d(nf, nf, 3, 2, 1)

        def up() -> nn.ConvTranspose2d:
            return nn.ConvTranspose2d(nf, nf, 3, 2, 1, output_padding=1)

        self.encoder_level1 = _blocks(nf, 1)
        self.encoder_level2 = _blocks(nf, 2)
        self.down1 = down()
        self.down2 = down()
        self.alignment0 = AlignmentStage(nf, groups, track, memory=True)
        self.alignment1 = AlignmentStage(nf, groups, track, memory=True)
        self.alignment2 = AlignmentStage(nf, groups, track, memory=False)
        self.cascade_alignment = AlignmentStage(nf, groups, track, memory=True)
        self.offset_up1 = up()
        self.offset_up2 = up()
        self.up1 = up()
        self.up2 = up()

    def forward(self, f: torch.Tensor, b: int) -> torch.Tensor:
        x = self.encoder_level1(f)
        e1 = self.encoder_level2(self.down1(x))
        e2 = self.down2(e1)
        e2, o2 = self.alignment2(e2, b)
        d1 = self.up2(e2)  # the original uses up2/offset_up2 at the coarse level
        e1, o1 = self.alignment1(e1, b, 2 * self.offset_up2(o2))
        d1 = d1 + e1
        d0 = self.up1(d1)
        x, ox = self.alignment0(x, b, 2 * self.offset_up1(o1))
        x = x + d0
        return self.cascade_alignment(x, b, ox)[0]


# ----------------------------------------------------------------------------------------------------- fusion
class NoRefBackProjection(nn.Module):
    """Burst fusion of frame pairs (``no_ref_back_projection``).

    synthetic: e = blocks(pairs(z)) (width 2F); out = 2e − GELU(feat_expand(GELU(feat_fusion(e)))), n/2 items.
    real: e = blocks([pairs(z), pairs(roll(z, +1))]); fu = feat_fusion(e);
    out = fu + diff_fusion(e − feat_expand(fu)), n items of width F (convs without bias or activation).
    """

    def __init__(self, nf: int, track: str) -> None:
        super().__init__()
        self.track = track
        if track == 'synthetic':
            self.feat_fusion = _conv_gelu(2 * nf, nf, bias=True)
            self.feat_expand = _conv_gelu(nf, 2 * nf, bias=True)
        else:
            self.feat_fusion = _conv3(2 * nf, nf, bias=False)
            self.feat_expand = _conv3(nf, 2 * nf, bias=False)
            self.diff_fusion = _conv3(2 * nf, nf, bias=False)
        self.encoder1 = _blocks(2 * nf)

    def forward(self, z: torch.Tensor, b: int) -> torch.Tensor:
        """z: (b·n, F, H, W) with n even."""
        if self.track == 'synthetic':
            e = self.encoder1(Frames.pairs(z))
            return 2 * e - self.feat_expand(self.feat_fusion(e))
        n = z.shape[0] // b
        u = torch.cat((Frames.pairs(z).view(b, n // 2, -1, *z.shape[2:]),
                       Frames.pairs(Frames.roll(z, b)).view(b, n // 2, -1, *z.shape[2:])), dim=1)
        e = self.encoder1(u.reshape(b * n, 2 * z.shape[1], *z.shape[2:]))
        fu = self.feat_fusion(e)
        return fu + self.diff_fusion(e - self.feat_expand(fu))


def burst_pool(a: torch.Tensor, b: int) -> torch.Tensor:
    """Burst pooling (``adapt_brust_pool``): (b·n, F, H, W) -> (b·8, F, H, W).

    Per burst, ``AdaptiveAvgPool1d(7·F)`` over the flattened frame·channel axis (index F·frame + channel) at every
    pixel, reshaped to 7 frames, with frame 0 prepended. For n = 14 each output channel is the mean of two adjacent
    ones.
    """
    n, nf = a.shape[0] // b, a.shape[1]
    v = a.view(b, n, nf, *a.shape[2:])
    flat = v.reshape(b, 1, n * nf, *a.shape[2:])
    pooled = F.adaptive_avg_pool3d(flat, (_POOLED_FRAMES * nf, *a.shape[2:]))  # pools only the frame·channel axis
    pooled = pooled.view(b, _POOLED_FRAMES, nf, *a.shape[2:])
    return torch.cat((v[:, :1], pooled), dim=1).reshape(b * (_POOLED_FRAMES + 1), nf, *a.shape[2:])


# ----------------------------------------------------------------------------------------------------- network
@ARCH_REGISTRY.register()
class Burstormer(nn.Module):
    """Burstormer burst super-resolution network (×4 of the raw mosaic, ×8 of the packed input).

    Args:
        track: 'synthetic' (``Network.py``, 2,488,386 parameters at 48 features) or 'real'
            (``Network_Real_burstSR.py``, 3,263,778). The released *synthetic* checkpoint has the real layout.
        num_features: width F (48 published); divisible by ``deformable_groups`` and by 2 (two heads at level 2).
        deformable_groups: conv and offset groups of the deformable convs (8 published).
        burst_size: frames the weights were trained for (14 published). The forward takes any number of frames,
            but the pooling windows depend on it; ``infer.py`` fills bursts to this many frames.
    """

    #: (multiple, minimum) of the packed h and w: multiples of 4 (two stride-2 levels), at least 4.
    input_size_rule = (4, 4)

    @classmethod
    def check_options(cls, args: Mapping[str, Any]) -> OptionProblems:
        """The deliberate value checks of the constructor, as (key, message) pairs (see ``codes.utils.build``)."""
        problems: OptionProblems = []
        if args['track'] not in BURSTORMER_TRACKS:
            problems.append(('track', f"expected one of {list(BURSTORMER_TRACKS)}, got {args['track']!r}"))
        nf, groups = args['num_features'], args['deformable_groups']
        if groups < 1:
            problems.append(('deformable_groups', f'must be >= 1, got {groups}'))
        elif nf < 2 or nf % 2 or nf % groups:
            problems.append(('num_features', f"({nf}) must be even and divisible by 'deformable_groups' ({groups})"))
        if args['burst_size'] < 1:
            problems.append(('burst_size', f"must be >= 1, got {args['burst_size']}"))
        return problems

    def __init__(self, track: str = 'synthetic', num_features: int = 48, deformable_groups: int = 8,
                 burst_size: int = 14) -> None:
        super().__init__()
        raise_option_problems(Burstormer, locals())
        self.track = track
        self.num_features = nf = num_features
        self.burst_size = burst_size

        # Registration order = state_dict order (the official key lists).
        self.conv1 = nn.Sequential(_conv3(4, nf, bias=False))
        self.align = EDA(nf, deformable_groups, track)
        self.back_projection1 = NoRefBackProjection(nf, track)
        self.back_projection2 = NoRefBackProjection(nf, track)
        self.up1 = nn.Sequential(nn.Conv2d(8 * nf, 8 * nf, 1, bias=False), nn.PixelShuffle(2), nn.GELU())
        self.up2 = nn.Sequential(nn.Conv2d(2 * nf, 4 * nf, 1, bias=False), nn.PixelShuffle(2), nn.GELU())
        self.up3 = nn.Sequential(nn.Conv2d(nf, 4 * nf, 1, bias=False), nn.PixelShuffle(2), nn.GELU())
        self.out_conv = nn.Sequential(_conv3(nf, 3, bias=False))

    def check_input(self, x: torch.Tensor) -> None:
        """Raise a ``ValueError`` explaining why ``x`` cannot go through this model."""
        if x.ndim != 5 or x.shape[2] != 4:
            raise ValueError(f'Burstormer expects a packed RGGB burst (B, N, 4, h, w), got shape {tuple(x.shape)}')
        h, w = x.shape[-2:]
        if h % self.input_size_rule[0] or w % self.input_size_rule[0]:
            raise ValueError(f'packed h and w must be multiples of {self.input_size_rule[0]} (two stride-2 levels, no '
                             f'internal padding), got {h}x{w}; pad or crop the burst first')

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, N, 4, h, w) packed RGGB bursts in [0, 1], frame 0 the reference -> (B, 3, 8h, 8w) linear RGB."""
        self.check_input(x)
        b, n, _, h, w = x.shape
        nf = self.num_features
        f = self.conv1(x.reshape(b * n, 4, h, w))  # frames stacked along the batch axis, burst-major
        a = self.align(f, b)  # (B·N, F, h, w)
        z = self.back_projection1(burst_pool(a, b), b)  # synthetic (B·4, 2F) / real (B·8, F)
        z = self.up1(z.reshape(b, 8 * nf, h, w))  # (B, 2F, 2h, 2w)
        z = self.back_projection2(z.reshape(2 * b, nf, 2 * h, 2 * w), b)
        z = self.up3(self.up2(z.reshape(b, 2 * nf, 2 * h, 2 * w)))  # (B, F, 8h, 8w)
        return self.out_conv(z)


# ----------------------------------------------------------------------------------------------------- checkpoints
def burstormer_track_of(state_dict: Mapping[str, Any]) -> str | None:
    """'synthetic' or 'real' from the fusion keys of a Burstormer state_dict, or None if it has neither."""
    if 'back_projection1.feat_fusion.0.weight' in state_dict:
        return 'synthetic'
    if 'back_projection1.diff_fusion.weight' in state_dict:
        return 'real'
    return None


def convert_burstormer_checkpoint(ckpt: Any, source: str = 'checkpoint',
                                  param_key: str = 'params') -> 'OrderedDict[str, torch.Tensor]':
    """The bare state_dict inside an official (or our) Burstormer checkpoint, for ``load_state_dict(strict=True)``.

    Accepts the synthetic-track Lightning ``.ckpt`` (``{'state_dict': ..., 'epoch': ..., ...}``), the real-track
    ``{'epoch', 'model_state_dict', 'optimizer_state_dict'}`` file, our ``{'params'|'params_ema': ...}``
    (``param_key`` first) and a bare state_dict; strips ``module.`` / ``model.`` prefixes. Raises
    ``CheckpointLayoutError`` (a one-line user error, also a ``ValueError``) naming ``source`` and what was found
    when it is none of these. Note: the released synthetic ``.ckpt`` holds the *real* layout (``track: real``).
    """
    out = unwrap_checkpoint(ckpt, 'Burstormer', source, param_key)
    if 'conv1.0.weight' not in out or not any(k.startswith('align.alignment0.') for k in out):
        raise CheckpointLayoutError(f'{source}: not a Burstormer state_dict (no conv1.0.weight / '
                                    f'align.alignment0.*); first keys {list(out)[:4]}')
    return out
