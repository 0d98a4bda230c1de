"""One table of many ``test.py`` runs: a Markdown file and a self-contained, sortable HTML page.

Each row is one result folder (``results/<name>/<dataset>``, its ``metrics.json``): the run, the network (the
published variant it is, e.g. ``BSRT-S``, or its type with "own options"), its parameter count, its
multiply-accumulates on one 14×48×48 packed burst (``codes.archs.macs.burst_macs``; burst networks only), the
dataset, and every mean metric with the published figure of that network, dataset and metric beside it
(``codes.metrics.published``; "—" where none is known). The page uses the sortable table of the HTML reports
(``codes.visualization.report``: its CSS and sort code), has no network access and no CDN; click a header to sort,
again to reverse.
"""
from __future__ import annotations

import glob
import html
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from codes.metrics.published import dataset_id, find_figure, metric_kind, network_variant
from codes.utils.errors import UserError
from codes.visualization.report import PAGE_CSS, SORT_JS, TABLE_CSS, ReportError, load_results

__all__ = ['collect_result_dirs', 'build_table', 'write_markdown', 'write_html', 'write_results_table',
           'ResultsTable', 'NONE']

#: The text of a cell without a value (no published figure, a metric the run did not compute, ...).
NONE = '—'
_BURST_MODELS = ('BurstSRModel', 'RealBurstSRModel')
_GLOB_CHARS = set('*?[')


@dataclass
class ResultsTable:
    """Columns (``id``, ``title``, ``kind``: text / int / gmacs / metric / published) and rows (``key``: the run,
    ``values``: sortable values by column id, ``text``: the cells as shown, ``source``: the source number of a
    published cell) of the table, and the numbered sources and notes below it."""
    columns: list[dict[str, str]] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def collect_result_dirs(args: Sequence[str]) -> list[Path]:
    """The result folders that ``args`` name, in order and without repeats.

    Each argument is a result folder (with ``metrics.json``), a run folder ``results/<name>`` (every sub-folder with
    a ``metrics.json``), a ``metrics.json`` file, or a glob pattern of these (``'results/*/SyntheticBurstVal'``;
    the other files it matches are skipped). A pattern matching no folder, a missing path and a folder without any
    ``metrics.json`` are errors naming it.
    """
    found: list[Path] = []
    for arg in args:
        paths = [arg]
        if _GLOB_CHARS & set(arg):
            # the files a pattern matches besides metrics.json (logs, earlier tables) are not runs: skipped
            paths = [m for m in sorted(glob.glob(arg)) if os.path.isdir(m) or os.path.basename(m) == 'metrics.json']
            if not paths:
                raise UserError(f'{arg}: the pattern matches no folder and no metrics.json')
        for p in map(Path, paths):
            if p.is_file() and p.name == 'metrics.json':
                dirs = [p.parent]
            elif (p / 'metrics.json').is_file():
                dirs = [p]
            elif p.is_dir():
                dirs = sorted(d.parent for d in p.glob('*/metrics.json'))
                if not dirs:
                    raise ReportError(f'{p}: no metrics.json, neither in it nor in its sub-folders (is it a test.py '
                                      'result folder, results/<name> or results/<name>/<dataset>?)')
            elif p.exists():
                raise UserError(f'{p}: not a result folder or a metrics.json file')
            else:
                raise UserError(f'{p}: no such file or folder')
            found += [d for d in dirs if d not in found]
    if not found:
        raise UserError('no result folder given')
    return found


