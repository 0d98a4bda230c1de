"""PWC-Net in pure PyTorch: the official weight-file layout, strict loading, correlation, warping, flow wrapper."""
import pytest
import torch

from codes.archs.pwcnet_arch import PWCNet, backwarp, convert_pwcnet_checkpoint, correlation
from codes.metrics.alignment import PWCNetFlow
from codes.utils.checkpoint import CheckpointError

#: A sample of the official layout (sniklaus/pytorch-pwc 'default': 'module' names, upstream widths).
EXPECTED = {
    'netExtractor.netOne.0.weight': (16, 3, 3, 3), 'netExtractor.netSix.4.weight': (196, 196, 3, 3),
    'netSix.netOne.0.weight': (128, 81, 3, 3), 'netSix.netSix.0.weight': (2, 529, 3, 3),
    'netFiv.netUpflow.weight': (2, 2, 4, 4), 'netFiv.netUpfeat.weight': (529, 2, 4, 4),
    'netFiv.netOne.0.weight': (128, 213, 3, 3), 'netTwo.netUpfeat.weight': (597, 2, 4, 4),
    'netTwo.netOne.0.weight': (128, 117, 3, 3), 'netTwo.netSix.0.weight': (2, 565, 3, 3),
    'netRefiner.netMain.0.weight': (128, 565, 3, 3), 'netRefiner.netMain.8.weight': (64, 96, 3, 3),
    'netRefiner.netMain.12.weight': (2, 32, 3, 3),
}


def official_file(tmp_path, net):
    """The weights of ``net`` saved as the official file names them ('module' instead of 'net')."""
    sd = {k.replace('net', 'module'): v.clone() for k, v in net.state_dict().items()}
    path = tmp_path / 'pwcnet-network-default.pth'
    torch.save(sd, path)
    return path, sd


def test_key_layout_and_shapes():
    sd = PWCNet().state_dict()
    assert len(sd) == 126  # 36 extractor + 4 x 16 + 12 decoders + 14 refiner
    for key, shape in EXPECTED.items():
        assert tuple(sd[key].shape) == shape, key
    assert 'netSix.netUpflow.weight' not in sd  # the coarsest level has no upsampling
    assert sum(v.numel() for v in sd.values()) == 9374274


def test_official_file_loads_strictly_and_gives_the_same_flow(tmp_path):
    torch.manual_seed(0)
    src = PWCNet()
    path, sd = official_file(tmp_path, src)
    assert next(iter(sd)).startswith('moduleExtractor.moduleOne')
    assert set(convert_pwcnet_checkpoint(sd)) == set(src.state_dict())
    loaded = PWCNet(load_path=str(path))
    x, y = torch.rand(1, 3, 64, 64), torch.rand(1, 3, 64, 64)
    assert torch.equal(loaded(x, y), src(x, y))
    assert not any(p.requires_grad for p in loaded.parameters()) and not loaded.train().training
    del sd['moduleRefiner.moduleMain.0.weight']
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match='pwcnet-network-default.pth.*1 missing'):
        PWCNet(load_path=str(path))


def test_correlation_matches_a_direct_sum():
    torch.manual_seed(1)
    a, b = torch.randn(2, 5, 7, 9), torch.randn(2, 5, 7, 9)
    vol = correlation(a, b)
    assert vol.shape == (2, 81, 7, 9)
    for dy, dx, y, x in ((-4, -4, 6, 8), (0, 0, 3, 3), (2, -3, 1, 5), (4, 4, 2, 2), (-1, 3, 0, 0)):
        ch = (dy + 4) * 9 + (dx + 4)
        yy, xx = y + dy, x + dx
        want = (a[:, :, y, x] * b[:, :, yy, xx]).mean(1) if 0 <= yy < 7 and 0 <= xx < 9 else torch.zeros(2)
        assert torch.allclose(vol[:, ch, y, x], want, atol=1e-6), (dy, dx, y, x)


def test_backwarp_zero_flow_is_identity_and_masks_outside():
    img = torch.rand(1, 3, 8, 10)
    assert torch.allclose(backwarp(img, torch.zeros(1, 2, 8, 10)), img, atol=1e-6)
    flow = torch.zeros(1, 2, 8, 10)
    flow[:, 0] = 3.0
    assert torch.all(backwarp(img, flow)[..., -2:] == 0)


def test_estimate_flow_any_size_on_random_weights(tmp_path):
    torch.manual_seed(2)
    path, _ = official_file(tmp_path, PWCNet())
    est = PWCNetFlow(str(path))
    src, tgt = torch.rand(2, 3, 50, 70), torch.rand(2, 3, 50, 70)
    flow = est.estimate_flow(src, tgt)
    assert flow.shape == (2, 2, 50, 70) and torch.isfinite(flow).all()
    with pytest.raises(ValueError, match='two \\(B, 3, H, W\\) images'):
        est.net.estimate_flow(src, tgt[..., :60])
