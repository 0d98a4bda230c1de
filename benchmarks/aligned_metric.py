"""Cost of the BurstSR alignment (AlignedPSNR per image, AlignedL1 forward + backward) per flow estimator.

Usage (from the repository root)::

    python benchmarks/aligned_metric.py [--size 640] [--batch 1] [--repeats 5] [--device auto|cpu|cuda]
                                        [--estimators dis pwcnet] [--json OUT.json]

The inputs are a (batch, 3, size, size) prediction, a ground truth that is the prediction shifted by (0.6, −1.3)
px and mixed by a 3×3 colour matrix, and a 1-frame packed burst of size/8 (640 is BurstSR's output size). PWC-Net
runs with **random weights** (the cost is the same as with the official ones; the flow is not meaningful), so the
table measures time, not accuracy. Reported: seconds per call (mean of ``--repeats`` after one warm-up, CUDA
synchronised).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as `python benchmarks/aligned_metric.py`

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from codes.losses.aligned_loss import AlignedL1Loss  # noqa: E402
from codes.metrics.aligned_metric import calculate_aligned_psnr  # noqa: E402
from codes.metrics.alignment import DISFlow, SpatialColorAlignment, warp  # noqa: E402


def _inputs(size: int, batch: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    base = F.avg_pool2d(torch.rand(batch, 3, size // 4, size // 4, generator=g), 3, 1, 1)
    gt = F.interpolate(base, size=(size, size), mode='bicubic', align_corners=False).clamp(0, 1) * 0.5
    mix = torch.tensor([[0.9, 0.05, 0.0], [0.03, 1.1, 0.02], [0.0, 0.08, 0.8]])
    flow = torch.tensor([0.6, -1.3]).view(1, 2, 1, 1).expand(batch, 2, size, size)
    pred = torch.einsum('ij,bjhw->bihw', mix, warp(gt, -flow))
    burst = F.avg_pool2d(pred, 8)[:, [0, 1, 1, 2]].unsqueeze(1)
    return pred.to(device), gt.to(device), burst.to(device)


def _time(fn, repeats: int, device: torch.device) -> float:
    fn()
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / repeats


def _estimator(name: str, device: torch.device) -> torch.nn.Module:
    if name == 'dis':
        return DISFlow('medium')
    from codes.archs.pwcnet_arch import PWCNet

    class RandomPWC(torch.nn.Module):  # PWCNetFlow without a weight file
        def __init__(self) -> None:
            super().__init__()
            self.net = PWCNet()

        def estimate_flow(self, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            return self.net.estimate_flow(source, target)
    return RandomPWC().to(device)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--size', type=int, default=640)
    p.add_argument('--batch', type=int, default=1)
    p.add_argument('--repeats', type=int, default=5)
    p.add_argument('--device', default='auto', choices=['auto', 'cpu', 'cuda'])
    p.add_argument('--estimators', nargs='+', default=['dis', 'pwcnet'], choices=['dis', 'pwcnet'])
    p.add_argument('--json', default=None)
    args = p.parse_args(argv)
    device = torch.device('cuda' if args.device == 'cuda' or (args.device == 'auto' and torch.cuda.is_available())
                          else 'cpu')
    pred, gt, burst = _inputs(args.size, args.batch, device)
    rows = []
    for name in args.estimators:
        align = SpatialColorAlignment(_estimator(name, device), 4, 0).to(device)

        def metric() -> float:
            a = align(pred[:1], gt[:1], burst[:1])
            return calculate_aligned_psnr(a.pred, a.gt, valid=a.valid, crop_border=40)

        loss = AlignedL1Loss(flow_estimator='dis').to(device)
        loss.align = SpatialColorAlignment(align.flow_estimator, 4, 40).to(device)
        x = pred.clone().requires_grad_(True)

        def step() -> None:
            loss(x, gt, burst).backward()

        rows.append({'estimator': name, 'aligned_psnr_s_per_image': round(_time(metric, args.repeats, device), 4),
                     'aligned_l1_fwd_bwd_s_per_batch': round(_time(step, args.repeats, device), 4),
                     'psnr_db': round(metric(), 2)})
    info = {'device': str(device), 'size': args.size, 'batch': args.batch, 'torch': torch.__version__,
            'cpu': platform.processor() or platform.machine(), 'threads': torch.get_num_threads(),
            'omp_num_threads': os.environ.get('OMP_NUM_THREADS'), 'rows': rows}
    print(json.dumps(info, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(info, indent=2))
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