def _number(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _run_facts(result_dir: Path, record: Mapping[str, Any]) -> dict[str, Any]:
    """Network type, options and parameter count, model type and metric options of a ``metrics.json``; a
    ``metrics.json`` from before ``test.py`` recorded them has none (its cells say so)."""
    path = result_dir / 'metrics.json'
    if not isinstance(record.get('mean'), dict):
        raise ReportError(f'{path}: has no mean values (a "mean" object)')
    net = record.get('network')
    if net is not None and not (isinstance(net, dict) and isinstance(net.get('type'), str)
                                and isinstance(net.get('options', {}), dict)):
        raise ReportError(f'{path}: "network" must be an object with a "type" and "options"')
    metric_opts = record.get('metric_options') or {}
    if not isinstance(metric_opts, dict):
        raise ReportError(f'{path}: "metric_options" must be an object')
    return {'network': net, 'model_type': record.get('model_type'), 'metric_options': metric_opts}


def _is_burst(net: Mapping[str, Any], model_type: str | None) -> bool:
    if model_type is not None:
        return model_type in _BURST_MODELS
    return 'burst_size' in net.get('options', {})


def build_table(result_dirs: Sequence[str | os.PathLike], count_macs: bool = True,
                macs_fn: Callable[[Mapping[str, Any]], int] | None = None) -> ResultsTable:
    """The table of the result folders' ``metrics.json`` files, one row each, in the given order.

    Args:
        result_dirs: ``results/<name>/<dataset>`` folders.
        count_macs: count each burst network's MACs on one 14×48×48 burst (a forward of the network built from the
            recorded options, once per distinct network); False leaves the column empty.
        macs_fn: the counter (default ``codes.archs.macs.burst_macs``).
    """
    if macs_fn is None:
        from codes.archs.macs import burst_macs as macs_fn
    table = ResultsTable()
    loaded = []
    metric_names: list[str] = []
    for d in map(Path, result_dirs):
        record = load_results(d)
        facts = _run_facts(d, record)
        loaded.append((d, record, facts))
        for k, v in record['mean'].items():
            if k != 'num_samples' and _number(v) is not None and k not in metric_names:
                metric_names.append(k)
    table.columns = [{'id': 'network', 'title': 'network', 'kind': 'text'},
                     {'id': 'params', 'title': 'parameters', 'kind': 'int'},
                     {'id': 'gmacs', 'title': 'GMACs (14×48×48 burst)', 'kind': 'gmacs'},
                     {'id': 'dataset', 'title': 'dataset', 'kind': 'text'}]
    # a published column beside each configured metric (val.metrics); not beside baselines or timings
    scored = {m for _, _, facts in loaded for m in facts['metric_options']}
    for m in metric_names:
        table.columns.append({'id': m, 'title': m, 'kind': 'metric'})
        if m in scored:
            table.columns.append({'id': f'pub:{m}', 'title': f'{m} published', 'kind': 'published'})
    macs_cache: dict[str, int | None] = {}
    for d, record, facts in loaded:
        table.rows.append(_row(d, record, facts, [m for m in metric_names if m in scored], table, count_macs,
                               macs_fn, macs_cache))
    labels = [r['key'] for r in table.rows]
    for r, d in zip(table.rows, result_dirs):
        if labels.count(r['key']) > 1:  # two runs of the same name and dataset (other folders): the paths
            r['key'] = str(d)
    if any(r['values']['network'] is None for r in table.rows):
        table.notes.append('Runs without network in their metrics.json were scored before test.py recorded it '
                           '(network, parameters, metric types); score them again to fill the row.')
    return table


def _row(result_dir: Path, record: Mapping[str, Any], facts: Mapping[str, Any], published_for: Sequence[str],
         table: ResultsTable, count_macs: bool, macs_fn: Callable[[Mapping[str, Any]], int],
         macs_cache: dict[str, int | None]) -> dict[str, Any]:
    """One run's cells (the metric columns of ``table.columns``, a published cell for each of ``published_for``);
    its published figures' sources are added to ``table.sources``."""
    net = facts['network']
    variant = None
    values: dict[str, Any] = {}
    text: dict[str, str] = {}
    source: dict[str, int] = {}
    if net is None:
        values['network'] = values['params'] = values['gmacs'] = None
    else:
        options = net.get('options', {})
        variant = network_variant(net['type'], options)
        values['network'] = variant or f"{net['type']} (own options)"
        values['params'] = _number(net.get('parameters'))
        values['gmacs'] = None
        if count_macs and _is_burst(net, facts['model_type']):
            key = json.dumps({'type': net['type'], **options}, sort_keys=True, default=str)
            if key not in macs_cache:
                macs_cache[key] = _count(net['type'], options, macs_fn, table)
            values['gmacs'] = None if macs_cache[key] is None else macs_cache[key] / 1e9
    dataset = str(record.get('dataset', result_dir.name))
    values['dataset'] = dataset
    text['network'] = values['network'] or NONE
    text['params'] = NONE if values['params'] is None else f"{int(values['params']):,}"
    text['gmacs'] = NONE if values['gmacs'] is None else f"{values['gmacs']:.1f}"
    text['dataset'] = dataset
    ds = dataset_id(dataset)
    for m, raw in record['mean'].items():
        v = _number(raw)
        if m != 'num_samples' and v is not None:  # a NaN or infinite mean is shown as such and sorts as missing
            values[m], text[m] = (v, f'{v:.4f}') if math.isfinite(v) else (None, str(v))
    for c in table.columns:
        if c['kind'] == 'metric' and c['id'] not in values:
            values[c['id']], text[c['id']] = None, NONE
    for m in published_for:
        fig = find_figure(variant, ds, metric_kind(facts['metric_options'].get(m)))
        values[f'pub:{m}'], text[f'pub:{m}'] = None, NONE
        if fig is not None:
            if fig.source not in table.sources:
                table.sources.append(fig.source)
            n = table.sources.index(fig.source) + 1
            values[f'pub:{m}'] = fig.value
            text[f'pub:{m}'] = f"{'≈' if fig.approx else ''}{fig.value:g} [{n}]"
            source[f'pub:{m}'] = n
    return {'key': f'{result_dir.resolve().parent.name}/{result_dir.name}', 'values': values, 'text': text,
            'source': source}


def _count(net_type: str, options: Mapping[str, Any], macs_fn: Callable[[Mapping[str, Any]], int],
           table: ResultsTable) -> int | None:
    """MACs of the network, or None with a note when it cannot be built or run here (a type this installation
    lacks, options this version refuses, an input the network cannot take)."""
    try:
        return int(macs_fn({'type': net_type, **options}))
    except (UserError, ValueError, RuntimeError) as exc:
        note = f'{net_type}: MACs not counted ({str(exc).splitlines()[0]})'
        if note not in table.notes:
            table.notes.append(note)
        return None


def _md_cell(text: str) -> str:
    return text.replace('|', '\\|').replace('\n', ' ')


def write_markdown(table: ResultsTable, path: str | os.PathLike) -> Path:
    """The table as GitHub Markdown (numbers right-aligned), its sources numbered below it; returns the file."""
    path = Path(path)
    cols = [{'id': 'key', 'title': 'run', 'kind': 'text'}] + table.columns
    lines = ['| ' + ' | '.join(_md_cell(c['title']) for c in cols) + ' |',
             '|' + '|'.join('---' if c['kind'] == 'text' else '---:' for c in cols) + '|']
    for r in table.rows:
        cells = [r['key']] + [r['text'][c['id']] for c in table.columns]
        lines.append('| ' + ' | '.join(_md_cell(t) for t in cells) + ' |')
    lines += ['', f'{NONE}: no value (no published figure for this network, dataset and metric; MACs: not a burst '
              'network or not counted). GMACs: multiply-accumulates of one forward on a 14×48×48 packed RGGB burst.']
    if table.sources:
        lines += ['', 'Published figures:', ''] + [f'{i}. {s}' for i, s in enumerate(table.sources, 1)]
    if table.notes:
        lines += [''] + [f'* {n}' for n in table.notes]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text('\n'.join(lines) + '\n', encoding='utf-8')
    return path


def write_html(table: ResultsTable, path: str | os.PathLike, title: str = 'Results') -> Path:
    """The table as one self-contained HTML page, sortable by any column; returns the file."""
    path = Path(path)
    data = {'columns': table.columns, 'rows': table.rows}
    payload = json.dumps(data, allow_nan=False, ensure_ascii=False).replace('</', '<\\/')
    sources = ''.join(f'<li id="src{i}">{html.escape(s)}</li>' for i, s in enumerate(table.sources, 1))
    notes = ''.join(f'<li>{html.escape(n)}</li>' for n in table.notes)
    page = (_TEMPLATE.replace('%PAGE_CSS%', PAGE_CSS).replace('%TABLE_CSS%', TABLE_CSS).replace('%SORT_JS%', SORT_JS)
            .replace('%TITLE%', html.escape(title)).replace('%COUNT%', str(len(table.rows)))
            .replace('%SOURCES%', sources).replace('%NOTES%', notes).replace('%NONE%', NONE)
            .replace('%DATA%', payload))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding='utf-8')
    return path


