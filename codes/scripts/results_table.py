"""One results table of many ``test.py`` runs, as Markdown and as a sortable offline HTML page.

``python -m codes.scripts.results_table results/BSRT_S_test results/BSRT_L_test/SyntheticBurstVal
'results/*/BurstSR_val' [--out results/results_table] [--no-macs]``

Each argument is a result folder ``results/<name>/<dataset>``, a run folder ``results/<name>`` (all its datasets)
or a quoted glob pattern of these, expanded here. Writes ``<out>.md`` and ``<out>.html``
(``codes.visualization.results_table``): a row per result folder with network, parameters, GMACs per 14×48×48
burst, dataset, every mean metric and the published figure beside it (``codes.metrics.published``).
"""
from __future__ import annotations

import argparse
from typing import Sequence

from codes.utils.errors import run_cli
from codes.visualization.results_table import write_results_table

__all__ = ['main']


def main(argv: Sequence[str] | None = None) -> tuple[str, str]:
    """Parse the command line, write the table, print and return the Markdown and HTML paths."""
    p = argparse.ArgumentParser(prog='results_table', description=__doc__.split('\n\n')[0])
    p.add_argument('runs', nargs='+', help='result folders, run folders or quoted glob patterns of them')
    p.add_argument('--out', default='results/results_table',
                   help='path without suffix of the two files (default: results/results_table -> .md, .html)')
    p.add_argument('--no-macs', action='store_true',
                   help='leave the GMACs column empty (counting runs one forward per distinct burst network)')
    args = p.parse_args(argv)
    md, page = write_results_table(args.runs, args.out, count_macs=not args.no_macs)
    print(md)
    print(page)
    return str(md), str(page)


if __name__ == '__main__':
    run_cli(main, 'results_table')
