"""Peak host memory of tiled inference per output pixel: the whole-output path against the streamed one.

Usage (from the repository root)::

    python benchmarks/infer_memory.py [--size 3000] [--scale 4] [--tile 512] [--overlap 32]
                                      [--paths whole streamed] [--pipeline] [--json OUT.json]

Each configuration runs in its own child process on a random RGB input of ``--size`` x ``--size`` pixels and writes
the two outputs of ``infer.py`` for an image model (8-bit sRGB PNG and 16-bit linear PNG) into a temporary folder:

* ``whole``: :func:`codes.utils.tiling.tiled_forward` (the float32 output and its weight map, whole), then clamp,
  x255 and the 16-bit conversion of the whole image, written by OpenCV: what ``infer.py`` did before streaming;
* ``streamed``: :func:`codes.utils.tiling.tiled_forward_rows` and :func:`codes.infer.stream_outputs`: one row of
  tiles of accumulators, bands written as they finish: what ``infer.py`` does now.

The network is a stand-in, bicubic upsampling of each tile (so the figure is the output path's, not a model's);
``--pipeline`` adds a run of the real ``infer.py`` pipeline with a random-weight DCLS of the published size at
``--pipeline-size``. The figure is the child's **peak RSS** (``resource.getrusage`` high-water mark) minus its RSS
just before the inference (torch, the input and, for ``--pipeline``, nothing of the model yet), divided by the
output pixels.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as `python benchmarks/infer_memory.py`

import numpy as np  # noqa: E402
import torch  # noqa: E402


def _rss_mib() -> float:
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith('VmRSS:'):
                return int(line.split()[1]) / 1024
    return float('nan')


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _child(args: argparse.Namespace) -> dict:
    import torch.nn.functional as F

    from codes.infer import save_linear, save_srgb, stream_outputs
    from codes.utils.tiling import tiled_forward, tiled_forward_rows
    torch.set_num_threads(args.threads)
    out_dir = Path(args.out)
    s = args.scale
    if args.path == 'pipeline':
        import cv2

        from codes.archs import build_network
        from codes.infer import infer_pipeline
        torch.manual_seed(0)
        net = build_network({'type': 'DCLS', 'scale': s})
        weights = out_dir / 'dcls.pth'
        torch.save({'params': net.state_dict()}, weights)
        del net
        img = np.random.default_rng(0).integers(0, 256, (args.size, args.size, 3), dtype=np.uint8)
        cv2.imwrite(str(out_dir / 'in.png'), img)
        del img
        base = _rss_mib()
        start = time.perf_counter()
        infer_pipeline(['--weights', str(weights), '--input', str(out_dir / 'in.png'), '--output', str(out_dir),
                        '--device', 'cpu', '--tile', str(args.tile), '--tile-overlap', str(args.overlap)])
    else:
        lr = torch.rand(1, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))

        def fn(x: torch.Tensor) -> torch.Tensor:
            return F.interpolate(x, scale_factor=s, mode='bicubic', align_corners=False)

        base = _rss_mib()
        start = time.perf_counter()
        if args.path == 'whole':
            sr = tiled_forward(fn, lr, s, args.tile, args.overlap, 1, 32)[0].clamp(0, 1)
            save_srgb((sr.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8), out_dir / 'sr.png')
            save_linear(sr, out_dir / 'sr16.png')
        else:
            def to_srgb(band: torch.Tensor, _: object) -> np.ndarray:
                return (band.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)

            rows = tiled_forward_rows(fn, lr, s, args.tile, args.overlap, 1, 32)
            stream_outputs(rows, (s * args.size, s * args.size), out_dir / 'sr.png', out_dir / 'sr16.png', to_srgb)
    seconds = time.perf_counter() - start
    peak = _peak_mib()
    px = (s * args.size) ** 2
    return {'path': args.path, 'input': args.size, 'output': s * args.size, 'tile': args.tile,
            'seconds': round(seconds, 1), 'rss_before_mib': round(base, 1), 'peak_rss_mib': round(peak, 1),
            'bytes_per_output_pixel': round((peak - base) * 2 ** 20 / px, 2)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--size', type=int, default=3000, help='input side (the output is --scale times larger)')
    p.add_argument('--scale', type=int, default=4)
    p.add_argument('--tile', type=int, default=512)
    p.add_argument('--overlap', type=int, default=32)
    p.add_argument('--paths', nargs='+', default=['whole', 'streamed'], choices=['whole', 'streamed'])
    p.add_argument('--whole-size', type=int, help='input side of the whole path (default --size)')
    p.add_argument('--pipeline', action='store_true', help='also run infer.py with a random-weight DCLS')
    p.add_argument('--pipeline-size', type=int, default=600)
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--json')
    p.add_argument('--path', help=argparse.SUPPRESS)  # child mode
    p.add_argument('--out', help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.path:
        print(json.dumps(_child(args)))
        return 0
    runs = [(path, args.whole_size if path == 'whole' and args.whole_size else args.size) for path in args.paths]
    if args.pipeline:
        runs.append(('pipeline', args.pipeline_size))
    rows = []
    for path, size in runs:
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [sys.executable, __file__, '--path', path, '--out', tmp, '--size', str(size), '--scale',
                   str(args.scale), '--tile', str(args.tile), '--overlap', str(args.overlap), '--threads',
                   str(args.threads)]
            res = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if res.returncode != 0:
                rows.append({'path': path, 'input': size, 'error': (res.stderr.strip().splitlines() or ['?'])[-1],
                             'returncode': res.returncode})
            else:
                rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    from benchmarks.train_step import machine_info  # the parent only: children measure their own memory
    report = {'scale': args.scale, 'tile': args.tile, 'overlap': args.overlap, **machine_info(torch.device('cpu')),
              'threads': args.threads, 'rows': rows}
    print(json.dumps(report, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == '__main__':
    sys.exit(main())
