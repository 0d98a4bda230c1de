"""Training-step throughput of a burst network: forward + L1 loss + backward + Adam step, per implementation.

Usage (from the repository root)::

    python benchmarks/train_step.py [--arch BSRT] [--levels S L] [--impl reference fast]
                                    [--precisions fp32 bf16 fp16] [--batch 2] [--burst 14] [--patch 256]
                                    [--steps 1] [--reps 3] [--warmup 1] [--device auto|cpu|cuda]
                                    [--net KEY=VALUE ...] [--isolate-memory] [--json OUT.json]

``--arch`` builds any registered network by its type name (``network_g.type``); ``--levels`` is passed as its
``level`` argument when it has one (BSRT: S and L), ``--net KEY=VALUE`` adds constructor arguments (YAML values),
and ``burst_size`` is set from ``--burst`` when the network takes it (BIPNet takes only 14:
``--arch BIPNet --precisions fp32 --batch 1 --patch 64``). ``--patch`` is the HR (output) size, as
BSRT's ``--patch_size`` on synthetic data: the input is a random (batch, burst, 4, patch/8, patch/8) packed RGGB
burst in [0, 1], the target a random image of the output's shape. bf16/fp16 run the forward under
``torch.autocast``; the loss is computed in float32 outside it; fp16 on CUDA adds a ``torch.amp.GradScaler``.
Networks without an ``impl`` argument (DBSR: no deformable convolution, no attention) give one
row per precision, impl '-': there is no fast/reference pair to compare.

**Implementations side by side.** ``--impl`` lists the implementations to compare (``reference``: torchvision's
``deform_conv2d`` and explicit attention, the original's operators; ``fast``: ``grid_sample`` DCN and
``scaled_dot_product_attention``; ``auto``: what the network picks on this device). Every implementation gets its
own copy of the same initial weights and optimiser, and they run **interleaved**: after ``--warmup`` untimed steps
each, ``--reps`` rounds of ``--steps`` timed steps of every implementation in turn, so machine load hits them alike.
Reported per row: the median time per step over the rounds, bursts/s from it, and ``speedup``, the median over the
rounds of (reference time / this implementation's time) within the same round. ``cpu_s_per_step`` and
``cpu_speedup`` are the same from the process CPU time (all threads), which an overloaded shared machine distorts
less than wall time.

**Peak memory** is ``torch.cuda.max_memory_allocated`` on CUDA (reset before each implementation's steps) and, on
CPU, the process peak RSS (``ru_maxrss``), a high-water mark of the whole process that interleaved rows share; with
``--isolate-memory`` each implementation also runs one warm-up and one step in a fresh process, whose peak RSS is
reported as ``peak_rss_isolated_mib``. A combination that cannot run (no CUDA, no bf16 on this GPU, out of memory,
an op without a kernel for the dtype) gives a row that says why.

Notes on BSRT (2-core CPU, torch 2.14.1):

* Why batching the alignment over all frames (B·N images at once) did not make the reference faster than the
  original's frame-by-frame loop: on CPU, ``torchvision.ops.deform_conv2d`` costs the same per image whether it
  gets 1, 2 or 14 images per call (level 1, 64 channels, 64×64, 8 offset groups: forward 0.45-0.49 s and backward
  3.57-3.60 s for 14 frames in one call, 2 per call or 1 per call), so its backward, about two thirds of the step,
  scales with the number of frames and batching saves nothing there. Its im2col buffer for all frames at once is
  large (64·9 rows × 14·64·64 columns = 264 MiB in fp32), and so is any such buffer: a buffer above glibc's mmap
  threshold (32 MiB at most) is mapped afresh and page-faulted on every call. The fast DCN therefore processes
  the frames in chunks of at most 24 MiB of columns (one frame at level 1), which alone made it about 2x faster
  than one 28-frame chunk; under autograd each chunk is recomputed in backward, so it keeps no more than
  torchvision's kernel does.
"""
from __future__ import annotations

import argparse
import copy
import inspect
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as `python benchmarks/train_step.py`

import torch  # noqa: E402
import yaml  # noqa: E402

from codes.archs import ARCH_REGISTRY, build_network  # noqa: E402
from codes.losses import build_loss  # noqa: E402

