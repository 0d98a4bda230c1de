"""EBSR network: official keys and parameter counts, weight norm, DCN offset layout and bounds, non-local blocks,
frame order, packed vs mosaic input, batch independence, checkpoints, mixed precision (tiny CPU sizes)."""
from __future__ import annotations

import copy
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from codes.archs import build_network
from codes.archs.arch_detect import detect_family, fitting_network_hint, network_options_from_state_dict
from codes.archs.burst_blocks import BoundedDCNSep, PCDAlign, WNConv2d, up2
from codes.archs.ebsr_arch import EBSR, NonLocalBlock, convert_ebsr_checkpoint
from codes.utils.build import OptionError
from codes.utils.checkpoint import CheckpointError, load_network
from tests.spec_keys import read_spec_keys

pytestmark = pytest.mark.usefixtures('one_thread')

TINY = dict(n_feats=16, n_resblocks=2, n_resgroups=2, burst_size=3, front_RBs=1)


def _redraw(model: torch.nn.Module, seed: int = 0, scale: float = 1.0) -> torch.nn.Module:
    """Re-draw every parameter (the zero-initialised DCN offsets and non-local W included), so no branch is
    negligible; weight_g is set to a norm-like positive value so the effective weights keep a sane scale."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith('weight_g'):
                p.copy_(0.5 + torch.rand(p.shape, generator=gen))
            elif name.endswith('conv_offset_mask.weight'):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02 * scale)
            else:
                fan_in = p[0].numel() if p.ndim > 1 else 1
                p.copy_(torch.randn(p.shape, generator=gen) * scale / fan_in ** 0.5)
    return model


@pytest.fixture(scope='module')
def tiny() -> EBSR:
    torch.manual_seed(0)
    return _redraw(EBSR(**TINY)).eval()


# ----------------------------------------------------------------------------------------------------- structure
def test_keys_shapes_and_counts() -> None:
    with torch.device('meta'):
        model = build_network({'type': 'EBSR'})
    got = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    assert got == read_spec_keys('ebsr.txt')
    assert len(got) == 861 and not list(model.buffers())
    assert sum(p.numel() for p in model.parameters()) == 26_027_034
    assert (model.num_feat, model.burst_size, model.non_local) == (128, 14, True)
    counts = {name: sum(p.numel() for p in mod.parameters()) for name, mod in model.named_children()}
    assert counts['pcd_align'] == 4_538_720 and counts['fusion'] == 1_385_472 and counts['recon_trunk'] == 15_789_280
    with torch.device('meta'):
        assert sum(p.numel() for p in EBSR(non_local=False).parameters()) == 24_871_194


def test_constructor_and_option_errors() -> None:
    with pytest.raises(ValueError, match="'n_feats'"):
        EBSR(n_feats=20)  # not divisible by the 8 deformable groups
    with pytest.raises(ValueError, match="'burst_size'"):
        EBSR(**{**TINY, 'burst_size': 0})
    with pytest.raises(OptionError, match=r'network_g\.n_feat\b'):
        build_network({'type': 'EBSR', 'n_feat': 64})
    model = build_network({'type': 'EBSR', **TINY})
    assert isinstance(model, EBSR) and model.burst_size == 3


def test_input_errors(tiny: EBSR) -> None:
    with pytest.raises(ValueError, match='built for bursts of 3 frames'):
        tiny(torch.rand(1, 4, 1, 16, 16))
    with pytest.raises(ValueError, match=r'\(B, N, 1, H, W\)'):
        tiny(torch.rand(1, 3, 3, 16, 16))
    with pytest.raises(ValueError, match=r'\(B, N, 1, H, W\)'):
        tiny(torch.rand(3, 16, 16))
    with pytest.raises(ValueError, match='mosaic H and W must be multiples of 4'):
        tiny(torch.rand(1, 3, 1, 18, 16))
    with pytest.raises(ValueError, match='packed h and w must be multiples of 2'):
        tiny(torch.rand(1, 3, 4, 8, 9))
    assert tiny.input_size_rule == (2, 2)


# ----------------------------------------------------------------------------------------------------- weight norm
def test_wnconv_matches_torch_weight_norm_and_deepcopies() -> None:
    torch.manual_seed(0)
    ours = WNConv2d(5, 7, 3, stride=2)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', FutureWarning)  # the legacy wrapper is deprecated; it is the oracle here
        legacy = torch.nn.utils.weight_norm(torch.nn.Conv2d(5, 7, 3, stride=2, padding=1))
    assert list(ours.state_dict()) == list(legacy.state_dict()) == ['bias', 'weight_g', 'weight_v']
    for k, v in legacy.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[k], v, rtol=0, atol=0)  # same init: g = |v|, same draws
    with torch.no_grad():
        ours.weight_g.mul_(torch.rand_like(ours.weight_g) + 0.5)
    legacy.load_state_dict(ours.state_dict())
    x = torch.randn(2, 5, 9, 8)
    assert torch.equal(ours(x), legacy(x))
    norm = ours.weight_v.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    torch.testing.assert_close(ours.effective_weight(), ours.weight_g * ours.weight_v / norm)
    ours(x).sum().backward()
    assert ours.weight_g.grad is not None and ours.weight_v.grad is not None
    copy.deepcopy(ours)  # after a training forward (EMA copies the network); the legacy hook cannot do this


# ----------------------------------------------------------------------------------------------------- DCN
def _shift(x: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
    """out[..., y, x] = x[..., y + dy, x + dx], zero outside."""
    h, w = x.shape[-2:]
    out = torch.zeros_like(x)
    ys, yd = slice(max(dy, 0), h + min(dy, 0)), slice(max(-dy, 0), h - max(dy, 0))
    xs, xd = slice(max(dx, 0), w + min(dx, 0)), slice(max(-dx, 0), w - max(dx, 0))
    out[..., yd, xd] = x[..., ys, xs]
    return out


def _offset_bias(dcn: BoundedDCNSep, dy, dx, mask_logit=0.0) -> None:
    """Zero ``conv_offset_mask`` weight and a bias giving offset (dy[g], dx[g]) and mask logit[g] at every tap of
    offset group g (scalars: the same for every group)."""
    groups = dcn.deformable_groups
    dy, dx, mask_logit = (torch.as_tensor(v, dtype=dcn.weight.dtype).expand(groups) for v in (dy, dx, mask_logit))
    offset = torch.stack((dy, dx), dim=1)[:, None, :].expand(groups, 9, 2).reshape(-1)  # 18g + 2k: dy, +1: dx
    bias = torch.cat((offset, mask_logit[:, None].expand(groups, 9).reshape(-1)))  # mask channel 9g + k
    with torch.no_grad():
        dcn.conv_offset_mask.weight.zero_()
        dcn.conv_offset_mask.bias.copy_(bias)  # o1 = groups 0..G/2-1, o2 = the rest, concatenated unchanged


def test_known_translation_through_the_dcn() -> None:
    """Offset group g shifts its 2 input channels by its own (dy, dx) and scales them by its own mask: catches a
    swapped Δy/Δx, a re-interleaved o1/o2 or a wrong mask channel order."""
    torch.manual_seed(0)
    dcn = BoundedDCNSep(16, 8, 3, padding=1, deformable_groups=8).double()
    with torch.no_grad():
        dcn.bias.normal_()
    shifts = [(2, -1), (-3, 2), (0, 1), (1, 0), (-1, -2), (3, 3), (0, 0), (-2, 1)]  # (dx, dy) per group
    logits = torch.linspace(-1.5, 2.0, 8, dtype=torch.float64)
    _offset_bias(dcn, [dy for _, dy in shifts], [dx for dx, _ in shifts], logits)
    x, fea = torch.randn(2, 16, 9, 11, dtype=torch.float64), torch.randn(2, 16, 9, 11, dtype=torch.float64)
    m = 4
    expected = dcn.bias.view(1, -1, 1, 1).expand(2, -1, 9, 11).clone()
    for g, (dx, dy) in enumerate(shifts):
        part = _shift(F.pad(x[:, 2 * g:2 * g + 2], (m, m, m, m)), dx, dy)
        conv = F.conv2d(part, dcn.weight[:, 2 * g:2 * g + 2], None, padding=1)[..., m:-m, m:-m]
        expected += torch.sigmoid(logits[g]) * conv
    torch.testing.assert_close(dcn(x, fea), expected, atol=1e-12, rtol=1e-12)


def test_dcn_at_init_is_half_a_conv_and_offsets_are_bounded() -> None:
    torch.manual_seed(0)
    dcn = BoundedDCNSep(16, 16, 3, padding=1, deformable_groups=8)
    with torch.no_grad():
        dcn.bias.normal_()
    x, fea = torch.randn(1, 16, 8, 8), torch.randn(1, 16, 8, 8)
    expected = 0.5 * F.conv2d(x, dcn.weight, None, padding=1) + dcn.bias.view(1, -1, 1, 1)
    torch.testing.assert_close(dcn(x, fea), expected, atol=1e-6, rtol=1e-6)
    # clamp at ±200: an offset of -300 gives what -200 gives (both sample only padding, far outside an 8x8 map,
    # so compare on a 500-wide map where -200 still lands inside)
    wide, wfea = torch.randn(1, 16, 3, 500), torch.randn(1, 16, 3, 500)
    _offset_bias(dcn, 0.0, -300.0)
    far = dcn(wide, wfea)
    _offset_bias(dcn, 0.0, -200.0)
    assert torch.equal(far, dcn(wide, wfea))
    _offset_bias(dcn, 0.0, -199.0)
    assert not torch.equal(far, dcn(wide, wfea))
    # the guard: a frame whose mean |offset| exceeds 150 has its offsets >= 150 replaced by 1e-3
    _offset_bias(dcn, 160.0, 160.0)
    tripped = dcn(x, fea)
    _offset_bias(dcn, 1e-3, 1e-3)
    torch.testing.assert_close(tripped, dcn(x, fea), atol=1e-6, rtol=1e-6)


def test_dcn_guard_is_per_sample() -> None:
    """The guard looks at each burst frame alone, so a batch gives each item what it gives alone."""
    torch.manual_seed(0)
    dcn = BoundedDCNSep(16, 16, 3, padding=1, deformable_groups=8)
    with torch.no_grad():
        dcn.conv_offset_mask.weight.zero_()
        dcn.conv_offset_mask.weight[:144, 0, 1, 1] = 1.0  # offsets = channel 0 of fea at every offset channel
    x = torch.randn(2, 16, 6, 6)
    fea = torch.zeros(2, 16, 6, 6)
    fea[0, 0] = 170.0  # sample 0 trips the guard, sample 1 (offsets 0.5) does not
    fea[1, 0] = 0.5
    both = dcn(x, fea)
    torch.testing.assert_close(both[:1], dcn(x[:1], fea[:1]))
    torch.testing.assert_close(both[1:], dcn(x[1:], fea[1:]))


def test_dcn_runs_in_fp32_under_autocast() -> None:
    torch.manual_seed(0)
    dcn = BoundedDCNSep(16, 16, 3, padding=1, deformable_groups=8)
    seen = []
    dcn.conv_offset_mask.register_forward_hook(lambda mod, inp, out: seen.append(out.dtype))
    x, fea = torch.randn(1, 16, 6, 6), torch.randn(1, 16, 6, 6)
    ref = dcn(x, fea)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = dcn(x.bfloat16(), fea.bfloat16())
    assert seen == [torch.float32, torch.float32] and out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, atol=0.05, rtol=0.02)


# ----------------------------------------------------------------------------------------------------- non-local
def test_non_local_block_formula_and_identity_at_init() -> None:
    torch.manual_seed(0)
    blk = NonLocalBlock(8, 4)
    x, ref = torch.randn(2, 8, 9, 12), torch.randn(2, 8, 9, 12)
    assert torch.equal(blk(x), x) and torch.equal(blk(x, ref), x)  # W = 0 at init
    with torch.no_grad():
        blk.W.weight.normal_()
        blk.W.bias.normal_()
    # direct formula: keys/values max-pooled 4x4 (floor), dot products / key count, no softmax; query from ref
    g = F.max_pool2d(blk.g[0](x), 4).flatten(2)  # (B, 4, M)
    phi = F.max_pool2d(blk.phi[0](x), 4).flatten(2)
    theta = blk.theta(ref).flatten(2)  # (B, 4, H·W)
    m = phi.shape[-1]
    assert m == 2 * 3
    y = torch.einsum('bcq,bck,bdk->bdq', theta, phi, g) / m
    expected = blk.W(y.view(2, 4, 9, 12)) + x
    torch.testing.assert_close(blk(x, ref), expected, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------------------------------- forward
def _mosaic(packed: torch.Tensor) -> torch.Tensor:
    """(..., 4, h, w) packed RGGB -> (..., 1, 2h, 2w) written out by hand: R, G_r / G_b, B."""
    *lead, _, h, w = packed.shape
    raw = packed.new_zeros(*lead, 1, 2 * h, 2 * w)
    raw[..., 0, 0::2, 0::2], raw[..., 0, 0::2, 1::2] = packed[..., 0, :, :], packed[..., 1, :, :]
    raw[..., 0, 1::2, 0::2], raw[..., 0, 1::2, 1::2] = packed[..., 2, :, :], packed[..., 3, :, :]
    return raw


def _reference_forward(net: EBSR, x: torch.Tensor) -> torch.Tensor:
    """The original's structure, step by step: one frame at a time through the alignment (frame 0 aligned to
    itself too), per-frame non-local pairs, cross outputs then self outputs, then the trunk and head."""
    b, n, _, h, w = x.shape
    relu = F.relu
    xc = x[:, 0]
    skip1 = relu(F.pixel_shuffle(net.skipup1(xc), 2))
    skip2 = F.pixel_shuffle(net.skipup2(skip1), 2)
    feats = []
    for i in range(n):
        f = net.feature_extraction(relu(net.conv_first(x[:, i])))
        l2 = relu(net.fea_L2_conv1(f))
        l3 = relu(net.toplayer(relu(net.fea_L3_conv1(l2))))
        l2 = net.smooth1(up2(l3) + net.latlayer1(l2))
        feats.append([net.smooth2(up2(l2) + net.latlayer2(f)), l2, l3])
    aligned = [net.pcd_align(feats[i], feats[0]) for i in range(n)]
    fusion = net.fusion
    cross = [fusion.non_local_T[i](aligned[i], aligned[0]) for i in range(n)]
    own = [fusion.non_local_F[i](aligned[i]) for i in range(n)]
    x0 = relu(fusion.fea_fusion(torch.cat(cross + own, dim=1)))
    u = relu(F.pixel_shuffle(net.upconv1(net.recon_trunk(x0)), 2)) + skip1
    u = relu(net.HRconv(relu(F.pixel_shuffle(net.upconv2(u), 2))))
    return net.conv_last(u) + skip2


def test_forward_matches_the_per_frame_reference_and_packed_input(tiny: EBSR) -> None:
    torch.manual_seed(1)
    packed = torch.rand(2, 3, 4, 6, 8)
    raw = _mosaic(packed)
    with torch.no_grad():
        out = tiny(raw)
        assert out.shape == (2, 3, 48, 64)  # 4x the mosaic, 8x the packed size
        torch.testing.assert_close(out, _reference_forward(tiny, raw), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(tiny(packed), out, atol=0, rtol=0)


def test_batch_items_are_independent(tiny: EBSR) -> None:
    torch.manual_seed(2)
    x = torch.rand(3, 3, 1, 12, 16)
    with torch.no_grad():
        both = tiny(x)
        for i in range(3):
            torch.testing.assert_close(both[i:i + 1], tiny(x[i:i + 1]), atol=1e-5, rtol=1e-5)


def test_frame_order(tiny: EBSR) -> None:
    """Frame i goes through non-local pair i and fills channel slots i (cross) and N + i (self) of the fusion;
    frame 0 is the reference (skip branch, alignment target, cross-attention query)."""
    torch.manual_seed(3)
    x = torch.rand(1, 3, 1, 12, 16)
    with torch.no_grad():
        out = tiny(x)
        swapped = x[:, [0, 2, 1]]
        assert (tiny(swapped) - out).abs().max() > 1e-3  # per-frame blocks: order matters
        # swapping frames 1, 2 together with their blocks and fusion channel slots gives the same output
        other = copy.deepcopy(tiny)
        fus = other.fusion
        for blocks in (fus.non_local_T, fus.non_local_F):
            blocks[1], blocks[2] = blocks[2], blocks[1]
        nf, n = other.num_feat, other.burst_size
        slots = [0, 2, 1, n + 0, n + 2, n + 1]
        order = torch.cat([torch.arange(s * nf, (s + 1) * nf) for s in slots])
        with torch.no_grad():
            fus.fea_fusion.weight_v.copy_(tiny.fusion.fea_fusion.weight_v[:, order])
        torch.testing.assert_close(other(swapped), out, atol=1e-5, rtol=1e-5)
        # a new reference frame changes the output; a burst of one repeated frame is well defined
        assert (tiny(x[:, [1, 0, 2]]) - out).abs().max() > 1e-3
        same = tiny(x[:, [0, 0, 0]])
        assert torch.isfinite(same).all()


def test_identical_frames_align_to_themselves() -> None:
    """With trained-like offsets, a burst of identical frames gives every frame the reference's aligned features
    (nbr == ref at every level), whatever the DCN offsets are."""
    torch.manual_seed(4)
    pcd = _redraw(PCDAlign(16, 8), seed=4)
    feats = [torch.randn(1, 16, 8, 8), torch.randn(1, 16, 4, 4), torch.randn(1, 16, 2, 2)]
    other = [torch.randn_like(f) for f in feats]
    with torch.no_grad():
        a = pcd([torch.cat((f, f)) for f in feats], [torch.cat((f, f)) for f in feats])
        b = pcd([torch.cat((o, f)) for o, f in zip(other, feats)], [torch.cat((f, f)) for f in feats])
    torch.testing.assert_close(a[0], a[1])
    torch.testing.assert_close(b[1], a[0], atol=1e-6, rtol=1e-6)  # the batched item equals the identical case
    assert (b[0] - a[0]).abs().max() > 1e-3


def test_training_step_and_autocast(tiny: EBSR) -> None:
    net = copy.deepcopy(tiny).train()
    x = torch.rand(1, 3, 4, 6, 6)
    out = net(x)
    out.abs().mean().backward()
    grads = {n: p.grad for n, p in net.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert grads['pcd_align.cas_dcnpack.conv_offset_mask.weight'].abs().sum() > 0
    assert grads['fusion.non_local_T.2.W.weight'].abs().sum() > 0
    copy.deepcopy(net)  # deep-copyable after a training forward (EMA)
    net.eval()
    with torch.no_grad():
        ref = net(x)
        for dtype in (torch.bfloat16, torch.float16):
            with torch.autocast('cpu', dtype=dtype):
                low = net(x)
            assert low.shape == ref.shape and torch.isfinite(low.float()).all()
            rel = (low.float() - ref).norm() / ref.norm()
            assert rel < 0.05, (dtype, rel)


# ----------------------------------------------------------------------------------------------------- checkpoints
def test_official_state_dict_loads_strictly_and_is_detected(tiny: EBSR, tmp_path: Path) -> None:
    official = tmp_path / 'EBSRbest_epoch.pth'
    torch.save(tiny.state_dict(), official)  # the official layout: the bare module's state_dict
    assert detect_family(tiny.state_dict()) == 'EBSR'
    opts = network_options_from_state_dict(tiny.state_dict())
    assert opts == {'type': 'EBSR', 'deformable_groups': 8, 'non_local': True, **TINY}
    x = torch.rand(1, 3, 1, 8, 8)
    with torch.no_grad():
        ref = tiny(x)
    for i, payload in enumerate([None, {f'module.{k}': v for k, v in tiny.state_dict().items()},
                                 {'params': tiny.state_dict()}]):
        path = official if payload is None else tmp_path / f'wrapped{i}.pth'
        if payload is not None:
            torch.save(payload, path)
        torch.manual_seed(9)
        fresh = build_network(opts).eval()
        load_network(fresh, path, strict=True)
        with torch.no_grad():
            assert torch.equal(fresh(x), ref)
    with torch.device('meta'):
        big = build_network({'type': 'EBSR'})
    assert network_options_from_state_dict(big.state_dict()) == {
        'type': 'EBSR', 'n_feats': 128, 'n_resblocks': 8, 'n_resgroups': 5, 'burst_size': 14, 'non_local': True,
        'front_RBs': 5, 'deformable_groups': 8}
    with torch.device('meta'):
        plain = EBSR(**{**TINY, 'non_local': False})
    assert network_options_from_state_dict(plain.state_dict())['non_local'] is False
    assert network_options_from_state_dict(plain.state_dict())['burst_size'] == 3


def test_a_file_of_another_size_names_the_network_g_it_fits(tiny: EBSR, tmp_path: Path) -> None:
    path = tmp_path / 'tiny.pth'
    torch.save(tiny.state_dict(), path)
    other = EBSR(**{**TINY, 'n_feats': TINY['n_feats'] * 2})
    with pytest.raises(CheckpointError) as err:
        load_network(other, path, describe=fitting_network_hint)
    assert f"Its keys and shapes fit network_g {network_options_from_state_dict(tiny.state_dict())}." in str(err.value)
    with pytest.raises(CheckpointError) as err:
        load_network(other, path)  # without describe: the mismatch alone
    assert 'fit network_g' not in str(err.value)


def test_other_layouts_are_refused_or_converted(tiny: EBSR, tmp_path: Path) -> None:
    sd = tiny.state_dict()
    # saved from torch.nn.utils.parametrizations.weight_norm: the strict loader names what it found ...
    renamed = {k.replace('.weight_g', '.parametrizations.weight.original0')
               .replace('.weight_v', '.parametrizations.weight.original1'): v for k, v in sd.items()}
    path = tmp_path / 'parametrized.pth'
    torch.save(renamed, path)
    with pytest.raises(CheckpointError, match=r'parametrized\.pth: does not fit EBSR.*missing.*weight_g.*'
                                              r'unexpected.*parametrizations\.weight\.original0'):
        load_network(EBSR(**TINY), path)
    # ... and convert_ebsr_checkpoint renames the tensors exactly
    converted = convert_ebsr_checkpoint(renamed, source=str(path))
    assert list(converted) == list(sd) and all(torch.equal(converted[k], sd[k]) for k in sd)
    assert list(convert_ebsr_checkpoint({'state_dict': {f'module.{k}': v for k, v in sd.items()}})) == list(sd)
    # a packed-input (burst_channel 4) or weight-norm-free file gets a message saying what it is
    packed = dict(sd, **{'conv_first.weight_v': torch.zeros(16, 4, 3, 3)})
    with pytest.raises(CheckpointError, match=r'x\.pth: conv_first\.weight_v has shape \(16, 4, 3, 3\).*burst_ch'):
        convert_ebsr_checkpoint(packed, source='x.pth')
    fused = {k.replace('.weight_v', '.weight'): v for k, v in sd.items() if not k.endswith('weight_g')}
    with pytest.raises(CheckpointError, match='weight norm removed'):
        convert_ebsr_checkpoint(fused)
    with pytest.raises(CheckpointError, match='not a state_dict'):
        convert_ebsr_checkpoint({'epoch': 3, 'net': 'x'})
