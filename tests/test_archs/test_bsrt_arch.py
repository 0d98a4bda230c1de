"""BSRT network: golden keys and parameter counts, DCN/flow-warp semantics, SpyNet weights, tiny CPU forwards."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import deform_conv2d

from codes.archs import build_network
from codes.archs.arch_util import (DCNSep, FlowGuidedDCN, SpyNet, flow_warp, load_spynet_weights,
                                   modulated_deform_conv2d)
from codes.archs.bsrt_arch import BSRT
from codes.archs.swin_blocks import (BasicLayer, PatchEmbed, PatchUnEmbed, compute_shift_mask, relative_position_index,
                                     window_partition, window_reverse)
from codes.utils.build import OptionError
from codes.utils.checkpoint import CheckpointNotFoundError, extract_state_dict
from tests.spec_keys import read_spec_keys

pytestmark = pytest.mark.usefixtures('one_thread')

TINY = dict(level=None, embed_dim=12, depths=(1, 1), num_heads=2, burst_size=3)


@pytest.fixture(scope='module')
def tiny() -> BSRT:
    torch.manual_seed(0)
    return BSRT(**TINY)


# ----------------------------------------------------------------------------------------------------- structure
@pytest.mark.parametrize('level, total, n_tensors, n_blocks', [('S', 4_915_665, 572, 30), ('L', 20_713_905, 912, 54)])
def test_keys_shapes_and_counts(level: str, total: int, n_tensors: int, n_blocks: int) -> None:
    with torch.device('meta'):
        model = BSRT(level=level)
    got = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    assert got == read_spec_keys(f'bsrt_{level}.txt')
    assert len(got) == n_tensors
    assert sum(p.numel() for p in model.parameters()) == total
    assert sum(p.numel() for p in model.spynet.parameters()) == 1_440_300
    buffers = dict(model.named_buffers())
    assert len(buffers) == 2 + n_blocks
    assert all(buffers[k].dtype == torch.int64 for k in buffers if k.endswith('relative_position_index'))
    assert len(model.no_weight_decay()) == n_blocks


def test_init_and_buffers() -> None:
    torch.manual_seed(0)
    model = BSRT(**TINY)
    dcn = model.align.L1_dcnpack
    assert torch.count_nonzero(dcn.conv_offset_mask.weight) == 0 and torch.count_nonzero(dcn.bias) == 0
    assert dcn.weight.abs().max() <= 1 / 24
    assert torch.equal(model.spynet.mean.flatten(), torch.tensor([0.485, 0.456, 0.406]))
    idx = model.pre_layers[0].attn.relative_position_index
    a, b = 8 * 2 + 5, 8 * 6 + 1  # query (2, 5), key (6, 1)
    assert idx[a, b] == (2 - 6 + 7) * 15 + (5 - 1 + 7)
    assert torch.equal(idx, relative_position_index(8))
    assert model.pre_layers[0].shift_size == 0 and model.layers[0].residual_group.blocks[0].shift_size == 0


# ----------------------------------------------------------------------------------------------------- tiny forward
def test_tiny_forward_backward_roundtrip(tiny: BSRT) -> None:
    tiny.train()
    x = torch.rand(1, 3, 4, 32, 32)
    out = tiny(x)
    assert out.shape == (1, 3, 256, 256)
    out.abs().mean().backward()
    grads = [p.grad for p in tiny.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert tiny.spynet.basic_module[5].basic_module[0].weight.grad.abs().sum() > 0
    tiny.zero_grad(set_to_none=True)

    tiny.eval()
    with torch.no_grad():
        ref = tiny(x)
        torch.manual_seed(1)
        other = BSRT(**TINY).eval()
        assert not torch.equal(other.fusion.weight, tiny.fusion.weight)
        other.load_state_dict(tiny.state_dict(), strict=True)
        # bit-identical: the round trip is complete and eval mode is deterministic (DropPath off)
        assert torch.equal(other(x), ref)
        assert not torch.allclose(tiny(x[:, [0, 2, 1]]), ref)  # fusion is frame-major: order matters


def test_tiny_bf16_autocast(tiny: BSRT) -> None:
    tiny.eval()
    x = torch.rand(1, 3, 4, 32, 32)
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        out = tiny(x)
    assert out.shape == (1, 3, 256, 256)
    assert torch.isfinite(out.float()).all()


# ----------------------------------------------------------------------------------------------------- errors
def test_input_errors(tiny: BSRT) -> None:
    with pytest.raises(ValueError, match='built for bursts of 3 frames'):
        tiny(torch.rand(1, 4, 4, 32, 32))
    with pytest.raises(ValueError, match=r'\(B, N, 4, h, w\)'):
        tiny(torch.rand(1, 3, 3, 32, 32))
    with pytest.raises(ValueError, match=r'\(B, N, 4, h, w\)'):
        tiny(torch.rand(3, 4, 32, 32))
    with pytest.raises(ValueError, match='multiples of 8'):
        tiny(torch.rand(1, 3, 4, 36, 32))
    with pytest.raises(ValueError, match='SpyNet'):
        tiny(torch.rand(1, 3, 4, 16, 32))


def test_constructor_errors() -> None:
    with pytest.raises(ValueError, match='embed_dim'):
        BSRT(level=None, embed_dim=10, depths=(1, 1), num_heads=3)
    with pytest.raises(ValueError, match="'level'"):
        BSRT(level='M')
    with pytest.raises(ValueError, match="'depths'"):
        BSRT(level=None, embed_dim=12, depths=(1, ), num_heads=2)
    with pytest.raises(ValueError, match='burst_size'):
        BSRT(**{**TINY, 'burst_size': 0})
    with pytest.raises(ValueError, match='num_heads'):
        BSRT(level=None, embed_dim=12, depths=(1, 1, 1), num_heads=(2, 2))
    with pytest.raises(OptionError, match=r'network_g\.typo_key'):
        build_network({'type': 'BSRT', 'level': 'S', 'typo_key': 1})
    with pytest.raises(OptionError, match=r'network_g\.burst_size'):
        build_network({'type': 'BSRT', 'level': 'S', 'burst_size': 'many'})


def test_build_network_tiny() -> None:
    opt = {'type': 'BSRT', **{k: list(v) if isinstance(v, tuple) else v for k, v in TINY.items()}}
    model = build_network(opt)
    assert isinstance(model, BSRT) and model.depths == (1, 1) and model.burst_size == 3
    assert opt['type'] == 'BSRT'


def test_icnr_upsample_init() -> None:
    """upsample_init='icnr': every pixel shuffle of the untrained head gives equal 2x2 blocks (no checkerboard);
    the default keeps PyTorch's initialisation (blocks differ), and the state_dict keys are the same."""
    torch.manual_seed(0)
    icnr = BSRT(**TINY, upsample_init='icnr')
    plain = BSRT(**TINY)
    for name in ('upconv1', 'upconv2', 'skipup1', 'skipup2', 'conv_after_pre_layer'):
        conv = getattr(icnr, name)
        y = F.pixel_shuffle(conv(torch.rand(1, conv.in_channels, 6, 6)), 2)
        for dy, dx in ((0, 1), (1, 0), (1, 1)):
            assert torch.equal(y[..., 0::2, 0::2], y[..., dy::2, dx::2]), name
    y = F.pixel_shuffle(plain.upconv2(torch.rand(1, plain.upconv2.in_channels, 6, 6)), 2)
    assert not torch.allclose(y[..., 0::2, 0::2], y[..., 1::2, 1::2])
    assert list(icnr.state_dict()) == list(plain.state_dict())
    with pytest.raises(ValueError, match="'upsample_init'"):
        BSRT(**TINY, upsample_init='zeros')
    with pytest.raises(OptionError, match=r"option 'network_g\.upsample_init': expected one of \['default', 'icnr'\]"):
        build_network({'type': 'BSRT', **TINY, 'upsample_init': 'zeros'})


