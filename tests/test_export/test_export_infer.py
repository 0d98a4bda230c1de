"""``infer.py`` on exported ONNX files (same tiled outputs as the PyTorch path), and every bad file refused in one
line naming the file and what was expected."""
from __future__ import annotations

import functools
import json

import cv2
import numpy as np
import pytest
import torch

from codes.infer import infer_pipeline
from codes.utils.checkpoint import CheckpointError
from codes.utils.errors import UserError, run_cli
from tests.test_export.conftest import export
from tests.test_infer.helpers import photo_rgb, write_png_burst

pytestmark = pytest.mark.usefixtures('one_thread')


def _read16(path) -> np.ndarray:
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED).astype(np.float32) / 65535


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_burst_through_onnx_runtime_equals_pytorch(weights, onnx_files, tmp_path):
    """BSRT's file takes one tile size only: infer.py tiles a larger burst with it, as the PyTorch path does."""
    path, summary = onnx_files['BSRT']
    tile = summary['fixed_hw'][0] if summary['fixed_hw'] else 24
    write_png_burst(tmp_path / 'burst', 2, (36, 44))
    common = ['--input', str(tmp_path / 'burst'), '--device', 'cpu', '--tile', str(tile), '--tile-overlap', '8']
    ours = infer_pipeline(['--weights', str(path), '--output', str(tmp_path / 'onnx')] + common)
    ref = infer_pipeline(['--weights', str(weights['BSRT']), '--output', str(tmp_path / 'torch')] + common)
    a, b = _read16(ours[0]['linear']), _read16(ref[0]['linear'])
    assert a.shape == b.shape == (288, 352, 3)
    assert np.abs(a - b).max() <= 1e-4 + 1 / 65535 and _rel(a, b) < 1e-4
    summary_file = json.loads((tmp_path / 'onnx' / 'infer_summary.json').read_text())
    assert summary_file['param_key'] == 'onnx' and summary_file['network_g']['type'] == 'BSRT'


