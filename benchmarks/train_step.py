"""Training-step throughput of BSRT (or any registered burst network with ``--arch NAME [--arch-opt K=V ...]``):
forward + L1 loss + backward + Adam step, per level and precision.

Usage (from the repository root)::

    python benchmarks/train_step.py [--levels S L | --arch Burstormer --arch-opt track=real]
                                    [--precisions fp32 bf16 fp16] [--batch 1] [--burst 14]
                                    [--patch 256] [--steps 5] [--warmup 2] [--device auto|cpu|cuda]
                                    [--json OUT.json]

``--patch`` is the HR (output) size, as BSRT's ``--patch_size`` on synthetic data: the input is a random
(batch, burst, 4, patch/8, patch/8) packed RGGB burst in [0, 1] and the target a random (batch, 3, patch, patch)
image. bf16/fp16 run the forward under ``torch.autocast``; the loss is computed in float32 outside it; fp16 on
CUDA adds a ``torch.amp.GradScaler`` (on CPU fp16 runs without one, if CPU autocast supports it at all).

Reported: bursts/s over the timed steps (CUDA synchronised) and peak memory, which is
``torch.cuda.max_memory_allocated`` on CUDA (reset per row) and, on CPU, the **process peak RSS** from
``resource.getrusage`` (``ru_maxrss``): a high-water mark of the whole process since it started, so a row can only
raise it; run one configuration per process for a per-configuration figure. A combination that cannot run (no
CUDA, no bf16 on this GPU, out of memory, an op without a kernel for the dtype) gives a row that says why.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as `python benchmarks/train_step.py`

import torch  # noqa: E402

from codes.archs import build_network  # noqa: E402
from codes.losses import build_loss  # noqa: E402

DTYPES = {'fp32': None, 'bf16': torch.bfloat16, 'fp16': torch.float16}


def machine_info(device: torch.device) -> dict[str, object]:
    """CPU model, core count, threads, torch version and (on CUDA) the GPU name."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('model name'):
                cpu = line.split(':', 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, object] = {
        'cpu': cpu,
        'cores': os.cpu_count(),
        'torch_threads': torch.get_num_threads(),
        'torch': torch.__version__,
        'python': platform.python_version(),
    }
    if device.type == 'cuda':
        info['gpu'] = torch.cuda.get_device_name(device)
        info['cuda'] = torch.version.cuda
    return info


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far, MiB (ru_maxrss is KiB on Linux, bytes on macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == 'darwin' else rss / 2**10


def unsupported_reason(precision: str, device: torch.device) -> str | None:
    """Why ``precision`` cannot run on ``device``, or None if it should."""
    if device.type == 'cuda':
        if precision == 'bf16' and not torch.cuda.is_bf16_supported():
            return 'bf16 not supported by this GPU'
        return None
    if precision != 'fp32':
        try:
            with torch.autocast('cpu', dtype=DTYPES[precision]):
                torch.ones(2, 2) @ torch.ones(2, 2)
        except Exception as exc:  # older torch: CPU autocast only knows bf16
            return f'{precision} autocast unsupported on CPU ({type(exc).__name__}: {exc})'
    return None


def _measure(level: str, precision: str, device: torch.device, args: argparse.Namespace) -> dict[str, object]:
    """Build the model and time ``args.steps`` training steps after ``args.warmup`` untimed ones."""
    dtype = DTYPES[precision]
    torch.manual_seed(0)
    model = build_network(network_options(level, args)).to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, betas=(0.9, 0.999), eps=1e-8)
    loss_fn = build_loss({'type': 'L1Loss'})
    scaler = torch.amp.GradScaler('cuda', enabled=precision == 'fp16' and device.type == 'cuda')
    h = args.patch // 8
    x = torch.rand(args.batch, args.burst, 4, h, h, device=device)  # packed RGGB bursts in [0, 1]
    y = torch.rand(args.batch, 3, args.patch, args.patch, device=device)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            out = model(x)
        loss = loss_fn(out, y)  # float32, outside autocast
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    for _ in range(args.warmup):
        step()
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - t0
    out = {'bursts_per_s': args.batch * args.steps / elapsed, 's_per_step': elapsed / args.steps}
    if device.type == 'cuda':
        out.update(peak_mem_mib=torch.cuda.max_memory_allocated(device) / 2**20, mem_kind='CUDA max allocated')
    else:
        out.update(peak_mem_mib=peak_rss_mib(), mem_kind='process peak RSS')
    return out


def network_options(level: str, args: argparse.Namespace) -> dict[str, object]:
    """``network_g`` of a row: BSRT at ``level``, or ``--arch`` with its ``--arch-opt`` constructor options."""
    if args.arch is None:
        return {'type': 'BSRT', 'level': level, 'burst_size': args.burst}
    import yaml
    opts = {}
    for item in args.arch_opt:
        key, sep, value = item.partition('=')
        if not sep:
            raise SystemExit(f'--arch-opt expects KEY=VALUE, got {item!r}')
        opts[key] = yaml.safe_load(value)
    return {'type': args.arch, **opts}


