"""Python parts of ``benchmarks/gpu_check.sh``: device-vs-CPU output checks, inference data, the JSON report.

Sub-commands::

    python benchmarks/gpu_check.py outputs --device cuda [--tiny] --json OUT.json
    python benchmarks/gpu_check.py infer-data --dir DIR --level S [--bursts 4] [--packed 80] [--burst 14]
    python benchmarks/gpu_check.py infer-time --summary DIR/infer_summary.json --json OUT.json
    python benchmarks/gpu_check.py merge --json REPORT.json PART.json ...

``outputs`` builds BSRT-S, BSRT-L, DCLS and DBSR with fixed random weights (BSRT with non-zero offset convs, so
the deformable convolutions really deform; DBSR with a positive output bias, so its final ReLU does not zero the
output), runs the same input through the CPU reference (fp32, ``impl='reference'``) and through ``--device`` with
every implementation in fp32 (limit 1e-4 relative) and under bf16/fp16 autocast (limit 1e-2), and writes the
relative errors (||a - b|| / ||b||) with a pass flag per row. ``--tiny`` uses small widths and sizes (for
``--device cpu`` runs of the script in the test suite).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as `python benchmarks/gpu_check.py`

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from codes.archs import build_network  # noqa: E402
from codes.archs.arch_util import DCNSep, FlowGuidedDCN  # noqa: E402

LIMITS = {'fp32': 1e-4, 'bf16': 1e-2, 'fp16': 1e-2}
DTYPES = {'fp32': None, 'bf16': torch.bfloat16, 'fp16': torch.float16}


def _nets(tiny: bool) -> dict[str, tuple[dict, tuple[int, ...]]]:
    """name -> (network_g options, input shape)."""
    if tiny:
        bsrt = dict(type='BSRT', level=None, embed_dim=12, depths=[1, 1], num_heads=2, burst_size=2)
        return {'BSRT-tiny': (bsrt, (1, 2, 4, 24, 24)),
                'DCLS-tiny': (dict(type='DCLS', nf=16, nb=1, ng=1, input_para=16), (1, 3, 12, 12))}
    return {'BSRT-S': (dict(type='BSRT', level='S', burst_size=14), (1, 14, 4, 32, 32)),
            'BSRT-L': (dict(type='BSRT', level='L', burst_size=14), (1, 14, 4, 32, 32)),
            'DCLS': (dict(type='DCLS'), (1, 3, 48, 48)),
            'DBSR': (dict(type='DBSR'), (1, 14, 4, 32, 32))}


def _randomise_offsets(model: torch.nn.Module) -> None:
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, (DCNSep, FlowGuidedDCN)):
            with torch.no_grad():
                m.conv_offset_mask.weight.copy_(0.05 * torch.randn(m.conv_offset_mask.weight.shape, generator=g))
                m.conv_offset_mask.bias.copy_(0.5 * torch.randn(m.conv_offset_mask.bias.shape, generator=g))


def _live_output(model: torch.nn.Module) -> None:
    """An untrained DBSR can output all zeros (its last layer is a ReLU); a positive predictor bias keeps the
    comparison meaningful."""
    predictor = getattr(getattr(model, 'decoder', None), 'predictor', None)
    if type(model).__name__ == 'DBSR' and predictor is not None:
        with torch.no_grad():
            predictor[0].bias.fill_(0.2)


def _first(out: torch.Tensor | tuple) -> torch.Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out  # DCLS returns (sr, kernel)


def check_outputs(device: torch.device, tiny: bool) -> list[dict]:
    """One row per (network, implementation, precision): relative error of ``device`` against the CPU fp32
    reference."""
    rows = []
    for name, (opt, shape) in _nets(tiny).items():
        torch.manual_seed(0)
        model = build_network(opt).eval()
        _randomise_offsets(model)
        _live_output(model)
        x = torch.rand(shape, generator=torch.Generator().manual_seed(2))
        impls = ['reference', 'fast', 'auto'] if hasattr(model, 'set_impl') else ['-']
        if hasattr(model, 'set_impl'):
            model.set_impl('reference')
        with torch.no_grad():
            ref = _first(model(x)).double()
        model.to(device)
        for impl in impls:
            if impl != '-':
                model.set_impl(impl)
            for precision, dtype in DTYPES.items():
                row = {'net': name, 'impl': impl, 'precision': precision, 'device': device.type,
                       'limit': LIMITS[precision], 'rel_err': None, 'pass': None, 'note': ''}
                if device.type == 'cpu' and precision == 'fp16':
                    row['note'] = 'fp16 autocast is for GPUs (no fast CPU kernels)'
                    rows.append(row)
                    continue
                try:
                    with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                        out = _first(model(x.to(device))).double().cpu()
                    err = ((out - ref).norm() / ref.norm()).item()
                    row.update(rel_err=err, **{'pass': bool(err <= LIMITS[precision])})
                except Exception as exc:  # e.g. no bf16 on this GPU
                    row['note'] = f'{type(exc).__name__}: {str(exc).splitlines()[0][:160]}'
                rows.append(row)
                print(f"{name} {impl} {precision}: {row['rel_err']} {row['note']}", file=sys.stderr, flush=True)
        del model
        if device.type == 'cuda':
            torch.cuda.empty_cache()
    return rows


def make_infer_data(folder: Path, level: str, bursts: int, packed: int, burst: int) -> None:
    """``bursts`` challenge-format PNG bursts (``burst`` frames, packed ``packed``²) and random BSRT weights
    (``folder/bsrt_<level>.pth``, a bare state_dict as the official release)."""
    rng = np.random.default_rng(0)
    for b in range(bursts):
        d = folder / 'bursts' / f'burst_{b:02d}'
        d.mkdir(parents=True, exist_ok=True)
        for i in range(burst):
            counts = rng.integers(0, 2**14, size=(packed, packed, 4), dtype=np.uint16)
            if not cv2.imwrite(str(d / f'im_raw_{i:02d}.png'), counts):
                raise OSError(f'cannot write {d}')
    torch.manual_seed(0)
    opt = dict(type='BSRT', level=level, burst_size=burst) if level in ('S', 'L') else \
        dict(type='BSRT', level=None, embed_dim=12, depths=[1, 1], num_heads=2, burst_size=burst)
    torch.save(build_network(opt).state_dict(), folder / f'bsrt_{level}.pth')


def infer_time(summary: Path) -> dict:
    """ms per burst of an ``infer.py`` run: the first burst is the warm-up; the median of the others."""
    data = json.loads(summary.read_text())
    secs = [o['seconds'] for o in data['outputs']]
    timed = secs[1:] if len(secs) > 1 else secs
    return {'device': data['device'], 'precision': data['precision'], 'bursts': len(secs),
            'input_size': data['outputs'][0]['input_size'] if data['outputs'] else None,
            'warmup_ms': round(1000 * secs[0], 1) if secs else None,
            'ms_per_burst': round(1000 * statistics.median(timed), 1) if timed else None}


def onnx_check(folder: Path, level: str, packed: int, device: str) -> dict:
    """ONNX Runtime's CUDA provider on the inference bursts of ``folder``: the weights exported by ``bsr-export``
    (tile = ``packed``), ``infer.py --device cuda`` on them, ms per burst; ``{'skipped': reason}`` without
    onnxruntime-gpu or CUDA."""
    try:
        import onnxruntime as ort
    except ImportError:
        return {'skipped': 'onnxruntime is not installed (pip install onnxruntime-gpu)'}
    if device != 'cuda':
        return {'skipped': f'--device {device}: the ONNX Runtime row is a CUDA-provider check'}
    if 'CUDAExecutionProvider' not in ort.get_available_providers():
        return {'skipped': f'onnxruntime {ort.__version__} has no CUDAExecutionProvider (install onnxruntime-gpu)'}
    from codes.infer import infer_pipeline
    from codes.scripts.export import export_pipeline
    weights = folder / f'bsrt_{level}.pth'
    exported = export_pipeline(['--weights', str(weights), '--format', 'onnx', '--output',
                                str(folder / f'bsrt_{level}.onnx'), '--size', str(packed)])
    infer_pipeline(['--weights', str(folder / f'bsrt_{level}.onnx'), '--input', str(folder / 'bursts'), '--output',
                    str(folder / 'out_onnx'), '--device', 'cuda', '--no-linear'])
    timing = infer_time(folder / 'out_onnx' / 'infer_summary.json')
    return {**timing, 'provider': 'CUDAExecutionProvider', 'onnxruntime': ort.__version__,
            'exporter': exported['exporter'], 'dynamic_axes': exported['dynamic_axes'],
            'export_check_rel_err': max(e for _, e in exported['errors'])}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    sub = p.add_subparsers(dest='cmd', required=True)
    o = sub.add_parser('outputs')
    o.add_argument('--device', default='cuda')
    o.add_argument('--tiny', action='store_true')
    o.add_argument('--json', required=True)
    d = sub.add_parser('infer-data')
    d.add_argument('--dir', required=True)
    d.add_argument('--level', default='S', choices=['S', 'L', 'tiny'])
    d.add_argument('--bursts', type=int, default=4)
    d.add_argument('--packed', type=int, default=80)
    d.add_argument('--burst', type=int, default=14)
    t = sub.add_parser('infer-time')
    t.add_argument('--summary', required=True)
    t.add_argument('--json', required=True)
    x = sub.add_parser('onnx')
    x.add_argument('--dir', required=True)
    x.add_argument('--level', default='S')
    x.add_argument('--packed', type=int, default=80)
    x.add_argument('--device', default='cuda')
    x.add_argument('--json', required=True)
    m = sub.add_parser('merge')
    m.add_argument('--json', required=True)
    m.add_argument('parts', nargs='*')
    args = p.parse_args(argv)

    if args.cmd == 'outputs':
        device = torch.device(args.device)
        if device.type == 'cuda' and not torch.cuda.is_available():
            print('gpu_check.py: error: --device cuda: CUDA is not available', file=sys.stderr)
            return 2
        t0 = time.perf_counter()
        rows = check_outputs(device, args.tiny)
        Path(args.json).write_text(json.dumps({'rows': rows, 'seconds': round(time.perf_counter() - t0, 1),
                                               'all_pass': all(r['pass'] is not False for r in rows)}, indent=2))
        return 0
    if args.cmd == 'infer-data':
        make_infer_data(Path(args.dir), args.level, args.bursts, args.packed, args.burst)
        return 0
    if args.cmd == 'onnx':
        result = onnx_check(Path(args.dir), args.level, args.packed, args.device)
        if 'skipped' in result:
            print(f"onnx: skipped: {result['skipped']}", file=sys.stderr)
        Path(args.json).write_text(json.dumps(result, indent=2))
        return 0
    if args.cmd == 'infer-time':
        Path(args.json).write_text(json.dumps(infer_time(Path(args.summary)), indent=2))
        return 0
    report: dict = {'torch': torch.__version__, 'cuda': torch.version.cuda,
                    'gpu': torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    for part in args.parts:
        path = Path(part)
        try:
            report[path.stem] = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            report[path.stem] = {'error': f'{type(exc).__name__}: {exc}'}
    Path(args.json).write_text(json.dumps(report, indent=2))
    print(f'wrote {args.json}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
