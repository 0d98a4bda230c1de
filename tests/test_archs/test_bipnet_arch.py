"""BIPNet network: official keys and counts, strict loading of the official checkpoint layouts, architecture
detection (apart from Burstormer), equality with a literal transcription of the original forward for both DCN
implementations, fast vs reference gradients, DCN offset layout, frame-order and reference-frame roles, batch
independence, the fixed burst size, a short training run, mixed precision."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.ops import deform_conv2d

from codes.archs import build_network
from codes.archs.arch_detect import detect_family, fitting_network_hint, network_options_from_state_dict
from codes.archs.arch_util import GroupedDeformConv
from codes.archs.bipnet_arch import BIPNet, convert_bipnet_checkpoint
from codes.data.input_errors import InputError
from codes.utils.build import OptionError
from codes.utils.checkpoint import CheckpointError, load_network
from tests.spec_keys import read_spec_keys

pytestmark = pytest.mark.usefixtures('one_thread')

TINY = dict(num_blocks=1, num_units=1, unet_blocks=(1, 1, 1, 1, 1), unet_units=1)
N = 14


def tiny(seed: int = 0, **kw) -> BIPNet:
    torch.manual_seed(seed)
    return BIPNet(**{**TINY, **kw}).eval()


def _redraw(model: nn.Module, seed: int) -> None:
    """Weights redrawn so that nothing is near-trivial: offsets of about a pixel, masks and softmaxes far from
    uniform, residual branches shrunk so 15 unnormalised blocks do not blow the signal up."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if p.ndim == 1:
                p.copy_(0.2 * noise)
                continue
            fan_in = p.shape[0] * p[0, 0].numel() if name.endswith('up.weight') and 'SKFF' in name \
                else p[0].numel()
            p.copy_(noise / fan_in ** 0.5)
            if name.endswith('conv1x1.weight') or '.channel_add_conv.2.' in name or name.endswith('cor_conv1.0.weight'):
                p.mul_(0.3)
            elif 'conv_mask' in name or '.convs.' in name:
                p.mul_(3.0)  # non-uniform global-context and AGU attention
            elif name.startswith('offset_conv'):
                p.mul_(1.5)


def _burst(b: int, h: int = 8, w: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, N, 4, h, w, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------------------------------- structure
def test_keys_shapes_and_counts() -> None:
    for track in ('synthetic', 'real'):
        with torch.device('meta'):
            model = build_network({'type': 'BIPNet', 'track': track})
        got = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
        assert got == read_spec_keys('bipnet.txt')
        assert len(got) == 270 and not list(model.buffers())
        assert sum(p.numel() for p in model.parameters()) == 6_674_400
    with torch.device('meta'):
        model = build_network({'type': 'BIPNet'})
    assert model.deform1.padding == 1 and model.deform1.dilation == 1 and model.deform1.groups == 8


def test_init_follows_the_original() -> None:
    torch.manual_seed(0)
    model = tiny()
    assert model.deform1.bias.abs().max() <= 1 / 72 ** 0.5  # torchvision: U(±1/sqrt(fan_in)), fan_in 8·9
    assert model.offset_conv1.weight.abs().sum() > 0  # PyTorch's default init, not zero
    assert all(m.bias is None for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)))


def test_option_and_input_errors() -> None:
    with pytest.raises(OptionError, match=r'network_g\.burst_size.*expected one of \[14\], got 8'):
        build_network({'type': 'BIPNet', 'burst_size': 8})
    with pytest.raises(OptionError, match=r'network_g\.impl'):
        build_network({'type': 'BIPNet', 'impl': 'cuda'})
    with pytest.raises(OptionError, match=r'network_g\.track'):
        build_network({'type': 'BIPNet', 'track': 'Real'})
    with pytest.raises(ValueError, match="'burst_size'.*14 frames.*got 8"):
        BIPNet(burst_size=8)
    ref = build_network({'type': 'BIPNet', 'track': 'real', 'impl': 'reference', **TINY})
    dcns = [m for m in ref.modules() if isinstance(m, GroupedDeformConv)]
    assert len(dcns) == 4 and all(m.impl == 'reference' for m in dcns)
    assert all(m.impl == 'fast' for m in ref.set_impl('fast').modules() if isinstance(m, GroupedDeformConv))
    model = tiny()
    with pytest.raises(InputError, match='bursts of 14 frames.*got 8'):
        model(torch.rand(1, 8, 4, 8, 8))
    with pytest.raises(InputError, match='multiples of 4.*6x8'):
        model(torch.rand(1, N, 4, 6, 8))
    with pytest.raises(InputError, match=r'\(B, N, 4, h, w\)'):
        model(torch.rand(N, 4, 8, 8))