def run_config(level: str, precision: str, device: torch.device, args: argparse.Namespace) -> dict[str, object]:
    """One table row: the measurement, or empty numbers and a note saying why the combination did not run."""
    row: dict[str, object] = {
        'level': level, 'precision': precision, 'device': device.type, 'batch': args.batch, 'burst': args.burst,
        'patch': args.patch, 'bursts_per_s': None, 's_per_step': None, 'peak_mem_mib': None, 'mem_kind': None,
        'note': ''
    }
    reason = unsupported_reason(precision, device)
    if reason:
        row['note'] = reason
        return row
    try:
        row.update(_measure(level, precision, device, args))
        if precision == 'fp16' and device.type == 'cpu':
            row['note'] = 'no GradScaler on CPU'
    except torch.cuda.OutOfMemoryError:
        row['note'] = 'out of memory'
    except Exception as exc:
        msg = str(exc).splitlines()[0][:160] if str(exc) else ''
        row['note'] = f'{type(exc).__name__}: {msg}'
        if args.verbose:
            traceback.print_exc()
    if device.type == 'cuda':
        torch.cuda.empty_cache()
    return row


def markdown(rows: list[dict[str, object]], info: dict[str, object]) -> str:
    """The results table plus the machine line."""
    head = ['level', 'precision', 'device', 'batch', 'burst', 'patch', 'bursts/s', 's/step', 'peak memory', 'note']
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for r in rows:
        mem = f"{r['peak_mem_mib']:.0f} MiB ({r['mem_kind']})" if r['peak_mem_mib'] is not None else '-'
        speed = f"{r['bursts_per_s']:.3f}" if r['bursts_per_s'] is not None else '-'
        sps = f"{r['s_per_step']:.2f}" if r['s_per_step'] is not None else '-'
        cells = [r['level'], r['precision'], r['device'], r['batch'], r['burst'], r['patch'], speed, sps, mem,
                 r['note'] or '']
        lines.append('| ' + ' | '.join(str(c) for c in cells) + ' |')
    machine = (f"Machine: {info['cpu']}, {info['cores']} cores ({info['torch_threads']} torch threads), "
               f"torch {info['torch']}, Python {info['python']}")
    if 'gpu' in info:
        machine += f", GPU {info['gpu']} (CUDA {info['cuda']})"
    return '\n'.join(lines + ['', machine])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--levels', nargs='+', default=['S', 'L'], choices=['S', 'L'])
    p.add_argument('--arch', default=None, help='any registered network type (e.g. Burstormer) instead of the BSRT '
                   'levels; the level column then shows NAME and its --arch-opt')
    p.add_argument('--arch-opt', nargs='+', default=[], metavar='KEY=VALUE',
                   help='constructor options for --arch, values parsed as YAML (e.g. track=real)')
    p.add_argument('--precisions', nargs='+', default=['fp32', 'bf16', 'fp16'], choices=list(DTYPES))
    p.add_argument('--batch', type=int, default=1)
    p.add_argument('--burst', type=int, default=14)
    p.add_argument('--patch', type=int, default=256, help='HR patch size; the packed input is patch/8')
    p.add_argument('--steps', type=int, default=5, help='timed steps')
    p.add_argument('--warmup', type=int, default=2, help='untimed steps first')
    p.add_argument('--device', default='auto', choices=['auto', 'cpu', 'cuda'])
    p.add_argument('--json', default=None, help='also write the rows and machine description here')
    p.add_argument('--verbose', action='store_true', help='print tracebacks of failed rows')
    args = p.parse_args(argv)
    if args.patch <= 0 or args.patch % 64:
        p.error(f'--patch must be a positive multiple of 64 (packed size a multiple of 8), got {args.patch}')
    for key in ('batch', 'burst', 'steps'):
        if getattr(args, key) < 1:
            p.error(f'--{key} must be >= 1')
    if args.warmup < 0:
        p.error('--warmup must be >= 0')
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device == 'auto':
        device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    elif args.device == 'cuda' and not torch.cuda.is_available():
        print('--device cuda: CUDA is not available', file=sys.stderr)
        return 2
    else:
        device = torch.device(args.device)
    info = machine_info(device)
    rows = []
    levels = [' '.join([args.arch, *args.arch_opt])] if args.arch else args.levels
    for level in levels:
        for precision in args.precisions:
            rows.append(run_config(level, precision, device, args))
            print(f'done: {level} {precision}', file=sys.stderr, flush=True)
    print(markdown(rows, info))
    if args.json:
        Path(args.json).write_text(json.dumps({'machine': info, 'rows': rows}, indent=2))
    return 0


if __name__ == '__main__':
    sys.exit(main())
