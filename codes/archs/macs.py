"""Multiply-accumulates of a network's forward, counted with ``torch.utils.flop_counter.FlopCounterMode``.

MACs = FLOPs / 2 (the figure papers usually call "FLOPs"). The counter knows matmuls and convolutions, not
activations, norms, pooling or interpolation. The deformable convolution (``torchvision::deform_conv2d``, which the
counter does not know) is counted as the plain convolution of the same shapes, its bilinear sampling not at all.
``burst_macs`` is the cost of one 14-frame packed RGGB burst of 48×48 (SyntheticBurstVal, output 384×384), the
figure of the README's burst-model table and of ``python -m codes.scripts.results_table``.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import torch
from torch.utils.flop_counter import FlopCounterMode, register_flop_formula

__all__ = ['count_macs', 'register_deform_conv_formula', 'burst_macs', 'BURST_SHAPE']

#: The reference burst of the MAC figures: (batch, frames, packed RGGB channels, h, w).
BURST_SHAPE = (1, 14, 4, 48, 48)

_registered = False


def register_deform_conv_formula() -> None:
    """Count ``torchvision::deform_conv2d`` as a convolution of the same input, weight and output shapes."""
    global _registered
    if _registered:
        return
    import torchvision  # noqa: F401  (registers the op)

    def formula(input_shape, weight_shape, *args, out_shape=None, **kwargs) -> int:
        cin_per_group, kh, kw = weight_shape[1:]
        return 2 * math.prod(out_shape) * cin_per_group * kh * kw

    try:
        register_flop_formula(torch.ops.torchvision.deform_conv2d)(formula)
    except RuntimeError:  # already registered (a newer torch may know the op)
        pass
    _registered = True


def count_macs(model: torch.nn.Module, x: torch.Tensor) -> int:
    """Multiply-accumulates of one no_grad forward of ``model`` on ``x`` (FLOPs / 2)."""
    register_deform_conv_formula()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops() // 2


def burst_macs(network_opt: Mapping[str, Any]) -> int:
    """MACs of the network ``network_opt`` (a ``network_g`` block) on one random burst of ``BURST_SHAPE``.

    The network is built with ``burst_size`` 14 (the options' other values as given), in eval mode, with random
    weights (the count does not depend on them), on the CPU.
    """
    from codes.archs import build_network
    opt = {k: v for k, v in network_opt.items() if k != 'compile'}
    opt['burst_size'] = BURST_SHAPE[1]
    torch.manual_seed(0)
    net = build_network(opt).eval()
    return count_macs(net, torch.rand(*BURST_SHAPE))
