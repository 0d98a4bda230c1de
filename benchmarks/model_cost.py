"""Size and cost of a burst network: parameters, multiply-accumulates and CPU/GPU forward time for one burst.

Usage (from the repository root)::

    python benchmarks/model_cost.py --arch Burstormer [--arch-opt track=real] [--burst 14] [--size 48]
                                    [--repeats 5] [--device cpu] [--json OUT.json]

The input is one random (1, burst, 4, size, size) packed RGGB burst. MACs are counted with
``torch.utils.flop_counter.FlopCounterMode`` (FLOPs / 2); torchvision's ``deform_conv2d`` has no formula there, so
it is counted as the grouped convolution it computes (``2 · B · Cout · H' · W' · (Cin / groups) · k²`` FLOPs, the
offset sampling and the mask product not included). Forward time: eval mode, ``torch.no_grad``, the median of
``--repeats`` runs after one untimed run.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as `python benchmarks/model_cost.py`

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from codes.archs import build_network  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_step import machine_info, network_options  # noqa: E402


def _deform_conv2d_flops(input_shape, weight_shape, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of ``torchvision::deform_conv2d`` counted as a (grouped) convolution of the same output size."""
    cout, cin_per_group, kh, kw = weight_shape
    b, _, h, w = out_shape
    return 2 * b * cout * h * w * cin_per_group * kh * kw


def count_macs(model: torch.nn.Module, x: torch.Tensor) -> int:
    """Multiply-accumulates of one forward of ``model`` on ``x``."""
    mapping = {}
    if hasattr(torch.ops, 'torchvision') and hasattr(torch.ops.torchvision, 'deform_conv2d'):
        mapping[torch.ops.torchvision.deform_conv2d.default] = _deform_conv2d_flops
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        model(x)
    return counter.get_total_flops() // 2


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--arch', required=True, help='a registered network type, e.g. Burstormer or BSRT')
    p.add_argument('--arch-opt', nargs='+', default=[], metavar='KEY=VALUE',
                   help='constructor options, values parsed as YAML (e.g. track=real, level=S)')
    p.add_argument('--burst', type=int, default=14)
    p.add_argument('--size', type=int, default=48, help='packed h = w of the burst')
    p.add_argument('--repeats', type=int, default=5)
    p.add_argument('--device', default='cpu')
    p.add_argument('--json', default=None)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(0)
    net_opt = network_options('', args)
    model = build_network(net_opt).to(device).eval()
    x = torch.rand(1, args.burst, 4, args.size, args.size, device=device)
    macs = count_macs(model, x)

    def forward() -> float:
        if device.type == 'cuda':
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        with torch.no_grad():
            model(x)
        if device.type == 'cuda':
            torch.cuda.synchronize(device)
        return time.perf_counter() - t0

    forward()
    times = [forward() for _ in range(args.repeats)]
    row = {'network_g': net_opt, 'input': list(x.shape), 'params': sum(q.numel() for q in model.parameters()),
           'gmacs': macs / 1e9, 'forward_s_median': statistics.median(times), 'forward_s': times,
           'machine': machine_info(device)}
    print(json.dumps(row, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(row, indent=2))
    return 0


if __name__ == '__main__':
    sys.exit(main())