# ----------------------------------------------------------------------------------------------------- DCN
def _shift(x: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
    """out[..., y, x] = x[..., y + dy, x + dx], zero outside."""
    h, w = x.shape[-2:]
    out = torch.zeros_like(x)
    ys, yd = slice(max(dy, 0), h + min(dy, 0)), slice(max(-dy, 0), h - max(dy, 0))
    xs, xd = slice(max(dx, 0), w + min(dx, 0)), slice(max(-dx, 0), w - max(dx, 0))
    out[..., yd, xd] = x[..., ys, xs]
    return out


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
@pytest.mark.parametrize('dx, dy', [(2, -1), (0, 0), (-3, 2)])
def test_flow_guided_dcn_golden(dtype: torch.dtype, dx: int, dy: int) -> None:
    torch.manual_seed(0)
    dcn = FlowGuidedDCN(64, 64, 3, padding=1, deformable_groups=8).to(dtype)
    with torch.no_grad():
        dcn.bias.normal_()
    x = torch.randn(2, 64, 9, 11, dtype=dtype)
    fea = torch.randn(2, 64, 9, 11, dtype=dtype)
    flow = torch.empty(2, 2, 9, 11, dtype=dtype)
    flow[:, 0], flow[:, 1] = dx, dy
    out = dcn(x, fea, flow)
    bias = dcn.bias.view(1, -1, 1, 1)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    # Interior: exactly 0.5 x conv(shifted input, zero-filled) + bias.
    naive = 0.5 * F.conv2d(_shift(x, dx, dy), dcn.weight, None, padding=1) + bias
    torch.testing.assert_close(out[..., 1:-1, 1:-1], naive[..., 1:-1, 1:-1], atol=tol, rtol=tol)
    # Everywhere: the DCN pads the *unshifted* input, so shift a zero-padded copy (taps that the plain conv would
    # take from its padding can land inside the map after the shift).
    m = max(abs(dx), abs(dy)) + 1
    padded = _shift(F.pad(x, (m, m, m, m)), dx, dy)
    full = 0.5 * F.conv2d(padded, dcn.weight, None, padding=1)[..., m:-m, m:-m] + bias
    torch.testing.assert_close(out, full, atol=tol, rtol=tol)


def _bilinear(img: torch.Tensor, y: float, x: float) -> torch.Tensor:
    """img (C, H, W) at (y, x); corners outside are 0, and a point outside (-1, H) x (-1, W) is 0."""
    c, h, w = img.shape
    if y <= -1 or y >= h or x <= -1 or x >= w:
        return img.new_zeros(c)
    y0, x0 = math.floor(y), math.floor(x)
    ly, lx = y - y0, x - x0
    val = img.new_zeros(c)
    for yy, wy in ((y0, 1 - ly), (y0 + 1, ly)):
        for xx, wx in ((x0, 1 - lx), (x0 + 1, lx)):
            if 0 <= yy < h and 0 <= xx < w:
                val = val + wy * wx * img[:, yy, xx]
    return val


def _dcn_reference(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor,
                   bias: torch.Tensor) -> torch.Tensor:
    """Direct DCNv2 (3x3, stride 1, pad 1) for one image. dy, dx, mask: (G, 9, H, W); x: (Cin, H, W)."""
    cin, h, w = x.shape
    groups = dy.shape[0]
    cpg = cin // groups
    out = bias.view(-1, 1, 1).repeat(1, h, w).clone()
    for py in range(h):
        for px in range(w):
            for g in range(groups):
                for k in range(9):
                    i, j = divmod(k, 3)
                    v = _bilinear(x[g * cpg:(g + 1) * cpg], py - 1 + i + dy[g, k, py, px].item(),
                                  px - 1 + j + dx[g, k, py, px].item())
                    out[:, py, px] += mask[g, k, py, px] * (weight[:, g * cpg:(g + 1) * cpg, i, j] @ v)
    return out


def test_dcn_layout_against_direct_reference() -> None:
    torch.manual_seed(0)
    cin, cout, groups, h, w = 4, 3, 2, 5, 6
    x = torch.randn(1, cin, h, w, dtype=torch.float64)
    fea = torch.randn(1, cin, h, w, dtype=torch.float64)
    flow = torch.randn(1, 2, h, w, dtype=torch.float64)

    sep = DCNSep(cin, cout, 3, padding=1, deformable_groups=groups).double()
    fg = FlowGuidedDCN(cin, cout, 3, padding=1, deformable_groups=groups).double()
    for dcn in (sep, fg):
        with torch.no_grad():
            dcn.conv_offset_mask.weight.normal_(0, 0.3)
            dcn.conv_offset_mask.bias.normal_(0, 0.5)
            dcn.bias.normal_()

    for dcn in (sep, fg):
        raw = dcn.conv_offset_mask(fea)[0]  # (3·G·9, H, W)
        n = groups * 9
        off = torch.cat((raw[:n], raw[n:2 * n]))  # (2·G·9, H, W): channel 18g + 2k = dy, 18g + 2k + 1 = dx
        if dcn is fg:
            off = 10 * torch.tanh(off)
        off = off.view(groups, 9, 2, h, w)
        dy, dx = off[:, :, 0], off[:, :, 1]
        if dcn is fg:
            dx, dy = dx + flow[0, 0], dy + flow[0, 1]
        mask = torch.sigmoid(raw[2 * n:]).view(groups, 9, h, w)  # channel 9g + k
        expected = _dcn_reference(x[0], dy, dx, mask, dcn.weight, dcn.bias)
        got = dcn(x, fea) if dcn is sep else dcn(x, fea, flow)
        torch.testing.assert_close(got[0], expected, atol=1e-10, rtol=1e-10)


def test_dcn_low_precision_runs_in_fp32() -> None:
    torch.manual_seed(0)
    dcn = FlowGuidedDCN(16, 16, 3, padding=1, deformable_groups=8)
    x, fea, flow = torch.randn(1, 16, 6, 6), torch.randn(1, 16, 6, 6), torch.randn(1, 2, 6, 6)
    ref = dcn(x, fea, flow)
    out = dcn(x.bfloat16(), fea.bfloat16(), flow.bfloat16())  # no autocast, bf16 inputs: still computed in fp32
    assert out.dtype == torch.bfloat16
    with torch.autocast('cpu', dtype=torch.bfloat16):
        auto = dcn(x, fea, flow)
    assert auto.dtype == torch.float32
    torch.testing.assert_close(auto, ref)
    torch.testing.assert_close(out.float(), ref, atol=0.1, rtol=0.05)


# ----------------------------------------------------------------------------------------------------- flow warp
def test_flow_warp() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, 7, 9)
    zero = torch.zeros(2, 7, 9, 2)
    torch.testing.assert_close(flow_warp(x, zero), x, atol=1e-6, rtol=0)
    flow = zero.clone()
    flow[..., 0], flow[..., 1] = 2, -1  # dx, dy
    torch.testing.assert_close(flow_warp(x, flow), _shift(x, 2, -1), atol=1e-6, rtol=0)
    border = flow_warp(x, flow, padding_mode='border')
    torch.testing.assert_close(border[..., 1:, :7], x[..., :-1, 2:], atol=1e-6, rtol=0)
    torch.testing.assert_close(border[..., 0, :7], x[..., 0, 2:], atol=1e-6, rtol=0)  # clamped row
    torch.testing.assert_close(border[..., 1:, 7:], x[..., :-1, 8:].expand(-1, -1, -1, 2), atol=1e-6, rtol=0)
    half = flow_warp(x.bfloat16(), flow.bfloat16())
    assert half.dtype == torch.bfloat16
    one_px = torch.ones(1, 1, 1, 1)
    assert flow_warp(one_px, torch.zeros(1, 1, 1, 2)).item() == 1.0  # size-1 maps normalise by max(size-1, 1)


