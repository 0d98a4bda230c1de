"""Tiny weights of every network family, and their exports, shared by the export tests (exports take seconds)."""
from __future__ import annotations

import pytest
import torch

from codes.archs import build_network

pytest.importorskip('onnx', reason='the export extra (pip install "burstsr-toolkit[export]")')
pytest.importorskip('onnxruntime', reason='the export extra')
pytest.importorskip('onnxscript', reason='the export extra')
pytest.importorskip('safetensors', reason='the export extra')

#: a tiny configuration per family (Burstormer's burst size is not in its weights: given with -opt)
TINY = {
    'BSRT': {'type': 'BSRT', 'embed_dim': 12, 'depths': [1, 1], 'num_heads': 2, 'burst_size': 2, 'num_feat': 16,
             'drop_path_rate': 0.0},
    'EBSR': {'type': 'EBSR', 'n_feats': 16, 'n_resblocks': 1, 'n_resgroups': 1, 'burst_size': 2, 'front_RBs': 1},
    'Burstormer': {'type': 'Burstormer', 'num_features': 16, 'burst_size': 14},  # ONNX: n a multiple of 7
    'DBSR': {'type': 'DBSR', 'enc_init_dim': 8, 'enc_num_res_blocks': 1, 'enc_out_dim': 16, 'dec_init_conv_dim': 8,
             'dec_num_pre_res_blocks': 1, 'dec_post_conv_dim': 8, 'dec_num_post_res_blocks': 1,
             'offset_feat_dim': 8, 'weight_pred_proj_dim': 8, 'num_weight_predictor_res': 1, 'burst_size': 3},
    'BIPNet': {'type': 'BIPNet', 'num_blocks': 1, 'num_units': 1, 'unet_blocks': [1, 1, 1, 1, 1], 'unet_units': 1},
    'DCLS': {'type': 'DCLS', 'scale': 2, 'kernel_size': 11, 'nf': 8, 'nb': 1, 'ng': 1, 'reduction': 2,
             'input_para': 8},
}


@pytest.fixture(scope='package')
def weights(tmp_path_factory):
    """``{family: path}`` of ``{'params': state_dict}`` files of the tiny networks, and an option file per family."""
    import yaml
    d = tmp_path_factory.mktemp('weights')
    out = {}
    for i, (family, opt) in enumerate(TINY.items()):
        torch.manual_seed(i)
        net = build_network(opt)
        for p in net.parameters():  # zero-initialised layers (offsets, non-local W) made non-trivial
            if p.abs().sum() == 0:
                p.data.normal_(0, 0.05)
        torch.save({'params': net.state_dict()}, d / f'{family}.pth')
        (d / f'{family}.yml').write_text(yaml.safe_dump({'network_g': opt}))
        out[family] = d / f'{family}.pth'
    return out


def export(weights_path, fmt: str, output, size: int = 16, opt_file=None) -> dict:
    """``bsr-export`` in process; returns its summary."""
    from codes.scripts.export import export_pipeline
    args = ['--weights', str(weights_path), '--format', fmt, '--output', str(output), '--size', str(size)]
    return export_pipeline(args + (['-opt', str(opt_file)] if opt_file else []))


#: export and check size per family (default 16): DCLS's ONNX file meets the tolerance only on small inputs
#: (ONNX Runtime's float32 DFT; see the README)
SIZES = {'DCLS': 10}


@pytest.fixture(scope='package')
def onnx_files(weights, tmp_path_factory):
    """``{family: (path, summary)}`` of the ONNX exports (the option file given, as a user would for Burstormer)."""
    d = tmp_path_factory.mktemp('onnx')
    torch.set_num_threads(1)
    return {f: (d / f'{f}.onnx', export(w, 'onnx', d / f'{f}.onnx', SIZES.get(f, 16), w.with_suffix('.yml')))
            for f, w in weights.items()}
