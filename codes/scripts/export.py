"""Take a trained network out of PyTorch: an ONNX file, a TorchScript file or bare safetensors weights.

    python -m codes.scripts.export --weights W --format onnx --output model.onnx [-opt FILE] [--size 32]
    bsr-export --weights W --format torchscript --output model.pt
    bsr-export --weights W --format safetensors --output model.safetensors

The network is the one ``infer.py`` would run for ``W``: architecture and hyper-parameters read from the weights
(``codes.archs.arch_detect``) or taken from ``network_g`` of ``-opt FILE``, official wrapped checkpoints unwrapped
(``codes.utils.checkpoint``), loaded strictly, the fast implementation of the DCNs and attention (``impl: fast``).
Right after writing, the file is run (ONNX Runtime CPU / ``torch.jit.load``) on random inputs of two sizes and the
relative error against the PyTorch network is printed; above 1e-4 (fp32) the command fails with status 2. The
axes that take any size are printed, and stored in the file for ``infer.py``.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from codes.utils.errors import UserError, run_cli

__all__ = ['build_export_arg_parser', 'export_main', 'export_pipeline', 'FORMATS']

FORMATS = ('onnx', 'torchscript', 'safetensors')


def build_export_arg_parser() -> argparse.ArgumentParser:
    """The command line of ``bsr-export``."""
    p = argparse.ArgumentParser(prog='bsr-export', description='Export a trained network to ONNX, TorchScript or '
                                'safetensors, and check the file against PyTorch.')
    p.add_argument('--weights', required=True, help='checkpoint: ours (params / params_ema), an official one, or '
                   '.safetensors')
    p.add_argument('--format', required=True, choices=FORMATS)
    p.add_argument('--output', required=True, help='file to write')
    p.add_argument('-opt', '--opt', help='option file whose network_g describes the network (default: read from '
                   'the weights)')
    p.add_argument('--param-key', '--param_key', dest='param_key', default='auto',
                   choices=['auto', 'params', 'params_ema'], help="which weights of our checkpoints ('auto': "
                   "params_ema when present)")
    p.add_argument('--size', type=int, default=32, help='input h and w of the check (rounded up to what the '
                   'network takes); also the one size a file takes when its h and w cannot be dynamic')
    return p


def _network(args: argparse.Namespace) -> tuple[torch.nn.Module, dict]:
    """The network for the weights, as ``infer.py`` builds it, in eval mode on the CPU with ``impl: fast``."""
    from codes.infer.network import load_inference_network
    opt: dict = {'param_key': args.param_key, 'arch': {}, 'network_g': None, 'opt_file': args.opt}
    if args.opt:
        from codes.utils.options import read_options
        block = read_options(args.opt, []).get('network_g')
        if not isinstance(block, dict) or 'type' not in block:
            raise UserError(f'{args.opt}: has no network_g block with a type; drop -opt to read the network from '
                            'the weights')
        opt['network_g'] = {k: v for k, v in block.items() if k != 'compile'}
    if Path(args.weights).suffix.lower() == '.onnx':
        raise UserError(f'{args.weights}: already an ONNX graph; export from the .pth or .safetensors weights')
    net, net_opt, _ = load_inference_network(args.weights, opt, torch.device('cpu'))
    if hasattr(net, 'set_impl'):
        net.set_impl('fast')
        net_opt = {**net_opt, 'impl': 'fast'}
    return net.eval(), net_opt


def export_pipeline(argv: list[str] | None = None) -> dict:
    """Parse the command line, export, check; returns a summary (also printed)."""
    from codes.export.exporters import TOLERANCE, export_onnx, export_safetensors, export_torchscript
    from codes.export.layout import layout_of
    args = build_export_arg_parser().parse_args(argv)
    net, net_opt = _network(args)
    try:
        layout = layout_of(net, net_opt['type'])
    except ValueError as exc:
        raise UserError(str(exc)) from None
    torch.manual_seed(0)
    if args.format == 'onnx':
        result = export_onnx(net, layout, net_opt, args.output, args.size)
    elif args.format == 'torchscript':
        result = export_torchscript(net, layout, net_opt, args.output, args.size)
    else:
        result = export_safetensors(net, layout, net_opt, args.output)
    summary = {'output': str(result.path), 'format': result.format, 'exporter': result.exporter,
               'network_g': net_opt, 'dynamic_axes': result.layout.dynamic, 'fixed_hw': result.layout.fixed_hw,
               'fixed_batch': result.layout.fixed_batch, 'burst_size': layout.frames, 'scale': layout.scale}
    print(f'{result.format} ({result.exporter}) -> {result.path}: {net_opt["type"]} {json.dumps(net_opt)}')
    if result.format != 'safetensors':
        fixed = [f'height x width fixed at {result.layout.fixed_hw[0]}x{result.layout.fixed_hw[1]}'
                 if result.layout.fixed_hw else '', f'batch fixed at {result.layout.fixed_batch}'
                 if result.layout.fixed_batch else '']
        print(f"dynamic axes: {', '.join(result.layout.dynamic) or 'none'}"
              + ''.join(f'; {f}' for f in fixed if f) + (f'; burst size {layout.frames}' if layout.frames else ''))
        for shape, err in result.errors:
            print(f'check: input {shape}: relative error {err:.2e} vs PyTorch (tolerance {TOLERANCE:g})')
        summary['errors'] = [[list(s), e] for s, e in result.errors]
    return summary


def export_main() -> None:
    """``bsr-export`` / ``python -m codes.scripts.export``."""
    run_cli(export_pipeline, 'bsr-export')


if __name__ == '__main__':
    export_main()
