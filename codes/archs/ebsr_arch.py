"""EBSR: Feature Enhanced Burst Super-Resolution with Deformable Alignment.

Paper: Luo et al., CVPR Workshops 2021, pp. 471-478 (1st place NTIRE 2021 BurstSR real track, 2nd synthetic).
Upstream: ``Algolzw/EBSR`` at commit 0ae35fd3 (``model/ebsr.py``, ``model/arch_util.py``, ``model/non_local/``,
``model/DCNv2/dcn_v2.py``); re-implemented so that the official checkpoints (bare state_dicts with weight-norm
``weight_g``/``weight_v`` tensors) load strictly, with torchvision's deformable convolution instead of the
CUDA-10-only compiled DCNv2.

Input: the flattened Bayer mosaic of every frame (B, N, 1, H, W), as the original takes it, or packed RGGB bursts
(B, N, 4, h, w), flattened here by PixelShuffle(2) per frame (H = 2h). Values in [0, 1], frame 0 the reference.
Output (B, 3, 4H, 4W) = (B, 3, 8h, 8w): linear camera RGB, not clamped. Parts:

* skip branch: the reference mosaic upsampled ×4;
* per-frame features: WN conv + 5 wide-activation residual blocks at mosaic size, 3-level pyramid with an FPN;
* flow-free PCD alignment of every frame (the reference included) to the reference;
* cross non-local fusion: per frame, a non-local block querying the reference and a self non-local block;
  all outputs concatenated frame-major, then a WN 1×1 conv;
* long-range skip-connection trunk of wide-activation groups, then the ×4 pixel-shuffle head.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from codes.archs.burst_blocks import BurstHeadMixin, LRSCWideActResGroup, PCDAlign, WideActResBlock, WNConv2d
from codes.utils.checkpoint import CheckpointError, extract_state_dict
from codes.utils.build import OptionProblems, raise_option_problems
from codes.utils.registry import ARCH_REGISTRY

__all__ = ['EBSR', 'NonLocalBlock', 'CrossNonLocalFusion', 'convert_ebsr_checkpoint', 'HEAD_FEAT']

#: Width of the last upsampling stage (``upconv2`` → 4·64, ``HRconv``, ``conv_last``), 64 whatever n_feats is, as
#: in EDVR, which EBSR's head follows.
HEAD_FEAT = 64


# ----------------------------------------------------------------------------------------------------- fusion
class NonLocalBlock(nn.Module):
    """Dot-product non-local block (Wang et al., CVPR 2018), 2-D, keys and values max-pooled ``sub_sample``×.

    z = x + W(A·G) with A = θ(q)·φ(x) / M (no softmax; M = pooled key positions), G = g(x), and q = x (self block)
    or the reference features (cross block). ``W`` is zero-initialised, so a new block is the identity.
    Submodules in state_dict order: ``g`` (conv + pool), ``W``, ``theta``, ``phi`` (conv + pool); no weight norm.
    """

    def __init__(self, in_channels: int, inter_channels: int | None = None, sub_sample: int = 4) -> None:
        super().__init__()
        ci = inter_channels or max(in_channels // 2, 1)
        self.inter_channels = ci
        self.g = nn.Sequential(nn.Conv2d(in_channels, ci, 1), nn.MaxPool2d(sub_sample))
        self.W = nn.Conv2d(ci, in_channels, 1)
        nn.init.zeros_(self.W.weight)
        nn.init.zeros_(self.W.bias)
        self.theta = nn.Conv2d(in_channels, ci, 1)
        self.phi = nn.Sequential(nn.Conv2d(in_channels, ci, 1), nn.MaxPool2d(sub_sample))

    def forward(self, x: torch.Tensor, query: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, C, H, W) keys, values and residual; query: (B, C, H, W) or None (= x). Returns (B, C, H, W)."""
        b, _, h, w = x.shape
        ci = self.inter_channels
        g = self.g(x).view(b, ci, -1).transpose(1, 2)  # (B, M, C')
        theta = self.theta(x if query is None else query).view(b, ci, -1).transpose(1, 2)  # (B, H·W, C')
        phi = self.phi(x).view(b, ci, -1)  # (B, C', M)
        attn = torch.matmul(theta, phi) / phi.shape[-1]  # (B, H·W, M)
        y = torch.matmul(attn, g).transpose(1, 2).reshape(b, ci, h, w)
        return self.W(y) + x