DTYPES = {'fp32': None, 'bf16': torch.bfloat16, 'fp16': torch.float16}
IMPLS = ('reference', 'fast', 'auto')


def machine_info(device: torch.device) -> dict[str, object]:
    """CPU model, core count, threads, torch version, load average and (on CUDA) the GPU name."""
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
    if hasattr(os, 'getloadavg'):
        info['loadavg_start'] = round(os.getloadavg()[0], 2)
    if device.type == 'cuda':
        info['gpu'] = torch.cuda.get_device_name(device)
        info['cuda'] = torch.version.cuda
    return info


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far, MiB.

    Linux: ``VmHWM`` of /proc/self/status, the high-water mark of this program's memory (``ru_maxrss`` would carry
    over the parent's peak into a child started by fork + exec). Elsewhere ``ru_maxrss`` (bytes on macOS).
    """
    try:
        for line in Path('/proc/self/status').read_text().splitlines():
            if line.startswith('VmHWM:'):
                return int(line.split()[1]) / 2**10  # kB
    except (OSError, ValueError, IndexError):
        pass
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


def network_options(arch: str, level: str | None, args: argparse.Namespace) -> dict[str, object]:
    """The ``network_g`` dict for ``arch``: type, level (if it takes one), burst_size (if it takes one), --net."""
    cls = ARCH_REGISTRY.get(arch)
    params = inspect.signature(cls).parameters
    opt: dict[str, object] = {'type': arch}
    if level is not None and 'level' in params:
        opt['level'] = level
    if 'burst_size' in params:
        opt['burst_size'] = args.burst
    opt.update(args.net)
    return opt


def supports_impl(arch: str) -> bool:
    """Whether the network has an ``impl`` argument (then every --impl runs; otherwise one row, impl '-')."""
    return 'impl' in inspect.signature(ARCH_REGISTRY.get(arch)).parameters


class _Runner:
    """One implementation's model, optimiser and step closure."""

    def __init__(self, model: torch.nn.Module, precision: str, device: torch.device, x: torch.Tensor) -> None:
        self.model = model.to(device).train()
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-4, betas=(0.9, 0.999), eps=1e-8)
        self.loss_fn = build_loss({'type': 'L1Loss'})
        self.dtype = DTYPES[precision]
        self.device = device
        self.scaler = torch.amp.GradScaler('cuda', enabled=precision == 'fp16' and device.type == 'cuda')
        self.x = x
        self.y: torch.Tensor | None = None
        self.times: list[float] = []
        self.cpu_times: list[float] = []
        self.peak_cuda = 0.0

    def step(self) -> None:
        self.opt.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
            out = self.model(self.x)
        if self.y is None:  # a fixed random target of the output's shape
            gen = torch.Generator(device='cpu').manual_seed(1)
            self.y = torch.rand(out.shape, generator=gen).to(self.device)
        loss = self.loss_fn(out.float(), self.y)  # float32, outside autocast
        self.scaler.scale(loss).backward()
        self.scaler.step(self.opt)
        self.scaler.update()

    def timed(self, steps: int) -> None:
        sync = self.device.type == 'cuda'
        if sync:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(steps):
            self.step()
        if sync:
            torch.cuda.synchronize(self.device)
            self.peak_cuda = max(self.peak_cuda, torch.cuda.max_memory_allocated(self.device) / 2**20)
        self.times.append((time.perf_counter() - t0) / steps)
        self.cpu_times.append((time.process_time() - c0) / steps)


