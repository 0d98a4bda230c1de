"""BSRT: Burst Super-Resolution Transformer.

Paper: Luo et al., "BSRT: Improving Burst Super-Resolution with Swin Transformer and Flow-Guided Deformable
Alignment", CVPR Workshops 2022, arXiv 2204.08332.
Upstream: ``Algolzw/BSRT`` at commit da8d5154 (MIT licence), ``code/*/bsrt/model/bsrt.py``; re-implemented from the
paper and the upstream code so that the official checkpoints load strictly (same names, shapes and persistent buffers).

Input (B, N, 4, h, w): packed RGGB bursts in [0, 1], frame 0 the reference. Output (B, 3, 8h, 8w): linear camera
RGB, not clamped. Parts:

* skip branch: the reference frame, pixel-shuffled to its raw mosaic and upsampled ×4;
* flow branch: every frame's mosaic -> learned pseudo-RGB -> SpyNet flow to the reference at three scales;
* per-frame shallow features: conv + Swin blocks at packed size, then a 3-level feature pyramid with an FPN;
* flow-guided pyramid deformable alignment of every frame (the reference included) to the reference;
* fusion (1x1 conv over the frame-major stack), SwinIR-style residual Swin groups, then ×4 pixel-shuffle upsampling.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence, get_args

import torch
import torch.nn as nn

from codes.archs.arch_util import IMPLS, DCNSep, FlowGuidedDCN, Impl, SpyNet, flow_warp, load_spynet_weights
from codes.archs.burst_blocks import BurstHeadMixin, icnr_, up2
from codes.archs.swin_blocks import RSTB, PatchEmbed, PatchUnEmbed, SwinTransformerBlock, WindowAttention, shift_mask
from codes.utils.build import OptionProblems, raise_option_problems
from codes.utils.checkpoint import CheckpointNotFoundError
from codes.utils.registry import ARCH_REGISTRY

__all__ = ['BSRT', 'FlowGuidedPCDAlign', 'BSRT_LEVELS', 'UPSAMPLE_INITS']

#: Initialisations of the pixel-shuffle convolutions (see ``BSRT(upsample_init=...)``), as a type the option
#: schema checks.
UpsampleInit = Literal['default', 'icnr']
UPSAMPLE_INITS: tuple[str, ...] = get_args(UpsampleInit)

# Published hyper-parameters (``make_model`` in the original): embed_dim, depths (pre_layers first), num_heads.
BSRT_LEVELS: dict[str, dict] = {
    'S': dict(embed_dim=60, depths=(6, 6, 6, 6, 6), num_heads=6),
    'L': dict(embed_dim=180, depths=(6, 8, 8, 8, 8, 8, 8), num_heads=6),
}


# ----------------------------------------------------------------------------------------------------- blocks
class FlowGuidedPCDAlign(nn.Module):
    """Flow-guided pyramid, cascading and deformable alignment (``align`` in BSRT).

    Offsets are predicted from the flow-pre-warped neighbour, the reference and the flow; the DCNs deform the
    un-warped neighbour, with the flow as base offset. Levels are coarse (L3, 1/4) to fine (L1).

    Args:
        num_feat: feature channels at every level.
        deformable_groups: offset groups of each DCN.
    """

    def __init__(self, num_feat: int = 64, deformable_groups: int = 8) -> None:
        super().__init__()
        nf, g = num_feat, deformable_groups

        def conv(cin: int) -> nn.Conv2d:
            return nn.Conv2d(cin, nf, 3, 1, 1)

        self.L3_offset_conv1 = conv(2 * nf + 2)
        self.L3_offset_conv2 = conv(nf)
        self.L3_dcnpack = FlowGuidedDCN(nf, nf, 3, stride=1, padding=1, deformable_groups=g)
        self.L2_offset_conv1 = conv(2 * nf + 2)
        self.L2_offset_conv2 = conv(2 * nf)
        self.L2_offset_conv3 = conv(nf)
        self.L2_dcnpack = FlowGuidedDCN(nf, nf, 3, stride=1, padding=1, deformable_groups=g)
        self.L2_fea_conv = conv(2 * nf)
        self.L1_offset_conv1 = conv(2 * nf + 2)
        self.L1_offset_conv2 = conv(2 * nf)
        self.L1_offset_conv3 = conv(nf)
        self.L1_dcnpack = FlowGuidedDCN(nf, nf, 3, stride=1, padding=1, deformable_groups=g)
        self.L1_fea_conv = conv(2 * nf)
        self.cas_offset_conv1 = conv(2 * nf)
        self.cas_offset_conv2 = conv(nf)
        self.cas_dcnpack = DCNSep(nf, nf, 3, stride=1, padding=1, deformable_groups=g)
        self.lrelu = nn.LeakyReLU(0.1)

    def forward(self, nbr: Sequence[torch.Tensor], ref: Sequence[torch.Tensor],
                flows: Sequence[torch.Tensor]) -> torch.Tensor:
        """nbr, ref: [L1, L2, L3] features (B, F, H/2^k, W/2^k); flows: [flow1, flow2, flow3] (B, 2, ·, ·) with
        (dx, dy) from ref to nbr. Returns the aligned L1 features (B, F, H, W)."""
        act = self.lrelu
        warped = [flow_warp(n, f.permute(0, 2, 3, 1), padding_mode='zeros') for n, f in zip(nbr, flows)]

        # level 3 (1/4)
        o3 = act(self.L3_offset_conv1(torch.cat((warped[2], ref[2], flows[2].to(ref[2].dtype)), dim=1)))
        o3 = act(self.L3_offset_conv2(o3))
        f3 = act(self.L3_dcnpack(nbr[2], o3, flows[2]))
        # level 2 (1/2)
        o2 = act(self.L2_offset_conv1(torch.cat((warped[1], ref[1], flows[1].to(ref[1].dtype)), dim=1)))
        o2 = act(self.L2_offset_conv2(torch.cat((o2, 2 * up2(o3)), dim=1)))
        o2 = act(self.L2_offset_conv3(o2))
        f2 = self.L2_dcnpack(nbr[1], o2, flows[1])
        f2 = act(self.L2_fea_conv(torch.cat((f2, up2(f3)), dim=1)))
        # level 1 (full)
        o1 = act(self.L1_offset_conv1(torch.cat((warped[0], ref[0], flows[0].to(ref[0].dtype)), dim=1)))
        o1 = act(self.L1_offset_conv2(torch.cat((o1, 2 * up2(o2)), dim=1)))
        o1 = act(self.L1_offset_conv3(o1))
        f1 = self.L1_dcnpack(nbr[0], o1, flows[0])
        f1 = self.L1_fea_conv(torch.cat((f1, up2(f2)), dim=1))  # no activation
        # cascade
        oc = act(self.cas_offset_conv1(torch.cat((f1, ref[0]), dim=1)))
        oc = act(self.cas_offset_conv2(oc))
        return self.cas_dcnpack(f1, oc)  # no activation


# ----------------------------------------------------------------------------------------------------- network
@ARCH_REGISTRY.register()
class BSRT(BurstHeadMixin, nn.Module):
    """BSRT burst super-resolution network (×4 of the raw mosaic, ×8 of the packed input).

    Args:
        level: 'S' or 'L' for the published hyper-parameters, or None (then embed_dim, depths and num_heads are
            required). Explicit arguments override the level's values.
        embed_dim: Swin width C (S: 60, L: 180).
        depths: Swin blocks per stage; ``depths[0]`` plain blocks form ``pre_layers`` (per-frame features at packed
            size), each later entry is one residual Swin group ``layers.g`` at raw size.
        num_heads: attention heads, one for all stages or one per entry of ``depths``. Default: 6.
        window_size: attention window; shift is window_size // 2. Packed h and w must be multiples of it.
        mlp_ratio: MLP hidden width / C.
        burst_size: frames per burst N, fixed because ``fusion`` has N·num_feat input channels.
        num_feat: CNN width F of alignment and upsampling.
        deformable_groups: offset groups of the DCNs.
        drop_path_rate: stochastic depth, linspace(0, rate) over all Swin blocks (pre_layers first).
        spynet_path: optional SpyNet weight file (``{'params': ...}``, Sintel-final); never downloaded.
        use_checkpoint: gradient checkpointing per Swin block (saves memory, costs a recompute).
        impl: 'auto' (default), 'fast' or 'reference'. 'reference' runs the DCNs with
            ``torchvision.ops.deform_conv2d`` and the window attention as an explicit softmax (the original's
            operators); 'fast' runs the DCNs as ``grid_sample`` of the taps plus one matrix product and the
            attention through ``scaled_dot_product_attention``. Same weights, same function: outputs agree to float
            rounding (~1e-6 relative in fp32). 'auto' picks 'fast' on every device. See :meth:`set_impl`.
        upsample_init: 'default' (the original's: PyTorch's default for every convolution) or 'icnr' (the
            convolutions before each pixel shuffle start as ICNR, see :meth:`icnr_init_head`; a training choice,
            weights and outputs of a loaded file are unaffected).
    """

    def __init__(self, level: str | None = 'S', embed_dim: int | None = None, depths: Sequence[int] | None = None,
                 num_heads: Sequence[int] | int | None = None, window_size: int = 8, mlp_ratio: float = 2.0,
                 burst_size: int = 14, num_feat: int = 64, deformable_groups: int = 8, drop_path_rate: float = 0.1,
                 spynet_path: str | None = None, use_checkpoint: bool = False, impl: Impl = 'auto',
                 upsample_init: UpsampleInit = 'default') -> None:
        super().__init__()
        raise_option_problems(BSRT, locals())
        embed_dim, depths, heads = self._resolve_hparams(level, embed_dim, depths, num_heads)
        self.level = level
        self.embed_dim = embed_dim
        self.depths = depths
        self.num_heads = heads
        self.window_size = window_size
        self.burst_size = burst_size
        self.num_feat = num_feat
        nf, c = num_feat, embed_dim
        rates = torch.linspace(0, drop_path_rate, sum(depths), device='cpu').tolist()
        swin = dict(window_size=window_size, mlp_ratio=mlp_ratio, qkv_bias=True, qk_scale=None,
                    use_checkpoint=use_checkpoint)

        # Registration order = state_dict order (keys/bsrt_{S,L}.txt).
        self.spynet = SpyNet(return_levels=(5, 4, 3))
        self.conv_flow = nn.Conv2d(1, 3, 3, 1, 1)
        self.flow_ps = nn.PixelShuffle(2)
        self.patch_embed = PatchEmbed(c, use_norm=True)  # shared by pre_layers and the RSTB stack
        self.patch_unembed = PatchUnEmbed()
        self.conv_first = nn.Conv2d(4, c, 3, 1, 1)
        self.pre_layers = nn.ModuleList([
            SwinTransformerBlock(c, heads[0], shift_size=0 if i % 2 == 0 else window_size // 2,
                                 drop_path=rates[i], **swin) for i in range(depths[0])
        ])
        self.pre_norm = nn.LayerNorm(c)
        self.conv_after_pre_layer = nn.Conv2d(c, 4 * nf, 3, 1, 1)
        self.mid_ps = nn.PixelShuffle(2)
        self.fea_L2_conv1 = nn.Conv2d(nf, 2 * nf, 3, 2, 1)
        self.fea_L3_conv1 = nn.Conv2d(2 * nf, 4 * nf, 3, 2, 1)
        self.toplayer = nn.Conv2d(4 * nf, nf, 1, 1, 0)
        self.smooth1 = nn.Conv2d(nf, nf, 3, 1, 1)
        self.smooth2 = nn.Conv2d(nf, nf, 3, 1, 1)
        self.latlayer1 = nn.Conv2d(2 * nf, nf, 1, 1, 0)
        self.latlayer2 = nn.Conv2d(nf, nf, 1, 1, 0)
        self.align = FlowGuidedPCDAlign(nf, deformable_groups)
        self.fusion = nn.Conv2d(burst_size * nf, c, 1, 1, 0)
        self.layers = nn.ModuleList()
        start = depths[0]
        for g, depth in enumerate(depths[1:], start=1):
            self.layers.append(RSTB(c, depth, heads[g], drop_path=rates[start:start + depth], **swin))
            start += depth
        self.norm = nn.LayerNorm(c)
        self.conv_after_body = nn.Conv2d(c, c, 3, 1, 1)
        self.upconv1 = nn.Conv2d(c, 4 * nf, 3, 1, 1)
        self.upconv2 = nn.Conv2d(nf, 4 * nf, 3, 1, 1)
        self.pixel_shuffle = nn.PixelShuffle(2)
        self.HRconv = nn.Conv2d(nf, nf, 3, 1, 1)
        self.conv_last = nn.Conv2d(nf, 3, 3, 1, 1)
        self.skip_pixel_shuffle = nn.PixelShuffle(2)
        self.skipup1 = nn.Conv2d(1, 4 * nf, 3, 1, 1)
        self.skipup2 = nn.Conv2d(nf, 4 * 3, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(0.1)

        self.apply(self._init_weights)
        if upsample_init == 'icnr':
            self.icnr_init_head()
            icnr_(self.conv_after_pre_layer, 2)  # followed by mid_ps
        self.set_impl(impl)
        if spynet_path is not None:
            if not Path(spynet_path).is_file():  # a file's existence is checked when it is read, not by validation
                raise CheckpointNotFoundError(f"option 'network_g.spynet_path': SpyNet weight file not found: "
                                              f'{spynet_path} (weights are never downloaded; leave it empty for a '
                                              'random init)')
            load_spynet_weights(self.spynet, spynet_path)

    # ------------------------------------------------------------------ construction helpers
    @classmethod
    def check_options(cls, args: Mapping[str, Any]) -> OptionProblems:
        """The deliberate value checks of the constructor, as (key, message) pairs (see ``codes.utils.build``):
        ``args`` holds every constructor argument."""
        problems: OptionProblems = []
        if args['impl'] not in IMPLS:
            problems.append(('impl', f"expected one of {', '.join(IMPLS)}, got {args['impl']!r}"))
        if args['upsample_init'] not in UPSAMPLE_INITS:
            problems.append(('upsample_init', f"expected one of {', '.join(UPSAMPLE_INITS)}, "
                             f"got {args['upsample_init']!r}"))
        level = args['level']
        if level is not None and level not in BSRT_LEVELS:
            return problems + [('level', f'expected one of {sorted(BSRT_LEVELS)} or None, got {level!r}')]
        base = dict(BSRT_LEVELS[level]) if level is not None else {'num_heads': 6}
        base.update({k: args[k] for k in ('embed_dim', 'depths', 'num_heads') if args[k] is not None})
        missing = [k for k in ('embed_dim', 'depths') if k not in base]
        if missing:
            return problems + [(k, 'must be given when level is None') for k in missing]
        embed_dim, depths, heads = base['embed_dim'], base['depths'], base['num_heads']
        if isinstance(depths, (int, str)) or len(depths) < 2:
            return problems + [('depths', 'expected a list of at least 2 block counts (pre_layers, then one or '
                                f'more residual Swin groups), got {depths!r}')]
        heads_t = (heads, ) * len(depths) if isinstance(heads, int) else tuple(heads)
        if len(heads_t) != len(depths):
            return problems + [('num_heads', f'give one value or one per entry of depths ({len(depths)}), '
                                f'got {heads!r}')]
        if embed_dim < 1:
            problems.append(('embed_dim', f'must be >= 1, got {embed_dim}'))
        elif any(h < 1 or embed_dim % h for h in heads_t):
            problems.append(('embed_dim', f"({embed_dim}) must be divisible by every 'num_heads' entry, got "
                             f'num_heads {heads!r}'))
        if any(d < 1 for d in depths):
            problems.append(('depths', f'every entry must be >= 1, got {list(depths)}'))
        if args['window_size'] < 2:
            problems.append(('window_size', f"must be >= 2, got {args['window_size']}"))
        if args['mlp_ratio'] <= 0:
            problems.append(('mlp_ratio', f"must be > 0, got {args['mlp_ratio']}"))
        if args['burst_size'] < 1:
            problems.append(('burst_size', f"must be >= 1, got {args['burst_size']}"))
        num_feat, groups = args['num_feat'], args['deformable_groups']
        if groups < 1:
            problems.append(('deformable_groups', f'must be >= 1, got {groups}'))
        elif num_feat < 1 or num_feat % groups:
            problems.append(('num_feat', f"({num_feat}) must be positive and divisible by 'deformable_groups' "
                             f'({groups})'))
        if not 0.0 <= args['drop_path_rate'] < 1.0:
            problems.append(('drop_path_rate', f"must be in [0, 1), got {args['drop_path_rate']}"))
        return problems

    @staticmethod
    def _resolve_hparams(level: str | None, embed_dim: int | None, depths: Sequence[int] | None,
                         num_heads: Sequence[int] | int | None) -> tuple[int, tuple[int, ...], tuple[int, ...]]:
        """embed_dim, depths and one head count per stage, from the level and the explicit values (checked by
        :meth:`check_options` before)."""
        base = dict(BSRT_LEVELS[level]) if level is not None else {'num_heads': 6}
        for key, value in (('embed_dim', embed_dim), ('depths', depths), ('num_heads', num_heads)):
            if value is not None:
                base[key] = value
        depths_t = tuple(int(d) for d in base['depths'])
        heads = base['num_heads']
        heads_t = (int(heads), ) * len(depths_t) if isinstance(heads, int) else tuple(int(h) for h in heads)
        return int(base['embed_dim']), depths_t, heads_t

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        """Linear: trunc_normal(0.02) and bias 0; LayerNorm: 1 and 0. Convs keep the PyTorch default."""
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def set_impl(self, impl: str) -> 'BSRT':
        """Switch the DCN and attention implementation ('auto', 'fast', 'reference') in place; weights unchanged."""
        if impl not in IMPLS:
            raise ValueError(f"impl: expected one of {', '.join(IMPLS)}, got {impl!r}")
        self.impl = impl
        for m in self.modules():
            if isinstance(m, (WindowAttention, FlowGuidedDCN, DCNSep)):
                m.impl = impl
        return self

    def no_weight_decay(self) -> set[str]:
        """Parameter names to exclude from weight decay (the relative position bias tables)."""
        return {n for n, _ in self.named_parameters() if n.endswith('relative_position_bias_table')}

    # ------------------------------------------------------------------ forward
    @property
    def input_size_rule(self) -> tuple[int, int]:
        """(multiple, minimum) of the packed input's h and w (see :meth:`check_input`)."""
        return math.lcm(self.window_size, 2), 17

    def check_input(self, x: torch.Tensor) -> None:
        """Raise a ``ValueError`` explaining why ``x`` cannot go through this model."""
        if x.ndim != 5 or x.shape[2] != 4:
            raise ValueError(f'BSRT expects a packed RGGB burst (B, N, 4, h, w), got shape {tuple(x.shape)}')
        b, n, _, h, w = x.shape
        if n != self.burst_size:
            raise ValueError(f'this BSRT was built for bursts of {self.burst_size} frames (burst_size), got {n} '
                             f'frames; the fusion conv has burst_size * num_feat input channels')
        multiple = math.lcm(self.window_size, 2)
        if h % multiple or w % multiple:
            raise ValueError(f'packed h and w must be multiples of {multiple} (Swin window {self.window_size} at '
                             f'packed size, no internal padding), got {h}x{w}; pad or crop the burst first')
        if h <= 16 or w <= 16:
            raise ValueError(f'packed h and w must be larger than 16 (32 is the smallest size used in practice), '
                             f'got {h}x{w}: SpyNet runs on the {2 * h}x{2 * w} raw mosaic rounded up to a multiple '
                             f'of 32 and its coarsest pyramid level (1/32) must be at least 2x2')

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, N, 4, h, w) packed RGGB bursts in [0, 1], frame 0 the reference -> (B, 3, 8h, 8w) linear RGB."""
        self.check_input(x)
        b, n, _, h, w = x.shape
        hr, wr = 2 * h, 2 * w  # raw mosaic size
        nf = self.num_feat
        act = self.lrelu
        frames = x.reshape(b * n, 4, h, w)

        # skip branch on the reference frame
        skip1, skip2 = self.skip_branch(self.skip_pixel_shuffle(x[:, 0]), act)  # (B, F, 2H, 2W), (B, 3, 4H, 4W)

        # flow branch: pseudo-RGB of every frame, SpyNet from frame 0 to each frame (frame 0 included)
        pseudo = self.conv_flow(self.flow_ps(frames)).view(b, n, 3, hr, wr)
        ref_rgb = pseudo[:, :1].expand(-1, n, -1, -1, -1).reshape(b * n, 3, hr, wr)
        flows = self.spynet(ref_rgb, pseudo.reshape(b * n, 3, hr, wr))  # [(B*N, 2, H/s, W/s) for s = 1, 2, 4]

        # shallow per-frame features at packed size
        feat = act(self.conv_first(frames))  # (B*N, C, h, w)
        tokens = self.patch_embed(feat)  # (B*N, h*w, C)
        mask = shift_mask(h, w, self.window_size, self.window_size // 2, x.device)
        for blk in self.pre_layers:
            tokens = blk(tokens, (h, w), mask)
        feat = self.patch_unembed(self.pre_norm(tokens), (h, w))  # (B*N, C, h, w)
        l1 = self.mid_ps(self.conv_after_pre_layer(feat))  # (B*N, F, H, W)

        # feature pyramid + FPN, then alignment of all frames to frame 0, batched over frames (each op is per sample)
        nbr = self.feature_pyramid(l1, act)  # [L1, L2, L3]: F channels at H, H/2, H/4
        ref = [f.view(b, n, *f.shape[1:])[:, :1].expand(-1, n, -1, -1, -1).reshape(f.shape) for f in nbr]
        aligned = self.align(nbr, ref, flows)  # (B*N, F, H, W)

        # fusion: frame-major channel stack
        x0 = act(self.fusion(aligned.view(b, n * nf, hr, wr)))  # (B, C, H, W)

        # deep features at raw size
        tokens = self.patch_embed(x0)  # (B, H*W, C)
        mask = shift_mask(hr, wr, self.window_size, self.window_size // 2, x.device)
        for layer in self.layers:
            tokens = layer(tokens, (hr, wr), mask)
        t = self.patch_unembed(self.norm(tokens), (hr, wr))  # (B, C, H, W)
        x1 = act(self.conv_after_body(t)) + x0

        return self.upsample(x1, skip1, skip2, act)  # ×4 with the skip branch: (B, 3, 4H, 4W) = (B, 3, 8h, 8w)
