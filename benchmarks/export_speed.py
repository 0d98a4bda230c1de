"""CPU forward time and peak memory of each network in PyTorch eager, TorchScript, ONNX Runtime (and
``torch.compile`` with ``--compile``), on the same input.

Usage (from the repository root)::

    python benchmarks/export_speed.py [--models BSRT-S EBSR Burstormer-synthetic DBSR BIPNet DCLS] [--size 24] [--burst 14]
                                      [--repeats 5] [--threads N] [--compile] [--json OUT.json]

Each network (published configuration, random weights, ``impl: fast``) is exported by the code of ``bsr-export``
(:mod:`codes.export.exporters`, with its check against PyTorch) at ``--size`` packed pixels (LR pixels for DCLS),
batch 1, which is also the size of the timed input. Forward time: no_grad, fp32, one untimed run per backend, then
``--repeats`` rounds in which every backend runs once (interleaved, so a change of the machine's load hits all
backends alike); the median is reported and the ratio to eager within the same run. Peak memory: the process's
resident-set high-water mark (``VmHWM``) during the timed calls of that backend, reset before each call through
``/proc/self/clear_refs`` (Linux), so it includes the process's baseline (torch, the weights, the other backends).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as `python benchmarks/export_speed.py`

import torch  # noqa: E402

from benchmarks.train_step import machine_info, peak_rss_mib  # noqa: E402
from codes.archs import build_network  # noqa: E402

MODELS: dict[str, dict] = {
    'BSRT-S': {'type': 'BSRT', 'level': 'S'},
    'EBSR': {'type': 'EBSR'},
    'Burstormer-synthetic': {'type': 'Burstormer', 'track': 'synthetic'},
    'DBSR': {'type': 'DBSR'},
    'BIPNet': {'type': 'BIPNet'},
    'DCLS': {'type': 'DCLS', 'scale': 4, 'kernel_size': 21},
}


def _reset_peak() -> None:
    try:
        Path('/proc/self/clear_refs').write_text('5')
    except OSError:
        pass


def _backends(net: torch.nn.Module, family: str, size: int, use_compile: bool, tmp: Path
              ) -> tuple[tuple[torch.Tensor, ...], dict[str, Callable[[], object]], dict[str, str]]:
    """The timed input and one zero-argument call per backend (and why a backend is missing)."""
    import onnxruntime as ort

    from codes.export.exporters import ExportError, export_onnx, export_torchscript, session_options
    from codes.export.layout import export_module, layout_of
    layout = layout_of(net, family)
    module = export_module(net, layout)
    side = layout.round_size(size)
    args = layout.example(1, side, side)
    calls: dict[str, Callable[[], object]] = {'eager': lambda: module(*args)}
    skipped: dict[str, str] = {}
    if use_compile:
        compiled = torch.compile(module)
        calls['torch.compile'] = lambda: compiled(*args)
    opt = {'type': family}
    try:
        export_torchscript(net, layout, opt, tmp / f'{family}.pt', side)
        with warnings.catch_warnings():  # torch.jit.load is deprecated in favour of torch.export
            warnings.simplefilter('ignore', FutureWarning)
            traced = torch.jit.load(str(tmp / f'{family}.pt'))
        calls['torchscript'] = lambda: traced(*args)
    except ExportError as exc:
        skipped['torchscript'] = str(exc)
    try:
        result = export_onnx(net, layout, opt, tmp / f'{family}.onnx', side)
        session = ort.InferenceSession(str(result.path), session_options(ort), providers=['CPUExecutionProvider'])
        feed = {i.name: a.numpy() for i, a in zip(session.get_inputs(), args)}
        calls[f'onnxruntime ({result.exporter})'] = lambda: session.run(None, feed)
    except ExportError as exc:
        skipped['onnxruntime'] = str(exc)[:300]
    return args, calls, skipped


def main() -> None:
    """Run the benchmark and print a Markdown table (and optionally write JSON)."""
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--models', nargs='+', default=list(MODELS), choices=list(MODELS))
    p.add_argument('--size', type=int, default=24)
    p.add_argument('--burst', type=int, default=14)
    p.add_argument('--repeats', type=int, default=5)
    p.add_argument('--threads', type=int, default=None)
    p.add_argument('--compile', action='store_true', help='also time torch.compile (slow to compile)')
    p.add_argument('--json', type=Path)
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    info = machine_info(torch.device('cpu'))
    rows = []
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        for name in a.models:
            opt = dict(MODELS[name])
            if opt['type'] != 'DCLS':
                opt['burst_size'] = a.burst
            torch.manual_seed(0)
            net = build_network(opt).eval()
            if hasattr(net, 'set_impl'):
                net.set_impl('fast')
            start = time.time()
            args, calls, skipped = _backends(net, opt['type'], a.size, a.compile, Path(tmp))
            export_s = time.time() - start
            for call in calls.values():  # untimed warm-up (and compilation)
                call()
            times: dict[str, list[float]] = {k: [] for k in calls}
            peaks: dict[str, float] = {k: 0.0 for k in calls}
            for _ in range(a.repeats):
                for key, call in calls.items():
                    _reset_peak()
                    t = time.perf_counter()
                    call()
                    times[key].append(time.perf_counter() - t)
                    peaks[key] = max(peaks[key], peak_rss_mib())
            eager = statistics.median(times['eager'])
            for key in calls:
                med = statistics.median(times[key])
                rows.append({'model': name, 'input': list(args[0].shape), 'backend': key, 'median_s': round(med, 4),
                             'vs_eager': round(med / eager, 2), 'peak_rss_mib': round(peaks[key]),
                             'export_and_check_s': round(export_s, 1)})
            for key, why in skipped.items():
                rows.append({'model': name, 'input': list(args[0].shape), 'backend': key, 'skipped': why})
    info['loadavg_end'] = __import__('os').getloadavg()[0]
    print(f"machine: {info}")
    print('| model | input | backend | median forward | vs eager | peak RSS |')
    print('|---|---|---|---|---|---|')
    for r in rows:
        if 'skipped' in r:
            print(f"| {r['model']} | {tuple(r['input'])} | {r['backend']} | not exported: {r['skipped'][:120]} | | |")
        else:
            print(f"| {r['model']} | {tuple(r['input'])} | {r['backend']} | {r['median_s'] * 1000:.0f} ms | "
                  f"{r['vs_eager']:.2f}x | {r['peak_rss_mib']} MiB |")
    if a.json:
        a.json.write_text(json.dumps({'machine': info, 'rows': rows, 'args': vars(a) | {'json': str(a.json)}},
                                     indent=2))


if __name__ == '__main__':
    main()
