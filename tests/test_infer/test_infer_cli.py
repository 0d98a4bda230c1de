"""``infer.py`` end to end with tiny networks: every input kind, option file and flags, tiled vs untiled outputs,
the frame-count message, checkpoint formats (params / params_ema / module. prefix) and refused checkpoints."""
import json

import cv2
import numpy as np
import pytest
import torch
import yaml

from codes.archs import build_network
from codes.infer import infer_pipeline
from codes.utils.build import OptionError
from codes.utils.checkpoint import CheckpointError
from codes.data.camera_pipeline import mosaic, unpack_raw
from tests.test_infer.helpers import mosaic_counts, photo_rgb, seam_distance, tiny_bsrt, write_dng, write_png_burst

pytestmark = pytest.mark.usefixtures('one_thread')

TINY_DCLS = {'type': 'DCLS', 'scale': 2, 'kernel_size': 11, 'nf': 8, 'nb': 1, 'ng': 1, 'reduction': 2,
             'input_para': 16}



@pytest.fixture(scope='module')
def bsrt_ckpt(tmp_path_factory):
    """A tiny BSRT (burst 2) saved as our checkpoints are: {'params': ..., 'params_ema': ...}."""
    d = tmp_path_factory.mktemp('ckpt')
    net, ema = tiny_bsrt(0), tiny_bsrt(1)
    torch.save({'params': net.state_dict(), 'params_ema': ema.state_dict()}, d / 'net_g_10.pth')
    return d / 'net_g_10.pth', net, ema


def _read16(path):
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert img is not None and img.dtype == np.uint16
    return img[..., ::-1].astype(np.float32) / 65535  # RGB on disk


def test_png_burst_option_file_and_frame_rule(tmp_path, bsrt_ckpt):
    weights, _, ema = bsrt_ckpt
    write_png_burst(tmp_path / 'burst', 3, (24, 32))
    opt = {'name': 't', 'weights': str(weights), 'input': str(tmp_path / 'burst'), 'output': str(tmp_path / 'out'),
           'device': 'cpu', 'tile': None}
    (tmp_path / 'infer.yml').write_text(yaml.safe_dump(opt))
    records = infer_pipeline(['-opt', str(tmp_path / 'infer.yml')])
    assert len(records) == 1
    rec = records[0]
    assert rec['frames'] == 3 and rec['frames_used'] == [0, 1] and 'dropping frame 2' in rec['frame_rule']
    srgb = cv2.imread(rec['srgb'])
    assert srgb.shape == (192, 256, 3) and srgb.dtype == np.uint8 and srgb.std() > 1
    lin = _read16(rec['linear'])
    assert lin.shape == (192, 256, 3)
    # params_ema was taken ('auto'), and the linear file holds the EMA network's output
    summary = json.loads((tmp_path / 'out' / 'infer_summary.json').read_text())
    assert summary['param_key'] == 'params_ema' and summary['network_g']['burst_size'] == 2
    from codes.data.burst_readers import read_png_burst
    with torch.no_grad():
        ref = ema(read_png_burst(tmp_path / 'burst').frames[:2][None])[0].clamp(0, 1)
    assert np.abs(lin - ref.permute(1, 2, 0).numpy()).max() < 1e-4


def test_tiled_cli_matches_untiled_away_from_seams(tmp_path, bsrt_ckpt):
    weights, _, _ = bsrt_ckpt
    write_png_burst(tmp_path / 'burst', 2, (40, 44))  # 44 -> padded to 48: padding + tiling together
    base = ['--weights', str(weights), '--input', str(tmp_path / 'burst'), '--device', 'cpu', '--param-key',
            'params', '--linear-format', 'tiff']
    full = infer_pipeline(base + ['--output', str(tmp_path / 'full')])[0]
    tiled = infer_pipeline(base + ['--output', str(tmp_path / 'tiled'), '--tile', '24', '--tile-overlap', '8'])[0]
    assert full['linear'].endswith('.tiff')
    a, b = _read16(full['linear']), _read16(tiled['linear'])
    assert a.shape == b.shape == (320, 352, 3)
    # packed 40x48 after padding; tiles of 24 start at rows 0, 16 and columns 0, 16, 24: look >= 16 px from seams
    far = np.minimum(seam_distance(40, 24, 8, 8)[:, None], seam_distance(48, 24, 8, 8)[None, :])[:320, :352] >= 16
    assert far.mean() > 0.3
    assert np.abs(a - b).max(axis=2)[far].max() < 3e-3
    assert np.abs(a - b).mean() < 2e-3


