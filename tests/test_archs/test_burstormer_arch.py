"""Burstormer network: official keys and counts, strict loading of official checkpoint layouts, the grouped dilated
DCN through the shared function, frame-order and offset-layout invariances, batch independence, mixed precision."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.ops import DeformConv2d

from codes.archs import build_network
from codes.archs.arch_detect import detect_family, fitting_network_hint, network_options_from_state_dict
from codes.archs.burstormer_arch import (MDTA, Burstormer, GroupedDeformConv, LayerNorm2d, NoRefBackProjection,
                                         burst_pool, convert_burstormer_checkpoint)
from codes.utils.build import OptionError
from codes.utils.checkpoint import CheckpointError, load_network
from tests.spec_keys import read_spec_keys

pytestmark = pytest.mark.usefixtures('one_thread')

TRACKS = ('synthetic', 'real')
TINY = dict(num_features=16, burst_size=4)


def tiny(track: str, seed: int = 0) -> Burstormer:
    torch.manual_seed(seed)
    return Burstormer(track=track, **TINY).eval()


def _redraw(model: nn.Module, seed: int) -> None:
    """Every tensor redrawn (LayerNorm affine terms, temperatures and biases included) so none is trivial."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if p.ndim == 4:
                p.copy_(noise / p[0].numel() ** 0.5)
            elif name.endswith('body.weight') or name.endswith('temperature'):
                p.copy_(1 + 0.3 * noise)
            else:
                p.copy_(0.2 * noise)


# ----------------------------------------------------------------------------------------------------- structure
@pytest.mark.parametrize('track, total, n_tensors', [('synthetic', 2_488_386, 276), ('real', 3_263_778, 274)])
def test_keys_shapes_and_counts(track: str, total: int, n_tensors: int) -> None:
    with torch.device('meta'):
        model = build_network({'type': 'Burstormer', 'track': track})
    got = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    assert got == read_spec_keys(f'burstormer_{track}.txt')
    assert len(got) == n_tensors and not list(model.buffers())
    assert sum(p.numel() for p in model.parameters()) == total
    assert model.align.alignment0.deform.weight.shape == (48, 6, 3, 3)


@pytest.mark.parametrize('track', TRACKS)
def test_published_size_forward_shape(track: str) -> None:
    torch.manual_seed(0)
    model = Burstormer(track=track).eval()
    with torch.no_grad():
        out = model(torch.rand(1, 14, 4, 8, 12))
    assert out.shape == (1, 3, 64, 96) and torch.isfinite(out).all()


def test_init_follows_the_original() -> None:
    torch.manual_seed(0)
    model = Burstormer()
    dcn = model.align.alignment0.deform
    assert dcn.bias.abs().max() <= 1 / 54 ** 0.5  # torchvision's DeformConv2d: U(±1/sqrt(fan_in)), fan_in 6·9
    assert model.align.alignment0.offset_conv.weight.abs().sum() > 0  # default init, not zero
    assert torch.equal(model.align.encoder_level2[0].attn.temperature, torch.ones(2, 1, 1))
    assert torch.equal(model.align.encoder_level1[0].norm1.body.weight, torch.ones(48))


def test_errors() -> None:
    model = tiny('synthetic')
    with pytest.raises(ValueError, match='multiples of 4'):
        model(torch.rand(1, 4, 4, 10, 8))
    with pytest.raises(ValueError, match=r'\(B, N, 4, h, w\)'):
        model(torch.rand(4, 4, 8, 8))
    with pytest.raises(ValueError, match="'track'"):
        Burstormer(track='Real')
    with pytest.raises(ValueError, match="'num_features'"):
        Burstormer(num_features=20)
    with pytest.raises(OptionError, match=r'network_g\.trak'):
        build_network({'type': 'Burstormer', 'trak': 'real'})


