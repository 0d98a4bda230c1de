"""Compare two ``test.py`` result folders of one dataset in one HTML page, image by image.

``python -m codes.scripts.compare_results results/BSRT_S_test/SyntheticBurstVal results/BSRT_L_test/SyntheticBurstVal
[--out PAGE.html] [--labels S L]``

The page (``codes.visualization.report.write_comparison``) lists both runs' mean metrics and, per image, both runs'
metrics and the difference B − A (sortable), and shows input, A, B and ground truth side by side with
synchronised zoom and pan. It needs the runs' ``metrics.json`` and their ``visualization/`` images
(``val.save_img: true``).
"""
from __future__ import annotations

import argparse
from typing import Sequence

from codes.utils.errors import run_cli
from codes.visualization.report import write_comparison

__all__ = ['main']


def main(argv: Sequence[str] | None = None) -> str:
    """Parse the command line, write the page, print and return its path."""
    p = argparse.ArgumentParser(prog='compare_results', description=__doc__.split('\n\n')[0])
    p.add_argument('a', help='result folder A (results/<name>/<dataset>)')
    p.add_argument('b', help='result folder B; differences are B - A')
    p.add_argument('--out', help='the page to write (default: results/compare_<A>_vs_<B>_<dataset>.html)')
    p.add_argument('--labels', nargs=2, metavar=('A', 'B'), help='names of the two runs in the page')
    args = p.parse_args(argv)
    page = write_comparison(args.a, args.b, args.out, tuple(args.labels) if args.labels else None)
    print(page)
    return str(page)


if __name__ == '__main__':
    run_cli(main, 'compare_results')