def test_image_through_onnx_runtime_equals_pytorch(weights, onnx_files, tmp_path):
    path, summary = onnx_files['DCLS']
    side = summary['fixed_hw'][0] if summary['fixed_hw'] else 10
    imgs = tmp_path / 'imgs'
    imgs.mkdir()
    rgb = (photo_rgb(side, side).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    cv2.imwrite(str(imgs / 'a.png'), rgb[..., ::-1])
    common = ['--input', str(imgs), '--device', 'cpu', '--tile', '0']
    ours = infer_pipeline(['--weights', str(path), '--output', str(tmp_path / 'onnx')] + common)
    ref = infer_pipeline(['--weights', str(weights['DCLS']), '--output', str(tmp_path / 'torch')] + common)
    assert _rel(_read16(ours[0]['sr16']), _read16(ref[0]['sr16'])) < 1e-4
    k1, k2 = np.load(ours[0]['kernel_npy']), np.load(ref[0]['kernel_npy'])
    assert _rel(k1, k2) < 1e-4


def _burst_args(tmp_path):
    write_png_burst(tmp_path / 'b', 2, (24, 24))
    return ['--input', str(tmp_path / 'b'), '--output', str(tmp_path / 'o'), '--device', 'cpu']


def test_bad_onnx_files_are_refused(onnx_files, tmp_path):
    args = _burst_args(tmp_path)
    bsrt, ebsr = onnx_files['BSRT'][0], onnx_files['EBSR'][0]
    # another network's ONNX
    with pytest.raises(CheckpointError, match=r'EBSR\.onnx: an ONNX export of EBSR, not BSRT'):
        infer_pipeline(['--weights', str(ebsr), '--arch', 'BSRT'] + args)
    # an ONNX of the wrong burst size
    with pytest.raises(CheckpointError, match=r'BSRT\.onnx: exported for bursts of 2 frames, not 3'):
        infer_pipeline(['--weights', str(bsrt), '--arch', 'BSRT', '--burst-size', '3'] + args)
    # a corrupt file
    bad = tmp_path / 'corrupt.onnx'
    bad.write_bytes(bsrt.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match=r'corrupt\.onnx: not a readable ONNX model'):
        infer_pipeline(['--weights', str(bad)] + args)
    # an ONNX model that is not one of ours
    foreign = tmp_path / 'foreign.onnx'
    torch.onnx.export(torch.nn.Conv2d(4, 3, 3), (torch.rand(1, 4, 8, 8), ), str(foreign), dynamo=False)
    with pytest.raises(CheckpointError, match=r'foreign\.onnx: an ONNX file without the metadata bsr-export'):
        infer_pipeline(['--weights', str(foreign)] + args)
    # metadata that does not match the graph (a file of another burst size relabelled)
    import onnx
    model = onnx.load(str(bsrt))
    for p in model.metadata_props:
        if p.key == 'bsr.layout':
            p.value = json.dumps({**json.loads(p.value), 'frames': 5})
    tampered = tmp_path / 'tampered.onnx'
    onnx.save(model, str(tampered))
    with pytest.raises(CheckpointError, match=r'tampered\.onnx: its metadata says BSRT for bursts of 5 frames.*'
                                              r'input shape \[.*2, 4'):
        infer_pipeline(['--weights', str(tampered)] + args)
    # an ONNX file is not weights for training
    from codes.utils.checkpoint import load_file
    with pytest.raises(CheckpointError, match=r'BSRT\.onnx: an ONNX graph holds no weights'):
        load_file(bsrt)
    # precision other than fp32
    from codes.utils.build import OptionError
    with pytest.raises(OptionError, match='runs in fp32'):
        infer_pipeline(['--weights', str(bsrt), '--precision', 'bf16'] + args)


def test_bad_safetensors_and_one_line_exit(weights, tmp_path, capsys, monkeypatch):
    import logging
    monkeypatch.setattr(logging.getLogger('codes'), 'handlers', [])  # as in the tolerance test below
    args = _burst_args(tmp_path)
    ebsr = tmp_path / 'ebsr.safetensors'
    export(weights['EBSR'], 'safetensors', ebsr)
    with pytest.raises(CheckpointError, match=r'ebsr\.safetensors: holds a EBSR network, not BSRT'):
        infer_pipeline(['--weights', str(ebsr), '--arch', 'BSRT'] + args)
    corrupt = tmp_path / 'corrupt.safetensors'
    corrupt.write_bytes(ebsr.read_bytes()[:300])
    with pytest.raises(CheckpointError, match=r'corrupt\.safetensors: not a readable safetensors file'):
        infer_pipeline(['--weights', str(corrupt)] + args)
    # the entry point: one line, exit status 2
    with pytest.raises(SystemExit) as exc:
        run_cli(lambda: infer_pipeline(['--weights', str(corrupt)] + args), 'infer.py')
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith('infer.py: error: ') and 'corrupt.safetensors' in err[0]


def test_export_over_tolerance_fails_with_the_error(weights, tmp_path, monkeypatch, capsys):
    """The check is real: with a tolerance no float graph meets, the command fails, naming each try's error."""
    import logging

    import codes.export.exporters as ex
    # console handlers an earlier infer_pipeline call of this process bound to pytest's since-closed capture stream
    monkeypatch.setattr(logging.getLogger('codes'), 'handlers', [])
    monkeypatch.setattr(ex, 'TOLERANCE', 0.0)
    monkeypatch.setattr(ex, 'AXIS_CANDIDATES', (('batch', 'height', 'width'), ))
    monkeypatch.setattr(ex, 'export_onnx', functools.partial(ex.export_onnx, exporters=('torchscript-onnx', )))
    from codes.scripts.export import export_pipeline
    out = tmp_path / 'e.onnx'
    with pytest.raises(SystemExit) as exc:
        run_cli(lambda: export_pipeline(['--weights', str(weights['EBSR']), '--format', 'onnx', '--output',
                                         str(out), '--size', '16']), 'bsr-export')
    assert exc.value.code == 2 and not out.exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'EBSR could not be exported to ONNX within the relative error tolerance 0' in err[0]
    assert 'relative error' in err[0].split('(fp32): ')[1]


def test_missing_extra_names_it(monkeypatch, weights, tmp_path):
    import sys
    monkeypatch.setitem(sys.modules, 'onnxruntime', None)
    with pytest.raises(UserError, match=r'burstsr-toolkit\[export\]'):
        export(weights['EBSR'], 'onnx', tmp_path / 'x.onnx')
    monkeypatch.setitem(sys.modules, 'safetensors', None)
    monkeypatch.setitem(sys.modules, 'safetensors.torch', None)
    (tmp_path / 'w.safetensors').write_bytes(b'x' * 16)
    from codes.utils.checkpoint import load_file
    with pytest.raises(CheckpointError, match=r'w\.safetensors: reading safetensors weights needs.*\[export\]'):
        load_file(tmp_path / 'w.safetensors')