# ----------------------------------------------------------------------------------------------------- loading
def _official_files(sd: dict, tmp_path: Path) -> dict[str, Path]:
    """The state_dict in the layouts the official files and other wrappers use."""
    files = {
        'bare': sd,
        'lightning': {'epoch': 292, 'global_step': 1, 'pytorch-lightning_version': '1.5.10', 'state_dict': sd,
                      'optimizer_states': [{'state': {}, 'param_groups': [{'lr': 1e-6}]}], 'lr_schedulers': []},
        'track2': {'epoch': 24, 'model_state_dict': sd, 'optimizer_state_dict': {'state': {}, 'param_groups': []}},
        'module': {f'module.{k}': v for k, v in sd.items()},
        'ours': {'params': sd},
    }
    out = {}
    for name, obj in files.items():
        out[name] = tmp_path / f'{name}.pth'
        torch.save(obj, out[name])
    return out


@pytest.mark.parametrize('track', TRACKS)
def test_strict_loading_of_official_layouts(track: str, tmp_path: Path) -> None:
    src = tiny(track, seed=1)
    x = torch.rand(1, 4, 4, 8, 8)
    with torch.no_grad():
        ref = src(x)
    for name, path in _official_files(src.state_dict(), tmp_path).items():
        dst = tiny(track, seed=2)
        load_network(dst, path, strict=True)  # the runner's loader (train/test: path.pretrain_network_g)
        with torch.no_grad():
            assert torch.equal(dst(x), ref), name
        again = tiny(track, seed=3)
        again.load_state_dict(convert_burstormer_checkpoint(torch.load(path, weights_only=True), str(path)),
                              strict=True)
        with torch.no_grad():
            assert torch.equal(again(x), ref), name


def test_layout_mismatch_and_foreign_files_are_named(tmp_path: Path) -> None:
    # the released synthetic checkpoint has the real layout: loading it as track 'synthetic' must fail clearly
    path = tmp_path / 'Burstormer.ckpt'
    torch.save({'state_dict': tiny('real').state_dict(), 'epoch': 292}, path)
    with pytest.raises(CheckpointError, match=rf"{path}: does not fit Burstormer.*missing.*"
                                              r"back_projection1\.feat_fusion\.0\.weight.*track': 'real'"):
        load_network(tiny('synthetic'), path, strict=True, describe=fitting_network_hint)
    with pytest.raises(ValueError, match=r"x\.pth: not a Burstormer checkpoint: entry 'epoch'.*found top-level keys "
                                         r"\['epoch', 'weights'\]"):
        convert_burstormer_checkpoint({'epoch': 3, 'weights': {}}, 'x.pth')
    with pytest.raises(ValueError, match='not a Burstormer state_dict'):
        convert_burstormer_checkpoint({'conv_first.weight': torch.zeros(1)}, 'y.pth')
    sd = convert_burstormer_checkpoint({'state_dict': {f'model.{k}': v for k, v in tiny('real').state_dict().items()}})
    tiny('real').load_state_dict(sd, strict=True)


@pytest.mark.parametrize('track', TRACKS)
def test_architecture_detection(track: str) -> None:
    with torch.device('meta'):
        full = Burstormer(track=track).state_dict()
    assert detect_family(full) == 'Burstormer'
    assert network_options_from_state_dict(full) == {'type': 'Burstormer', 'track': track}
    opts = network_options_from_state_dict(tiny(track).state_dict())
    assert opts == {'type': 'Burstormer', 'track': track, 'num_features': 16, 'deformable_groups': 8}
    build_network(opts).load_state_dict(tiny(track).state_dict(), strict=True)


