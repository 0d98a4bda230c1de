"""BSRT's fast path (grid_sample DCN, SDPA attention) against the reference path (torchvision DCN, explicit
attention): values and gradients, float64 gradcheck, fp32 at BSRT widths, bf16 autocast, odd sizes, far and NaN
offsets, and the impl option."""
from __future__ import annotations

import pytest
import torch
from torch.autograd import gradcheck

import codes.archs.arch_util as arch_util
from codes.archs import build_network
from codes.archs.arch_util import DCNSep, FlowGuidedDCN, modulated_deform_conv2d
from codes.archs.bsrt_arch import BSRT
from codes.archs.swin_blocks import BasicLayer, WindowAttention, compute_shift_mask, shift_mask
from codes.utils.build import OptionError

pytestmark = pytest.mark.usefixtures('one_thread')


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b||."""
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def dcn_inputs(b: int, c: int, h: int, w: int, groups: int, cout: int, dtype: torch.dtype = torch.float32,
               spread: float = 2.0, stride: int = 1, padding: int = 1, dilation: int = 1) -> list[torch.Tensor]:
    ho = (h + 2 * padding - 2 * dilation - 1) // stride + 1
    wo = (w + 2 * padding - 2 * dilation - 1) // stride + 1
    g = torch.Generator().manual_seed(0)
    return [
        torch.randn(b, c, h, w, generator=g, dtype=dtype).requires_grad_(),
        (spread * torch.randn(b, 18 * groups, ho, wo, generator=g, dtype=dtype)).requires_grad_(),
        torch.rand(b, 9 * groups, ho, wo, generator=g, dtype=dtype).requires_grad_(),
        (torch.randn(cout, c, 3, 3, generator=g, dtype=dtype) / (3 * c**0.5)).requires_grad_(),
        torch.randn(cout, generator=g, dtype=dtype).requires_grad_(),
    ]


def values_and_grads(fn, inputs: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    for t in inputs:
        t.grad = None
    out = fn(*inputs)
    (out.float() * torch.linspace(-1, 1, out.numel()).view(out.shape)).sum().backward()
    return out.detach(), [t.grad.clone() for t in inputs]


# ----------------------------------------------------------------------------------------------------- DCN
@pytest.mark.parametrize('stride,padding,dilation,chunk_bytes', [(1, 1, 1, None), (1, 1, 1, 1), (2, 1, 1, None),
                                                                (1, 2, 2, 1)])
def test_fast_dcn_gradcheck(stride: int, padding: int, dilation: int, chunk_bytes: int | None,
                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Float64 gradients of input, offset, mask, weight and bias, one chunk and one image per chunk."""
    if chunk_bytes is not None:
        monkeypatch.setattr(arch_util, '_CPU_CHUNK_BYTES', chunk_bytes)
    inputs = dcn_inputs(2, 4, 4, 5, 2, 3, torch.float64, stride=stride, padding=padding, dilation=dilation)
    fast = lambda *a: modulated_deform_conv2d(*a, stride, padding, dilation, impl='fast')  # noqa: E731
    assert gradcheck(fast, inputs, eps=1e-6, atol=1e-6, fast_mode=True)
    ref = lambda *a: modulated_deform_conv2d(*a, stride, padding, dilation, impl='reference')  # noqa: E731
    out_f, grads_f = values_and_grads(fast, inputs)
    out_r, grads_r = values_and_grads(ref, inputs)
    torch.testing.assert_close(out_f, out_r, rtol=0, atol=1e-12)
    for gf, gr in zip(grads_f, grads_r):
        torch.testing.assert_close(gf, gr, rtol=0, atol=1e-11)


def test_fast_dcn_grouped_weight_matches_reference() -> None:
    """Grouped convolution weights (Burstormer: (C, C/8, 3, 3), dilation 2) in float64, values and gradients."""
    torch.manual_seed(0)
    x = torch.randn(2, 8, 7, 9, dtype=torch.float64)
    offset = torch.randn(2, 2 * 9 * 4, 7, 9, dtype=torch.float64) * 2
    mask = torch.rand(2, 9 * 4, 7, 9, dtype=torch.float64)
    weight = torch.randn(8, 2, 3, 3, dtype=torch.float64)
    bias = torch.randn(8, dtype=torch.float64)
    inputs = [t.requires_grad_() for t in (x, offset, mask, weight, bias)]
    fast = lambda *a: modulated_deform_conv2d(*a, 1, 2, 2, impl='fast')  # noqa: E731
    ref = lambda *a: modulated_deform_conv2d(*a, 1, 2, 2, impl='reference')  # noqa: E731
    out_f, grads_f = values_and_grads(fast, inputs)
    out_r, grads_r = values_and_grads(ref, inputs)
    torch.testing.assert_close(out_f, out_r, rtol=0, atol=1e-12)
    for gf, gr in zip(grads_f, grads_r):
        torch.testing.assert_close(gf, gr, rtol=0, atol=1e-10)


