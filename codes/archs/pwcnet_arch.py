"""PWC-Net optical flow, in pure PyTorch (no CuPy), loading the official ``pwcnet-network-default.pth``.

Paper: Sun et al., "PWC-Net: CNNs for Optical Flow Using Pyramid, Warping, and Cost Volume", CVPR 2018.
Upstream: ``sniklaus/pytorch-pwc`` (GPL-3.0), as vendored by DBSR (``goutamgmb/deep-burst-sr:
models/alignment/pwcnet.py``) and BSRT for the BurstSR aligned metrics.
Re-implemented here so the official weights load strictly: the sub-module names are the upstream ones
(``netExtractor``, ``netTwo`` … ``netSix``, ``netRefiner``), and the weight file's ``module*`` names are mapped
to them by ``convert_pwcnet_checkpoint``. The cost volume, a CuPy kernel upstream, is ``correlation`` below.

``PWCNet.forward(first, second)`` returns the network's raw flow at 1/4 resolution (before the ×20 scaling) from
``first`` to ``second``: ``backwarp(second, 20 · flow)`` ≈ ``first``. ``estimate_flow`` wraps it as the metric
uses it (resizing to multiples of 64, ×20, resizing back).
"""
from __future__ import annotations

import logging
import math
import os

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from codes.utils.checkpoint import extract_state_dict, load_file, load_state_dict_strict
from codes.utils.registry import ARCH_REGISTRY

__all__ = ['PWCNet', 'correlation', 'backwarp', 'convert_pwcnet_checkpoint']

logger = logging.getLogger(__name__)

MAX_DISPLACEMENT = 4  #: cost-volume radius: (2·4 + 1)² = 81 channels
_FEATURES = (3, 16, 32, 64, 96, 128, 196)  #: extractor widths, input first
_DENSE = (128, 128, 96, 64, 32)  #: DenseNet-style decoder widths
#: decoder input channels per level (2..6): cost volume + features + flow + upsampled feature flow
_DECODER_IN = {2: 81 + 32 + 2 + 2, 3: 81 + 64 + 2 + 2, 4: 81 + 96 + 2 + 2, 5: 81 + 128 + 2 + 2, 6: 81}
#: flow scale when warping at each level (flows are predicted in units of 20 px at full resolution)
_BACKWARP_SCALE = {2: 5.0, 3: 2.5, 4: 1.25, 5: 0.625}


# ---------------------------------------------------------------------------------------------------- functions
def correlation(first: Tensor, second: Tensor, max_displacement: int = MAX_DISPLACEMENT) -> Tensor:
    """Cost volume of the upstream kernel: channel (dy + d)·(2d + 1) + (dx + d) holds the channel mean of
    first(y, x) · second(y + dy, x + dx), with zeros outside ``second``.

    Args:
        first, second: (B, C, H, W) feature maps.

    Returns:
        (B, (2d + 1)², H, W).
    """
    d = max_displacement
    h, w = first.shape[-2:]
    padded = F.pad(second, (d, d, d, d))
    volumes = []
    for dy in range(2 * d + 1):
        for dx in range(2 * d + 1):
            volumes.append((first * padded[:, :, dy:dy + h, dx:dx + w]).mean(dim=1))
    return torch.stack(volumes, dim=1)


def backwarp(image: Tensor, flow: Tensor) -> Tensor:
    """Sample ``image`` (B, C, H, W) at x + flow (B, 2, H, W) as the upstream network does: pixel-centre grid, flow
    normalised by (size − 1)/2, bilinear, zeros outside; pixels that read outside the image are zeroed."""
    b, _, h, w = flow.shape
    xs = torch.linspace(-1.0 + 1.0 / w, 1.0 - 1.0 / w, w, device=flow.device, dtype=flow.dtype)
    ys = torch.linspace(-1.0 + 1.0 / h, 1.0 - 1.0 / h, h, device=flow.device, dtype=flow.dtype)
    grid = torch.stack((xs.view(1, 1, w).expand(b, h, w), ys.view(1, h, 1).expand(b, h, w)), dim=-1)
    shift = torch.stack((flow[:, 0] / ((image.shape[-1] - 1.0) / 2.0), flow[:, 1] / ((image.shape[-2] - 1.0) / 2.0)),
                        dim=-1)
    ones = image.new_ones(b, 1, *image.shape[-2:])
    out = F.grid_sample(torch.cat((image, ones), 1), grid + shift, mode='bilinear', padding_mode='zeros',
                        align_corners=False)
    mask = (out[:, -1:] > 0.999).to(out.dtype)
    return out[:, :-1] * mask


