"""Speed of DCLS: inference (``net(lr)``) and a training step (degradation on the device, forward, L1 + kernel
loss, backward, Adam step), for the shipped network size or a smaller one.

Usage (from the repository root)::

    python benchmarks/dcls_step.py [--scale 4] [--kernel-size 21] [--lr-size 64] [--batch 1] [--mode infer train]
                                   [--precision fp32|bf16|fp16] [--nf 64 --nb 10 --ng 5 --input-para 256]
                                   [--steps 3] [--warmup 1] [--device auto|cpu|cuda] [--json OUT.json]

The training input is a random HR batch of (lr_size·scale)² with setting-1 (kernel 21) or setting-2 (11/31)
kernels; bf16/fp16 run the forward under ``torch.autocast`` (the FFT path stays in float32). Reported: seconds per
call and images/s over the timed calls (CUDA synchronised), and the peak CUDA memory (``max_memory_allocated``) or,
on CPU, the process peak RSS (a high-water mark of the whole process).
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as `python benchmarks/dcls_step.py`

import numpy as np  # noqa: E402
import torch  # noqa: E402

from codes.archs import build_network  # noqa: E402
from codes.data.degradations import SETTING_KERNELS, degrade, random_batch_kernels  # noqa: E402
from codes.losses.dcls_loss import DCLSKernelLoss  # noqa: E402

DTYPES = {'fp32': None, 'bf16': torch.bfloat16, 'fp16': torch.float16}


def _sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def _peak(device: torch.device) -> str:
    if device.type == 'cuda':
        return f'{torch.cuda.max_memory_allocated(device) / 2 ** 20:.0f} MiB (CUDA)'
    return f'{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB (process RSS)'


def run(args: argparse.Namespace) -> list[dict]:
    device = torch.device('cuda' if args.device == 'auto' and torch.cuda.is_available() else
                          ('cpu' if args.device == 'auto' else args.device))
    torch.manual_seed(0)
    net = build_network({'type': 'DCLS', 'scale': args.scale, 'kernel_size': args.kernel_size, 'nf': args.nf,
                         'nb': args.nb, 'ng': args.ng, 'input_para': args.input_para}).to(device)
    dtype = DTYPES[args.precision]
    setting = 1 if args.kernel_size == 21 else 2
    kopt = dict(SETTING_KERNELS.get((setting, args.scale), SETTING_KERNELS[(1, 4)]))
    kopt.pop('kernel_size')
    kopt['size'] = args.kernel_size
    rows = []
    for mode in args.mode:
        if device.type == 'cuda':
            torch.cuda.reset_peak_memory_stats(device)
        if mode == 'infer':
            net.eval()
            lr = torch.rand(args.batch, 3, args.lr_size, args.lr_size, device=device)

            def step() -> None:
                with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                    net(lr)
        else:
            net.train()
            opt = torch.optim.Adam(net.parameters(), lr=1e-4, betas=(0.9, 0.99))
            kloss = DCLSKernelLoss()
            hr = torch.rand(args.batch, 3, args.lr_size * args.scale, args.lr_size * args.scale, device=device)
            rng = np.random.default_rng(0)

            def step() -> None:
                k = torch.from_numpy(random_batch_kernels(args.batch, rng=rng, **kopt)).to(device)
                d = degrade(hr, k, args.scale)
                with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                    sr, kernel = net(d.lq)
                loss = (sr.float() - hr).abs().mean() + kloss(kernel.float(), d.lq_blur, d.lq_clean)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        for _ in range(args.warmup):
            step()
        _sync(device)
        t = time.perf_counter()
        for _ in range(args.steps):
            step()
        _sync(device)
        sec = (time.perf_counter() - t) / args.steps
        rows.append({'mode': mode, 'device': str(device), 'precision': args.precision, 'scale': args.scale,
                     'kernel_size': args.kernel_size, 'lr_size': args.lr_size, 'batch': args.batch,
                     'params': sum(p.numel() for p in net.parameters()), 's_per_call': sec,
                     'images_per_s': args.batch / sec, 'peak_memory': _peak(device),
                     'threads': torch.get_num_threads(), 'machine': platform.processor() or platform.machine()})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--scale', type=int, default=4)
    p.add_argument('--kernel-size', type=int, default=21)
    p.add_argument('--lr-size', type=int, default=64)
    p.add_argument('--batch', type=int, default=1)
    p.add_argument('--mode', nargs='+', default=['infer', 'train'], choices=['infer', 'train'])
    p.add_argument('--precision', default='fp32', choices=list(DTYPES))
    p.add_argument('--nf', type=int, default=64)
    p.add_argument('--nb', type=int, default=10)
    p.add_argument('--ng', type=int, default=5)
    p.add_argument('--input-para', type=int, default=256)
    p.add_argument('--steps', type=int, default=3)
    p.add_argument('--warmup', type=int, default=1)
    p.add_argument('--device', default='auto')
    p.add_argument('--json', default=None)
    args = p.parse_args()
    rows = run(args)
    for r in rows:
        print(f"{r['mode']:5s} {r['device']} {r['precision']} x{r['scale']} k{r['kernel_size']} LR {r['lr_size']}² "
              f"batch {r['batch']} ({r['params']:,} params, {r['threads']} threads): {r['s_per_call']:.3f} s/call, "
              f"{r['images_per_s']:.2f} images/s, peak {r['peak_memory']}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == '__main__':
    main()