# ----------------------------------------------------------------------------------------------------- loading
def _official_files(sd: dict, tmp_path: Path) -> dict[str, Path]:
    files = {
        'bare': sd,
        'lightning': {'epoch': 299, 'global_step': 1, 'pytorch-lightning_version': '1.5.10', 'state_dict': sd,
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


def test_strict_loading_of_official_layouts(tmp_path: Path) -> None:
    src = tiny(seed=1)
    x = _burst(1, 4, 4)
    with torch.no_grad():
        ref = src(x)
    for name, path in _official_files(src.state_dict(), tmp_path).items():
        dst = tiny(seed=2)
        load_network(dst, path, strict=True)  # the runner's loader (path.pretrain_network_g)
        with torch.no_grad():
            assert torch.equal(dst(x), ref), name
        again = tiny(seed=3)
        again.load_state_dict(convert_bipnet_checkpoint(torch.load(path, weights_only=True), str(path)), strict=True)
        with torch.no_grad():
            assert torch.equal(again(x), ref), name
    sd = convert_bipnet_checkpoint({'state_dict': {f'model.{k}': v for k, v in src.state_dict().items()}})
    tiny().load_state_dict(sd, strict=True)


def test_published_state_dict_loads_strictly_under_the_official_names() -> None:
    """A state_dict written under the official names and shapes (the key list) loads with strict=True."""
    g = torch.Generator().manual_seed(0)
    sd = {k: torch.randn(shape, generator=g) for k, shape in read_spec_keys('bipnet.txt')}
    with torch.device('meta'):
        model = BIPNet()
    model.load_state_dict(convert_bipnet_checkpoint({'epoch': 1, 'state_dict': sd}), strict=True, assign=True)
    assert torch.equal(model.SKFF3.up.weight, sd['SKFF3.up.weight'])


def test_foreign_layouts_are_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"x\.pth: not a BIPNet checkpoint: entry 'epoch'.*found top-level keys "
                                         r"\['epoch', 'weights'\]"):
        convert_bipnet_checkpoint({'epoch': 3, 'weights': {}}, 'x.pth')
    from codes.archs.burstormer_arch import Burstormer
    with torch.device('meta'):
        burstormer = Burstormer(track='real').state_dict()
    with pytest.raises(ValueError, match=r"y\.pth: not a BIPNet state_dict.*first keys \['conv1\.0\.weight'"):
        convert_bipnet_checkpoint({'model_state_dict': burstormer}, 'y.pth')
    path = tmp_path / 'Burstormer.ckpt'
    torch.save({'state_dict': tiny().state_dict()}, path)
    from codes.archs.burstormer_arch import Burstormer as B
    with pytest.raises(CheckpointError, match=r"Burstormer\.ckpt: does not fit Burstormer.*'type': 'BIPNet'"):
        load_network(B(track='real', num_features=16), path, strict=True, describe=fitting_network_hint)


def test_architecture_detection_tells_bipnet_from_burstormer() -> None:
    from codes.archs.burstormer_arch import Burstormer
    with torch.device('meta'):
        full = BIPNet().state_dict()
        burstormer = {t: Burstormer(track=t).state_dict() for t in ('synthetic', 'real')}
    assert detect_family(full) == 'BIPNet'
    assert network_options_from_state_dict(full) == {'type': 'BIPNet'}
    for sd in burstormer.values():
        assert detect_family(sd) == 'Burstormer'
    small = tiny().state_dict()
    opts = network_options_from_state_dict(small)
    assert opts == {'type': 'BIPNet', 'num_blocks': 1, 'num_units': 1, 'unet_blocks': [1, 1, 1, 1, 1],
                    'unet_units': 1}
    build_network(opts).load_state_dict(small, strict=True)
    odd = tiny(num_blocks=2, num_units=3, unet_blocks=(2, 1, 1, 1, 2), unet_units=2).state_dict()
    assert network_options_from_state_dict(odd)['unet_blocks'] == [2, 1, 1, 1, 2]
    build_network(network_options_from_state_dict(odd)).load_state_dict(odd, strict=True)


# ----------------------------------------------------------------------------------------------------- DCN
def test_zero_offsets_make_the_dcn_a_plain_grouped_conv() -> None:
    torch.manual_seed(0)
    dcn = GroupedDeformConv(64, 8, dilation=1)
    x = torch.randn(2, 64, 6, 7)
    want = F.conv2d(x, dcn.weight, dcn.bias, padding=1, groups=8)
    for impl in ('fast', 'reference'):
        dcn.impl = impl
        out = dcn(x, torch.zeros(2, 144, 6, 7), torch.ones(2, 72, 6, 7))
        torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('dy, dx', [(2, -1), (-1, 3)])
def test_known_translation_is_recovered_through_the_dcn(dy: int, dx: int) -> None:
    """A frame shifted by (dy, dx) is aligned back by (Δy, Δx) = (dy, dx) on the centre tap of every group: pins
    Δy before Δx, tap-major channels within each of the 8 groups, and the padding-1 tap grid."""
    c, h, w = 64, 10, 12
    dcn = GroupedDeformConv(c, 8, dilation=1)
    with torch.no_grad():
        dcn.weight.zero_()
        dcn.bias.zero_()
        dcn.weight[torch.arange(c), torch.arange(c) % 8, 1, 1] = 1.0  # identity on the centre tap
    ref = torch.rand(1, c, h, w)
    moved = torch.zeros_like(ref)  # moved[y, x] = ref[y - dy, x - dx]
    moved[..., max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        ref[..., max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    inner = (..., slice(2, h - 2), slice(3, w - 3))
    for impl in ('fast', 'reference'):
        dcn.impl = impl
        offset = torch.zeros(1, 8, 9, 2, h, w)
        offset[:, :, 4, 0], offset[:, :, 4, 1] = dy, dx
        out = dcn(moved, offset.reshape(1, 144, h, w), torch.ones(1, 72, h, w))
        torch.testing.assert_close(out[inner], ref[inner])
        swapped = offset.flip(3)
        assert not torch.allclose(dcn(moved, swapped.reshape(1, 144, h, w), torch.ones(1, 72, h, w))[inner],
                                  ref[inner])


def test_fast_and_reference_agree_in_outputs_and_gradients() -> None:
    model = tiny()
    _redraw(model, 3)
    model.train()
    x = _burst(2, 4, 8, seed=1)
    results = {}
    for impl in ('fast', 'reference'):
        model.set_impl(impl)
        model.zero_grad()
        out = model(x)
        out.square().mean().backward()
        results[impl] = (out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()})
    (o1, g1), (o2, g2) = results['fast'], results['reference']
    assert (o1 - o2).norm() / o2.norm() < 1e-5
    for name in g1:
        assert (g1[name] - g2[name]).norm() <= 1e-4 * g2[name].norm() + 1e-9, name


# ----------------------------------------------------------------------------------------------------- frames
def _frame_features(model: BIPNet, x: torch.Tensor) -> torch.Tensor:
    """The refined per-frame features just before the pseudo-burst transpose: (B, N, 64, h, w)."""
    seen = []
    handle = model.conv2.register_forward_pre_hook(lambda m, i: seen.append(i[0]))
    with torch.no_grad():
        model(x)
    handle.remove()
    b, h, w = x.shape[0], x.shape[-2], x.shape[-1]
    return seen[0].view(b, 64, N, h, w).transpose(1, 2)  # undo the transpose: pseudo-burst c holds channel c


def test_frames_are_aligned_to_frame_0_independently() -> None:
    """Up to the pseudo-burst conv each frame only meets frame 0: permuting frames 1..13 permutes the per-frame
    features; changing frame 0 changes all of them, changing frame 5 only frame 5's."""
    model = tiny()
    _redraw(model, 4)
    x = _burst(2, 4, 4, seed=2)
    perm = [0] + list(range(13, 0, -1))
    f = _frame_features(model, x)
    torch.testing.assert_close(_frame_features(model, x[:, perm]), f[:, perm], rtol=1e-4, atol=1e-5)
    y = x.clone()
    y[:, 5] = torch.rand_like(y[:, 5])
    g = _frame_features(model, y)
    torch.testing.assert_close(g[:, [k for k in range(N) if k != 5]], f[:, [k for k in range(N) if k != 5]])
    assert not torch.allclose(g[:, 5], f[:, 5], atol=1e-3)
    z = x.clone()
    z[:, 0] = torch.rand_like(z[:, 0])
    assert all(not torch.allclose(_frame_features(model, z)[:, k], f[:, k], atol=1e-3) for k in range(N))


def test_identical_frames_and_the_frame_order_of_the_pseudo_bursts() -> None:
    """A burst of identical frames gives identical per-frame features (frame 0 included: it is deformed like
    the others); then ``conv2`` sees 14 equal channels, so its kernels act summed over the frames. The output
    depends on the order of frames 1..13 (one kernel per frame), unlike a symmetric pooling."""
    model = tiny()
    _redraw(model, 5)
    frames = _burst(1, 4, 4, seed=3)[:, :1].expand(1, N, 4, 4, 4).contiguous()
    f = _frame_features(model, frames)
    for k in range(1, N):
        torch.testing.assert_close(f[:, k], f[:, 0], rtol=1e-5, atol=1e-6)
    summed = tiny()
    summed.load_state_dict(model.state_dict())
    with torch.no_grad():
        w = model.conv2[0].weight
        summed.conv2[0].weight.copy_(w.sum(dim=1, keepdim=True).expand_as(w) / N)
        torch.testing.assert_close(summed(frames), model(frames), rtol=1e-4, atol=1e-6)
        x = _burst(1, 4, 4, seed=4)
        out = model(x)
        rev = model(x[:, [0] + list(range(13, 0, -1))])
    assert (rev - out).norm() > 0.01 * out.norm()


def test_each_burst_of_a_batch_gives_its_own_output() -> None:
    model = tiny()
    _redraw(model, 7)
    x = _burst(3, 4, 8, seed=5)
    with torch.no_grad():
        batch = model(x)
        assert batch.shape == (3, 3, 32, 64)
        for i in range(3):
            torch.testing.assert_close(batch[i:i + 1], model(x[i:i + 1]), rtol=1e-4, atol=1e-6)
    assert (batch[0] - batch[1]).abs().max() > 0.05 * batch.abs().max()


def test_short_training_run_loss_falls() -> None:
    model = tiny().train()
    x = _burst(2, 4, 4, seed=6)
    y = F.interpolate(x[:, 0, [0, 1, 3]], scale_factor=8, mode='bilinear', align_corners=False)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(12):
        opt.zero_grad()
        loss = F.l1_loss(model(x).clamp(0, 1), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert min(losses[-3:]) < 0.7 * losses[0], losses


# ----------------------------------------------------------------------------------------------------- precision
@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_mixed_precision_autocast(dtype: torch.dtype) -> None:
    model = tiny()
    _redraw(model, 8)
    x = _burst(2, 4, 4, seed=7)
    seen = {}

    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        seen.setdefault('dcn', (inputs[1].dtype, output.dtype))

    model.deform2.register_forward_hook(hook)
    with torch.no_grad():
        ref = model(x)
        with torch.autocast('cpu', dtype=dtype):
            out = model(x)
            gca = model.encoder[0].module[0].gcnet[0]
            xl = torch.randn(2, 64, 4, 4).to(dtype)
            g = gca(xl)
    assert out.shape == ref.shape and torch.isfinite(out.float()).all()
    assert (out.float() - ref).norm() / ref.norm() < 0.05
    assert seen['dcn'][0] == torch.float32  # the offsets are computed in float32
    assert g.dtype == dtype
    model.train()
    with torch.autocast('cpu', dtype=dtype):
        loss = model(x).float().mean()
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_whole_model_in_bfloat16() -> None:
    model = tiny().to(torch.bfloat16)
    out = model(_burst(1, 4, 4).to(torch.bfloat16))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()


# ----------------------------------------------------------------------------------------------------- oracle
# A literal, functional transcription of the original forward (batch of one: ``burst = burst[0]``, the frame axis
# as the batch axis, torchvision's deform_conv2d called directly, the pseudo-bursts by ``permute(1, 0, 2, 3)``),
# written from the paper's code description (akshaydudhane16/BIPNet, Burst_Super_Resolution/Network.py).
def _o_conv(sd, key, x):
    w = sd[key]
    return F.conv2d(x, w, padding=w.shape[-1] // 2)


def _o_lrelu(x):
    return F.leaky_relu(x, 0.2)


def _o_rgca(sd, p, x):
    res = _o_conv(sd, f'{p}.body.2.weight', _o_lrelu(_o_conv(sd, f'{p}.body.0.weight', x)))
    n, c, h, w = res.shape
    mask = _o_conv(sd, f'{p}.gcnet.0.conv_mask.weight', res).view(n, 1, h * w)
    mask = F.softmax(mask, dim=2).unsqueeze(-1)  # (n, 1, hw, 1)
    context = torch.matmul(res.view(n, c, h * w).unsqueeze(1), mask).view(n, c, 1, 1)
    term = _o_conv(sd, f'{p}.gcnet.0.channel_add_conv.2.weight',
                   _o_lrelu(_o_conv(sd, f'{p}.gcnet.0.channel_add_conv.0.weight', context)))
    res = _o_conv(sd, f'{p}.conv1x1.weight', res + term)
    return res + x


def _o_rgcab(sd, p, x, units):
    y = x
    for i in range(units):
        y = _o_rgca(sd, f'{p}.module.{i}', y)
    return x + _o_conv(sd, f'{p}.module.{units}.weight', y)


def _o_stack(sd, p, x, blocks, units):
    for i in range(blocks):
        x = _o_rgcab(sd, f'{p}.{i}', x, units)
    return x


def _o_dcn(sd, k, x, feat):
    o1, o2, m = _o_conv(sd, f'offset_conv{k}.weight', feat).chunk(3, dim=1)
    return deform_conv2d(x, torch.cat((o1, o2), dim=1), sd[f'deform{k}.weight'], sd[f'deform{k}.bias'],
                         padding=1, mask=torch.sigmoid(m))


def _o_agu(sd, p, x):
    g, m, c, h, w = x.shape
    z = _o_lrelu(_o_conv(sd, f'{p}.conv_du.0.weight', x.sum(dim=1)))
    att = torch.cat([_o_conv(sd, f'{p}.convs.{i}.weight', z) for i in range(4)], dim=1).view(g, 4, c, h, w)
    v = (x * F.softmax(att, dim=1)).view(g, 4 * c, h, w)
    return F.conv_transpose2d(v, sd[f'{p}.up.weight'], stride=2, padding=1, output_padding=1)


def _o_unet(sd, x, blocks, units):
    p = 'UNet.0'

    def down(k, t):
        return _o_conv(sd, f'{p}.down{k}.down.1.weight', F.avg_pool2d(t, 2, ceil_mode=True, count_include_pad=False))

    def up(k, t):
        return F.interpolate(_o_conv(sd, f'{p}.up{k}.up.0.weight', t), scale_factor=2, mode='bilinear',
                             align_corners=True)

    x1 = _o_stack(sd, f'{p}.feat_ext1', x, blocks[0], units)
    e1 = _o_stack(sd, f'{p}.feat_ext2', down(1, x1), blocks[1], units)
    e2 = _o_stack(sd, f'{p}.feat_ext3', down(2, e1), blocks[2], units)
    d = _o_stack(sd, f'{p}.feat_ext5', up(2, e2) + e1, blocks[3], units)
    return _o_stack(sd, f'{p}.feat_ext6', up(1, d) + x1, blocks[4], units)


def original_forward(sd: dict, burst: torch.Tensor, blocks: int, units: int, unet_blocks, unet_units: int):
    b = burst[0]
    s = _o_conv(sd, 'conv1.0.weight', b)
    base = s[0].unsqueeze(0)
    e = _o_stack(sd, 'encoder', s, blocks, units)
    ref = e[0].unsqueeze(0).repeat(e.shape[0], 1, 1, 1)
    f = _o_conv(sd, 'bottleneck.weight', torch.cat([ref, e], dim=1))
    f = _o_dcn(sd, 1, f, f)
    f2 = _o_dcn(sd, 2, f, f)
    f = _o_dcn(sd, 3, e, f2)
    a = _o_dcn(sd, 4, f, f)
    g = _o_stack(sd, 'feat_ext1', a, blocks, units)
    g = g + _o_conv(sd, 'cor_conv1.0.weight', g - base)
    q = _o_conv(sd, 'conv2.0.weight', g.permute(1, 0, 2, 3))
    m = _o_unet(sd, q, unet_blocks, unet_units)
    _, c, h, w = m.shape
    z = _o_agu(sd, 'SKFF1', m.view(16, 4, c, h, w))
    z = _o_agu(sd, 'SKFF2', z.view(4, 4, c, 2 * h, 2 * w))
    z = _o_agu(sd, 'SKFF3', z.view(1, 4, c, 4 * h, 4 * w))
    return _o_conv(sd, 'conv3.0.weight', z)


@pytest.mark.parametrize('impl', ['fast', 'reference'])
def test_matches_a_literal_transcription_of_the_original(impl: str) -> None:
    cfg = dict(num_blocks=2, num_units=2, unet_blocks=(1, 2, 1, 1, 2), unet_units=1)
    model = tiny(**cfg, impl=impl)
    _redraw(model, 11)
    sd = model.state_dict()
    x = _burst(2, 4, 8, seed=8)
    with torch.no_grad():
        ours = model(x)
        for i in range(2):  # the original sees burst[0] only: feed it each burst alone
            ref = original_forward(sd, x[i:i + 1], 2, 2, cfg['unet_blocks'], 1)
            assert (ours[i:i + 1] - ref).norm() / ref.norm() < 1e-5
        # the redrawn weights give offsets of about a pixel and masks far from 0.5
        offset, mask = model.offset_conv1(model.bottleneck(torch.cat(
            [model.encoder(model.conv1(x[0]))[:1].expand(N, -1, -1, -1), model.encoder(model.conv1(x[0]))], 1))
        ).split((144, 72), dim=1)
    assert offset.abs().mean() > 0.5 and (torch.sigmoid(mask) - 0.5).abs().mean() > 0.15


def test_published_size_matches_the_original() -> None:
    torch.manual_seed(0)
    model = BIPNet().eval()
    _redraw(model, 12)
    x = _burst(1, 4, 4, seed=9)
    with torch.no_grad():
        ours = model(x)
        ref = original_forward(model.state_dict(), x, 3, 3, (2, 2, 1, 2, 2), 2)
    assert ours.shape == (1, 3, 32, 32)
    assert (ours - ref).norm() / ref.norm() < 1e-5


class _LightningBookkeeping:
    """Stands for an object in a Lightning checkpoint's bookkeeping that the safe loader refuses."""

    def __init__(self) -> None:
        self.monitor = 'val_psnr'


def test_convert_script_takes_both_released_layouts(tmp_path: Path) -> None:
    from codes.scripts.convert_burstormer_checkpoint import convert_file
    net = tiny()
    want = {'type': 'BIPNet', 'num_blocks': 1, 'num_units': 1, 'unet_blocks': [1, 1, 1, 1, 1], 'unet_units': 1}
    ckpt = tmp_path / 'BIPNet.ckpt'
    torch.save({'epoch': 299, 'state_dict': net.state_dict(), 'callbacks': {'x': _LightningBookkeeping()}}, ckpt)
    with pytest.raises(CheckpointError, match=r'BIPNet\.ckpt: the safe loader .*--trust'):
        convert_file(ckpt, tmp_path / 'out.pth')
    assert convert_file(ckpt, tmp_path / 'out.pth', trust=True) == want
    pth = tmp_path / 'BIPNet.pth'
    torch.save({'epoch': 24, 'model_state_dict': net.state_dict(), 'optimizer_state_dict': {}}, pth)
    assert convert_file(pth, tmp_path / 'out2.pth') == want
    other = tiny(seed=1)
    load_network(other, tmp_path / 'out2.pth', strict=True)
    assert all(torch.equal(a, b) for a, b in zip(other.state_dict().values(), net.state_dict().values()))
    from codes.utils.checkpoint import CheckpointLayoutError
    from codes.utils.errors import UserError
    assert issubclass(CheckpointLayoutError, UserError) and issubclass(CheckpointLayoutError, ValueError)
