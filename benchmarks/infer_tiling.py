"""Inference time and peak memory of BSRT with and without tiling (``codes.utils.tiling.tiled_forward``).

Usage (from the repository root)::

    python benchmarks/infer_tiling.py [--level S] [--burst 14] [--size 64] [--tiles 0 32] [--overlap 8]
                                      [--precision fp32] [--device auto|cpu|cuda] [--json OUT.json]

``--size`` is the packed input side (the output is 8x larger); ``--tiles`` lists the tile sizes to compare, 0 for
one pass. Each configuration runs in its own child process, so the CPU figure, the **process peak RSS** from
``resource.getrusage`` (a high-water mark), belongs to that configuration alone; on CUDA the figure is
``torch.cuda.max_memory_allocated``. The network has random weights (speed and memory do not depend on them).
Also reported: the largest and mean absolute difference of each tiled output from the one-pass output.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as `python benchmarks/infer_tiling.py`

import torch  # noqa: E402


def _child(args: argparse.Namespace) -> None:
    """One configuration: build, run once, print a JSON line (and save the output for the comparison)."""
    from codes.archs import build_network
    from codes.infer import network_call, resolve_device
    from codes.utils.tiling import tiled_forward
    device = resolve_device(args.device)
    torch.manual_seed(0)
    net = build_network({'type': 'BSRT', 'level': args.level, 'burst_size': args.burst,
                         'drop_path_rate': 0.0}).to(device).eval()
    x = torch.rand(1, args.burst, 4, args.size, args.size, generator=torch.Generator().manual_seed(1))
    call = network_call(net, device, args.precision)
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    out = tiled_forward(call, x, 8, args.tile or None, args.overlap, multiple=8, min_size=17)
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    peak = (torch.cuda.max_memory_allocated(device) / 2 ** 20 if device.type == 'cuda'
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    torch.save(out, args.save)
    print(json.dumps({'tile': args.tile, 'seconds': round(seconds, 2), 'peak_mib': round(peak, 1),
                      'memory': 'cuda max_memory_allocated' if device.type == 'cuda' else 'process peak RSS',
                      'device': str(device)}))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--level', default='S', choices=['S', 'L'])
    p.add_argument('--burst', type=int, default=14)
    p.add_argument('--size', type=int, default=64, help='packed input side')
    p.add_argument('--tiles', type=int, nargs='+', default=[0, 32])
    p.add_argument('--overlap', type=int, default=8)
    p.add_argument('--precision', default='fp32', choices=['fp32', 'bf16', 'fp16'])
    p.add_argument('--device', default='auto')
    p.add_argument('--json')
    p.add_argument('--tile', type=int, help=argparse.SUPPRESS)  # child mode
    p.add_argument('--save', help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.save:
        _child(args)
        return 0
    rows, outputs = [], {}
    tmp = Path(os.environ.get('TMPDIR', '/tmp'))
    for tile in args.tiles:
        save = tmp / f'infer_tiling_{os.getpid()}_{tile}.pt'
        cmd = [sys.executable, __file__, '--level', args.level, '--burst', str(args.burst), '--size', str(args.size),
               '--overlap', str(args.overlap), '--precision', args.precision, '--device', args.device,
               '--tile', str(tile), '--save', str(save)]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            rows.append({'tile': tile, 'error': res.stderr.strip().splitlines()[-1:]})
            continue
        row = json.loads(res.stdout.strip().splitlines()[-1])
        outputs[tile] = torch.load(save, weights_only=True)
        save.unlink(missing_ok=True)
        rows.append(row)
    if 0 in outputs:
        for row in rows:
            if row.get('tile') and row['tile'] in outputs:
                d = (outputs[row['tile']] - outputs[0]).abs()
                row.update(max_abs_diff=float(f'{d.max().item():.3g}'), mean_abs_diff=float(f'{d.mean().item():.3g}'))
    from benchmarks.train_step import machine_info  # the parent only: children measure their own memory
    report = {'level': args.level, 'burst': args.burst, 'packed_size': args.size, 'overlap': args.overlap,
              'precision': args.precision, **machine_info(torch.device('cpu')), 'rows': rows}
    print(json.dumps(report, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == '__main__':
    sys.exit(main())