def test_raw_and_burstsr_inputs(tmp_path, bsrt_ckpt):
    pytest.importorskip('rawpy')
    pytest.importorskip('tifffile')
    weights, _, _ = bsrt_ckpt
    raws = tmp_path / 'raws'
    raws.mkdir()
    rggb = unpack_raw(mosaic(photo_rgb(48, 56))).numpy()
    write_dng(raws / 'shot.dng', mosaic_counts(rggb, 'BGGR'), 'BGGR')  # one frame: repeated to the burst size
    rec = infer_pipeline(['--weights', str(weights), '--input', str(raws), '--output', str(tmp_path / 'o1'),
                          '--device', 'cpu', '--precision', 'bf16'])[0]
    assert rec['kind'] == 'raw' and rec['frames_used'] == [0, 0] and 'repeating' in rec['frame_rule']
    assert cv2.imread(rec['srgb']).shape == (192, 224, 3)
    assert 'as-shot' in rec['render']
    from codes.scripts.make_burstsr_sample import make_burstsr_sample
    make_burstsr_sample(tmp_path / 'bsr', num_train=0, num_val=1, crop_size=24, log=lambda s: None)
    rec = infer_pipeline(['--weights', str(weights), '--input', str(tmp_path / 'bsr' / 'val'),
                          '--output', str(tmp_path / 'o2'), '--device', 'cpu', '--no-linear'])[0]
    assert rec['kind'] == 'burstsr' and rec['frames'] == 14 and 'linear' not in rec
    assert cv2.imread(rec['srgb']).shape == (192, 192, 3)


def test_official_bare_state_dict_with_module_prefix(tmp_path, bsrt_ckpt):
    _, net, _ = bsrt_ckpt
    path = tmp_path / 'bsrt_official.pth'
    torch.save({f'module.{k}': v for k, v in net.state_dict().items()}, path)
    write_png_burst(tmp_path / 'b', 2, (24, 24))
    rec = infer_pipeline(['--weights', str(path), '--input', str(tmp_path / 'b'), '--output', str(tmp_path / 'o'),
                          '--device', 'cpu', '--arch', 'BSRT'])[0]
    assert rec['frames_used'] == [0, 1] and rec['frame_rule'] is None


def test_bad_checkpoints_are_refused(tmp_path, bsrt_ckpt):
    write_png_burst(tmp_path / 'b', 2, (24, 24))
    args = ['--input', str(tmp_path / 'b'), '--output', str(tmp_path / 'o'), '--device', 'cpu']
    junk = tmp_path / 'junk.pth'
    junk.write_bytes(b'this is not a checkpoint')
    with pytest.raises(CheckpointError, match='junk.pth: not a readable PyTorch checkpoint'):
        infer_pipeline(['--weights', str(junk)] + args)
    state = tmp_path / 'state.pth'
    torch.save({'iter': 3, 'optimizers': []}, state)
    with pytest.raises(CheckpointError, match='state.pth: not a state_dict'):
        infer_pipeline(['--weights', str(state)] + args)
    code = tmp_path / 'code.pth'
    torch.save({'params': _RunsCode()}, code)
    with pytest.raises(CheckpointError, match='code.pth: cannot be loaded safely') as info:
        infer_pipeline(['--weights', str(code)] + args)
    assert 'weights_only=False' not in str(info.value)  # torch's advice would run the file's code
    foreign = tmp_path / 'resnet.pth'
    torch.save(torch.nn.Conv2d(3, 8, 3).state_dict(), foreign)
    with pytest.raises(CheckpointError, match='resnet.pth: its keys belong to no known architecture'):
        infer_pipeline(['--weights', str(foreign)] + args)
    with pytest.raises(FileNotFoundError, match='checkpoint not found'):
        infer_pipeline(['--weights', str(tmp_path / 'missing.pth')] + args)


class _RunsCode:
    def __reduce__(self):
        import os
        return (os.getcwd, ())


def test_wrong_architecture_checkpoints(tmp_path, bsrt_ckpt):
    weights, _, _ = bsrt_ckpt
    write_png_burst(tmp_path / 'b', 2, (24, 24))
    args = ['--input', str(tmp_path / 'b'), '--output', str(tmp_path / 'o'), '--device', 'cpu']
    torch.manual_seed(0)
    dcls = tmp_path / 'dcls.pth'
    torch.save(build_network(TINY_DCLS).state_dict(), dcls)
    with pytest.raises(CheckpointError, match='dcls.pth: holds a DCLS network, not BSRT'):
        infer_pipeline(['--weights', str(dcls), '--arch', 'BSRT'] + args)
    opt = {'weights': str(dcls), 'input': str(tmp_path / 'b'), 'output': str(tmp_path / 'o'), 'device': 'cpu',
           'network_g': {'type': 'BSRT', 'level': 'S'}}
    (tmp_path / 'd.yml').write_text(yaml.safe_dump(opt))
    with pytest.raises(CheckpointError, match=r'dcls.pth: holds a DCLS network, not BSRT \(network_g.type'):
        infer_pipeline(['-opt', str(tmp_path / 'd.yml')])
    with pytest.raises(OptionError, match='need --arch BSRT'):
        infer_pipeline(['--weights', str(dcls), '--arch', 'DCLS', '--level', 'S'] + args)
    # a BSRT checkpoint of another size than the named level
    with pytest.raises(CheckpointError, match='does not fit BSRT.*other shapes'):
        infer_pipeline(['--weights', str(weights), '--arch', 'BSRT', '--level', 'S'] + args)
    # network_g in an option file that does not match the weights
    opt = {'weights': str(weights), 'input': str(tmp_path / 'b'), 'output': str(tmp_path / 'o'), 'device': 'cpu',
           'network_g': {'type': 'BSRT', 'embed_dim': 12, 'depths': [1, 1], 'num_heads': 2, 'burst_size': 3,
                         'num_feat': 16}}
    (tmp_path / 'o.yml').write_text(yaml.safe_dump(opt))
    with pytest.raises(CheckpointError, match='fusion.weight'):
        infer_pipeline(['-opt', str(tmp_path / 'o.yml')])
    # a BSRT checkpoint given to DCLS inputs is fine to load, but its input kind must be a burst
    with pytest.raises(OptionError, match="'image' is for DCLS"):
        infer_pipeline(['--weights', str(weights), '--input-kind', 'image'] + args)


