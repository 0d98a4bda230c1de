"""DCLS kernel loss: the closed-form LR-space kernel target and its L1 distance to the estimated kernel.

Follows Luo et al. CVPR 2022 (upstream ``megvii-research/DCLS-SR: codes/config/DCLS/models/modules/loss.py``,
``CorrectionLoss``, and ``codes/utils/dcls_utils.py``). DCLS rewrites y = (x ⊗ k)↓s as y ≈ k_R ⊗ (x↓s): the
target k_R is obtained per colour channel by a regularised Fourier division of the blurred LR by the clean bicubic
LR, then masked, soft-thresholded and renormalised. It carries no gradient.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor

from codes.archs.dcls_arch import otf2psf
from codes.utils.registry import LOSS_REGISTRY

__all__ = ['kernel_target', 'zeroize_negligible', 'DCLSKernelLoss']


def zeroize_negligible(k: Tensor, n: int = 40, ratio: float = 0.75) -> Tensor:
    """Soft threshold at ``ratio`` × the (n+1)-th largest tap of each kernel, then renormalise to sum 1.

    Args:
        k: (B, 1, ks, ks) kernels.

    Returns:
        (B, 1, ks, ks): clamp(k − t, 0, 1) + 1e-20 at (ks//2 + 1, ks//2 + 1) (upstream's one-pixel-off "centre"),
        divided by its sum.
    """
    B, _, ks, _ = k.shape
    if ks * ks <= n:
        raise ValueError(f'zeroize_negligible: a {ks}x{ks} kernel has no {n + 1}-th largest tap')
    flat = k.reshape(B, -1)
    t = ratio * torch.sort(flat, dim=1).values[:, -(n + 1)]  # (B,)
    out = torch.clamp(k - t.view(B, 1, 1, 1), 0, 1)
    c = ks // 2 + 1
    out[:, :, c, c] = out[:, :, c, c] + 1e-20
    return out / out.sum(dim=(-2, -1), keepdim=True)


@torch.no_grad()
def kernel_target(lq_blur: Tensor, lq_clean: Tensor, kernel_size: int, eps: float = 1e-20, n: int = 40,
                  ratio: float = 0.75) -> Tensor:
    """The LR-space kernel that maps the bicubic LR ``lq_clean`` to the blurred LR ``lq_blur`` (DCLS, CVPR 2022).

    Per channel c: k_c = otf2psf(F(blur_c)·conj(F(clean_c)) / (|F(clean_c)|² + eps), ks), with 2-D FFTs over the
    whole LR patch (no padding). Then mask = (k_R·k_G·k_B > 0), target = mean_c(k_c)·mask, and
    :func:`zeroize_negligible`.

    Args:
        lq_blur: (B, 3, h, w) blurred, downsampled LR before noise and rounding; h, w >= kernel_size.
        lq_clean: (B, 3, h, w) bicubic-downsampled HR.
        kernel_size: ks of the estimated kernel.

    Returns:
        (B, 1, ks, ks) float32 (at least) target kernels summing to 1.
    """
    if lq_blur.shape != lq_clean.shape:
        raise ValueError(f'lq_blur and lq_clean shapes differ: {tuple(lq_blur.shape)} vs {tuple(lq_clean.shape)}')
    h, w = lq_blur.shape[-2:]
    if h < kernel_size or w < kernel_size:
        raise ValueError(f'the LR patch ({h}x{w}) must be at least as large as the {kernel_size}x{kernel_size} kernel')
    dtype = torch.promote_types(lq_blur.dtype, torch.float32)
    with torch.autocast(lq_blur.device.type, enabled=False):
        blur_f = torch.fft.fft2(lq_blur.to(dtype))  # (B, 3, h, w), transforms over (h, w) only
        clean_f = torch.fft.fft2(lq_clean.to(dtype))
        denom = clean_f.real ** 2 + clean_f.imag ** 2 + eps
        quotient = torch.complex(clean_f.real / denom, -clean_f.imag / denom)  # conj(F(clean)) / (|F|² + eps)
        k = otf2psf(quotient * blur_f, kernel_size)  # (B, 3, ks, ks)
        mask = ((k[:, 0:1] * k[:, 1:2]) * k[:, 2:3] > 0).to(dtype)
        target = k.mean(dim=1, keepdim=True) * mask
        return zeroize_negligible(target, n, ratio)


@LOSS_REGISTRY.register()
class DCLSKernelLoss(nn.Module):
    """L1 between the estimated kernel and the closed-form LR-space target built from the batch's LR pair.

    Args:
        loss_weight: factor of the loss (1 in DCLS).
        eps: regulariser of the Fourier division (1e-20, the value DCLS trains with).
        keep: taps kept above the soft threshold (40).
        threshold_ratio: the threshold is this times the (keep+1)-th largest tap (0.75).
    """

    def __init__(self, loss_weight: float = 1.0, eps: float = 1e-20, keep: int = 40,
                 threshold_ratio: float = 0.75) -> None:
        super().__init__()
        self.loss_weight, self.eps, self.keep, self.ratio = float(loss_weight), float(eps), int(keep), threshold_ratio

    def forward(self, pred_kernel: Tensor, lq_blur: Tensor, lq_clean: Tensor) -> Tensor:
        """pred_kernel: (B, 1, ks, ks); lq_blur, lq_clean: (B, 3, h, w). Returns the float32 scalar loss."""
        target = kernel_target(lq_blur, lq_clean, pred_kernel.shape[-1], self.eps, self.keep, self.ratio)
        return self.loss_weight * (pred_kernel.float() - target.float()).abs().mean()

    def extra_repr(self) -> str:
        return f'loss_weight={self.loss_weight}, eps={self.eps}, keep={self.keep}, threshold_ratio={self.ratio}'