# ----------------------------------------------------------------------------------------------------- SpyNet
@pytest.mark.parametrize('size', [48, 64, 96])
def test_spynet_shapes(size: int) -> None:
    torch.manual_seed(0)
    spynet = SpyNet().eval()
    with torch.no_grad():
        flows = spynet(torch.rand(1, 3, size, size), torch.rand(1, 3, size, size))
    assert [tuple(f.shape) for f in flows] == [(1, 2, size, size), (1, 2, size // 2, size // 2),
                                               (1, 2, size // 4, size // 4)]
    with pytest.raises(ValueError, match='SpyNet'):
        spynet(torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32))


def test_spynet_weights(tmp_path: Path) -> None:
    torch.manual_seed(0)
    params = {k: torch.randn_like(v) for k, v in SpyNet().named_parameters()}
    assert len(params) == 60
    good = tmp_path / 'spynet_sintel_final-3d2a1287.pth'
    torch.save({'params': params}, good)
    model = BSRT(**TINY, spynet_path=str(good))
    for k, v in params.items():
        assert torch.equal(model.spynet.state_dict()[k], v), k
    assert torch.equal(model.spynet.std.flatten(), torch.tensor([0.229, 0.224, 0.225]))

    bare = tmp_path / 'bare.pth'
    torch.save(params, bare)
    with pytest.raises(ValueError, match=r"bare\.pth.*'params'"):
        load_spynet_weights(SpyNet(), bare)
    partial = tmp_path / 'partial.pth'
    torch.save({'params': dict(list(params.items())[:10])}, partial)
    with pytest.raises(ValueError, match=r'partial\.pth.*missing'):
        load_spynet_weights(SpyNet(), partial)
    junk = tmp_path / 'junk.pth'
    junk.write_text('not a checkpoint')
    with pytest.raises(ValueError, match=r'junk\.pth'):
        load_spynet_weights(SpyNet(), junk)
    with pytest.raises(CheckpointNotFoundError, match=r"option 'network_g\.spynet_path': SpyNet weight file not "
                       r'found: .*missing\.pth'):
        BSRT(**TINY, spynet_path=str(tmp_path / 'missing.pth'))
    with pytest.raises(CheckpointNotFoundError, match=r'missing\.pth'):
        load_spynet_weights(SpyNet(), tmp_path / 'missing.pth')


# ----------------------------------------------------------------------------------------------------- checkpoints
def test_wrapped_checkpoint_then_strict_load(tiny: BSRT) -> None:
    wrapped = {'params': {f'module.{k}': v.clone() for k, v in tiny.state_dict().items()}}
    torch.manual_seed(3)
    other = BSRT(**TINY)
    other.load_state_dict(extract_state_dict(wrapped), strict=True)  # what load_network does with the file
    assert all(torch.equal(a, b) for a, b in zip(other.state_dict().values(), tiny.state_dict().values()))


# ----------------------------------------------------------------------------------------------------- Swin pieces
def test_swin_helpers() -> None:
    x = torch.randn(2, 16, 24, 5)
    assert torch.equal(window_reverse(window_partition(x, 8), 8, 16, 24), x)
    assert window_partition(x, 8).shape == (12, 8, 8, 5)
    img = torch.randn(2, 5, 16, 24)
    assert torch.equal(PatchUnEmbed()(PatchEmbed(5)(img), (16, 24)), img)
    assert PatchEmbed(5)(img)[0, 24 * 3 + 7].tolist() == img[0, :, 3, 7].tolist()  # token y·W + x
    assert compute_shift_mask(16, 16, 8, 0) is None
    mask = compute_shift_mask(16, 24, 8, 4)
    assert mask.shape == (6, 64, 64) and mask.dtype == torch.float32
    assert set(mask.unique().tolist()) == {0.0, -100.0}
    assert torch.count_nonzero(mask[0]) == 0 and torch.count_nonzero(mask[-1]) > 0


def test_gradient_checkpointing_matches() -> None:
    torch.manual_seed(0)
    plain = BasicLayer(12, 2, 2, window_size=8)
    ckpt = BasicLayer(12, 2, 2, window_size=8, use_checkpoint=True)
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(1, 16 * 16, 12)
    grads = []
    for layer in (plain, ckpt):
        layer.train()
        layer.zero_grad()
        layer(x, (16, 16)).square().sum().backward()
        grads.append([p.grad.clone() for p in layer.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


def test_dcn_survives_nan_and_huge_offsets() -> None:
    """torchvision's CPU kernel segfaults on such offsets; a diverged step must show as NaN instead."""
    torch.manual_seed(0)
    x = torch.randn(1, 4, 6, 6, requires_grad=True)
    weight = torch.randn(3, 4, 3, 3)
    mask = torch.rand(1, 9, 6, 6)
    far = torch.full((1, 18, 6, 6), 1e3)
    huge = torch.full((1, 18, 6, 6), 1e30)
    # every tap outside the image: only the bias is left, for any offset beyond the image
    torch.testing.assert_close(modulated_deform_conv2d(x, huge, mask, weight, torch.ones(3)),
                               modulated_deform_conv2d(x, far, mask, weight, torch.ones(3)))
    nan = far.clone()
    nan[0, 0, 2, 2] = float('nan')
    out = modulated_deform_conv2d(x, nan, mask, weight, None)
    assert torch.isnan(out).all()
    out.sum().backward()  # the backward runs too
    offset = torch.randn(1, 18, 6, 6)
    ref = deform_conv2d(x, offset, weight, None, padding=1, mask=mask)
    torch.testing.assert_close(modulated_deform_conv2d(x, offset, mask, weight, None), ref)