class CrossNonLocalFusion(nn.Module):
    """EBSR's ``CrossNonLocal_Fusion``: per frame i a cross block (query: the reference) and a self block, then
    x0 = ``fea_fusion``(cat[cross_0 … cross_{N-1}, self_0 … self_{N-1}]), a WN 1×1 conv 2·N·F → F.

    Args:
        num_feat: F. burst_size: N (one block pair per frame). center: index of the reference frame (0).
    """

    def __init__(self, num_feat: int = 128, burst_size: int = 14, center: int = 0) -> None:
        super().__init__()
        self.center = center
        self.non_local_T = nn.ModuleList([NonLocalBlock(num_feat, num_feat // 2) for _ in range(burst_size)])
        self.non_local_F = nn.ModuleList([NonLocalBlock(num_feat, num_feat // 2) for _ in range(burst_size)])
        self.fea_fusion = WNConv2d(2 * burst_size * num_feat, num_feat, 1)

    def forward(self, aligned: torch.Tensor) -> torch.Tensor:
        """aligned: (B, N, F, H, W) -> (B, F, H, W), before the network's activation."""
        ref = aligned[:, self.center]
        cross = [blk(aligned[:, i], ref) for i, blk in enumerate(self.non_local_T)]
        own = [blk(aligned[:, i]) for i, blk in enumerate(self.non_local_F)]
        return self.fea_fusion(torch.cat(cross + own, dim=1))


# ----------------------------------------------------------------------------------------------------- network
@ARCH_REGISTRY.register()
class EBSR(BurstHeadMixin, nn.Module):
    """EBSR burst super-resolution network (×4 of the raw mosaic, ×8 of packed input).

    Defaults are the published configuration (the EBSR README's training command: ``--n_feats 128 --n_resblocks 8
    --n_resgroups 5 --lrcn --non_local --burst_size 14``, ``--burst_channel 1``): 26,027,034 parameters.

    Args:
        n_feats: feature width F (128).
        n_resblocks: wide-activation blocks per LRSC group (8).
        n_resgroups: LRSC groups of the reconstruction trunk (5).
        burst_size: frames per burst N, fixed: the fusion has one non-local pair per frame and 2·N·F inputs.
        non_local: cross non-local fusion (True, as published); False: a single WN 1×1 conv N·F → F.
        front_RBs: wide-activation blocks of the per-frame feature extractor (5, hard-wired in the original).
        deformable_groups: offset groups of the DCNs (8).
    """

    @classmethod
    def check_options(cls, args: Mapping[str, Any]) -> OptionProblems:
        """The deliberate value checks of the constructor, as (key, message) pairs (see ``codes.utils.build``)."""
        problems: OptionProblems = []
        for key in ('n_feats', 'n_resblocks', 'n_resgroups', 'burst_size', 'front_RBs', 'deformable_groups'):
            value = args[key]
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                problems.append((key, f'must be a positive integer, got {value!r}'))
        if problems:
            return problems
        n_feats, groups = args['n_feats'], args['deformable_groups']
        if n_feats % groups or n_feats % 2:
            problems.append(('n_feats', f"({n_feats}) must be even and divisible by 'deformable_groups' ({groups})"))
        return problems

    def __init__(self, n_feats: int = 128, n_resblocks: int = 8, n_resgroups: int = 5, burst_size: int = 14,
                 non_local: bool = True, front_RBs: int = 5, deformable_groups: int = 8) -> None:
        super().__init__()
        raise_option_problems(EBSR, locals())
        self.num_feat = nf = n_feats
        self.burst_size = burst_size
        self.non_local = bool(non_local)

        # Registration order = state_dict order (tests/data/spec_keys/ebsr.txt).
        self.conv_first = WNConv2d(1, nf, 3)
        self.feature_extraction = nn.Sequential(*[WideActResBlock(nf) for _ in range(front_RBs)])
        self.fea_L2_conv1 = WNConv2d(nf, 2 * nf, 3, stride=2, padding=1)
        self.fea_L3_conv1 = WNConv2d(2 * nf, 4 * nf, 3, stride=2, padding=1)
        self.toplayer = WNConv2d(4 * nf, nf, 1)
        self.smooth1 = WNConv2d(nf, nf, 3)
        self.smooth2 = WNConv2d(nf, nf, 3)
        self.latlayer1 = WNConv2d(2 * nf, nf, 1)
        self.latlayer2 = WNConv2d(nf, nf, 1)
        self.pcd_align = PCDAlign(nf, deformable_groups)
        if self.non_local:
            self.fusion = CrossNonLocalFusion(nf, burst_size, center=0)
        else:
            self.fusion = WNConv2d(burst_size * nf, nf, 1)
        self.recon_trunk = nn.Sequential(
            nn.Sequential(*[LRSCWideActResGroup(nf, n_resblocks, g) for g in range(n_resgroups)]),
            WNConv2d(nf * (n_resgroups + 1), nf, 1))
        self.upconv1 = WNConv2d(nf, 4 * nf, 3)
        self.upconv2 = WNConv2d(nf, 4 * HEAD_FEAT, 3)
        self.HRconv = WNConv2d(HEAD_FEAT, HEAD_FEAT, 3)
        self.conv_last = WNConv2d(HEAD_FEAT, 3, 3)
        self.skipup1 = WNConv2d(1, 4 * nf, 3)
        self.skipup2 = WNConv2d(nf, 4 * 3, 3)

    # ------------------------------------------------------------------ input
    @property
    def input_size_rule(self) -> tuple[int, int]:
        """(multiple, minimum) of the packed input's h and w: the mosaic must be a multiple of 4 (two stride-2
        pyramid levels)."""
        return 2, 2

    def check_input(self, x: torch.Tensor) -> None:
        """Raise a ``ValueError`` explaining why ``x`` cannot go through this model."""
        if x.ndim != 5 or x.shape[2] not in (1, 4):
            raise ValueError(f'EBSR expects a flattened Bayer burst (B, N, 1, H, W) or a packed RGGB burst '
                             f'(B, N, 4, h, w), got shape {tuple(x.shape)}')
        n = x.shape[1]
        if n != self.burst_size:
            raise ValueError(f'this EBSR was built for bursts of {self.burst_size} frames (burst_size), got {n} '
                             f'frames; the fusion has one non-local block pair per frame and burst_size * n_feats '
                             f'input channels')
        scale = 2 if x.shape[2] == 4 else 1
        hr, wr = x.shape[-2] * scale, x.shape[-1] * scale
        if hr % 4 or wr % 4 or hr < 4 or wr < 4:
            what = 'packed h and w must be multiples of 2' if scale == 2 else 'mosaic H and W must be multiples of 4'
            raise ValueError(f'{what} (two stride-2 pyramid levels, no internal padding), got '
                             f'{x.shape[-2]}x{x.shape[-1]}; pad or crop the burst first')

    @staticmethod
    def to_mosaic(x: torch.Tensor) -> torch.Tensor:
        """(B, N, 4, h, w) packed RGGB -> (B, N, 1, 2h, 2w) mosaic (PixelShuffle(2) per frame); a mosaic is kept."""
        if x.shape[2] == 1:
            return x
        b, n, _, h, w = x.shape
        return F.pixel_shuffle(x.reshape(b * n, 4, h, w), 2).view(b, n, 1, 2 * h, 2 * w)

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, N, 1, H, W) mosaic or (B, N, 4, h, w) packed, frame 0 the reference -> (B, 3, 4H, 4W)."""
        self.check_input(x)
        x = self.to_mosaic(x)
        b, n, _, h, w = x.shape
        nf = self.num_feat
        act = F.relu

        skip1, skip2 = self.skip_branch(x[:, 0], act)  # (B, F, 2H, 2W), (B, 3, 4H, 4W)

        # per-frame features, all B·N frames as one batch (index b·N + i)
        feat = self.feature_extraction(act(self.conv_first(x.reshape(b * n, 1, h, w))))  # (B·N, F, H, W)
        nbr = self.feature_pyramid(feat, act)  # [L1, L2, L3]
        ref = [f.view(b, n, *f.shape[1:])[:, :1].expand(-1, n, -1, -1, -1).reshape(f.shape) for f in nbr]
        aligned = self.pcd_align(nbr, ref)  # (B·N, F, H, W); each op is per sample, so frames are batched

        if self.non_local:
            x0 = act(self.fusion(aligned.view(b, n, nf, h, w)))
        else:
            x0 = act(self.fusion(aligned.view(b, n * nf, h, w)))
        x1 = self.recon_trunk(x0)  # no global residual
        return self.upsample(x1, skip1, skip2, act)


def convert_ebsr_checkpoint(ckpt: Any, param_key: str = 'params', source: str = 'checkpoint') -> dict[str, Any]:
    """A bare EBSR state_dict for ``load_state_dict(..., strict=True)`` from what an EBSR weight file holds.

    The official files (``EBSRbest_epoch.pth``, ``BBSR_realbest_epoch.pth``) are already bare state_dicts. Also
    accepted: the ``params``/``params_ema``/``state_dict``/``model`` wrappers and a ``module.`` prefix, and tensors
    saved from ``torch.nn.utils.parametrizations.weight_norm`` (``X.parametrizations.weight.original0/1``), renamed
    to ``X.weight_g``/``X.weight_v``. Raises ``CheckpointError`` naming ``source`` and what it found otherwise.
    """
    sd = extract_state_dict(ckpt, param_key, source)
    out: dict[str, Any] = {}
    for key, value in sd.items():
        for old, new in (('.parametrizations.weight.original0', '.weight_g'),
                         ('.parametrizations.weight.original1', '.weight_v')):
            if key.endswith(old):
                key = key[:-len(old)] + new
        out[key] = value
    first = out.get('conv_first.weight_v')
    if first is None:
        found = 'conv_first.weight (weight norm removed or another network)' if 'conv_first.weight' in out \
            else f'first keys {list(out)[:4]}'
        raise CheckpointError(f'{source}: not an EBSR state_dict: no conv_first.weight_v (weight-normalised first '
                              f'conv); found {found}')
    if first.ndim != 4 or first.shape[1] != 1:
        raise CheckpointError(f'{source}: conv_first.weight_v has shape {tuple(first.shape)}; EBSR here takes the '
                              'flattened mosaic (1 input channel, --burst_channel 1 as published); a '
                              '--burst_channel 4 model is not supported')
    if not any(k.startswith('pcd_align.') for k in out) or not any(k.startswith('recon_trunk.') for k in out):
        raise CheckpointError(f'{source}: not an EBSR state_dict: no pcd_align.* / recon_trunk.* tensors '
                              f'(first keys {list(out)[:4]})')
    return out

