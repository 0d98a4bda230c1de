"""Cost of the burst networks on one burst: parameters, multiply-accumulates and CPU forward time.

Usage (from the repository root)::

    python benchmarks/burst_models.py [--models BSRT-S BSRT-L EBSR Burstormer-synthetic Burstormer-real BIPNet DBSR]
                                      [--burst 14] [--size 48] [--repeats 3]
                                      [--threads N] [--json OUT.json]

The input is one random packed RGGB burst (1, burst, 4, size, size) in [0, 1] (48: SyntheticBurstVal, output
384×384). Multiply-accumulates are counted by ``codes.archs.macs.count_macs`` (the counter of
``python -m codes.scripts.results_table`` too), with ``torch.utils.flop_counter.FlopCounterMode`` under no_grad
(MACs = FLOPs / 2; it counts matmuls and convolutions, not activations, norms, pooling or interpolation); the
deformable convolution (``torchvision::deform_conv2d``, which the counter does not know) is counted as the plain
convolution of the same shape, its bilinear sampling not at all. Forward time: eval mode, no_grad, fp32, one
untimed run, then ``--repeats`` timed runs per model, interleaved across models (round-robin), median reported.
Training-step time comes from ``benchmarks/train_step.py --arch``. DBSR has no deformable convolution; its
PWC-Net runs on every (reference, frame) pair resized up to multiples of 64 (48 -> 64), and its correlation (81
shifted products, computed with elementwise ops) is not counted as MACs.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as `python benchmarks/burst_models.py`

import torch  # noqa: E402

from benchmarks.train_step import machine_info  # noqa: E402
from codes.archs import build_network  # noqa: E402
from codes.archs.macs import count_macs, register_deform_conv_formula  # noqa: E402

MODELS: dict[str, dict] = {
    'BSRT-S': {'type': 'BSRT', 'level': 'S'},
    'BSRT-L': {'type': 'BSRT', 'level': 'L'},
    'EBSR': {'type': 'EBSR'},
    'Burstormer-synthetic': {'type': 'Burstormer', 'track': 'synthetic'},
    'Burstormer-real': {'type': 'Burstormer', 'track': 'real'},
    'BIPNet': {'type': 'BIPNet'},  # takes only --burst 14 (one pseudo-burst kernel per frame)
    'DBSR': {'type': 'DBSR'},  # its frozen PWC-Net (9.37 M of the 13.01 M parameters) is counted and timed
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--models', nargs='+', default=list(MODELS), choices=list(MODELS))
    p.add_argument('--burst', type=int, default=14)
    p.add_argument('--size', type=int, default=48, help='packed h = w of the burst')
    p.add_argument('--repeats', type=int, default=3)
    p.add_argument('--threads', type=int, default=None, help='torch intra-op threads (default: torch default)')
    p.add_argument('--json', default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    register_deform_conv_formula()
    torch.manual_seed(0)
    x = torch.rand(1, args.burst, 4, args.size, args.size)
    nets, rows = {}, {}
    for name in args.models:
        torch.manual_seed(0)
        net = build_network({**MODELS[name], 'burst_size': args.burst}).eval()
        nets[name] = net
        rows[name] = {'model': name, 'params': sum(q.numel() for q in net.parameters()),
                      'macs': count_macs(net, x), 'times': []}
        with torch.no_grad():
            net(x)  # untimed warm-up
        print(f'counted: {name}', file=sys.stderr, flush=True)
    for _ in range(args.repeats):
        for name, net in nets.items():
            t0 = time.perf_counter()
            with torch.no_grad():
                net(x)
            rows[name]['times'].append(time.perf_counter() - t0)
    info = {**machine_info(torch.device('cpu')), 'loadavg_end': os.getloadavg()}
    print(f"| model | parameters | GMACs (1×{args.burst}×4×{args.size}×{args.size}) | CPU forward s (median) |")
    print('|---|---:|---:|---:|')
    for r in rows.values():
        r['forward_s_median'] = statistics.median(r['times'])
        print(f"| {r['model']} | {r['params']:,} | {r['macs'] / 1e9:.1f} | {r['forward_s_median']:.2f} |")
    print(f"\nMachine: {info['cpu']}, {info['cores']} cores ({info['torch_threads']} torch threads), torch "
          f"{info['torch']}; load average at the end {info['loadavg_end']}")
    if args.json:
        Path(args.json).write_text(json.dumps({'machine': info, 'rows': list(rows.values())}, indent=2))
    return 0


if __name__ == '__main__':
    sys.exit(main())