def write_results_table(args: Sequence[str], out: str | os.PathLike = 'results/results_table',
                        count_macs: bool = True) -> tuple[Path, Path]:
    """Collect the result folders of ``args`` (:func:`collect_result_dirs`), write ``<out>.md`` and ``<out>.html``
    and return both paths."""
    table = build_table(collect_result_dirs(args), count_macs=count_macs)
    out = Path(out)
    return (write_markdown(table, out.with_name(out.name + '.md')),
            write_html(table, out.with_name(out.name + '.html'), f'Results of {len(table.rows)} runs'))


_TEMPLATE = r'''<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>%TITLE%</title>
<style>
%PAGE_CSS%
#results { background: #fff; }
%TABLE_CSS%
#results td.published { color: #555; }
#results td.published[title] { cursor: help; }
#notes, #sources { color: #555; }
</style>
</head>
<body>
<header><h1>%TITLE%</h1></header>
<main>
<p>%COUNT% runs. Click a column to sort (again to reverse); a published figure's source is its number below
(hover the cell to read it). %NONE%: no value.</p>
<table id="results"><thead><tr id="head"></tr></thead><tbody id="body"></tbody></table>
<ol id="sources">%SOURCES%</ol>
<ul id="notes">%NOTES%</ul>
</main>
<script type="application/json" id="data">%DATA%</script>
<script>
%SORT_JS%
(function () {
  'use strict';
  var D = JSON.parse(document.getElementById('data').textContent);
  var head = document.getElementById('head'), body = document.getElementById('body');
  var order = D.rows.map(function (_, i) { return i; });
  var sortCol = null, sortDir = 1;
  var sources = Array.prototype.map.call(document.querySelectorAll('#sources li'), function (e) {
    return e.textContent;
  });
  function th(text, cls, id) {
    var e = document.createElement('th'); e.textContent = text; if (cls) e.className = cls;
    e.dataset.col = id; head.appendChild(e);
  }
  th('#', 'key', '#'); th('run', 'key', 'key');
  D.columns.forEach(function (c) { th(c.title, c.kind === 'text' ? 'key' : '', c.id); });
  var trs = D.rows.map(function (r, i) {
    var tr = document.createElement('tr'); tr.className = 'row'; tr.dataset.key = r.key;
    var td = document.createElement('td'); td.className = 'key'; td.textContent = i + 1; tr.appendChild(td);
    td = document.createElement('td'); td.className = 'key name'; td.textContent = r.key; tr.appendChild(td);
    D.columns.forEach(function (c) {
      var td = document.createElement('td'), v = r.values[c.id];
      td.className = (c.kind === 'text' ? 'key' : 'metric') + (c.kind === 'published' ? ' published' : '');
      td.dataset.col = c.id; td.textContent = r.text[c.id];
      if (v !== null && v !== undefined) td.dataset.value = v;
      if (r.source[c.id]) td.title = sources[r.source[c.id] - 1];
      tr.appendChild(td);
    });
    return tr;
  });
  function render() {
    var frag = document.createDocumentFragment();
    order.forEach(function (i) { frag.appendChild(trs[i]); });
    body.appendChild(frag);
  }
  function sortBy(col, dir) {
    sortCol = col; sortDir = dir;
    order.sort(function (a, b) { return compareRows(D.rows, a, b, col, dir); });
    markSorted(head, col, dir);
    render();
  }
  var textCols = {'#': 1, 'key': 1};
  D.columns.forEach(function (c) { if (c.kind === 'text') textCols[c.id] = 1; });
  head.addEventListener('click', function (e) {
    var col = e.target.dataset && e.target.dataset.col;
    if (!col) return;
    sortBy(col, col === sortCol ? -sortDir : (textCols[col] ? 1 : -1));  // numbers: largest first
  });
  render();
})();
</script>
</body>
</html>
'''
