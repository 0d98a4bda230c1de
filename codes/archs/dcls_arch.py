"""DCLS: Deep Constrained Least Squares for blind image super-resolution.

Paper: Luo et al., "Deep Constrained Least Squares for Blind Image Super-Resolution", CVPR 2022, arXiv 2202.07508.
Upstream: ``megvii-research/DCLS-SR`` at commit 3314f42e (MIT licence),
``codes/config/DCLS/models/modules/dcls_arch.py``; re-implemented from Luo et al. CVPR 2022 and that file so that the
official checkpoints (``DCLSx{2,3,4}_setting1.pth``, ``DCLSx{2,4}_setting2.pth``) load with ``strict=True``
(same module names, order and shapes) and give the official outputs.

Input ``lr`` (B, 3, h, w): RGB in [0, 1] (training inputs may lie slightly outside), with
h, w >= 7. Output ``(sr, kernel)``: sr (B, 3, scale*h, scale*w) clamped to [0, 1], and the estimated LR-space blur
kernel (B, 1, ks, ks), which sums to 1 (negative taps are possible). Parts:

* ``Estimator`` (DDLK): a CNN encodes the LR image into a 256-vector; Linear decoders turn it into the
  per-sample weights of a deep linear filter chain, whose impulse response is the kernel;
* ``Restorer``: features of the LR image are deconvolved in feature space by the learned constrained least
  squares filter (``CLS``, a division in the Fourier domain), then refined by a dual-path network of
  channel-attention blocks (``DPCAB`` in ``DPCAG`` groups) and pixel-shuffle upsampled.

Two behaviours of the original are kept on purpose because the official weights depend on them: every group
(``DPCAG``) returns **twice** the output of its chained blocks (an in-place list aliasing in the original, written
out explicitly here), and the Restorer receives the **detached** kernel, so the SR loss never trains the
Estimator.
"""
from __future__ import annotations

import logging
from typing import Any, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from codes.utils.build import OptionProblems, raise_option_problems
from codes.utils.registry import ARCH_REGISTRY

__all__ = ['DCLS', 'Estimator', 'Restorer', 'CLS', 'DPCAB', 'DPCAG', 'CALayer', 'ResidualBlockNoBN',
           'FILTER_STRUCTURES', 'MIN_LR_SIZE', 'psf2otf', 'otf2psf', 'legacy_irfft2', 'cls_deconv']

logger = logging.getLogger(__name__)

#: Layer sizes of the deep linear kernel generator, per kernel size (as in DCLS-SR).
FILTER_STRUCTURES: dict[int, tuple[int, ...]] = {21: (11, 7, 5, 1), 11: (7, 3, 3, 1), 31: (11, 9, 7, 5, 3)}
#: Smallest LR side the network accepts: CLS's grad_filter has three valid 3x3 convs on unpadded features.
MIN_LR_SIZE = 7
UPSCALES = (1, 2, 3, 4)


