"""Plot a run's validation metrics, training losses and learning rate against iterations.

``python -m codes.scripts.plot_metrics experiments/<name> [--out PNG]``

Reads ``metrics.jsonl`` and ``train_scalars.jsonl`` of the experiment folder and writes ``metrics.png`` there
(``codes.visualization.plots.plot_metrics``): one axis per validation metric, one line per validation set, the
bilinear / bicubic baseline dashed on the PSNR axis, then the losses and the learning rate. ``train.py`` writes the
same file at the end of a run.
"""
from __future__ import annotations

import argparse
from typing import Sequence

from codes.utils.errors import run_cli
from codes.visualization.plots import plot_metrics

__all__ = ['main']


def main(argv: Sequence[str] | None = None) -> str:
    """Parse the command line, write the PNG, print and return its path."""
    p = argparse.ArgumentParser(prog='plot_metrics', description=__doc__.split('\n\n')[0])
    p.add_argument('experiment', help='experiment folder (experiments/<name>)')
    p.add_argument('--out', help='PNG to write (default: <experiment>/metrics.png)')
    args = p.parse_args(argv)
    out = plot_metrics(args.experiment, args.out)
    print(out)
    return str(out)


if __name__ == '__main__':
    run_cli(main, 'plot_metrics')
