"""DBSR: Deep Burst Super-Resolution (the encoder / PWC-Net alignment / attention fusion / decoder network).

Paper: Bhat, Danelljan, Van Gool, Timofte, "Deep Burst Super-Resolution", CVPR 2021, arXiv 2101.10997.
Upstream: ``goutamgmb/deep-burst-sr`` at commit 16f158e0 (CC BY-NC-SA 4.0; the model code is unchanged since
f21ea6f), ``models/dbsr/dbsrnet.py: dbsrnet_cvpr2021`` with ``encoders.py: ResEncoderWarpAlignnet``,
``merging.py: WeightedSum`` and ``decoders.py: ResPixShuffleConv``. Re-implemented so that the official state_dict
(13,011,237 parameters, 9,374,274 of them the frozen PWC-Net under ``encoder.alignment_net.net``) loads strictly.

Input (B, N, 4, h, w): packed RGGB bursts in [0, 1], frame 0 the reference, N >= 2, any h and w. Output
(B, 3, 8h, 8w): linear camera RGB, non-negative (the last layer ends with a ReLU), not clamped at 1. Steps:

* encoder: PWC-Net flow from every frame 1..N-1 to frame 0 on (R, mean G, B) images at packed resolution
  (:meth:`codes.archs.pwcnet_arch.PWCNet.estimate_flow`, the upstream wrapper, no BGR swap), per-frame embeddings
  (conv, residual blocks, conv to 512 channels), frames 1..N-1 warped to frame 0 with their flow (bilinear, zeros
  outside, no validity mask); frame 0 is neither sent through PWC-Net nor warped;
* merging: per-frame weights from [reference projection, projection - reference projection, features of the
  sub-pixel flow (flow modulo 1; zero for frame 0)], softmax over the frames for every channel and pixel, then the
  weighted sum of the 512-channel embeddings;
* decoder: conv, residual blocks, 1x1 conv (ICNR, no bias) + ReLU + pixel shuffle x8, a fixed 3x3 Gaussian blur
  (sigma 1, zero padding), residual blocks, 1x1 conv + ReLU.

Frames 1..N-1 are interchangeable (the output does not depend on their order); every burst of a batch is computed
independently. Mixed precision: PWC-Net, the warp, the modulo and the softmax fusion compute in float32 with
autocast off; the other convolutions follow autocast.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, Literal, get_args

import torch
import torch.nn as nn
import torch.nn.functional as F

from codes.archs.arch_util import _fp32, _no_autocast, flow_warp
from codes.archs.burst_blocks import icnr_
from codes.archs.pwcnet_arch import PWCNet
from codes.utils.build import OptionProblems, raise_option_problems
from codes.utils.checkpoint import CheckpointError, extract_state_dict
from codes.utils.registry import ARCH_REGISTRY

__all__ = ['DBSR', 'DBSR_TRACKS', 'DBSRTrack', 'gaussian_kernel_2d', 'raw_to_flow_rgb', 'convert_dbsr_checkpoint']

DBSRTrack = Literal['synthetic', 'real']
DBSR_TRACKS: tuple[str, ...] = get_args(DBSRTrack)


# ----------------------------------------------------------------------------------------------------- functions
def gaussian_kernel_2d(sigma: float, ksize: int) -> torch.Tensor:
    """(ksize, ksize) normalised Gaussian (the outer product of the 1-D taps exp(-x²/2σ²) / sum), float64."""
    x = torch.arange(ksize, dtype=torch.float64) - (ksize - 1) / 2.0
    g = torch.exp(-x**2 / (2.0 * sigma**2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def raw_to_flow_rgb(frames: torch.Tensor) -> torch.Tensor:
    """Packed RGGB (..., 4, h, w) -> (R, (G_r + G_b)/2, B) (..., 3, h, w), the images PWC-Net is fed."""
    return torch.stack((frames[..., 0, :, :], frames[..., 1:3, :, :].mean(dim=-3), frames[..., 3, :, :]), dim=-3)


def _conv_block(cin: int, cout: int, ksize: int, bias: bool = True, act: bool = True) -> nn.Sequential:
    """[conv (stride 1, padding k//2), ReLU]: the ``.0`` of the upstream state_dict names."""
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, ksize, 1, ksize // 2, bias=bias)]
    if act:
        layers.append(nn.ReLU(inplace=False))
    return nn.Sequential(*layers)


# ----------------------------------------------------------------------------------------------------- blocks
class ResBlock(nn.Module):
    """y = ReLU(x + conv2(ReLU(conv1(x)))), 3x3 convs of width ``dim`` (``conv1.0``, ``conv2.0``)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv1 = _conv_block(dim, dim, 3)
        self.conv2 = _conv_block(dim, dim, 3, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.conv2(self.conv1(x)))


class _AlignmentNet(nn.Module):
    """The frozen PWC-Net under ``alignment_net.net``: flow (n, 2, h, w) sampling ``source`` onto ``target``."""

    def __init__(self, pwcnet_path: str | None = None) -> None:
        super().__init__()
        self.net = PWCNet(pwcnet_path)

    def forward(self, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """source, target: (n, 3, h, w) RGB -> flow (n, 2, h, w) in packed pixels (dx, dy), float32 or float64."""
        with _no_autocast(source.device):
            src, tgt = _fp32(source), _fp32(target)
            dtype = next(self.net.parameters()).dtype  # its stored dtype (float32, or float64 in tests)
            if dtype != src.dtype:
                src, tgt = src.to(dtype), tgt.to(dtype)
            return _fp32(self.net.estimate_flow(src, tgt))


class DBSREncoder(nn.Module):
    """Per-frame embeddings, frames 1..N-1 warped to frame 0 with PWC-Net flow (``ResEncoderWarpAlignnet``)."""

    def __init__(self, init_dim: int, num_res_blocks: int, out_dim: int, pwcnet_path: str | None) -> None:
        super().__init__()
        # Registration order = state_dict order (the alignment net first).
        self.alignment_net = _AlignmentNet(pwcnet_path)
        self.init_layer = _conv_block(4, init_dim, 3)
        self.res_layers = nn.Sequential(*[ResBlock(init_dim) for _ in range(num_res_blocks)])
        self.out_layer = _conv_block(init_dim, out_dim, 3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, N, 4, h, w) -> embeddings (B, N, C, h, w) (frame 0 unwarped, the others warped to it) and
        flows (B, N-1, 2, h, w) (float32)."""
        b, n, _, h, w = x.shape
        rgb = raw_to_flow_rgb(x)  # (B, N, 3, h, w)
        ref = rgb[:, :1].expand(-1, n - 1, -1, -1, -1).reshape(b * (n - 1), 3, h, w)
        oth = rgb[:, 1:].reshape(b * (n - 1), 3, h, w)  # index b·(N-1) + (n-1)
        with torch.no_grad():
            flows = self.alignment_net(oth, ref)  # (B·(N-1), 2, h, w): oth sampled at x + flow matches ref
        feat = self.out_layer(self.res_layers(self.init_layer(x.reshape(b * n, 4, h, w))))
        feat = feat.view(b, n, -1, h, w)
        # DBSR's warp (models/layers/warp.py) samples at (x + dx, y + dy), bilinear, zeros outside, no mask: the same
        # points as flow_warp's (its pixel-centre grid with align_corners=False equals pixel indices with
        # align_corners=True). PWC-Net's own backwarp, which masks and normalises by (W - 1)/2, is not this.
        warped = flow_warp(feat[:, 1:].reshape(b * (n - 1), -1, h, w), flows.permute(0, 2, 3, 1))
        feat = torch.cat((feat[:, :1], warped.view(b, n - 1, -1, h, w).to(feat.dtype)), dim=1)
        return feat, flows.view(b, n - 1, 2, h, w)


class DBSRMerging(nn.Module):
    """Attention-based fusion (``WeightedSum`` with softmax over frames, the reference projection as base)."""

    def __init__(self, input_dim: int, project_dim: int, offset_feat_dim: int, num_offset_feat_extractor_res: int,
                 num_weight_predictor_res: int, offset_modulo: float | None) -> None:
        super().__init__()
        self.offset_modulo = offset_modulo
        self.feat_project_layer = _conv_block(input_dim, project_dim, 1)
        self.offset_feat_extractor = nn.Sequential(
            _conv_block(2, offset_feat_dim, 3),
            *[ResBlock(offset_feat_dim) for _ in range(num_offset_feat_extractor_res)])
        hidden = 2 * project_dim
        self.weight_predictor = nn.Sequential(
            _conv_block(2 * project_dim + offset_feat_dim, hidden, 3),
            *[ResBlock(hidden) for _ in range(num_weight_predictor_res)],
            _conv_block(hidden, input_dim, 3, act=False))

    def forward(self, feat: torch.Tensor, flows: torch.Tensor) -> torch.Tensor:
        """feat: (B, N, C, h, w) embeddings (frame 0 first); flows: (B, N-1, 2, h, w) -> fused (B, C, h, w)."""
        b, n, c, h, w = feat.shape
        proj = self.feat_project_layer(feat.reshape(b * n, c, h, w)).view(b, n, -1, h, w)
        base = proj[:, :1].expand_as(proj)
        diff = proj - base  # exactly 0 for frame 0
        with _no_autocast(flows.device):
            off = torch.cat((flows.new_zeros(b, 1, 2, h, w), _fp32(flows)), dim=1)  # frame 0: no flow
            if self.offset_modulo is not None:
                off = torch.remainder(off, self.offset_modulo)  # sign of the divisor: -0.3 -> 0.7
        off_feat = self.offset_feat_extractor(off.reshape(b * n, 2, h, w).to(proj.dtype))
        # the weight predictor's input order: [base, diff, flow features]
        wp_in = torch.cat((base.reshape(b * n, -1, h, w), diff.reshape(b * n, -1, h, w), off_feat), dim=1)
        logits = self.weight_predictor(wp_in).view(b, n, c, h, w)
        with _no_autocast(feat.device):
            weights = torch.softmax(_fp32(logits), dim=1)  # over frames, per channel and pixel
            fused = (weights * _fp32(feat)).sum(dim=1)
        return fused.to(feat.dtype)


class DBSRUpsampler(nn.Module):
    """1x1 conv (+ReLU) to dim·factor² channels, pixel shuffle, optional fixed Gaussian blur
    (``PixShuffleUpsampler``).

    The blur kernel is a non-persistent buffer: it is not in the state_dict (the upstream keeps it as a plain
    attribute), and it follows the module's device and dtype.
    """

    def __init__(self, input_dim: int, output_dim: int, factor: int, icnrinit: bool, gauss_blur_sd: float | None,
                 gauss_ksz: int) -> None:
        super().__init__()
        self.factor = factor
        self.conv_layer = _conv_block(input_dim, output_dim * factor**2, 1, bias=not icnrinit)
        if icnrinit:
            # Aitken et al., "Checkerboard artifact free sub-pixel convolution", arXiv:1707.02937: sub-kernel drawn
            # with kaiming_normal_ (fan-in), each repeated for its factor² shuffled channels (as upstream's ICNR).
            icnr_(self.conv_layer[0], factor, init=nn.init.kaiming_normal_)
        if gauss_blur_sd is not None:
            kernel = gaussian_kernel_2d(gauss_blur_sd, gauss_ksz).float()
            self.register_buffer('gauss_kernel', kernel.expand(output_dim, 1, gauss_ksz, gauss_ksz).clone(),
                                 persistent=False)
        else:
            self.gauss_kernel = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.pixel_shuffle(self.conv_layer(x), self.factor)
        if self.gauss_kernel is not None:
            k = self.gauss_kernel.to(y.dtype)
            y = F.conv2d(y, k, padding=k.shape[-1] // 2, groups=y.shape[1])  # zero padding, per channel
        return y


class DBSRDecoder(nn.Module):
    """conv, residual blocks, x``factor`` upsampler, residual blocks, 1x1 conv + ReLU (``ResPixShuffleConv``)."""

    def __init__(self, input_dim: int, init_conv_dim: int, num_pre_res_blocks: int, post_conv_dim: int,
                 num_post_res_blocks: int, upsample_factor: int, icnrinit: bool, gauss_blur_sd: float | None,
                 gauss_ksz: int) -> None:
        super().__init__()
        self.init_layer = _conv_block(input_dim, init_conv_dim, 3)
        self.pre_res_layers = nn.Sequential(*[ResBlock(init_conv_dim) for _ in range(num_pre_res_blocks)])
        self.upsample_layer = DBSRUpsampler(init_conv_dim, post_conv_dim, upsample_factor, icnrinit, gauss_blur_sd,
                                            gauss_ksz)
        self.post_res_layers = nn.Sequential(*[ResBlock(post_conv_dim) for _ in range(num_post_res_blocks)])
        self.predictor = _conv_block(post_conv_dim, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.upsample_layer(self.pre_res_layers(self.init_layer(x)))
        return self.predictor(self.post_res_layers(y))


# ----------------------------------------------------------------------------------------------------- network
@ARCH_REGISTRY.register()
class DBSR(nn.Module):
    """DBSR burst super-resolution network (x4 of the raw mosaic, x8 of the packed input).

    Defaults are ``dbsrnet_cvpr2021`` as both official recipes build it (13,011,237 parameters, 231 tensors).
    The widths and depths may shrink (tests, demos); PWC-Net is fixed.

    Args:
        track: 'synthetic' or 'real': the same network (the real-world model is the synthetic one fine-tuned).
        enc_init_dim, enc_num_res_blocks, enc_out_dim: encoder width, residual blocks and embedding width
            (64, 9, 512); the embedding width is also the number of fusion-weight channels.
        dec_init_conv_dim, dec_num_pre_res_blocks: decoder width and residual blocks before upsampling (64, 5).
        dec_post_conv_dim, dec_num_post_res_blocks: width and residual blocks after upsampling (32, 4).
        upsample_factor: pixel-shuffle factor from the packed input (8 = x4 of the mosaic x2 for packing); the
            runner expects 8.
        offset_feat_dim: width of the flow-feature branch (64).
        weight_pred_proj_dim: projection width P of the fusion (64); the weight predictor is 2P wide.
        num_offset_feat_extractor_res, num_weight_predictor_res: residual blocks of the flow-feature branch and of
            the weight predictor (1, 3).
        offset_modulo: the flows enter the fusion modulo this (1.0: only their sub-pixel part); None: unchanged.
        icnrinit: ICNR initialisation of the sub-pixel conv, which then has no bias (changes the key set).
        gauss_blur_sd: sigma of the fixed Gaussian blur after the pixel shuffle (1.0); None: no blur.
        gauss_ksz: size of that blur kernel (3).
        burst_size: frames ``infer.py`` fills a burst to (14, the evaluation protocol). The forward takes any
            N >= 2 with the same weights.
        pwcnet_path: the official ``pwcnet-network-default.pth`` for training from scratch; None (default) leaves
            PWC-Net random, as a full DBSR checkpoint carries it. Never needed to build.
    """

    #: (multiple, minimum) of the packed h and w: any size (PWC-Net resizes internally, the rest is stride 1).
    input_size_rule = (1, 1)

    @classmethod
    def check_options(cls, args: Mapping[str, Any]) -> OptionProblems:
        """The deliberate value checks of the constructor, as (key, message) pairs (see ``codes.utils.build``)."""
        problems: OptionProblems = []
        if args['track'] not in DBSR_TRACKS:
            problems.append(('track', f"expected one of {list(DBSR_TRACKS)}, got {args['track']!r}"))
        for key in ('enc_init_dim', 'enc_out_dim', 'dec_init_conv_dim', 'dec_post_conv_dim', 'upsample_factor',
                    'offset_feat_dim', 'weight_pred_proj_dim', 'burst_size'):
            if args[key] < 1:
                problems.append((key, f'must be >= 1, got {args[key]}'))
        if args['gauss_ksz'] < 1 or args['gauss_ksz'] % 2 == 0:
            problems.append(('gauss_ksz', f"must be odd and >= 1, got {args['gauss_ksz']}"))
        if args['offset_modulo'] is not None and not args['offset_modulo'] > 0:
            problems.append(('offset_modulo', f"must be > 0 or null, got {args['offset_modulo']}"))
        return problems

    def __init__(self, track: DBSRTrack = 'synthetic', enc_init_dim: int = 64, enc_num_res_blocks: int = 9,
                 enc_out_dim: int = 512, dec_init_conv_dim: int = 64, dec_num_pre_res_blocks: int = 5,
                 dec_post_conv_dim: int = 32, dec_num_post_res_blocks: int = 4, upsample_factor: int = 8,
                 offset_feat_dim: int = 64, weight_pred_proj_dim: int = 64, num_offset_feat_extractor_res: int = 1,
                 num_weight_predictor_res: int = 3, offset_modulo: float | None = 1.0, icnrinit: bool = True,
                 gauss_blur_sd: float | None = 1.0, gauss_ksz: int = 3, burst_size: int = 14,
                 pwcnet_path: str | None = None) -> None:
        super().__init__()
        raise_option_problems(DBSR, locals())
        self.track = track
        self.burst_size = burst_size
        self.upsample_factor = upsample_factor
        # Registration order = state_dict order (the official key list).
        self.encoder = DBSREncoder(enc_init_dim, enc_num_res_blocks, enc_out_dim, pwcnet_path)
        self.merging = DBSRMerging(enc_out_dim, weight_pred_proj_dim, offset_feat_dim, num_offset_feat_extractor_res,
                                   num_weight_predictor_res, offset_modulo)
        self.decoder = DBSRDecoder(enc_out_dim, dec_init_conv_dim, dec_num_pre_res_blocks, dec_post_conv_dim,
                                   dec_num_post_res_blocks, upsample_factor, icnrinit, gauss_blur_sd, gauss_ksz)

    def check_input(self, x: torch.Tensor) -> None:
        """Raise a ``ValueError`` explaining why ``x`` cannot go through this model."""
        if x.ndim != 5 or x.shape[2] != 4:
            raise ValueError(f'DBSR expects a packed RGGB burst (B, N, 4, h, w), got shape {tuple(x.shape)}')
        if x.shape[1] < 2:
            raise ValueError(f'DBSR needs at least 2 frames per burst (frame 0 is the reference the others are '
                             f'aligned to), got {x.shape[1]}')

    def forward_with_aux(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """As ``forward``, plus ``{'offsets': (B, N-1, 2, h, w) flows in packed pixels}``."""
        self.check_input(x)
        feat, flows = self.encoder(x)
        fused = self.merging(feat, flows)
        return self.decoder(fused), {'offsets': flows}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, N, 4, h, w) packed RGGB bursts in [0, 1], frame 0 the reference -> (B, 3, 8h, 8w) linear RGB."""
        return self.forward_with_aux(x)[0]

    def load_pwcnet(self, path: str) -> None:
        """Load the official ``pwcnet-network-default.pth`` into ``encoder.alignment_net.net`` (strictly)."""
        self.encoder.alignment_net.net.load_official(path)


# ----------------------------------------------------------------------------------------------------- checkpoints
def convert_dbsr_checkpoint(ckpt: Any, param_key: str = 'params',
                            source: str = 'checkpoint') -> 'OrderedDict[str, torch.Tensor]':
    """The bare DBSR state_dict inside a checkpoint, for ``load_state_dict(strict=True)``.

    Accepts the official trainer file (``{'net': state_dict, 'constructor': ..., 'settings': ..., ...}``, read with
    :func:`codes.utils.checkpoint.load_file`, which admits its pickled trainer objects as inert records), our
    ``{'params'|'params_ema': ...}`` and a bare state_dict; a ``module.`` prefix is stripped. Raises
    ``CheckpointError`` naming ``source`` and what it found otherwise.
    """
    if not isinstance(ckpt, Mapping):
        raise CheckpointError(f'{source}: expected a dict, found a {type(ckpt).__name__}')
    sd = extract_state_dict(ckpt, param_key, source)
    if 'encoder.init_layer.0.weight' not in sd or not any(k.startswith('encoder.alignment_net.net.') for k in sd):
        raise CheckpointError(f"{source}: not a DBSR state_dict (no encoder.init_layer.0.weight / "
                              f"encoder.alignment_net.net.*); top-level keys {list(ckpt)[:8]}")
    return OrderedDict(sd)

