"""Every family exported to ONNX and TorchScript and run back equal to PyTorch; safetensors round trip."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from codes.archs import build_network
from codes.archs.arch_detect import fitting_network_hint
from codes.export.exporters import TOLERANCE, relative_error
from codes.export.layout import export_module, layout_of
from codes.utils.checkpoint import CheckpointError, extract_state_dict, load_file, load_network
from tests.test_export.conftest import TINY, export

pytestmark = pytest.mark.usefixtures('one_thread')


def _pytorch(weights_path, family):
    net = build_network(TINY[family]).eval()
    net.load_state_dict(torch.load(weights_path, weights_only=True)['params'])
    if hasattr(net, 'set_impl'):
        net.set_impl('fast')
    return net


def _sizes(layout):
    """Two (batch, h, w) the file claims to take: other sizes than the export's check where the axes are dynamic."""
    b = 2 if 'batch' in layout['dynamic'] else layout['fixed_batch']
    if layout['fixed_hw']:
        return [(b, *layout['fixed_hw'])] * 2
    m = layout['multiple']
    base = -(-max(20, layout['min_size']) // m) * m
    return [(b, base, base + m), (1 if b is None else b, base + 2 * m, base)]


@pytest.mark.parametrize('family', list(TINY))
def test_onnx_runs_back_equal(family, weights, onnx_files):
    import onnxruntime as ort
    path, summary = onnx_files[family]
    net = _pytorch(weights[family], family)
    session = ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    meta = session.get_modelmeta().custom_metadata_map
    import json
    layout = json.loads(meta['bsr.layout'])
    assert meta['bsr.family'] == family and json.loads(meta['bsr.network_g'])['type'] == family
    assert layout['dynamic'] == summary['dynamic_axes'] and all(e <= TOLERANCE for _, e in summary['errors'])
    if family == 'EBSR':  # the one family whose graph takes any h and w
        assert {'height', 'width'} <= set(layout['dynamic'])
    lay = layout_of(net, family)
    module = export_module(net, lay)
    names = [i.name for i in session.get_inputs()]
    for k, (b, h, w) in enumerate(_sizes(layout)):
        args = lay.example(b, h, w, seed=10 + k)
        with torch.no_grad():
            want = module(*args)
        got = session.run(None, {n: a.numpy() for n, a in zip(names, args)})
        assert relative_error(got, want if isinstance(want, tuple) else [want]) < TOLERANCE


@pytest.mark.parametrize('family', list(TINY))
def test_torchscript_runs_back_equal(family, weights, tmp_path):
    summary = export(weights[family], 'torchscript', tmp_path / 'm.pt', opt_file=weights[family].with_suffix('.yml'))
    assert summary['exporter'] == 'torch.jit.trace' and len(summary['errors']) >= 2
    extra = {'bsr_meta.json': ''}
    loaded = torch.jit.load(str(tmp_path / 'm.pt'), map_location='cpu', _extra_files=extra)
    import json
    meta = json.loads(extra['bsr_meta.json'])
    layout = json.loads(meta['bsr.layout'])
    net = _pytorch(weights[family], family)
    lay = layout_of(net, family)
    module = export_module(net, lay)
    for k, (b, h, w) in enumerate(_sizes(layout)):
        args = lay.example(b, h, w, seed=20 + k)
        with torch.no_grad():
            want, got = module(*args), loaded(*args)
        want, got = (list(want), list(got)) if isinstance(want, tuple) else ([want], [got])
        assert relative_error(got, want) < TOLERANCE


def test_safetensors_round_trip_strict_and_without_pickle(weights, tmp_path, monkeypatch):
    path = tmp_path / 'bsrt.safetensors'
    summary = export(weights['BSRT'], 'safetensors', path)
    assert summary['format'] == 'safetensors'
    want = torch.load(weights['BSRT'], weights_only=True)['params']

    def no_pickle(*_, **__):
        raise AssertionError('a safetensors file must be read without torch.load / pickle')
    monkeypatch.setattr(torch, 'load', no_pickle)
    monkeypatch.setattr(pickle, 'Unpickler', no_pickle)
    sd = extract_state_dict(load_file(path), 'params', str(path))
    assert sd.keys() == want.keys() and all(torch.equal(sd[k], want[k]) for k in want)
    net = build_network(TINY['BSRT'])
    load_network(net, path, strict=True)  # the loader of train (path.pretrain_network_g), test and infer
    assert all(torch.equal(net.state_dict()[k], want[k]) for k in want)
    # strict: a safetensors of another architecture is refused, naming the file
    monkeypatch.undo()
    other = tmp_path / 'ebsr.safetensors'
    export(weights['EBSR'], 'safetensors', other)
    with pytest.raises(CheckpointError, match=r'ebsr\.safetensors: does not fit BSRT.*EBSR'):
        load_network(build_network(TINY['BSRT']), other, strict=True, describe=fitting_network_hint)


def test_infer_reads_safetensors_architecture(weights, tmp_path):
    from codes.infer.network import load_inference_network
    path = tmp_path / 'dcls.safetensors'
    export(weights['DCLS'], 'safetensors', path)
    net, net_opt, _ = load_inference_network(path, {'param_key': 'auto', 'arch': {}}, torch.device('cpu'))
    assert net_opt['type'] == 'DCLS' and net_opt['kernel_size'] == 11
    ref = torch.load(weights['DCLS'], weights_only=True)['params']
    assert all(np.array_equal(net.state_dict()[k].numpy(), ref[k].numpy()) for k in ref)