def _isolated_rss(arch: str, level: str | None, precision: str, impl: str, args: argparse.Namespace) -> float | None:
    """Peak RSS (MiB) of a fresh process running one warm-up and one step of this configuration on CPU."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / 'row.json'
        cmd = [sys.executable, str(Path(__file__).resolve()), '--arch', arch, '--precisions', precision,
               '--impl', impl, '--batch', str(args.batch), '--burst', str(args.burst), '--patch', str(args.patch),
               '--steps', '1', '--reps', '1', '--warmup', '1', '--device', 'cpu', '--json', str(out)]
        if level is not None:
            cmd += ['--levels', level]
        for k, v in args.net.items():
            cmd += ['--net', f'{k}={json.dumps(v)}']
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        if done.returncode or not out.is_file():
            return None
        rows = json.loads(out.read_text())['rows']
        return rows[0]['peak_mem_mib'] if rows and rows[0]['peak_mem_mib'] else None


def run_config(arch: str, level: str | None, precision: str, device: torch.device,
               args: argparse.Namespace) -> list[dict[str, object]]:
    """Rows of one (network, precision): one per implementation, run interleaved."""
    impls = list(args.impl) if supports_impl(arch) else ['-']
    base: dict[str, object] = {
        'arch': arch, 'level': level if level is not None else '-', 'precision': precision, 'device': device.type,
        'batch': args.batch, 'burst': args.burst, 'patch': args.patch, 'bursts_per_s': None, 's_per_step': None,
        's_per_step_all': None, 'speedup': None, 'peak_mem_mib': None, 'mem_kind': None, 'note': ''
    }
    rows = {impl: dict(base, impl=impl) for impl in impls}
    reason = unsupported_reason(precision, device)
    if reason:
        for r in rows.values():
            r['note'] = reason
        return list(rows.values())
    try:
        opt = network_options(arch, level, args)
        torch.manual_seed(0)
        model = build_network(opt)
        h = args.patch // 8
        x = torch.rand(args.batch, args.burst, 4, h, h, generator=torch.Generator().manual_seed(0)).to(device)
        runners = {}
        for impl in impls:
            m = copy.deepcopy(model)
            if impl != '-':
                m.set_impl(impl) if hasattr(m, 'set_impl') else setattr(m, 'impl', impl)
            runners[impl] = _Runner(m, precision, device, x)
        del model
        for r in runners.values():
            for _ in range(args.warmup):
                r.step()
        for _ in range(args.reps):
            for r in runners.values():
                r.timed(args.steps)
        ref = runners.get('reference')
        for impl, r in runners.items():
            med = statistics.median(r.times)
            row = rows[impl]
            row.update(bursts_per_s=args.batch / med, s_per_step=med, s_per_step_all=[round(t, 3) for t in r.times],
                       cpu_s_per_step=statistics.median(r.cpu_times))
            if ref is not None:
                row['speedup'] = statistics.median(a / b for a, b in zip(ref.times, r.times))
                row['cpu_speedup'] = statistics.median(a / b for a, b in zip(ref.cpu_times, r.cpu_times))
            if device.type == 'cuda':
                row.update(peak_mem_mib=r.peak_cuda, mem_kind='CUDA max allocated')
            else:
                row.update(peak_mem_mib=peak_rss_mib(), mem_kind='process peak RSS (shared by the rows)'
                           if len(runners) > 1 else 'process peak RSS')
                if precision == 'fp16':
                    row['note'] = 'no GradScaler on CPU'
        del runners
    except torch.cuda.OutOfMemoryError:
        for r in rows.values():
            r['note'] = 'out of memory'
    except Exception as exc:
        msg = str(exc).splitlines()[0][:160] if str(exc) else ''
        for r in rows.values():
            r['note'] = f'{type(exc).__name__}: {msg}'
        if args.verbose:
            traceback.print_exc()
    if device.type == 'cuda':
        torch.cuda.empty_cache()
    if args.isolate_memory and device.type == 'cpu':
        for impl, row in rows.items():
            if row['bursts_per_s'] is not None:
                row['peak_rss_isolated_mib'] = _isolated_rss(arch, level, precision, impl, args)
    return list(rows.values())


def markdown(rows: list[dict[str, object]], info: dict[str, object]) -> str:
    """The results table plus the machine line."""
    head = ['arch', 'level', 'impl', 'precision', 'device', 'batch', 'burst', 'patch', 'bursts/s', 's/step',
            'speedup', 'peak memory', 'note']
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for r in rows:
        mem = f"{r['peak_mem_mib']:.0f} MiB ({r['mem_kind']})" if r['peak_mem_mib'] is not None else '-'
        if r.get('peak_rss_isolated_mib'):
            mem += f"; alone {r['peak_rss_isolated_mib']:.0f} MiB"
        speed = f"{r['bursts_per_s']:.3f}" if r['bursts_per_s'] is not None else '-'
        sps = f"{r['s_per_step']:.2f}" if r['s_per_step'] is not None else '-'
        ratio = f"{r['speedup']:.2f}x" if r['speedup'] is not None else '-'
        cells = [r['arch'], r['level'], r['impl'], r['precision'], r['device'], r['batch'], r['burst'], r['patch'],
                 speed, sps, ratio, mem, r['note'] or '']
        lines.append('| ' + ' | '.join(str(c) for c in cells) + ' |')
    machine = (f"Machine: {info['cpu']}, {info['cores']} cores ({info['torch_threads']} torch threads), "
               f"torch {info['torch']}, Python {info['python']}")
    if 'loadavg_start' in info:
        machine += f", load average {info['loadavg_start']} at start, {info.get('loadavg_end', '?')} at end"
    if 'gpu' in info:
        machine += f", GPU {info['gpu']} (CUDA {info['cuda']})"
    return '\n'.join(lines + ['', machine])


def _net_option(text: str) -> tuple[str, object]:
    if '=' not in text:
        raise argparse.ArgumentTypeError(f'expected KEY=VALUE, got {text!r}')
    key, value = text.split('=', 1)
    return key, yaml.safe_load(value)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--arch', default='BSRT', help='registered network type name (network_g.type)')
    p.add_argument('--levels', nargs='+', default=['S', 'L'], help="values of the network's 'level' argument")
    p.add_argument('--impl', nargs='+', default=['reference', 'fast'], choices=IMPLS,
                   help='implementations to compare, interleaved (networks with an impl argument)')
    p.add_argument('--precisions', nargs='+', default=['fp32', 'bf16', 'fp16'], choices=list(DTYPES))
    p.add_argument('--batch', type=int, default=2)
    p.add_argument('--burst', type=int, default=14)
    p.add_argument('--patch', type=int, default=256, help='HR patch size; the packed input is patch/8')
    p.add_argument('--steps', type=int, default=1, help='timed steps per round')
    p.add_argument('--reps', type=int, default=3, help='interleaved rounds (the median is reported)')
    p.add_argument('--warmup', type=int, default=1, help='untimed steps first, per implementation')
    p.add_argument('--device', default='auto', choices=['auto', 'cpu', 'cuda'])
    p.add_argument('--net', '--arch-opt', dest='net', type=_net_option, action='append', default=[],
                   metavar='KEY=VALUE',
                   help='extra network constructor argument (YAML value); repeatable')
    p.add_argument('--isolate-memory', action='store_true',
                   help='CPU: also measure each implementation\'s peak RSS alone in a fresh process')
    p.add_argument('--json', default=None, help='also write the rows and machine description here')
    p.add_argument('--verbose', action='store_true', help='print tracebacks of failed rows')
    args = p.parse_args(argv)
    args.net = dict(args.net)
    if args.patch <= 0 or args.patch % 8:
        p.error(f'--patch must be a positive multiple of 8 (the packed input is patch/8), got {args.patch}')
    for key in ('batch', 'burst', 'steps', 'reps'):
        if getattr(args, key) < 1:
            p.error(f'--{key} must be >= 1')
    if args.warmup < 0:
        p.error('--warmup must be >= 0')
    if args.arch not in ARCH_REGISTRY:
        p.error(f"--arch: unknown network {args.arch!r} (registered: {', '.join(sorted(ARCH_REGISTRY.keys()))})")
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
    takes_level = 'level' in inspect.signature(ARCH_REGISTRY.get(args.arch)).parameters
    levels = args.levels if takes_level else [None]
    rows = []
    for level in levels:
        for precision in args.precisions:
            rows.extend(run_config(args.arch, level, precision, device, args))
            print(f'done: {args.arch} {level or ""} {precision}', file=sys.stderr, flush=True)
    if hasattr(os, 'getloadavg'):
        info['loadavg_end'] = round(os.getloadavg()[0], 2)
    print(markdown(rows, info))
    if args.json:
        Path(args.json).write_text(json.dumps({'machine': info, 'rows': rows}, indent=2))
    return 0


if __name__ == '__main__':
    sys.exit(main())