@pytest.mark.parametrize('size', [(16, 16), (13, 7), (1, 5)])
def test_fast_dcn_fp32_bsrt_width(size: tuple[int, int]) -> None:
    """BSRT's DCN (64 channels, 8 offset groups) in float32, also odd and 1-pixel sizes: values and gradients."""
    inputs = dcn_inputs(3, 64, *size, 8, 64, spread=3.0)
    out_f, grads_f = values_and_grads(lambda *a: modulated_deform_conv2d(*a, impl='fast'), inputs)
    out_r, grads_r = values_and_grads(lambda *a: modulated_deform_conv2d(*a, impl='reference'), inputs)
    assert rel(out_f, out_r) < 1e-5
    for gf, gr in zip(grads_f, grads_r):
        assert rel(gf, gr) < 1e-4


def test_fast_dcn_far_and_nan_offsets() -> None:
    """Offsets far outside the image leave the bias only, as in the reference; a NaN offset makes the output NaN."""
    x, offset, mask, weight, bias = (t.detach() for t in dcn_inputs(1, 8, 6, 7, 2, 3))
    for far in (1e3, -1e3, 1e30, -1e30):
        out = modulated_deform_conv2d(x, torch.full_like(offset, far), mask, weight, bias, impl='fast')
        torch.testing.assert_close(out, bias.view(1, 3, 1, 1).expand_as(out))
    inf = torch.full_like(offset, float('inf'))  # as in the reference: no crash, the output shows the inf as NaN
    assert torch.isnan(modulated_deform_conv2d(x, inf, mask, weight, bias, impl='fast')).all()
    assert torch.isnan(modulated_deform_conv2d(x, inf, mask, weight, bias, impl='reference')).all()
    mixed = offset.clone()
    mixed[:, ::3] = 50.0  # some taps outside, some inside
    torch.testing.assert_close(modulated_deform_conv2d(x, mixed, mask, weight, bias, impl='fast'),
                               modulated_deform_conv2d(x, mixed, mask, weight, bias, impl='reference'))
    nan = offset.clone()
    nan[0, 0, 2, 2] = float('nan')
    xg = x.clone().requires_grad_()
    out = modulated_deform_conv2d(xg, nan, mask, weight, None, impl='fast')
    assert torch.isnan(out).all()
    out.sum().backward()  # the backward runs too


def test_fast_dcn_bf16_autocast_and_dtype() -> None:
    """Under CPU bf16 autocast both paths compute in float32 and return bf16; bf16 inputs give bf16 outputs."""
    inputs = [t.detach() for t in dcn_inputs(2, 16, 9, 8, 2, 16)]
    with torch.autocast('cpu', dtype=torch.bfloat16):
        fast = modulated_deform_conv2d(*inputs, impl='fast')
        ref = modulated_deform_conv2d(*inputs, impl='reference')
    assert fast.dtype == ref.dtype == torch.float32  # the input was float32
    low = [inputs[0].bfloat16()] + inputs[1:]
    fast, ref = (modulated_deform_conv2d(*low, impl=i) for i in ('fast', 'reference'))
    assert fast.dtype == ref.dtype == torch.bfloat16
    assert rel(fast, ref) < 1e-2


def test_dcn_modules_impl() -> None:
    torch.manual_seed(0)
    sep = DCNSep(16, 16, deformable_groups=2, impl='reference')
    guided = FlowGuidedDCN(16, 16, deformable_groups=2)
    assert guided.impl == 'auto' and 'impl=reference' in repr(sep)
    with pytest.raises(ValueError, match='impl must be one of'):
        FlowGuidedDCN(16, 16, deformable_groups=2, impl='cuda')
    with pytest.raises(ValueError, match='impl must be one of'):
        modulated_deform_conv2d(*[t.detach() for t in dcn_inputs(1, 8, 4, 4, 1, 2)], impl='quick')


# ----------------------------------------------------------------------------------------------------- attention
@pytest.mark.parametrize('impl', ['fast', 'auto'])
@pytest.mark.parametrize('size', [(16, 24), (8, 8)])
def test_attention_matches_reference(impl: str, size: tuple[int, int]) -> None:
    """Shifted and plain windows (bias + shift mask as one additive mask): values and every gradient."""
    torch.manual_seed(0)
    layer = BasicLayer(12, 2, 2, window_size=8)
    x = torch.randn(2, size[0] * size[1], 12)
    results = {}
    for name in ('reference', impl):
        for blk in layer.blocks:
            blk.attn.impl = name
        layer.zero_grad()
        xg = x.clone().requires_grad_()
        out = layer(xg, size)
        (out * torch.linspace(-1, 1, out.numel()).view(out.shape)).sum().backward()
        results[name] = [out.detach(), xg.grad] + [p.grad.clone() for p in layer.parameters()]
    for a, b in zip(results[impl], results['reference']):
        assert rel(a, b) < 1e-5
    with torch.no_grad():  # inference: 'auto' uses scaled_dot_product_attention on CPU too
        torch.testing.assert_close(layer(x, size), results['reference'][0], rtol=1e-5, atol=1e-5)