# --------------------------------------------------------------------------------------------- FFT functions
def psf2otf(psf: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Optical transfer function of odd-sized square kernels, as a complex spectrum.

    The kernel is zero-padded to ``shape`` and circularly shifted so that its centre (n//2, n//2) lands at (0, 0),
    then transformed with a 2-D FFT over the last two axes.

    Args:
        psf: (..., n, n) real kernels, n odd.
        shape: (H, W) of the spectrum, H, W >= n.

    Returns:
        (..., H, W) complex spectrum.
    """
    n = psf.shape[-1]
    H, W = shape
    if psf.shape[-2] != n or n % 2 == 0:
        raise ValueError(f'psf2otf needs odd square kernels, got shape {tuple(psf.shape)}')
    if H < n or W < n:
        raise ValueError(f'psf2otf: target size {shape} is smaller than the {n}x{n} kernel')
    padded = F.pad(psf, (0, W - n, 0, H - n))
    padded = torch.roll(padded, shifts=(-(n // 2), -(n // 2)), dims=(-2, -1))
    return torch.fft.fft2(padded)


def legacy_irfft2(spec: torch.Tensor) -> torch.Tensor:
    """The real 2-D inverse FFT with the semantics of the removed ``torch.irfft(x, onesided=False)``.

    Only columns 0 ... W//2 of the full (..., H, W) spectrum are used (Hermitian symmetry is assumed) and the
    result is scaled by 1/(H·W). For the Hermitian spectra the model produces this equals ``ifft2(spec).real`` to
    float rounding.
    """
    H, W = spec.shape[-2:]
    return torch.fft.irfft2(spec[..., : W // 2 + 1], s=(H, W))


def otf2psf(otf: torch.Tensor, n: int) -> torch.Tensor:
    """Inverse of :func:`psf2otf`: (..., H, W) complex spectrum -> (..., n, n) real kernel centred at n//2."""
    psf = legacy_irfft2(otf)
    psf = torch.roll(psf, shifts=(n // 2, n // 2), dims=(-2, -1))
    return psf[..., :n, :n]


def cls_deconv(feat: torch.Tensor, kernel: torch.Tensor, smooth: torch.Tensor) -> torch.Tensor:
    """Constrained least squares deconvolution of every feature channel in the Fourier domain.

    Computes, per sample and channel, R = F⁻¹[conj(K̂) / (|K̂|² + |P̂_c|²) · F(z_c)] on the replicate-padded
    features, then crops the padding. There is no ε: the DC term of the denominator is about (Σk)² = 1.
    Runs in float32 (or float64 if the inputs are), outside autocast.

    Args:
        feat: (B, C, h, w) features z.
        kernel: (B, 1, ks, ks) blur kernel, ks odd.
        smooth: (B, C, p, p) zero-mean smoothness filters P (p odd, p <= ks).

    Returns:
        (B, C, h, w) deconvolved features, same dtype as ``feat`` promoted to at least float32.
    """
    ks = kernel.shape[-1]
    dtype = torch.promote_types(feat.dtype, torch.float32)
    with torch.autocast(feat.device.type, enabled=False):
        z = F.pad(feat.to(dtype), (ks, ks, ks, ks), mode='replicate')  # (B, C, h + 2ks, w + 2ks)
        size = z.shape[-2:]
        k_otf = psf2otf(kernel.to(dtype), size)  # (B, 1, H, W)
        p_otf = psf2otf(smooth.to(dtype), size)  # (B, C, H, W)
        denom = k_otf.real ** 2 + k_otf.imag ** 2 + p_otf.real ** 2 + p_otf.imag ** 2  # (B, C, H, W)
        quotient = torch.complex(k_otf.real / denom, -k_otf.imag / denom)  # conj(K̂) / D
        out = legacy_irfft2(quotient * torch.fft.fft2(z))  # 2-D transforms over (H, W) only
        return out[..., ks:-ks, ks:-ks]


# ----------------------------------------------------------------------------------------------------- blocks
class ResidualBlockNoBN(nn.Module):
    """x + conv2(LReLU₀.₁(conv1(x))), 3x3 convs with padding 1 (MMSR's ``ResidualBlock_noBN``).

    Args:
        nf: channels.
        init_scale: the convs are initialised kaiming-normal (fan_in) times this, with zero bias.
    """

    def __init__(self, nf: int = 64, init_scale: float = 0.1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(nf, nf, 3, 1, 1)
        self.conv2 = nn.Conv2d(nf, nf, 3, 1, 1)
        self.act = nn.LeakyReLU(0.1)
        for conv in (self.conv1, self.conv2):
            nn.init.kaiming_normal_(conv.weight, a=0, mode='fan_in')
            conv.weight.data.mul_(init_scale)
            nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.act(self.conv1(x)))


class CALayer(nn.Module):
    """Channel attention: x · σ(conv(ReLU(conv(avgpool(x))))), with a C -> C/r -> C bottleneck of 1x1 convs."""

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.conv_du = nn.Sequential(
            nn.Conv2d(channels, channels // reduction, 1), nn.ReLU(inplace=True),
            nn.Conv2d(channels // reduction, channels, 1), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.conv_du(self.avg_pool(x))


class DPCAB(nn.Module):
    """Dual-path channel-attention block ("DPAB" in the paper).

    Takes and returns the pair [a (B, nf, h, w) deblurred path, b (B, nf2, h, w) primitive path]:
    p = body1(a), q = body2(b), a' = a + CA_body1(cat[p, q]), b' = b + CA_body2(q).
    """

    def __init__(self, nf1: int = 64, nf2: int = 16, reduction: int = 4) -> None:
        super().__init__()
        self.body1 = nn.Sequential(nn.Conv2d(nf1, nf1, 3, 1, 1), nn.LeakyReLU(0.1), nn.Conv2d(nf1, nf1, 3, 1, 1))
        self.body2 = nn.Sequential(nn.Conv2d(nf2, nf2, 3, 1, 1), nn.LeakyReLU(0.1), nn.Conv2d(nf2, nf2, 3, 1, 1))
        self.CA_body1 = nn.Sequential(nn.LeakyReLU(0.1), nn.Conv2d(nf1 + nf2, nf1, 3, 1, 1),
                                      CALayer(nf1, reduction))
        self.CA_body2 = CALayer(nf2, reduction)

    def forward(self, x: list[torch.Tensor]) -> list[torch.Tensor]:
        a, b = x
        p = self.body1(a)
        q = self.body2(b)
        return [a + self.CA_body1(torch.cat([p, q], dim=1)), b + self.CA_body2(q)]


class DPCAG(nn.Module):
    """A group of ``nb`` DPCABs whose output is **twice** the chained blocks' output on both paths.

    The original adds the group input to the body output, but its blocks mutate and return the input list, so
    the "residual" adds the output to itself. The official weights were trained with this
    doubling, so it is reproduced exactly (y + y).
    """

    def __init__(self, nf1: int = 64, nf2: int = 16, reduction: int = 4, nb: int = 10) -> None:
        super().__init__()
        self.body = nn.Sequential(*[DPCAB(nf1, nf2, reduction) for _ in range(nb)])

    def forward(self, x: list[torch.Tensor]) -> list[torch.Tensor]:
        y = self.body(x)
        return [y[0] + y[0], y[1] + y[1]]


class CLS(nn.Module):
    """Deep constrained least squares deconvolution in feature space (``head2`` of the Restorer).

    Features are reduced to ``nf // reduction`` channels, a per-sample, per-channel 3x3 smoothness filter P is
    predicted from them (exp of a small conv stack, made zero-mean), the features are deconvolved by the kernel
    with :func:`cls_deconv`, and expanded back to ``nf`` channels.
    """

    def __init__(self, nf: int = 64, reduction: int = 4) -> None:
        super().__init__()
        nf2 = nf // reduction
        self.reduce_feature = nn.Conv2d(nf, nf2, 1, 1, 0)
        self.grad_filter = nn.Sequential(
            nn.Conv2d(nf2, nf2, 3), nn.LeakyReLU(0.1),
            nn.Conv2d(nf2, nf2, 3), nn.LeakyReLU(0.1),
            nn.Conv2d(nf2, nf2, 3),
            nn.AdaptiveAvgPool2d((3, 3)),
            nn.Conv2d(nf2, nf2, 1))
        self.expand_feature = nn.Conv2d(nf2, nf, 1, 1, 0)

    def smoothness_filter(self, z: torch.Tensor) -> torch.Tensor:
        """(B, nf2, h, w) reduced features -> (B, nf2, 3, 3) zero-mean filters P = exp(·) − mean, in float32 at
        least (exp overflows float16 above 11)."""
        p = torch.exp(self.grad_filter(z).to(torch.promote_types(z.dtype, torch.float32)))
        return p - p.mean(dim=(-2, -1), keepdim=True)

    def forward(self, x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
        """x: (B, nf, h, w) features; kernel: (B, 1, ks, ks). Returns (B, nf, h, w)."""
        z = self.reduce_feature(x)
        r = cls_deconv(z, kernel, self.smoothness_filter(z))
        return self.expand_feature(r.to(z.dtype))


class Estimator(nn.Module):
    """DDLK kernel estimator: LR image -> per-sample deep linear filter chain -> its impulse response.

    Args:
        in_nc: image channels.
        nf: feature channels.
        para_len: length of the latent vector (``input_para``).
        num_blocks: residual blocks in the body.
        kernel_size: 21, 11 or 31 (see ``FILTER_STRUCTURES``).
    """

    G_CHAN = 16

    def __init__(self, in_nc: int = 3, nf: int = 64, para_len: int = 256, num_blocks: int = 3,
                 kernel_size: int = 21) -> None:
        super().__init__()
        if kernel_size not in FILTER_STRUCTURES:
            raise ValueError(f'kernel_size must be one of {sorted(FILTER_STRUCTURES)}, got {kernel_size!r}')
        self.in_nc, self.kernel_size = in_nc, kernel_size
        self.filter_structures = FILTER_STRUCTURES[kernel_size]
        self.head = nn.Sequential(nn.Conv2d(in_nc, nf, 7, 1, 3))
        self.body = nn.Sequential(nn.Sequential(*[ResidualBlockNoBN(nf) for _ in range(num_blocks)]))
        self.tail = nn.Sequential(
            nn.Conv2d(nf, nf, 3), nn.LeakyReLU(0.1), nn.Conv2d(nf, nf, 3),
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(nf, para_len, 1), nn.Flatten())
        n = len(self.filter_structures)
        self.in_chans = [in_nc] + [self.G_CHAN] * (n - 1)
        self.out_chans = [self.G_CHAN] * (n - 1) + [in_nc]
        self.dec = nn.ModuleList(
            nn.Linear(para_len, co * ci * f * f)
            for ci, co, f in zip(self.in_chans, self.out_chans, self.filter_structures))
        for m in self.modules():  # kaiming x 1 everywhere, the ResBlocks' own x 0.1 included (as upstream)
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, a=0, mode='fan_in')
                nn.init.zeros_(m.bias)

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        """lr: (B, in_nc, h, w), h, w >= 5. Returns (B, 1, ks, ks) kernels summing to 1, in float32 at least (the
        decoders and the filter chain run outside autocast)."""
        B = lr.shape[0]
        ks = self.kernel_size
        f1 = self.head(lr)
        z = self.tail(self.body(f1) + f1)  # (B, para_len)
        dtype = torch.promote_types(z.dtype, torch.float32)
        with torch.autocast(lr.device.type, enabled=False):  # the kernel chain and its normalisation in float32
            z = z.to(dtype)
            x = torch.ones(1, B * self.in_nc, 1, 1, device=lr.device, dtype=dtype)  # a delta per sample and channel
            for i, (dec, ci, co, f) in enumerate(zip(self.dec, self.in_chans, self.out_chans,
                                                     self.filter_structures)):
                w = F.linear(z, dec.weight.to(dtype), dec.bias.to(dtype)).reshape(B * co, ci, f, f)
                # sample b owns output channels b*co ... (b+1)*co - 1
                x = F.conv2d(x, w, padding=ks - 1 if i == 0 else 0, groups=B)
            k = x.reshape(B, self.in_nc, ks, ks).flip(-2, -1)  # the chain of correlations flipped it once
            k = k.mean(dim=1, keepdim=True)  # (B, 1, ks, ks)
            return k / k.sum(dim=(-2, -1), keepdim=True)


class Restorer(nn.Module):
    """The non-blind SR branch: LR image and kernel -> SR image.

    Args:
        in_nc: image channels.
        nf: feature channels of the deblurred path (the primitive path has nf // reduction).
        nb: DPCABs per group.
        ng: groups.
        scale: upscaling factor, 1 to 4.
        reduction: channel reduction of the CLS and of the channel attention.
    """

    def __init__(self, in_nc: int = 3, nf: int = 64, nb: int = 10, ng: int = 5, scale: int = 4,
                 reduction: int = 4) -> None:
        super().__init__()
        if scale not in UPSCALES:
            raise ValueError(f'scale must be one of {UPSCALES}, got {scale!r}')
        nf2 = nf // reduction
        self.conv_first = nn.Conv2d(in_nc, nf, 3, 1, 1)
        self.feature_block = nn.Sequential(*[ResidualBlockNoBN(nf) for _ in range(3)])
        self.head1 = nn.Conv2d(nf, nf2, 3, 1, 1)
        self.head2 = CLS(nf, reduction)
        self.body = nn.Sequential(*[DPCAG(nf, nf2, reduction, nb) for _ in range(ng)])
        self.fusion = nn.Conv2d(nf + nf2, nf, 3, 1, 1)
        if scale == 4:
            layers = [nn.Conv2d(nf, nf * 4, 3, 1, 1), nn.PixelShuffle(2),
                      nn.Conv2d(nf, nf * 4, 3, 1, 1), nn.PixelShuffle(2), nn.Conv2d(nf, in_nc, 3, 1, 1)]
        elif scale in (2, 3):
            layers = [nn.Conv2d(nf, nf * scale ** 2, 3, 1, 1), nn.PixelShuffle(scale), nn.Conv2d(nf, in_nc, 3, 1, 1)]
        else:
            layers = [nn.Conv2d(nf, in_nc, 3, 1, 1)]
        self.upscale = nn.Sequential(*layers)

    def forward(self, lr: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
        """lr: (B, in_nc, h, w); kernel: (B, 1, ks, ks). Returns (B, in_nc, scale*h, scale*w) in [0, 1]."""
        f = self.conv_first(lr)
        feat = self.feature_block(f)
        f1 = self.head1(feat)  # primitive path, nf2 channels
        f2 = self.head2(feat, kernel)  # deblurred path, nf channels
        f2, f1 = self.body([f2, f1])
        g = self.fusion(torch.cat([f1, f2], dim=1)) + f
        return torch.clamp(self.upscale(g), 0, 1)


# -------------------------------------------------------------------------------------------------- network
@ARCH_REGISTRY.register()
class DCLS(nn.Module):
    """DCLS blind SR network: ``forward(lr) -> (sr, kernel)``.

    Args:
        scale: upscaling factor (1, 2, 3 or 4; the original's ``upscale``).
        kernel_size: size of the estimated LR-space kernel: 21 (setting 1), 11 (setting 2 x2), 31 (setting 2 x4).
        nf: feature channels (64).
        nb: DPCABs per group (10 in the shipped options; the original's constructor default is 16).
        ng: DPCAG groups (5).
        in_nc: image channels (3).
        reduction: channel reduction of the CLS and channel attention (4).
        input_para: length of the Estimator's latent vector (256 in the shipped options).
    """

    @classmethod
    def check_options(cls, args: Mapping[str, Any]) -> OptionProblems:
        """The deliberate value checks of the constructor, as (key, message) pairs (see ``codes.utils.build``)."""
        problems: OptionProblems = []
        if args['kernel_size'] not in FILTER_STRUCTURES:
            problems.append(('kernel_size', f'must be one of {sorted(FILTER_STRUCTURES)} (the original supports '
                             f"only these), got {args['kernel_size']!r}"))
        if args['scale'] not in UPSCALES:
            problems.append(('scale', f"must be one of {UPSCALES}, got {args['scale']!r}"))
        nf, reduction = args['nf'], args['reduction']
        if reduction < 1:
            problems.append(('reduction', f'must be >= 1, got {reduction}'))
        elif nf % reduction or (nf // reduction) % reduction:
            problems.append(('nf', f'({nf}) must be divisible by reduction ({reduction}) twice (the primitive path '
                             'has nf/reduction channels with its own channel attention)'))
        for key in ('nb', 'ng', 'in_nc', 'input_para'):
            if args[key] < 1:
                problems.append((key, f'must be >= 1, got {args[key]}'))
        return problems

    def __init__(self, scale: int = 4, kernel_size: int = 21, nf: int = 64, nb: int = 10, ng: int = 5,
                 in_nc: int = 3, reduction: int = 4, input_para: int = 256) -> None:
        super().__init__()
        raise_option_problems(DCLS, locals())
        self.scale, self.kernel_size = scale, kernel_size
        self.Restorer = Restorer(in_nc=in_nc, nf=nf, nb=nb, ng=ng, scale=scale, reduction=reduction)
        self.Estimator = Estimator(in_nc=in_nc, nf=nf, para_len=input_para, kernel_size=kernel_size)

    def forward(self, lr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """lr: (B, 3, h, w) RGB in about [0, 1], h, w >= 7.

        Returns:
            sr: (B, 3, scale*h, scale*w) in [0, 1];
            kernel: (B, 1, ks, ks) estimated LR-space kernel (sums to 1; carries the Estimator's gradient).
        """
        if lr.dim() != 4:
            raise ValueError(f'DCLS takes a (B, C, h, w) batch, got shape {tuple(lr.shape)}')
        h, w = lr.shape[-2:]
        if h < MIN_LR_SIZE or w < MIN_LR_SIZE:
            raise ValueError(f'DCLS needs LR inputs of at least {MIN_LR_SIZE}x{MIN_LR_SIZE} pixels, got {h}x{w}')
        kernel = self.Estimator(lr)
        sr = self.Restorer(lr, kernel.detach())
        return sr, kernel