def convert_pwcnet_checkpoint(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """The official weight file's names (``moduleExtractor.moduleOne.0.weight``, …) -> this module's (``net``
    instead of every ``module``, as upstream loads them); names that are already ``net*`` pass unchanged."""
    return {key.replace('module', 'net'): value for key, value in state_dict.items()}


# ---------------------------------------------------------------------------------------------------- blocks
def _lrelu() -> nn.LeakyReLU:
    return nn.LeakyReLU(negative_slope=0.1, inplace=False)


class _Extractor(nn.Module):
    """Six stride-2 stages of three 3×3 convolutions each: features at 1/2 … 1/64 resolution."""

    def __init__(self) -> None:
        super().__init__()
        names = ('netOne', 'netTwo', 'netThr', 'netFou', 'netFiv', 'netSix')
        for name, cin, cout in zip(names, _FEATURES[:-1], _FEATURES[1:]):
            self.add_module(name, nn.Sequential(
                nn.Conv2d(cin, cout, 3, 2, 1), _lrelu(), nn.Conv2d(cout, cout, 3, 1, 1), _lrelu(),
                nn.Conv2d(cout, cout, 3, 1, 1), _lrelu()))
        self.names = names

    def forward(self, x: Tensor) -> list[Tensor]:
        feats = []
        for name in self.names:
            x = getattr(self, name)(x)
            feats.append(x)
        return feats


class _Decoder(nn.Module):
    """Flow estimator of one pyramid level: cost volume, then densely connected convolutions -> flow."""

    def __init__(self, level: int) -> None:
        super().__init__()
        self.level = level
        current = _DECODER_IN[level]
        if level < 6:
            previous = _DECODER_IN[level + 1] + sum(_DENSE)
            self.netUpflow = nn.ConvTranspose2d(2, 2, 4, 2, 1)
            self.netUpfeat = nn.ConvTranspose2d(previous, 2, 4, 2, 1)
            self.backwarp_scale = _BACKWARP_SCALE[level]
        width = current
        for name, cout in zip(('netOne', 'netTwo', 'netThr', 'netFou', 'netFiv'), _DENSE):
            self.add_module(name, nn.Sequential(nn.Conv2d(width, cout, 3, 1, 1), _lrelu()))
            width += cout
        self.netSix = nn.Sequential(nn.Conv2d(width, 2, 3, 1, 1))

    def forward(self, first: Tensor, second: Tensor, previous: tuple[Tensor, Tensor] | None) -> tuple[Tensor, Tensor]:
        if previous is None:
            feat = F.leaky_relu(correlation(first, second), 0.1)
        else:
            flow = self.netUpflow(previous[0])
            up_feat = self.netUpfeat(previous[1])
            volume = F.leaky_relu(correlation(first, backwarp(second, flow * self.backwarp_scale)), 0.1)
            feat = torch.cat((volume, first, flow, up_feat), 1)
        for name in ('netOne', 'netTwo', 'netThr', 'netFou', 'netFiv'):
            feat = torch.cat((getattr(self, name)(feat), feat), 1)
        return self.netSix(feat), feat


class _Refiner(nn.Module):
    """Context network: dilated convolutions (1, 2, 4, 8, 16, 1, 1) on the last decoder's features."""

    def __init__(self) -> None:
        super().__init__()
        cin = _DECODER_IN[2] + sum(_DENSE)
        widths = (128, 128, 128, 96, 64, 32)
        dilations = (1, 2, 4, 8, 16, 1)
        layers: list[nn.Module] = []
        for cout, dil in zip(widths, dilations):
            layers += [nn.Conv2d(cin, cout, 3, 1, dil, dilation=dil), _lrelu()]
            cin = cout
        layers.append(nn.Conv2d(cin, 2, 3, 1, 1))
        self.netMain = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.netMain(x)


# ---------------------------------------------------------------------------------------------------- network
@ARCH_REGISTRY.register()
class PWCNet(nn.Module):
    """PWC-Net (the ``default`` model of ``sniklaus/pytorch-pwc``), frozen, for flow between RGB images in [0, 1].

    Args:
        load_path: the official ``pwcnet-network-default.pth`` (or a state_dict of this module); None leaves the
            weights random (for tests). Loaded strictly with ``weights_only=True``; never downloaded.
    """

    def __init__(self, load_path: str | None = None) -> None:
        super().__init__()
        self.netExtractor = _Extractor()
        self.netTwo = _Decoder(2)
        self.netThr = _Decoder(3)
        self.netFou = _Decoder(4)
        self.netFiv = _Decoder(5)
        self.netSix = _Decoder(6)
        self.netRefiner = _Refiner()
        if load_path is not None:
            self.load_official(load_path)
        self.requires_grad_(False)
        self.eval()

    def load_official(self, path: str | os.PathLike) -> None:
        """Load the official weight file strictly; errors name the file and the differing keys."""
        sd = convert_pwcnet_checkpoint(extract_state_dict(load_file(path), 'params', str(path)))
        load_state_dict_strict(self, sd, str(path), mismatch='not the PWC-Net weights (pwcnet-network-default.pth)')
        logger.info('Loaded PWC-Net weights from %s', path)

    def train(self, mode: bool = True) -> 'PWCNet':
        """PWC-Net stays in eval mode (it is a frozen measuring instrument)."""
        return super().train(False)

    def forward(self, first: Tensor, second: Tensor) -> Tensor:
        """Raw flow (B, 2, H/4, W/4) from ``first`` to ``second`` (B, 3, H, W), H and W multiples of 64."""
        f1 = self.netExtractor(first)
        f2 = self.netExtractor(second)
        est = self.netSix(f1[-1], f2[-1], None)
        for decoder, level in ((self.netFiv, -2), (self.netFou, -3), (self.netThr, -4), (self.netTwo, -5)):
            est = decoder(f1[level], f2[level], est)
        return est[0] + self.netRefiner(est[1])

    @torch.no_grad()
    def estimate_flow(self, source: Tensor, target: Tensor) -> Tensor:
        """Flow (B, 2, H, W) in target pixels, (dx, dy), such that ``source`` sampled at x + flow matches
        ``target``: both are resized to multiples of 64, the network runs target first, and its output is ×20,
        resized back and rescaled by the resize ratios (the upstream wrapper; no RGB -> BGR swap)."""
        if source.shape != target.shape or source.dim() != 4 or source.shape[1] != 3:
            raise ValueError(f'PWCNet.estimate_flow: expected two (B, 3, H, W) images of one shape, got '
                             f'{tuple(source.shape)} and {tuple(target.shape)}')
        h, w = source.shape[-2:]
        h64, w64 = int(math.ceil(h / 64.0) * 64), int(math.ceil(w / 64.0) * 64)
        src = F.interpolate(source, size=(h64, w64), mode='bilinear', align_corners=False)
        tgt = F.interpolate(target, size=(h64, w64), mode='bilinear', align_corners=False)
        flow = 20.0 * F.interpolate(self(tgt, src), size=(h, w), mode='bilinear', align_corners=False)
        return torch.stack((flow[:, 0] * (w / w64), flow[:, 1] * (h / h64)), dim=1)
