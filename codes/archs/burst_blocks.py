"""Building blocks shared by the burst networks (BSRT, EBSR, Burstormer, BIPNet): the frame-stacked batch layout
(``Frames``), weight-normalised convs, wide-activation residual blocks, the flow-free pyramid/cascading/deformable
(PCD) alignment, and the feature pyramid and ×4 skip/upsampling head that BSRT kept from EBSR.

* ``WNConv2d``: weight normalisation (Salimans & Kingma, NeurIPS 2016) with the parameters ``weight_g`` and
  ``weight_v`` of ``torch.nn.utils.weight_norm``, so checkpoints of networks built with that wrapper load unchanged.
* ``WideActResBlock`` and the long-range skip-connection (LRSC) blocks and groups: Yu et al., "Wide Activation for
  Efficient and Accurate Image Super-Resolution" (WDSR, 2018) as used by EBSR (``Algolzw/EBSR: model/arch_util.py``).
* ``PCDAlign``: EDVR's alignment (Wang et al., CVPR Workshops 2019) without optical flow, in EBSR's form
  (``Algolzw/EBSR: model/ebsr.py``, ``PCD_Align``).
* ``BurstHeadMixin``: the FPN over the per-frame features and the skip/upsampling head of BSRT and EBSR; both
  networks register these convs at their top level (``fea_L2_conv1`` ... ``skipup2``), so the methods read them
  from the network.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from codes.archs.arch_util import DCNSep

__all__ = ['up2', 'icnr_', 'Frames', 'WNConv2d', 'WideActResBlock', 'LRSCWideActResBlock', 'LRSCWideActResGroup',
           'BoundedDCNSep', 'PCDAlign', 'BurstHeadMixin']

Act = Callable[[torch.Tensor], torch.Tensor]


def up2(x: torch.Tensor) -> torch.Tensor:
    """Bilinear ×2, align_corners=False."""
    return F.interpolate(x, scale_factor=2, mode='bilinear', align_corners=False)


# ----------------------------------------------------------------------------------------------------- frames
class Frames:
    """Helpers for the frame-stacked layout (B·n, C, H, W) of ``b`` bursts of ``n`` frames each (burst-major), the
    batched form of the frame-as-batch-axis forwards of Burstormer and BIPNet (which process one burst)."""

    @staticmethod
    def ref(t: torch.Tensor, b: int) -> torch.Tensor:
        """Frame 0 of each burst repeated over that burst's frames (``rep0``)."""
        v = t.view(b, -1, *t.shape[1:])
        return v[:, :1].expand_as(v).reshape(t.shape)

    @staticmethod
    def keep_ref(y: torch.Tensor, x: torch.Tensor, b: int) -> torch.Tensor:
        """``y`` with frame 0 of every burst replaced by that of ``x`` (the original's in-place ``y[0] = x[0]``)."""
        vy, vx = y.view(b, -1, *y.shape[1:]), x.view(b, -1, *x.shape[1:])
        return torch.cat((vx[:, :1], vy[:, 1:]), dim=1).reshape(y.shape)

    @staticmethod
    def pairs(t: torch.Tensor) -> torch.Tensor:
        """(b·n, C, H, W) -> (b·n/2, 2C, H, W), n even: item k of a burst = cat[frame 2k, frame 2k + 1]."""
        return t.reshape(t.shape[0] // 2, 2 * t.shape[1], *t.shape[2:])

    @staticmethod
    def roll(t: torch.Tensor, b: int) -> torch.Tensor:
        """Frames rolled by +1 within each burst: out[k] = t[(k − 1) mod n]."""
        v = t.view(b, -1, *t.shape[1:])
        return torch.roll(v, 1, dims=1).reshape(t.shape)


# ----------------------------------------------------------------------------------------------------- weight norm
class WNConv2d(nn.Conv2d):
    """``nn.Conv2d`` with weight normalisation: weight = weight_g · weight_v / ‖weight_v‖ (norm per output channel).

    Parameters and state_dict order are those of ``torch.nn.utils.weight_norm(nn.Conv2d(...))``: ``bias``,
    ``weight_g`` (out, 1, 1, 1), ``weight_v`` (out, in/groups, k, k). The effective weight is computed in the
    forward with ``torch._weight_norm``, the kernel that wrapper's hook calls, instead of a hook that stores it as a
    non-leaf attribute: the module stays deep-copyable after a forward (EMA, snapshots), which the legacy wrapper is
    not, and its names stay ``weight_g``/``weight_v``, which ``torch.nn.utils.parametrizations.weight_norm`` renames
    to ``parametrizations.weight.original0/1`` (official weight files would not load). Initialisation is PyTorch's
    default conv init with g = ‖v‖, as the wrapper leaves it.

    Args: as ``nn.Conv2d``; ``padding`` defaults to ``kernel_size // 2``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int | None = None, bias: bool = True) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride,
                         kernel_size // 2 if padding is None else padding, bias=bias)
        weight = self.weight.detach()
        del self.weight  # re-registered as g (norm) and v (direction), after the bias
        self.weight_g = nn.Parameter(torch.norm_except_dim(weight, 2, 0))
        self.weight_v = nn.Parameter(weight.clone())

    def effective_weight(self) -> torch.Tensor:
        """g · v / ‖v‖, (out, in, k, k)."""
        return torch._weight_norm(self.weight_v, self.weight_g, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.effective_weight(), self.bias)


# ----------------------------------------------------------------------------------------------------- WDSR blocks
def _wide_body(num_feat: int, expand: int = 6, linear: float = 0.8) -> nn.Sequential:
    """WN 1×1 F→expand·F, ReLU, WN 1×1 →int(linear·F), WN 3×3 →F (``body.0``, ``body.2``, ``body.3``)."""
    wide, narrow = num_feat * expand, int(num_feat * linear)
    return nn.Sequential(WNConv2d(num_feat, wide, 1), nn.ReLU(inplace=True), WNConv2d(wide, narrow, 1),
                         WNConv2d(narrow, num_feat, 3))


class WideActResBlock(nn.Module):
    """Wide-activation residual block (WDSR-B): x + body(x), no activation after the add."""

    def __init__(self, num_feat: int) -> None:
        super().__init__()
        self.body = _wide_body(num_feat)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + x


class LRSCWideActResBlock(nn.Module):
    """Block ``index`` of an LRSC group: input u with F·(index+1) channels, output cat[r, u] with F·(index+2).

    r = body(head(u)); ``head`` (WN 1×1 F·(index+1)→F) exists for index > 0 only. No residual add.
    """

    def __init__(self, num_feat: int, index: int) -> None:
        super().__init__()
        if index > 0:
            self.head = nn.Sequential(WNConv2d(num_feat * (index + 1), num_feat, 1))
        self.body = _wide_body(num_feat)
        self.index = index

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        r = self.head(u) if self.index > 0 else u
        return torch.cat((self.body(r), u), dim=1)


class LRSCWideActResGroup(nn.Module):
    """Group ``index`` of the LRSC trunk: input t with F·(index+1) channels, output cat[v, t] with F·(index+2).

    ``head`` (WN 1×1 →F, for index > 0 only), ``num_blocks`` LRSC blocks (``body.j``), ``tail`` (WN 1×1
    F·(num_blocks+1)→F) give v. New features first, no residual add (EBSR's ``--lrcn`` trunk).
    """

    def __init__(self, num_feat: int, num_blocks: int, index: int) -> None:
        super().__init__()
        if index > 0:
            self.head = nn.Sequential(WNConv2d(num_feat * (index + 1), num_feat, 1))
        self.body = nn.Sequential(*[LRSCWideActResBlock(num_feat, j) for j in range(num_blocks)])
        self.tail = nn.Sequential(WNConv2d(num_feat * (num_blocks + 1), num_feat, 1))
        self.index = index

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        u = self.head(t) if self.index > 0 else t
        return torch.cat((self.tail(self.body(u)), t), dim=1)


# ----------------------------------------------------------------------------------------------------- alignment
class BoundedDCNSep(DCNSep):
    """``DCNSep`` with EBSR's offset handling (``Algolzw/EBSR: model/DCNv2/dcn_v2.py``, ``DCN_sep``).

    offset = clamp(cat[o1, o2], ±max_offset); then, where the mean |offset| of a burst frame exceeds
    ``guard_mean``, its entries ≥ ``guard_mean`` become 1e-3 (the original's in-place guard, which it prints about;
    never reached with trained weights). The original takes that mean over the whole batch of one frame; here it is
    taken per sample, so every burst of a batch gives the output it gives alone (identical at batch size 1).
    mask = sigmoid(m). Runs in float32 with autocast off, through the shared DCN function.
    """

    def __init__(self, *args, max_offset: float = 200.0, guard_mean: float = 150.0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.max_offset = max_offset
        self.guard_mean = guard_mean

    def forward(self, x: torch.Tensor, fea: torch.Tensor) -> torch.Tensor:
        """x: (B, Cin, H, W) features to deform; fea: (B, Cin, H, W) offset features. Returns x's dtype."""
        dtype = x.dtype
        with torch.autocast(device_type=x.device.type, enabled=False):
            o1, o2, m = self._offset_mask(fea)
            offset = torch.cat((o1, o2), dim=1).clamp(-self.max_offset, self.max_offset)
            tripped = offset.abs().mean(dim=(1, 2, 3), keepdim=True) > self.guard_mean  # (B, 1, 1, 1), no sync
            offset = torch.where(tripped & (offset >= self.guard_mean), offset.new_tensor(1e-3), offset)
            out = self._deform(x, offset, torch.sigmoid(m))
        return out.to(dtype)


class PCDAlign(nn.Module):
    """Pyramid, cascading and deformable alignment without optical flow (EDVR; ``pcd_align`` in EBSR).

    Offsets at each level come from cat[nbr, ref] and the ×2-upsampled, doubled offset features of the coarser
    level; the aligned features of a level are fused with the upsampled ones of the coarser level; a cascading DCN
    refines the finest level. LeakyReLU(0.1) throughout, including after the cascading DCN.

    Args:
        num_feat: feature channels at every level.
        deformable_groups: offset groups of each DCN.
    """

    def __init__(self, num_feat: int = 128, deformable_groups: int = 8) -> None:
        super().__init__()
        nf = num_feat

        def conv(cin: int) -> WNConv2d:
            return WNConv2d(cin, nf, 3)

        def dcn() -> BoundedDCNSep:
            return BoundedDCNSep(nf, nf, 3, stride=1, padding=1, deformable_groups=deformable_groups)

        # Registration order = state_dict order.
        self.L3_offset_conv1 = conv(2 * nf)
        self.L3_offset_conv2 = conv(nf)
        self.L3_dcnpack = dcn()
        self.L2_offset_conv1 = conv(2 * nf)
        self.L2_offset_conv2 = conv(2 * nf)
        self.L2_offset_conv3 = conv(nf)
        self.L2_dcnpack = dcn()
        self.L2_fea_conv = conv(2 * nf)
        self.L1_offset_conv1 = conv(2 * nf)
        self.L1_offset_conv2 = conv(2 * nf)
        self.L1_offset_conv3 = conv(nf)
        self.L1_dcnpack = dcn()
        self.L1_fea_conv = conv(2 * nf)
        self.cas_offset_conv1 = conv(2 * nf)
        self.cas_offset_conv2 = conv(nf)
        self.cas_dcnpack = dcn()
        self.lrelu = nn.LeakyReLU(0.1)

    def forward(self, nbr: Sequence[torch.Tensor], ref: Sequence[torch.Tensor]) -> torch.Tensor:
        """nbr, ref: [L1, L2, L3] features (B, F, H/2^k, W/2^k) of the frames to align and of the reference.
        Returns the aligned L1 features (B, F, H, W)."""
        act = self.lrelu
        # level 3 (1/4)
        o3 = act(self.L3_offset_conv1(torch.cat((nbr[2], ref[2]), dim=1)))
        o3 = act(self.L3_offset_conv2(o3))
        f3 = act(self.L3_dcnpack(nbr[2], o3))
        # level 2 (1/2)
        o2 = act(self.L2_offset_conv1(torch.cat((nbr[1], ref[1]), dim=1)))
        o2 = act(self.L2_offset_conv2(torch.cat((o2, 2 * up2(o3)), dim=1)))
        o2 = act(self.L2_offset_conv3(o2))
        f2 = self.L2_dcnpack(nbr[1], o2)
        f2 = act(self.L2_fea_conv(torch.cat((f2, up2(f3)), dim=1)))
        # level 1 (full)
        o1 = act(self.L1_offset_conv1(torch.cat((nbr[0], ref[0]), dim=1)))
        o1 = act(self.L1_offset_conv2(torch.cat((o1, 2 * up2(o2)), dim=1)))
        o1 = act(self.L1_offset_conv3(o1))
        f1 = self.L1_dcnpack(nbr[0], o1)
        f1 = self.L1_fea_conv(torch.cat((f1, up2(f2)), dim=1))  # no activation
        # cascade
        oc = act(self.cas_offset_conv1(torch.cat((f1, ref[0]), dim=1)))
        oc = act(self.cas_offset_conv2(oc))
        return act(self.cas_dcnpack(f1, oc))


def icnr_(conv: nn.Conv2d, scale: int, init: Callable[[torch.Tensor], object] | None = None) -> None:
    """Make ``conv``'s output channels equal in groups of ``scale``² (ICNR), as ``F.pixel_shuffle(·, scale)`` groups
    them: one sub-kernel per shuffled channel, drawn with PyTorch's default convolution initialisation, or with
    ``init`` applied to the sub-kernel weight (``nn.init.kaiming_normal_`` in DBSR)."""
    out_channels = conv.out_channels
    if out_channels % (scale * scale):
        raise ValueError(f'ICNR: {out_channels} output channels are not a multiple of {scale}²')
    sub = nn.Conv2d(conv.in_channels, out_channels // (scale * scale), conv.kernel_size, bias=conv.bias is not None)
    with torch.no_grad():
        if init is not None:
            init(sub.weight)
        conv.weight.copy_(sub.weight.repeat_interleave(scale * scale, dim=0))
        if conv.bias is not None:
            conv.bias.copy_(sub.bias.repeat_interleave(scale * scale, dim=0))


# ----------------------------------------------------------------------------------------------------- FPN + head
class BurstHeadMixin:
    """FPN and ×4 skip/upsampling head of BSRT and EBSR, on convs the network registers at its top level.

    The network defines ``fea_L2_conv1`` (3×3 stride 2, F→2F), ``fea_L3_conv1`` (3×3 stride 2, 2F→4F),
    ``toplayer`` (1×1 4F→F), ``smooth1``/``smooth2`` (3×3 F→F), ``latlayer1`` (1×1 2F→F), ``latlayer2`` (1×1 F→F),
    and ``upconv1`` (→4F), ``upconv2`` (F→4F'), ``HRconv`` (F'→F'), ``conv_last`` (F'→3), ``skipup1`` (1→4F),
    ``skipup2`` (F→12), with F' = 64 in both; ``act`` is its activation (LeakyReLU(0.1) in BSRT, ReLU in EBSR).
    """

    #: The convolutions each followed by a ×2 pixel shuffle in the head.
    SHUFFLED_CONVS = ('upconv1', 'upconv2', 'skipup1', 'skipup2')

    def icnr_init_head(self) -> None:
        """ICNR initialisation of the convolutions before every pixel shuffle of the head.

        Aitken et al., "Checkerboard artifact free sub-pixel convolution", arXiv:1707.02937 (2017): the r² output
        channels that one pixel shuffle interleaves into an r×r block start equal, so the untrained head upsamples
        like nearest neighbour instead of printing a fixed period-r pattern that training must first unlearn.
        """
        for name in self.SHUFFLED_CONVS:
            icnr_(getattr(self, name), 2)

    def feature_pyramid(self, l1: torch.Tensor, act: Act) -> list[torch.Tensor]:
        """(n, F, H, W) -> [L1, L2, L3] with F channels at H, H/2, H/4 (top-down FPN, bilinear ×2)."""
        l2 = act(self.fea_L2_conv1(l1))  # (n, 2F, H/2, W/2)
        l3 = act(self.fea_L3_conv1(l2))  # (n, 4F, H/4, W/4)
        l3 = act(self.toplayer(l3))  # (n, F, H/4, W/4)
        l2 = self.smooth1(up2(l3) + self.latlayer1(l2))
        l1 = self.smooth2(up2(l2) + self.latlayer2(l1))
        return [l1, l2, l3]

    def skip_branch(self, ref_mosaic: torch.Tensor, act: Act) -> tuple[torch.Tensor, torch.Tensor]:
        """Reference mosaic (B, 1, H, W) -> skip1 (B, F, 2H, 2W) and skip2 (B, 3, 4H, 4W)."""
        skip1 = act(F.pixel_shuffle(self.skipup1(ref_mosaic), 2))
        skip2 = F.pixel_shuffle(self.skipup2(skip1), 2)
        return skip1, skip2

    def upsample(self, x1: torch.Tensor, skip1: torch.Tensor, skip2: torch.Tensor, act: Act) -> torch.Tensor:
        """Deep features (B, C, H, W) -> (B, 3, 4H, 4W) with the skip branch; no activation, no clamp at the end."""
        u = act(F.pixel_shuffle(self.upconv1(x1), 2)) + skip1  # (B, F, 2H, 2W)
        u = act(F.pixel_shuffle(self.upconv2(u), 2))  # (B, F, 4H, 4W)
        u = act(self.HRconv(u))
        return self.conv_last(u) + skip2