def test_attention_bf16_autocast() -> None:
    torch.manual_seed(0)
    attn = WindowAttention(12, 8, 2)
    x = torch.randn(4, 64, 12)
    mask = compute_shift_mask(16, 16, 8, 4)
    outs = {}
    for impl in ('reference', 'fast', 'auto'):
        attn.impl = impl
        with torch.autocast('cpu', dtype=torch.bfloat16):
            outs[impl] = attn(x, mask)
    for impl in ('fast', 'auto'):
        assert outs[impl].dtype == outs['reference'].dtype
        assert rel(outs[impl], outs['reference']) < 2e-2


def test_shift_mask_cached() -> None:
    a = shift_mask(16, 24, 8, 4)
    assert a is shift_mask(16, 24, 8, 4)
    torch.testing.assert_close(a, compute_shift_mask(16, 24, 8, 4))
    assert shift_mask(16, 24, 8, 0) is None


# ----------------------------------------------------------------------------------------------------- network
def _randomise_offsets(model: BSRT) -> None:
    """Non-zero conv_offset_mask weights, so that offsets and masks differ from the init (flow, 0.5)."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, (DCNSep, FlowGuidedDCN)):
            with torch.no_grad():
                m.conv_offset_mask.weight.copy_(0.05 * torch.randn(m.conv_offset_mask.weight.shape, generator=g))
                m.conv_offset_mask.bias.copy_(0.5 * torch.randn(m.conv_offset_mask.bias.shape, generator=g))


def test_tiny_bsrt_fast_matches_reference() -> None:
    """The whole network (train mode without drop path): output and every parameter gradient.

    In float64 the two paths are the same function to rounding (1e-10); in float32 the output agrees to 1e-4
    and the gradients less tightly, because the offset gradients of bilinear sampling amplify float32 rounding
    through SpyNet (the float64 figures show that this is rounding, not a different function).
    """
    torch.manual_seed(0)
    model = BSRT(level=None, embed_dim=12, depths=(2, 1), num_heads=2, burst_size=2, drop_path_rate=0.0).train()
    _randomise_offsets(model)
    x = torch.rand(1, 2, 4, 24, 24, generator=torch.Generator().manual_seed(2))
    for dtype, out_tol, grad_tol in ((torch.float64, 1e-10, 1e-10), (torch.float32, 1e-4, 2e-2)):
        model.to(dtype)
        results = {}
        for impl in ('reference', 'fast', 'auto'):
            model.set_impl(impl)
            model.zero_grad()
            out = model(x.to(dtype))
            (out * torch.linspace(-1, 1, out.numel(), dtype=dtype).view(out.shape)).sum().backward()
            results[impl] = (out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()})
        out_r, grads_r = results['reference']
        for impl in ('fast', 'auto'):
            out, grads = results[impl]
            assert rel(out, out_r) < out_tol
            worst = max(rel(grads[n], g) for n, g in grads_r.items() if g.norm() > 0)
            assert worst < grad_tol, (dtype, impl, worst)


def test_bsrt_s_fast_matches_reference_fp32() -> None:
    """BSRT-S widths (60 Swin channels, 64 alignment channels, 8 groups) at packed 32x32, eval, float32."""
    torch.manual_seed(0)
    model = BSRT('S', burst_size=2).eval()
    _randomise_offsets(model)
    x = torch.rand(1, 2, 4, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = model.set_impl('reference')(x)
        fast = model.set_impl('fast')(x)
        auto = model.set_impl('auto')(x)
    assert rel(fast, ref) < 1e-4 and rel(auto, ref) < 1e-4


def test_bsrt_impl_option_and_strict_keys() -> None:
    """impl is a constructor option (not a state_dict entry): keys and strict loading do not change."""
    torch.manual_seed(0)
    tiny = dict(type='BSRT', level=None, embed_dim=12, depths=[1, 1], num_heads=2, burst_size=3)
    a = build_network(dict(tiny, impl='reference'))
    b = build_network(dict(tiny, impl='fast'))
    assert list(a.state_dict()) == list(b.state_dict())
    b.load_state_dict(a.state_dict(), strict=True)
    assert all(m.impl == 'reference' for m in a.modules() if isinstance(m, (WindowAttention, DCNSep)))
    with pytest.raises(OptionError, match=r"option 'network_g\.impl': expected one of \['auto', 'fast', 'reference'\]"):
        build_network(dict(tiny, impl='turbo'))
    with pytest.raises(ValueError, match="option 'impl'"):
        BSRT(**{k: v for k, v in tiny.items() if k != 'type'}, impl='turbo')