# ----------------------------------------------------------------------------------------------------- DCN
def test_grouped_dilated_dcn_matches_torchvision() -> None:
    """The shared ``modulated_deform_conv2d`` computes torchvision's DeformConv2d(groups=8, dilation=2)."""
    torch.manual_seed(0)
    ours = GroupedDeformConv(16, groups=8)
    theirs = DeformConv2d(16, 16, 3, padding=2, dilation=2, groups=8)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(2, 16, 9, 11, requires_grad=True)
    offset = 3 * torch.randn(2, 144, 9, 11)
    mask = torch.rand(2, 72, 9, 11)
    out = ours(x, offset, mask)
    ref = theirs(x, offset, mask)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    g1, = torch.autograd.grad(out.square().sum(), x)
    g2, = torch.autograd.grad(ref.square().sum(), x)
    torch.testing.assert_close(g1, g2, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('dy, dx', [(2, -1), (-1, 3)])
def test_known_translation_is_recovered_through_the_dcn(dy: int, dx: int) -> None:
    """A frame shifted by (dy, dx) is aligned back by an offset (Δy, Δx) = (dy, dx) on the centre tap: this pins
    the offset layout (Δy before Δx, tap-major within each of the 8 groups) and the dilation-2 tap grid."""
    torch.manual_seed(0)
    c, h, w = 16, 12, 14
    dcn = GroupedDeformConv(c, groups=8)
    with torch.no_grad():
        dcn.weight.zero_()
        dcn.bias.zero_()
        dcn.weight[torch.arange(c), torch.arange(c) % 2, 1, 1] = 1.0  # identity on the centre tap
    ref = torch.rand(1, c, h, w)
    moved = torch.zeros_like(ref)  # moved[y, x] = ref[y - dy, x - dx]
    moved[..., max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        ref[..., max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    offset = torch.zeros(1, 8, 9, 2, h, w)
    offset[:, :, 4, 0], offset[:, :, 4, 1] = dy, dx
    out = dcn(moved, offset.reshape(1, 144, h, w), torch.ones(1, 72, h, w))
    inner = (..., slice(2, h - 2), slice(3, w - 3))  # pixels whose shifted source lies inside the frame
    torch.testing.assert_close(out[inner], ref[inner])
    # swapping Δy and Δx (a layout mistake) does not align
    swapped = torch.zeros(1, 8, 9, 2, h, w)
    swapped[:, :, 4, 0], swapped[:, :, 4, 1] = dx, dy
    assert not torch.allclose(dcn(moved, swapped.reshape(1, 144, h, w), torch.ones(1, 72, h, w))[inner], ref[inner])
    # dilation 2: the top-left tap with zero offset reads (y − 2, x − 2)
    with torch.no_grad():
        dcn.weight.zero_()
        dcn.weight[torch.arange(c), torch.arange(c) % 2, 0, 0] = 1.0
    out = dcn(ref, torch.zeros(1, 144, h, w), torch.ones(1, 72, h, w))
    torch.testing.assert_close(out[..., 2:, 2:], ref[..., :-2, :-2])


# ----------------------------------------------------------------------------------------------------- frames
@pytest.mark.parametrize('track', TRACKS)
def test_alignment_is_equivariant_to_the_order_of_non_reference_frames(track: str) -> None:
    """Every frame is aligned to frame 0 on its own: permuting frames 1..N-1 permutes the aligned frames; moving
    another frame to position 0 changes them (frame 0 is the reference)."""
    model = tiny(track)
    _redraw(model, 5)
    b, n = 2, 5
    x = torch.rand(b, n, 4, 8, 8)
    perm = [0, 3, 1, 4, 2]

    def aligned(burst: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model.align(model.conv1(burst.reshape(b * n, 4, 8, 8)), b).view(b, n, -1, 8, 8)

    a = aligned(x)
    torch.testing.assert_close(aligned(x[:, perm]), a[:, perm], rtol=1e-4, atol=1e-5)
    assert not torch.allclose(aligned(x[:, [1, 0, 2, 3, 4]])[:, 2:], a[:, 2:], atol=1e-3)


@pytest.mark.parametrize('track', TRACKS)
def test_burst_of_identical_frames(track: str) -> None:
    """In a burst of identical frames all non-reference frames align identically, and each burst of a batch keeps
    to itself (a burst/frame axis mix-up would mix the two bursts)."""
    model = tiny(track)
    _redraw(model, 6)
    b, n = 2, 4
    frames = torch.rand(b, 1, 4, 8, 8).expand(b, n, 4, 8, 8).contiguous()
    with torch.no_grad():
        a = model.align(model.conv1(frames.reshape(b * n, 4, 8, 8)), b).view(b, n, -1, 8, 8)
        one = model.align(model.conv1(frames[1].reshape(n, 4, 8, 8)), 1)
    for i in range(b):
        for k in range(2, n):
            torch.testing.assert_close(a[i, k], a[i, 1], rtol=1e-5, atol=1e-6)
        assert not torch.allclose(a[i, 0], a[i, 1], atol=1e-3)  # frame 0 keeps its unaligned features
    torch.testing.assert_close(a[1], one, rtol=1e-4, atol=1e-5)


def test_burst_pool_matches_the_original_pooling() -> None:
    torch.manual_seed(0)
    for n in (14, 5):
        a = torch.randn(2 * n, 6, 3, 4)
        out = burst_pool(a, 2).view(2, 8, 6, 3, 4)
        for i in range(2):
            burst = a.view(2, n, 6, 3, 4)[i]
            flat = burst.reshape(1, n * 6, 12).permute(0, 2, 1)  # the original: (1, h·w, n·F)
            pooled = nn.AdaptiveAvgPool1d(7 * 6)(flat).permute(0, 2, 1).reshape(7, 6, 3, 4)
            torch.testing.assert_close(out[i], torch.cat((burst[:1], pooled)))
        if n == 14:  # pooled frame p, channel c = mean of flattened channels 2(6p + c) and 2(6p + c) + 1
            flat = a.view(2, 14 * 6, 3, 4)
            torch.testing.assert_close(out[:, 1:].reshape(2, 42, 3, 4), (flat[:, 0::2] + flat[:, 1::2]) / 2)


def test_real_fusion_pairs_and_roll_order() -> None:
    """Real-track fusion input for frames F0..F7: [F0F1, F2F3, F4F5, F6F7, F7F0, F1F2, F3F4, F5F6]."""
    fusion = NoRefBackProjection(4, 'real')
    seen = []
    fusion.encoder1 = nn.Identity()
    fusion.encoder1.register_forward_hook(lambda m, i, o: seen.append(i[0]))
    z = torch.randn(2 * 8, 4, 3, 3)
    fusion(z, 2)
    frames = z.view(2, 8, 4, 3, 3)
    order = [(0, 1), (2, 3), (4, 5), (6, 7), (7, 0), (1, 2), (3, 4), (5, 6)]
    want = torch.stack([torch.cat((frames[i, p], frames[i, q])) for i in range(2) for p, q in order])
    assert torch.equal(seen[0], want)


def test_restormer_pieces_against_their_formulas() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 8, 5, 6)
    ln = LayerNorm2d(8)
    with torch.no_grad():
        ln.body.weight.normal_()
        ln.body.bias.normal_()
    mu, var = x.mean(1, keepdim=True), x.var(1, keepdim=True, unbiased=False)
    ref = (x - mu) / torch.sqrt(var + 1e-5) * ln.body.weight.view(1, 8, 1, 1) + ln.body.bias.view(1, 8, 1, 1)
    torch.testing.assert_close(ln(x), ref, rtol=1e-5, atol=1e-5)

    attn = MDTA(8, 2)
    with torch.no_grad():
        attn.temperature.copy_(torch.tensor([0.5, 2.0]).view(2, 1, 1))
    q, k = attn.qk_dwconv(attn.qk(x)).chunk(2, dim=1)
    v = attn.v_dwconv(attn.v(x))
    heads = []
    for hd in range(2):
        qh, kh, vh = (t[:, 4 * hd:4 * hd + 4].reshape(2, 4, 30) for t in (q, k, v))
        qh, kh = qh / qh.norm(dim=-1, keepdim=True), kh / kh.norm(dim=-1, keepdim=True)
        a = torch.softmax(qh @ kh.transpose(1, 2) * attn.temperature[hd], dim=-1)
        heads.append((a @ vh).reshape(2, 4, 5, 6))
    torch.testing.assert_close(attn(x), attn.project_out(torch.cat(heads, dim=1)), rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------------------------- batches
@pytest.mark.parametrize('track', TRACKS)
def test_each_burst_of_a_batch_gives_its_own_output(track: str) -> None:
    model = tiny(track)
    _redraw(model, 7)
    x = torch.rand(3, 4, 4, 8, 12)
    with torch.no_grad():
        batch = model(x)
        assert batch.shape == (3, 3, 64, 96)
        for i in range(3):
            torch.testing.assert_close(batch[i:i + 1], model(x[i:i + 1]), rtol=1e-4, atol=1e-5)
        assert (batch[0] - batch[1]).abs().max() > 0.05 * batch.abs().max()


@pytest.mark.parametrize('track', TRACKS)
def test_short_training_run_loss_falls(track: str) -> None:
    model = tiny(track).train()
    torch.manual_seed(0)
    x = torch.rand(2, 4, 4, 8, 8)
    y = F.interpolate(x[:, 0, [0, 1, 3]], scale_factor=8, mode='bilinear', align_corners=False)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(15):
        opt.zero_grad()
        loss = F.l1_loss(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert min(losses[-3:]) < 0.7 * losses[0], losses


# ----------------------------------------------------------------------------------------------------- precision
@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_mixed_precision_autocast(dtype: torch.dtype) -> None:
    model = tiny('real')
    x = torch.rand(2, 4, 4, 8, 8)
    with torch.no_grad():
        ref = model(x)
        with torch.autocast('cpu', dtype=dtype):
            out = model(x)
            stage = model.align.alignment0
            offset, mask = stage.offsets(torch.randn(1, 16, 8, 8, dtype=dtype))
            xl = torch.randn(1, 16, 4, 4).to(dtype)
            normed = model.align.encoder_level1[0].norm1(xl)
    assert out.shape == ref.shape and torch.isfinite(out.float()).all()
    assert (out.float() - ref).norm() / ref.norm() < 0.05
    assert offset.dtype == mask.dtype == torch.float32  # offsets and mask are computed in float32
    assert normed.dtype == dtype
    torch.testing.assert_close(normed, model.align.encoder_level1[0].norm1(xl.float()).to(dtype))
    # gradients flow under autocast
    model.train()
    with torch.autocast('cpu', dtype=dtype):
        loss = model(x).float().mean()
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


class _LightningBookkeeping:
    """Stands for an object in a Lightning checkpoint's bookkeeping that the safe loader refuses."""

    def __init__(self) -> None:
        self.monitor = 'val_psnr'


def test_convert_script(tmp_path: Path) -> None:
    from codes.scripts.convert_burstormer_checkpoint import convert_file
    net = tiny('real')  # the released files have the real layout
    ckpt = tmp_path / 'Burstormer.ckpt'
    torch.save({'epoch': 292, 'state_dict': net.state_dict(), 'hyper_parameters': _LightningBookkeeping()}, ckpt)
    with pytest.raises(CheckpointError, match=r'Burstormer\.ckpt: the safe loader .*refuses it.*--trust'):
        convert_file(ckpt, tmp_path / 'out.pth')
    want = {'type': 'Burstormer', 'track': 'real', 'num_features': 16, 'deformable_groups': 8}
    assert convert_file(ckpt, tmp_path / 'out.pth', trust=True) == want
    other = tiny('real', seed=1)
    load_network(other, tmp_path / 'out.pth', strict=True)
    assert all(torch.equal(a, b) for a, b in zip(other.state_dict().values(), net.state_dict().values()))
    pth = tmp_path / 'Burstormer.pth'
    torch.save({'epoch': 24, 'model_state_dict': net.state_dict(), 'optimizer_state_dict': {}}, pth)
    assert convert_file(pth, tmp_path / 'out2.pth') == want
    torch.save({'epoch': 1, 'weights': net.state_dict()}, tmp_path / 'odd.pth')
    with pytest.raises(CheckpointError, match=r"odd\.pth: not a Burstormer checkpoint.*\['epoch', 'weights'\]"):
        convert_file(tmp_path / 'odd.pth', tmp_path / 'out3.pth')


# ----------------------------------------------------------------------------------------------------- oracle
# A literal, functional transcription of the original forward (batch of one: ``burst = burst[0]``, the frame axis
# as the batch axis, torchvision's deform_conv2d called directly, the in-place ``y[0] = x[0]``, nn.AdaptiveAvgPool1d
# over the (1, h·w, n·F) tokens, Restormer's LayerNorm by its formula), written from the paper's code description.
def _o_ln(sd, p, x):
    b, c, h, w = x.shape
    t = x.permute(0, 2, 3, 1).reshape(b, h * w, c)
    mu, var = t.mean(-1, keepdim=True), t.var(-1, keepdim=True, unbiased=False)
    t = (t - mu) / torch.sqrt(var + 1e-5) * sd[f'{p}.body.weight'] + sd[f'{p}.body.bias']
    return t.reshape(b, h, w, c).permute(0, 3, 1, 2)


def _o_blocks(sd, p, x, heads=1):
    for i in range(2):
        q = f'{p}.{i}'
        y = _o_ln(sd, f'{q}.norm1', x)
        b, c, h, w = y.shape
        qk = F.conv2d(F.conv2d(y, sd[f'{q}.attn.qk.weight']), sd[f'{q}.attn.qk_dwconv.weight'], padding=1,
                      groups=2 * c)
        v = F.conv2d(F.conv2d(y, sd[f'{q}.attn.v.weight']), sd[f'{q}.attn.v_dwconv.weight'], padding=1, groups=c)
        qq, kk, vv = (t.reshape(b, heads, c // heads, h * w) for t in (*qk.chunk(2, 1), v))
        a = F.normalize(qq, dim=-1) @ F.normalize(kk, dim=-1).transpose(-2, -1) * sd[f'{q}.attn.temperature']
        x = x + F.conv2d((a.softmax(-1) @ vv).reshape(b, c, h, w), sd[f'{q}.attn.project_out.weight'])
        y = F.conv2d(_o_ln(sd, f'{q}.norm2', x), sd[f'{q}.ffn.project_in.weight'])
        y1, y2 = F.conv2d(y, sd[f'{q}.ffn.dwconv.weight'], padding=1, groups=y.shape[1]).chunk(2, 1)
        x = x + F.conv2d(F.gelu(y1) * y2, sd[f'{q}.ffn.project_out.weight'])
    return x


def _o_conv(sd, p, x, act=False, stride=1):
    y = F.conv2d(x, sd[f'{p}.weight'], sd.get(f'{p}.bias'), stride=stride, padding=1)
    return F.gelu(y) if act else y


def _o_up(sd, p, x):
    return F.conv_transpose2d(x, sd[f'{p}.weight'], sd[f'{p}.bias'], stride=2, padding=1, output_padding=1)


def _o_rep0(t):
    return t[0:1].repeat_interleave(t.shape[0], dim=0)


def _o_stage(sd, p, x, prev, track):
    from torchvision.ops import deform_conv2d
    of = _o_conv(sd, f'{p}.bottleneck.0', torch.cat([_o_rep0(x), x], 1), act=True)
    if prev is not None:
        of = _o_conv(sd, f'{p}.bottleneck_o.0', torch.cat([prev, of], 1), act=True)
    o1, o2, m = F.conv2d(of, sd[f'{p}.offset_conv.weight'], padding=1).chunk(3, 1)
    y = deform_conv2d(x, torch.cat([o1, o2], 1), sd[f'{p}.deform.weight'], sd[f'{p}.deform.bias'], padding=2,
                      dilation=2, mask=torch.sigmoid(m))
    y[0] = x[0]
    bp = f'{p}.back_projection'
    if track == 'synthetic':
        e = _o_blocks(sd, f'{bp}.encoder1', y)
        u = torch.cat([_o_rep0(e), e], 1)
    else:
        u = _o_blocks(sd, f'{bp}.encoder1', torch.cat([_o_rep0(y), y], 1))
    fu = _o_conv(sd, f'{bp}.feat_fusion.0', u, act=True)
    ex = _o_conv(sd, f'{bp}.feat_expand.0', fu, act=True)
    return fu + _o_conv(sd, f'{bp}.diff_fusion.0', ex - u, act=True), of


def _o_fusion(sd, p, z, track):
    n, c, h, w = z.shape
    if track == 'synthetic':
        e = _o_blocks(sd, f'{p}.encoder1', z.reshape(n // 2, 2 * c, h, w))
        rec = _o_conv(sd, f'{p}.feat_expand.0', _o_conv(sd, f'{p}.feat_fusion.0', e, act=True), act=True)
        return e + (e - rec)
    zs = torch.roll(z, 1, 0)
    e = _o_blocks(sd, f'{p}.encoder1', torch.cat([z.reshape(n // 2, 2 * c, h, w), zs.reshape(n // 2, 2 * c, h, w)]))
    fu = _o_conv(sd, f'{p}.feat_fusion', e)
    return fu + _o_conv(sd, f'{p}.diff_fusion', e - _o_conv(sd, f'{p}.feat_expand', fu))


def original_forward(sd: dict, burst: torch.Tensor, track: str) -> torch.Tensor:
    b = burst[0]
    x = _o_blocks(sd, 'align.encoder_level1', F.conv2d(b, sd['conv1.0.weight'], padding=1))
    e1 = _o_blocks(sd, 'align.encoder_level2', _o_conv(sd, 'align.down1', x, stride=2), heads=2)
    e2, o2 = _o_stage(sd, 'align.alignment2', _o_conv(sd, 'align.down2', e1, stride=2), None, track)
    d1 = _o_up(sd, 'align.up2', e2)
    e1, o1 = _o_stage(sd, 'align.alignment1', e1, 2 * _o_up(sd, 'align.offset_up2', o2), track)
    d0 = _o_up(sd, 'align.up1', d1 + e1)
    x, ox = _o_stage(sd, 'align.alignment0', x, 2 * _o_up(sd, 'align.offset_up1', o1), track)
    a, _ = _o_stage(sd, 'align.cascade_alignment', x + d0, ox, track)
    n, c, h, w = a.shape
    tokens = a.reshape(1, n * c, h * w).permute(0, 2, 1)
    pooled = nn.AdaptiveAvgPool1d(7 * c)(tokens).permute(0, 2, 1).reshape(7, c, h, w)
    z = _o_fusion(sd, 'back_projection1', torch.cat([a[:1], pooled]), track).reshape(1, 8 * c, h, w)
    z = F.gelu(F.pixel_shuffle(F.conv2d(z, sd['up1.0.weight']), 2))
    z = _o_fusion(sd, 'back_projection2', z.reshape(2, c, 2 * h, 2 * w), track).reshape(1, 2 * c, 2 * h, 2 * w)
    z = F.gelu(F.pixel_shuffle(F.conv2d(z, sd['up2.0.weight']), 2))
    z = F.gelu(F.pixel_shuffle(F.conv2d(z, sd['up3.0.weight']), 2))
    return F.conv2d(z, sd['out_conv.0.weight'], padding=1)


@pytest.mark.parametrize('track, width', [('synthetic', 16), ('real', 16), ('synthetic', 48), ('real', 48)])
def test_matches_a_literal_transcription_of_the_original(track: str, width: int) -> None:
    torch.manual_seed(0)
    model = Burstormer(track=track, num_features=width).eval()
    _redraw(model, 11)
    sd = model.state_dict()
    x = torch.rand(2, 14 if width == 48 else 5, 4, 8, 12)
    with torch.no_grad():
        ours = model(x)
        for i in range(2):  # the original sees burst[0] only: feed it each burst alone
            ref = original_forward(sd, x[i:i + 1], track)
            assert (ours[i:i + 1] - ref).norm() / ref.norm() < 1e-4
