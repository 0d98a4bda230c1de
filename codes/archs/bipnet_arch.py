"""BIPNet: Burst Image Restoration and Enhancement (burst super-resolution network).

Paper: Dudhane, Zamir, Khan, Khan, Yang, "Burst Image Restoration and Enhancement", CVPR 2022, arXiv 2110.03680.
Upstream: ``akshaydudhane16/BIPNet`` (no licence stated), ``Burst_Super_Resolution/Network.py``, class ``BIPNet``
(last changed e8f2674; 6,674,400 parameters, 270 tensors). One network serves both tracks (the synthetic and the
real checkpoint have the same keys). Re-implemented so that the official state_dicts load strictly.

Input (B, 14, 4, h, w): packed RGGB bursts in [0, 1], frame 0 the reference, h and w multiples of 4. Output
(B, 3, 8h, 8w): linear camera RGB, not clamped. Parts, with the paper's module names:

* EBFA (edge boosting feature alignment): ``conv1`` per-frame stem; ``encoder`` (RGCAB residual blocks with
  global-context attention); ``bottleneck`` on cat[frame 0, frame] and a cascade of four modulated deformable convs
  (``offset_conv1..4``, ``deform1..4``; the third samples the encoder features, as upstream); ``feat_ext1`` and the
  edge-boosting residual ``cor_conv1`` on the difference to frame 0's stem features;
* PBFF (pseudo-burst feature fusion): frames and channels swapped (64 pseudo-bursts of 14 frames), ``conv2``
  (14 -> 64, one kernel per frame, hence the fixed burst size), a light three-level U-Net (``UNet``, MSF);
* AGU (adaptive group upsampling, ``SKFF1..3``): three ×2 stages merging groups of 4 pseudo-bursts, then ``conv3``.

Deviation from the original: every burst of a batch is processed (the original uses ``burst[0]`` only).
Mixed precision: the global-context softmax and pooling, the AGU softmax, the offset/mask conv and the deformable
convs compute in float32 with autocast off; the other convs follow autocast.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from codes.archs.arch_util import IMPLS, GroupedDeformConv, Impl, _fp32, _no_autocast, dcn_offset_mask
from codes.archs.burst_blocks import Frames
from codes.data.input_errors import InputError
from codes.utils.build import OptionProblems, raise_option_problems
from codes.utils.checkpoint import CheckpointLayoutError, unwrap_checkpoint
from codes.utils.registry import ARCH_REGISTRY

__all__ = ['BIPNet', 'BIPNET_TRACKS', 'convert_bipnet_checkpoint', 'is_bipnet_state_dict']

BIPNET_TRACKS = ('synthetic', 'real')
_SLOPE = 0.2  # LeakyReLU negative slope, the only activation of the network
_AGU_MEMBERS = 4  # each AGU stage merges groups of 4 (pseudo-bursts, then its own outputs)
_UNET_GROWTH = 1.5  # U-Net widths 64 -> 96 -> 144


def _conv(cin: int, cout: int, k: int = 3) -> nn.Conv2d:
    """Bias-free conv, stride 1, 'same' padding (every conv of BIPNet except the DCNs)."""
    return nn.Conv2d(cin, cout, k, 1, k // 2, bias=False)


def _lrelu() -> nn.LeakyReLU:
    return nn.LeakyReLU(_SLOPE)


# ----------------------------------------------------------------------------------------------------- blocks
class GCA(nn.Module):
    """Global context attention (a GCNet context block without LayerNorm or bottleneck, Cao et al., 2019):
    out = x + channel_add_conv(Σ_p softmax_p(conv_mask(x)) · x_p), the softmax over all H·W positions of an item.
    The softmax and the weighted sum compute in float32."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv_mask = nn.Conv2d(channels, 1, 1, bias=False)
        self.channel_add_conv = nn.Sequential(_conv(channels, channels, 1), _lrelu(), _conv(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        with _no_autocast(x.device):  # a softmax and a sum over h·w positions
            xf = _fp32(x)
            logits = F.conv2d(xf, self.conv_mask.weight.to(xf.dtype)).reshape(n, 1, h * w)
            context = torch.bmm(xf.reshape(n, c, h * w), logits.softmax(dim=-1).transpose(1, 2))  # (n, C, 1)
        t = self.channel_add_conv(context.view(n, c, 1, 1).to(x.dtype))
        return x + t


class RGCA(nn.Module):
    """Residual global-context attention unit: x + conv1x1(GCA(conv3(LReLU(conv3(x)))))."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(_conv(channels, channels), _lrelu(), _conv(channels, channels))
        self.gcnet = nn.Sequential(GCA(channels))
        self.conv1x1 = _conv(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv1x1(self.gcnet(self.body(x)))


class RGCAB(nn.Module):
    """Residual block of ``units`` RGCA units and a 3x3 conv (``module.0..units``): x + module(x)."""

    def __init__(self, channels: int, units: int) -> None:
        super().__init__()
        self.module = nn.Sequential(*[RGCA(channels) for _ in range(units)], _conv(channels, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.module(x)


def _rgcab_stack(channels: int, blocks: int, units: int) -> nn.Sequential:
    return nn.Sequential(*[RGCAB(channels, units) for _ in range(blocks)])


class DownSample(nn.Module):
    """2x2 average pooling (ceil mode, padding not counted), then a 1x1 conv C -> 1.5·C (``down.1``)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.down = nn.Sequential(nn.AvgPool2d(2, ceil_mode=True, count_include_pad=False), _conv(cin, cout, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(x)


class UpSample(nn.Module):
    """A 1x1 conv C -> C/1.5 (``up.0``), then bilinear ×2 with align_corners=True."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.up = nn.Sequential(_conv(cin, cout, 1), nn.Upsample(scale_factor=2, mode='bilinear', align_corners=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(x)


class MSF(nn.Module):
    """Multi-scale feature extraction (``UNet.0``): a light U-Net of RGCAB stacks at widths C, 1.5C, 2.25C.

    x1 = feat_ext1(x); e1 = feat_ext2(down1(x1)); e2 = feat_ext3(down2(e1)); d = feat_ext5(up2(e2) + e1);
    out = feat_ext6(up1(d) + x1). Upstream has no ``feat_ext4``.
    """

    def __init__(self, channels: int, blocks: Sequence[int], units: int) -> None:
        super().__init__()
        c1 = channels
        c2 = int(c1 * _UNET_GROWTH)
        c3 = int(c2 * _UNET_GROWTH)
        self.feat_ext1 = _rgcab_stack(c1, blocks[0], units)
        self.down1 = DownSample(c1, c2)
        self.feat_ext2 = _rgcab_stack(c2, blocks[1], units)
        self.down2 = DownSample(c2, c3)
        self.feat_ext3 = _rgcab_stack(c3, blocks[2], units)
        self.up2 = UpSample(c3, c2)
        self.feat_ext5 = _rgcab_stack(c2, blocks[3], units)
        self.up1 = UpSample(c2, c1)
        self.feat_ext6 = _rgcab_stack(c1, blocks[4], units)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.feat_ext1(x)
        e1 = self.feat_ext2(self.down1(x1))
        e2 = self.feat_ext3(self.down2(e1))
        d = self.feat_ext5(self.up2(e2) + e1)
        return self.feat_ext6(self.up1(d) + x1)


class AGU(nn.Module):
    """Adaptive group upsampling (``SKFF1..3``): (G, 4, C, H, W) groups of 4 -> (G, C, 2H, 2W).

    U = Σ members; Z = LReLU(conv_du(U)) (C -> 8); logits = [convs.0(Z), ..., convs.3(Z)] (8 -> C each); A = softmax
    over the 4 members (per channel and pixel, in float32); V = X · A, member-major channels (64·member + c);
    out = ConvTranspose2d(4C, C, 3, stride 2, padding 1, output_padding 1, no bias)(V).
    """

    def __init__(self, channels: int, members: int = _AGU_MEMBERS, reduction: int = 8) -> None:
        super().__init__()
        d = max(channels // reduction, 4)
        self.members = members
        self.conv_du = nn.Sequential(_conv(channels, d, 1), _lrelu())
        self.convs = nn.ModuleList([_conv(d, channels, 1) for _ in range(members)])
        self.up = nn.ConvTranspose2d(members * channels, channels, 3, 2, 1, output_padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (G, members, C, H, W)."""
        g, m, c, h, w = x.shape
        z = self.conv_du(x.sum(dim=1))
        logits = torch.stack([conv(z) for conv in self.convs], dim=1)  # (G, members, C, H, W)
        with _no_autocast(x.device):
            attn = _fp32(logits).softmax(dim=1)
        v = (x * attn.to(x.dtype)).reshape(g, m * c, h, w)  # member-major channels
        return self.up(v)


# ----------------------------------------------------------------------------------------------------- network
@ARCH_REGISTRY.register()
class BIPNet(nn.Module):
    """BIPNet burst super-resolution network (×4 of the raw mosaic, ×8 of the packed input), 64 features.

    Args:
        track: 'synthetic' or 'real': the same network (both released checkpoints have one layout); accepted so
            that option files name their track as Burstormer's do.
        burst_size: frames per burst, fixed at 14: ``conv2`` has one input channel (kernel) per frame and the
            released weights were trained with 14, so another value is refused, and so is a burst of another size.
        num_blocks: RGCAB blocks of ``encoder`` and of ``feat_ext1`` (3 published).
        num_units: RGCA units per RGCAB block of ``encoder`` and ``feat_ext1`` (3 published).
        unet_blocks: RGCAB blocks of the U-Net stages feat_ext1, 2, 3, 5, 6 (published (2, 2, 1, 2, 2)).
        unet_units: RGCA units per U-Net RGCAB block (2 published).
        impl: the deformable convs: 'reference' = ``torchvision.ops.deform_conv2d`` (the original's operator),
            'fast' = ``grid_sample`` of the taps plus one matrix product (same function to float rounding), 'auto'
            = 'fast'. See :meth:`set_impl`.

    The width is not an option: the 64 channels are also the 64 pseudo-bursts, which three AGU stages of groups of
    4 merge into one image (64 -> 16 -> 4 -> 1), so it fixes the ×8 output.
    """

    #: (multiple, minimum) of the packed h and w: multiples of 4 (two pooling levels in the U-Net), at least 4.
    input_size_rule = (4, 4)
    num_features = 64
    deformable_groups = 8

    @classmethod
    def check_options(cls, args: Mapping[str, Any]) -> OptionProblems:
        """The deliberate value checks of the constructor, as (key, message) pairs (see ``codes.utils.build``)."""
        problems: OptionProblems = []
        if args['track'] not in BIPNET_TRACKS:
            problems.append(('track', f"expected one of {list(BIPNET_TRACKS)}, got {args['track']!r}"))
        if args['burst_size'] != 14:
            problems.append(('burst_size', 'BIPNet takes bursts of 14 frames (its pseudo-burst conv has one kernel '
                                           f"per frame), got {args['burst_size']}"))
        if args['impl'] not in IMPLS:
            problems.append(('impl', f"expected one of {', '.join(IMPLS)}, got {args['impl']!r}"))
        for key in ('num_blocks', 'num_units', 'unet_units'):
            if args[key] < 1:
                problems.append((key, f'must be >= 1, got {args[key]}'))
        blocks = list(args['unet_blocks'])
        if len(blocks) != 5 or min(blocks, default=0) < 1:
            problems.append(('unet_blocks', f'expected five block counts >= 1, got {blocks}'))
        return problems

    def __init__(self, track: Literal['synthetic', 'real'] = 'synthetic', burst_size: Literal[14] = 14,
                 num_blocks: int = 3, num_units: int = 3, unet_blocks: Sequence[int] = (2, 2, 1, 2, 2),
                 unet_units: int = 2, impl: Impl = 'auto') -> None:
        super().__init__()
        raise_option_problems(BIPNet, locals())
        unet_blocks = tuple(unet_blocks)
        self.track = track
        self.burst_size = burst_size
        nf, groups = self.num_features, self.deformable_groups
        offsets = 3 * groups * 9  # (o1, o2, mask) for 8 groups x 9 taps

        # Registration order = state_dict order (the official key list).
        self.conv1 = nn.Sequential(_conv(4, nf))
        self.encoder = _rgcab_stack(nf, num_blocks, num_units)
        self.bottleneck = _conv(2 * nf, nf)
        self.offset_conv1 = _conv(nf, offsets)
        self.offset_conv2 = _conv(nf, offsets)
        self.offset_conv3 = _conv(nf, offsets)
        self.offset_conv4 = _conv(nf, offsets)
        self.deform1 = GroupedDeformConv(nf, groups, dilation=1)
        self.deform2 = GroupedDeformConv(nf, groups, dilation=1)
        self.deform3 = GroupedDeformConv(nf, groups, dilation=1)
        self.deform4 = GroupedDeformConv(nf, groups, dilation=1)
        self.feat_ext1 = _rgcab_stack(nf, num_blocks, num_units)
        self.cor_conv1 = nn.Sequential(_conv(nf, nf))
        self.conv2 = nn.Sequential(_conv(burst_size, nf))
        self.UNet = nn.Sequential(MSF(nf, unet_blocks, unet_units))
        self.SKFF1 = AGU(nf)
        self.SKFF2 = AGU(nf)
        self.SKFF3 = AGU(nf)
        self.conv3 = nn.Sequential(_conv(nf, 3))
        self.set_impl(impl)

    def set_impl(self, impl: str) -> 'BIPNet':
        """Switch the deformable-conv implementation ('auto', 'fast', 'reference') in place; weights unchanged."""
        if impl not in IMPLS:
            raise ValueError(f"impl: expected one of {', '.join(IMPLS)}, got {impl!r}")
        self.impl = impl
        for m in self.modules():
            if isinstance(m, GroupedDeformConv):
                m.impl = impl
        return self

    def check_input(self, x: torch.Tensor) -> None:
        """Raise an ``InputError`` (a ``ValueError``) explaining why ``x`` cannot go through this model."""
        if x.ndim != 5 or x.shape[2] != 4:
            raise InputError(f'BIPNet expects a packed RGGB burst (B, N, 4, h, w), got shape {tuple(x.shape)}')
        if x.shape[1] != self.burst_size:
            raise InputError(f'BIPNet expects bursts of {self.burst_size} frames (its pseudo-burst conv has one '
                             f'kernel per frame), got {x.shape[1]}; set the data burst_size to {self.burst_size}')
        h, w = x.shape[-2:]
        multiple, least = self.input_size_rule
        if h % multiple or w % multiple or min(h, w) < least:
            raise InputError(f'BIPNet: packed h and w must be multiples of {multiple} (two pooling levels, no internal '
                             f'padding), got {h}x{w}; pad or crop the burst first')

    def _align(self, k: int, x: torch.Tensor, of: torch.Tensor) -> torch.Tensor:
        """``deform<k>`` of ``x`` with the offsets and mask ``offset_conv<k>`` predicts from ``of``."""
        offset, mask = dcn_offset_mask(of, getattr(self, f'offset_conv{k}').weight)
        return getattr(self, f'deform{k}')(x, offset, mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, 14, 4, h, w) packed RGGB bursts in [0, 1], frame 0 the reference -> (B, 3, 8h, 8w) linear RGB."""
        self.check_input(x)
        b, n, _, h, w = x.shape
        nf = self.num_features
        s = self.conv1(x.reshape(b * n, 4, h, w))  # (B·N, F, h, w): frames stacked along the batch axis, burst-major
        e = self.encoder(s)
        # alignment: four cascaded DCNs, reference first in the bottleneck; frame 0 is deformed too
        f = self.bottleneck(torch.cat((Frames.ref(e, b), e), dim=1))
        f = self._align(1, f, f)
        f = self._align(2, f, f)
        f = self._align(3, e, f)  # upstream: the third DCN samples the encoder features, offsets from f2
        a = self._align(4, f, f)
        # edge boosting: residual from the difference to frame 0's stem (pre-encoder) features
        g = self.feat_ext1(a)
        g = g + self.cor_conv1(g - Frames.ref(s, b))
        # pseudo-bursts: channel c of all N frames (a transpose of the frame and channel axes, per burst)
        p = g.view(b, n, nf, h, w).transpose(1, 2).reshape(b * nf, n, h, w)
        m = self.UNet(self.conv2(p))  # (B·64, F, h, w)
        # AGU: consecutive groups of 4 pseudo-bursts within each burst, 64 -> 16 -> 4 -> 1 per burst
        k = _AGU_MEMBERS
        z = self.SKFF1(m.view(b * nf // k, k, nf, h, w))  # (B·16, F, 2h, 2w)
        z = self.SKFF2(z.view(b * nf // k**2, k, nf, 2 * h, 2 * w))  # (B·4, F, 4h, 4w)
        z = self.SKFF3(z.view(b, k, nf, 4 * h, 4 * w))  # (B, F, 8h, 8w)
        return self.conv3(z)


# ----------------------------------------------------------------------------------------------------- checkpoints
def is_bipnet_state_dict(state_dict: Mapping[str, Any]) -> bool:
    """Whether the keys are BIPNet's: the pseudo-burst conv, the U-Net and the AGUs (none of them in Burstormer)."""
    return all(k in state_dict for k in ('conv1.0.weight', 'conv2.0.weight', 'SKFF1.up.weight', 'conv3.0.weight')) \
        and any(k.startswith('UNet.0.') for k in state_dict)


def convert_bipnet_checkpoint(ckpt: Any, source: str = 'checkpoint',
                              param_key: str = 'params') -> 'OrderedDict[str, torch.Tensor]':
    """The bare state_dict inside an official (or our) BIPNet checkpoint, for ``load_state_dict(strict=True)``.

    Accepts the synthetic-track Lightning ``.ckpt`` (``{'state_dict': ..., 'epoch': ..., ...}``), the real-track
    ``{'epoch', 'model_state_dict', 'optimizer_state_dict'}`` file, our ``{'params'|'params_ema': ...}``
    (``param_key`` first) and a bare state_dict; strips ``module.`` / ``model.`` prefixes. Raises
    ``CheckpointLayoutError`` (a one-line user error, also a ``ValueError``) naming ``source`` and what was found
    when it is none of these.
    """
    out = unwrap_checkpoint(ckpt, 'BIPNet', source, param_key)
    if not is_bipnet_state_dict(out):
        raise CheckpointLayoutError(f'{source}: not a BIPNet state_dict (no conv2.0.weight / SKFF1.up.weight / '
                                    f'UNet.0.*); first keys {list(out)[:4]}')
    return out