def test_options_errors(tmp_path):
    with pytest.raises(OptionError, match='--weights'):
        infer_pipeline(['--input', 'x', '--output', str(tmp_path)])
    (tmp_path / 'o.yml').write_text(yaml.safe_dump({'weights': 'w', 'input': 'i', 'output': 'o', 'tyle': 64}))
    with pytest.raises(OptionError, match="o.yml: option 'tyle': unknown key. Did you mean 'tile'"):
        infer_pipeline(['-opt', str(tmp_path / 'o.yml')])
    if not torch.cuda.is_available():
        with pytest.raises(OptionError, match='CUDA was asked for'):
            infer_pipeline(['--weights', 'w', '--input', 'i', '--output', str(tmp_path / 'o'), '--device', 'cuda'])


def test_dcls_images_kernel_and_tiling(tmp_path):
    torch.manual_seed(0)
    net = build_network(TINY_DCLS)
    weights = tmp_path / 'dcls.pth'
    torch.save({'params': net.state_dict()}, weights)
    imgs = tmp_path / 'imgs'
    imgs.mkdir()
    rgb = (photo_rgb(40, 48).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    cv2.imwrite(str(imgs / 'a.png'), rgb[..., ::-1])
    cv2.imwrite(str(imgs / 'b.jpg'), rgb[:30, :36, ::-1])
    base = ['--weights', str(weights), '--input', str(imgs), '--device', 'cpu']
    recs = infer_pipeline(base + ['--output', str(tmp_path / 'o')])
    assert [r['kind'] for r in recs] == ['image', 'image']
    assert cv2.imread(recs[0]['srgb']).shape == (80, 96, 3) and cv2.imread(recs[1]['srgb']).shape == (60, 72, 3)
    kernel = np.load(recs[0]['kernel_npy'])
    assert kernel.shape == (11, 11) and kernel.sum() == pytest.approx(1.0, abs=1e-5)
    assert cv2.imread(recs[0]['kernel_png'], cv2.IMREAD_UNCHANGED).shape == (88, 88)
    with torch.no_grad():
        sr, k = net(torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255)
    assert np.allclose(kernel, k[0, 0].numpy(), atol=1e-5)
    assert np.abs(_read16(recs[0]['sr16']) - sr[0].permute(1, 2, 0).numpy()).max() < 1e-4
    # tiled with a given kernel: every tile restored with the same kernel; the kernel estimate is not re-run
    given = tmp_path / 'k.npy'
    np.save(given, kernel)
    untiled = infer_pipeline(base + ['--output', str(tmp_path / 'u'), '--kernel', str(given)])[0]
    tiled = infer_pipeline(base + ['--output', str(tmp_path / 't'), '--kernel', str(given), '--tile', '24',
                                   '--tile-overlap', '8'])[0]
    assert tiled['kernel'] == 'given'
    a, b = _read16(untiled['sr16']), _read16(tiled['sr16'])
    assert a.shape == b.shape == (80, 96, 3)
    # DCLS's channel attention pools over its whole input, so tiles differ from one pass more than BSRT's do
    assert np.abs(a - b).mean() < 0.05
    with pytest.raises(OptionError, match='kernel'):
        infer_pipeline(base + ['--output', str(tmp_path / 'x'), '--kernel', str(tmp_path / 'nope.npy')])


def test_entry_point_reports_errors_in_one_line(tmp_path):
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[2]
    res = subprocess.run([sys.executable, str(root / 'infer.py'), '--weights', str(tmp_path / 'missing.pth'),
                          '--input', str(tmp_path), '--output', str(tmp_path / 'o'), '--device', 'cpu'],
                         capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert res.returncode == 2 and 'Traceback' not in res.stderr
    assert res.stderr.strip().splitlines()[-1] == f'infer.py: error: checkpoint not found: {tmp_path / "missing.pth"}'
