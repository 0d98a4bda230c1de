"""Self-contained HTML pages of test results: ``results/<name>/<dataset>/index.html`` and two-run comparisons.

The pages are plain HTML, CSS and a little JavaScript written here (no network, no CDN: they open from a laptop
offline) with relative links to the images ``test.py`` saved under ``visualization/`` and small JPEG thumbnails
written beside the page (``thumbs/``). A page holds the mean metrics, a table of every image sortable by any column
(click a header; again to reverse) and filterable by name, and a viewer: click a row (or press Enter on it) to see
the images side by side at full resolution; the mouse wheel zooms, dragging pans, and every pane follows, so the
same pixels stay side by side; ``1`` is 100 %, ``f`` fits, ← / → step through the rows in table order, Esc closes.
"""
from __future__ import annotations

import html
import json
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence
from urllib.parse import quote

import cv2

from codes.utils.errors import UserError

__all__ = ['write_report', 'write_comparison', 'load_results', 'THUMB_SIZE', 'ReportError', 'PAGE_CSS', 'TABLE_CSS',
           'SORT_JS']

#: Longer side of a thumbnail, in pixels.
THUMB_SIZE = 128
#: Per-image files of a ``visualization/`` folder, by pane: (title, file suffix).
PANES = (('input', '_input'), ('prediction', ''), ('ground truth', '_gt'))
NOT_METRICS = ('key', 'gt_key')
BASELINES = ('baseline_psnr', 'bicubic_psnr')


class ReportError(UserError):
    """A result folder that cannot be reported on (no ``metrics.json``, no images)."""


def load_results(result_dir: str | os.PathLike) -> dict[str, Any]:
    """``metrics.json`` of a ``test.py`` result folder."""
    path = Path(result_dir) / 'metrics.json'
    if not path.is_file():
        raise ReportError(f'{result_dir}: no metrics.json (is it a test.py result folder, '
                          'results/<name>/<dataset>?)')
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ReportError(f'{path}: not valid JSON ({exc})') from None
    if not isinstance(record, dict) or not isinstance(record.get('per_image'), list):
        raise ReportError(f'{path}: has no per_image list')
    return record


def _metric_names(per_image: Sequence[dict[str, Any]]) -> list[str]:
    names: list[str] = []
    for rec in per_image:
        for k, v in rec.items():
            if k not in NOT_METRICS and k not in names and isinstance(v, (int, float)) and not isinstance(v, bool):
                names.append(k)
    return names


def _number(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def _href(target: Path, page_dir: Path) -> str:
    return quote(Path(os.path.relpath(target, page_dir)).as_posix())


def _image_files(result_dir: Path, key: str) -> dict[str, Path]:
    vis = result_dir / 'visualization'
    found = {title: vis / f'{key}{suffix}.png' for title, suffix in PANES}
    found['panel'] = vis / f'{key}_panel.png'
    return {k: p for k, p in found.items() if p.is_file()}


def _thumbnail(src: Path, dst: Path) -> bool:
    """A JPEG of ``src`` with its longer side THUMB_SIZE (never enlarged); rewritten only when older than ``src``."""
    if dst.is_file() and dst.stat().st_mtime >= src.stat().st_mtime:
        return True
    img = cv2.imread(str(src), cv2.IMREAD_COLOR)
    if img is None:
        return False
    h, w = img.shape[:2]
    f = min(1.0, THUMB_SIZE / max(h, w))
    if f < 1:
        img = cv2.resize(img, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)
    dst.parent.mkdir(parents=True, exist_ok=True)
    return bool(cv2.imwrite(str(dst), img, [cv2.IMWRITE_JPEG_QUALITY, 85]))


def _fmt_mean(v: Any) -> str:
    if v is None:
        return '–'
    if isinstance(v, float):
        return f'{v:.4f}'
    return html.escape(str(v))


def write_report(result_dir: str | os.PathLike, title: str | None = None) -> Path:
    """Write ``<result_dir>/index.html`` (and ``thumbs/``) for a ``test.py`` result folder; returns the page."""
    result_dir = Path(result_dir)
    record = load_results(result_dir)
    per_image = record['per_image']
    names = _metric_names(per_image)
    columns = [{'id': n, 'title': n, 'baseline': n in BASELINES} for n in names]
    rows = []
    for rec in per_image:
        key = str(rec['key'])
        files = _image_files(result_dir, key)
        thumb = None
        src = files.get('prediction') or files.get('panel')
        if src is not None:
            dst = result_dir / 'thumbs' / f'{key}.jpg'
            thumb = _href(dst, result_dir) if _thumbnail(src, dst) else None
        rows.append({'key': key, 'thumb': thumb, 'values': {n: _number(rec.get(n)) for n in names},
                     'images': [_href(files[t], result_dir) if t in files else None for t, _ in PANES],
                     'panel': _href(files['panel'], result_dir) if 'panel' in files else None})
    mean = record.get('mean', {})
    facts = {'dataset': record.get('dataset', result_dir.name), 'checkpoint': record.get('checkpoint'),
             'precision': record.get('precision')}
    summary = ''.join(f'<tr><th>{html.escape(k)}</th><td>{_fmt_mean(v)}</td></tr>' for k, v in mean.items())
    summary += ''.join(f'<tr><th>{k}</th><td>{html.escape(str(v))}</td></tr>' for k, v in facts.items() if v)
    page_title = title or f"{result_dir.parent.name} / {facts['dataset']}"
    default_sort = next((n for n in names if n not in BASELINES), None)
    out = result_dir / 'index.html'
    out.write_text(_page(page_title, summary, columns, rows, [t for t, _ in PANES], default_sort), encoding='utf-8')
    return out


def write_comparison(dir_a: str | os.PathLike, dir_b: str | os.PathLike, out: str | os.PathLike | None = None,
                     labels: tuple[str, str] | None = None) -> Path:
    """One page comparing two ``test.py`` result folders of the same dataset, image by image.

    The table has every metric of both runs and, per metric, the difference B − A; the viewer shows the input,
    A's and B's predictions and the ground truth. Images are matched by key; the keys only one run has are listed.

    Args:
        dir_a, dir_b: ``results/<name>/<dataset>`` folders.
        out: the page to write; default ``<dir_a>/../../compare_<nameA>_vs_<nameB>_<dataset>.html``.
        labels: the two runs' names in the page (default: their ``<name>`` folders).
    """
    dir_a, dir_b = Path(dir_a), Path(dir_b)
    rec_a, rec_b = load_results(dir_a), load_results(dir_b)
    la, lb = labels or (dir_a.resolve().parent.name, dir_b.resolve().parent.name)
    if la == lb:
        la, lb = f'A: {la}', f'B: {lb}'
    out = Path(out) if out else dir_a.parent.parent / f'compare_{_slug(la)}_vs_{_slug(lb)}_{_slug(dir_a.name)}.html'
    page_dir = out.parent
    page_dir.mkdir(parents=True, exist_ok=True)
    by_b = {str(r['key']): r for r in rec_b['per_image']}
    keys_a = [str(r['key']) for r in rec_a['per_image']]
    common = [r for r in rec_a['per_image'] if str(r['key']) in by_b]
    only_a = [k for k in keys_a if k not in by_b]
    only_b = [k for k in by_b if k not in set(keys_a)]
    if not common:
        raise ReportError(f'{dir_a} and {dir_b} have no image key in common; are they results on the same dataset?')
    names_a, names_b = _metric_names(rec_a['per_image']), _metric_names(rec_b['per_image'])
    shared = [n for n in names_a if n in names_b]
    thumbs = page_dir / f'{out.stem}_thumbs'
    rows = [_comparison_row(ra, by_b[str(ra['key'])], dir_a, dir_b, shared, thumbs, page_dir) for ra in common]
    summary = _comparison_summary((la, lb), (dir_a, dir_b), (rec_a, rec_b), shared, rows, (only_a, only_b))
    first = _first_psnr(shared)
    out.write_text(_page(f'{la} vs {lb} / {dir_a.name}', summary, _comparison_columns(shared), rows,
                         ['input', f'A: {la}', f'B: {lb}', 'ground truth'], f'd:{first}' if first else None),
                   encoding='utf-8')
    return out


def _comparison_columns(shared: Sequence[str]) -> list[dict]:
    """The table's columns: per metric the difference B − A, A's and B's value (a baseline: A's value only)."""
    columns = []
    for n in shared:
        if n in BASELINES:
            columns.append({'id': f'a:{n}', 'title': n, 'baseline': True})
            continue
        columns += [{'id': f'd:{n}', 'title': f'Δ {n} (B − A)', 'delta': True},
                    {'id': f'a:{n}', 'title': f'{n} A'}, {'id': f'b:{n}', 'title': f'{n} B'}]
    return columns


def _comparison_row(ra: Mapping[str, Any], rb: Mapping[str, Any], dir_a: Path, dir_b: Path, shared: Sequence[str],
                    thumbs: Path, page_dir: Path) -> dict:
    """One image of both runs: its values (``a:``, ``b:``, ``d:`` per metric), B's thumbnail and the viewer's
    images (input, A, B, ground truth)."""
    key = str(ra['key'])
    fa, fb = _image_files(dir_a, key), _image_files(dir_b, key)
    values: dict[str, float | None] = {}
    for n in shared:
        a, b = _number(ra.get(n)), _number(rb.get(n))
        values[f'a:{n}'], values[f'b:{n}'] = a, b
        values[f'd:{n}'] = b - a if a is not None and b is not None else None
    thumb = None
    if 'prediction' in fb and _thumbnail(fb['prediction'], thumbs / f'{key}.jpg'):
        thumb = _href(thumbs / f'{key}.jpg', page_dir)
    images = [fa.get('input'), fa.get('prediction'), fb.get('prediction'), fa.get('ground truth')]
    return {'key': key, 'thumb': thumb, 'values': values,
            'images': [_href(p, page_dir) if p is not None else None for p in images],
            'panel': _href(fb['panel'], page_dir) if 'panel' in fb else None}


def _comparison_summary(labels: tuple[str, str], dirs: tuple[Path, Path], records: tuple[Mapping, Mapping],
                        shared: Sequence[str], rows: list[dict], only: tuple[list[str], list[str]]) -> str:
    """The summary table's rows: both folders, the mean of every metric and its difference, how many images B
    wins on (first PSNR), how many were compared and the keys only one run has."""
    (la, lb), (dir_a, dir_b), (only_a, only_b) = labels, dirs, only
    mean_a, mean_b = records[0].get('mean', {}), records[1].get('mean', {})
    summary = (f'<tr><th></th><th>A: {html.escape(la)}</th><th>B: {html.escape(lb)}</th><th>B − A</th></tr>'
               f'<tr><th>folder</th><td>{html.escape(str(dir_a))}</td><td>{html.escape(str(dir_b))}</td><td></td></tr>')
    for n in shared:
        a, b = _number(mean_a.get(n)), _number(mean_b.get(n))
        d = f'{b - a:+.4f}' if a is not None and b is not None else ''
        summary += (f'<tr><th>mean {html.escape(n)}</th><td>{_fmt_mean(a)}</td><td>{_fmt_mean(b)}</td>'
                    f'<td>{d}</td></tr>')
    deltas = [r['values'].get(f'd:{_first_psnr(shared)}') for r in rows]
    deltas = [d for d in deltas if d is not None]
    if deltas:
        summary += (f'<tr><th>B better on</th><td colspan="3">{sum(d > 0 for d in deltas)} of {len(deltas)} '
                    f'images ({_first_psnr(shared)})</td></tr>')
    summary += f'<tr><th>images compared</th><td colspan="3">{len(rows)}</td></tr>'
    if only_a or only_b:
        summary += (f'<tr><th>not compared</th><td colspan="3">only in A: {html.escape(", ".join(only_a[:10]))}'
                    f'{" …" if len(only_a) > 10 else ""}; only in B: {html.escape(", ".join(only_b[:10]))}'
                    f'{" …" if len(only_b) > 10 else ""}</td></tr>')
    return summary


def _first_psnr(names: Sequence[str]) -> str | None:
    return next((n for n in names if 'psnr' in n and n not in BASELINES), next(iter(names), None))


def _slug(text: str) -> str:
    return ''.join(c if c.isalnum() or c in '-_.' else '_' for c in text).strip('_') or 'run'


def _page(title: str, summary_rows: str, columns: list[dict], rows: list[dict], panes: list[str],
          default_sort: str | None) -> str:
    data = {'columns': columns, 'rows': rows, 'panes': panes, 'sort': default_sort}
    payload = json.dumps(data, allow_nan=False).replace('</', '<\\/')
    return (_TEMPLATE.replace('%PAGE_CSS%', PAGE_CSS).replace('%TABLE_CSS%', TABLE_CSS).replace('%SORT_JS%', SORT_JS)
            .replace('%TITLE%', html.escape(title)).replace('%SUMMARY%', summary_rows)
            .replace('%DATA%', payload).replace('%COUNT%', str(len(rows))))


#: CSS of the sortable ``#results`` table, shared by every page of the toolkit (reports, comparisons, the results
#: table of ``codes.visualization.results_table``).
#: the page frame (body, header bar, main area) every page with a sortable table shares
PAGE_CSS = r'''body { font: 14px/1.4 system-ui, sans-serif; margin: 0; color: #222; background: #fafafa; }
header { padding: 12px 16px; background: #263238; color: #fff; }
header h1 { font-size: 18px; margin: 0; }
main { padding: 12px 16px; }
table { border-collapse: collapse; }'''

TABLE_CSS = r'''#results th { position: sticky; top: 0; background: #eceff1; cursor: pointer; user-select: none;
  padding: 6px 8px; text-align: right; white-space: nowrap; border-bottom: 1px solid #b0bec5; }
#results th.key, #results td.key { text-align: left; }
#results th.sorted-asc::after { content: " \25B2"; } #results th.sorted-desc::after { content: " \25BC"; }
#results th.baseline, #results td.baseline { color: #777; }
#results td { padding: 3px 8px; text-align: right; border-bottom: 1px solid #eee; font-variant-numeric: tabular-nums; }
#results tr.row { cursor: pointer; }
#results tr.row:hover, #results tr.row:focus { background: #e3f2fd; outline: none; }
#results td.thumb { width: 72px; padding: 2px; }
#results td.thumb img { max-width: 64px; max-height: 64px; display: block; }
td.pos { color: #2e7d32; } td.neg { color: #c62828; }'''

#: JavaScript of the sortable tables: ``compareRows(rows, a, b, col, dir)`` orders row indices ``a`` and ``b`` by
#: column ``col`` (``'#'``: the original order, ``'key'``: the row's name, otherwise ``rows[i].values[col]``,
#: numbers or text; missing values last whatever the direction); ``markSorted(head, col, dir)`` marks the header.
SORT_JS = r'''function compareRows(rows, a, b, col, dir) {
  if (col === '#') return dir * (a - b);
  var ra = rows[a], rb = rows[b];
  if (col === 'key') return dir * ra.key.localeCompare(rb.key, undefined, {numeric: true});
  var va = ra.values[col], vb = rb.values[col];
  var na = va === null || va === undefined, nb = vb === null || vb === undefined;
  if (na || nb) return na === nb ? a - b : (na ? 1 : -1);  // missing values last
  if (typeof va === 'string' || typeof vb === 'string') {
    var c = String(va).localeCompare(String(vb), undefined, {numeric: true});
    return c === 0 ? a - b : dir * c;
  }
  return va === vb ? a - b : dir * (va - vb);
}
function markSorted(head, col, dir) {
  Array.prototype.forEach.call(head.querySelectorAll('th'), function (e) {
    e.classList.remove('sorted-asc', 'sorted-desc');
    if (e.dataset.col === col) e.classList.add(dir > 0 ? 'sorted-asc' : 'sorted-desc');
  });
}'''


_TEMPLATE = r'''<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>%TITLE%</title>
<style>
%PAGE_CSS%
#summary th, #summary td { text-align: left; padding: 2px 12px 2px 0; font-weight: normal; }
#summary th { color: #555; }
#controls { margin: 12px 0 8px; }
#filter { padding: 4px 6px; width: 16em; }
#results { width: 100%; background: #fff; }
%TABLE_CSS%
#viewer { position: fixed; inset: 0; background: #111; color: #eee; display: flex; flex-direction: column;
  z-index: 10; }
#viewer[hidden] { display: none; }
#vbar { display: flex; gap: 8px; align-items: center; padding: 6px 10px; background: #222; flex-wrap: wrap; }
#vbar button { background: #37474f; color: #fff; border: 0; padding: 4px 10px; cursor: pointer; border-radius: 3px; }
#vtitle { font-weight: bold; margin-right: auto; }
#vpanes { flex: 1; display: flex; flex-wrap: wrap; gap: 2px; min-height: 0; }
.pane { flex: 1 1 260px; position: relative; overflow: hidden; background: #000; cursor: grab; min-height: 200px; }
.pane.dragging { cursor: grabbing; }
.pane img { position: absolute; left: 0; top: 0; transform-origin: 0 0; image-rendering: pixelated;
  max-width: none; user-select: none; -webkit-user-drag: none; }
.pane .plabel { position: absolute; left: 0; top: 0; background: rgba(0,0,0,.65); padding: 2px 6px; z-index: 1;
  font-size: 13px; }
.pane .missing { position: absolute; top: 45%; width: 100%; text-align: center; color: #888; }
</style>
</head>
<body>
<header><h1>%TITLE%</h1></header>
<main>
<table id="summary">%SUMMARY%</table>
<div id="controls"><input id="filter" type="search" placeholder="filter by name"> <span id="shown">%COUNT%</span>
 of %COUNT% images. Click a column to sort, a row to compare at full resolution.</div>
<table id="results"><thead><tr id="head"></tr></thead><tbody id="body"></tbody></table>
</main>
<div id="viewer" hidden>
 <div id="vbar"><span id="vtitle"></span><span id="vzoom"></span>
  <button id="vprev" title="previous (←)">◀</button><button id="vnext" title="next (→)">▶</button>
  <button id="vone" title="100 % (1)">1:1</button><button id="vfit" title="fit (f)">fit</button>
  <a id="vpanel" target="_blank" style="color:#90caf9">panel</a>
  <button id="vclose" title="close (Esc)">✕</button></div>
 <div id="vpanes"></div>
</div>
<script type="application/json" id="data">%DATA%</script>
<script>
%SORT_JS%
(function () {
  'use strict';
  var D = JSON.parse(document.getElementById('data').textContent);
  var head = document.getElementById('head'), body = document.getElementById('body');
  var order = D.rows.map(function (_, i) { return i; });
  var sortCol = null, sortDir = 1;
  function fmt(v, col) {
    if (v === null || v === undefined) return '–';
    var s = Math.abs(v) >= 100 ? v.toFixed(2) : v.toFixed(4);
    return col.delta && v > 0 ? '+' + s : s;
  }
  function th(text, cls, id) {
    var e = document.createElement('th'); e.textContent = text; if (cls) e.className = cls;
    if (id !== undefined) e.dataset.col = id; head.appendChild(e); return e;
  }
  th('#', 'key', '#'); th('', 'thumb'); th('image', 'key', 'key');
  D.columns.forEach(function (c) { th(c.title, c.baseline ? 'baseline' : '', c.id); });
  var trs = D.rows.map(function (r, i) {
    var tr = document.createElement('tr'); tr.className = 'row'; tr.tabIndex = 0; tr.dataset.key = r.key;
    tr.dataset.index = i;
    var td = document.createElement('td'); td.className = 'key'; td.textContent = i + 1; tr.appendChild(td);
    td = document.createElement('td'); td.className = 'thumb';
    if (r.thumb) {
      var im = document.createElement('img'); im.loading = 'lazy'; im.src = r.thumb; im.alt = r.key;
      td.appendChild(im);
    }
    tr.appendChild(td);
    td = document.createElement('td'); td.className = 'key name'; td.textContent = r.key; tr.appendChild(td);
    D.columns.forEach(function (c) {
      var v = r.values[c.id], td = document.createElement('td');
      td.className = 'metric' + (c.baseline ? ' baseline' : '') + (c.delta && v > 0 ? ' pos' : '') +
        (c.delta && v < 0 ? ' neg' : '');
      td.dataset.col = c.id; td.textContent = fmt(v, c);
      if (v !== null && v !== undefined) td.dataset.value = v;
      tr.appendChild(td);
    });
    tr.addEventListener('click', function () { openViewer(i); });
    tr.addEventListener('keydown', function (e) { if (e.key === 'Enter') openViewer(i); });
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
  head.addEventListener('click', function (e) {
    var col = e.target.dataset && e.target.dataset.col;
    if (!col) return;
    sortBy(col, col === sortCol ? -sortDir : (col === '#' || col === 'key' ? 1 : -1));
  });
  var filter = document.getElementById('filter'), shown = document.getElementById('shown');
  filter.addEventListener('input', function () {
    var q = filter.value.toLowerCase(), n = 0;
    trs.forEach(function (tr) { var ok = tr.dataset.key.toLowerCase().indexOf(q) >= 0; tr.hidden = !ok; n += ok; });
    shown.textContent = n;
  });
  if (D.sort) sortBy(D.sort, -1); else render();

  // ------------------------------------------------------------------ viewer: synchronised zoom and pan
  var viewer = document.getElementById('viewer'), panes = document.getElementById('vpanes');
  var st = {s: 1, x: 0, y: 0, w: 0, h: 0}, current = -1, imgs = [];
  function apply() {
    var t = 'translate(' + st.x + 'px,' + st.y + 'px) scale(' + st.s + ')';
    imgs.forEach(function (im) { im.style.transform = t; });
    document.getElementById('vzoom').textContent = Math.round(st.s * 100) + ' %';
  }
  function paneSize() { var p = panes.firstElementChild; return p ? [p.clientWidth, p.clientHeight] : [1, 1]; }
  function fit() {
    if (!st.w) return; var sz = paneSize();
    st.s = Math.min(sz[0] / st.w, sz[1] / st.h);
    st.x = (sz[0] - st.w * st.s) / 2; st.y = (sz[1] - st.h * st.s) / 2; apply();
  }
  function centre() {  // 100 %, centred
    var sz = paneSize(); st.s = 1;
    st.x = Math.round((sz[0] - st.w) / 2); st.y = Math.round((sz[1] - st.h) / 2); apply();
  }
  function one() {
    if (!st.w) return; var sz = paneSize(), cx = sz[0] / 2, cy = sz[1] / 2;
    var ix = (cx - st.x) / st.s, iy = (cy - st.y) / st.s; st.s = 1; st.x = cx - ix; st.y = cy - iy; apply();
  }
  function visibleRows() { return order.filter(function (i) { return !trs[i].hidden; }); }
  function openViewer(i, keep) {
    current = i; var r = D.rows[i]; panes.innerHTML = ''; imgs = []; st.w = 0;
    document.getElementById('vtitle').textContent = r.key;
    var pl = document.getElementById('vpanel');
    if (r.panel) { pl.href = r.panel; pl.hidden = false; } else pl.hidden = true;
    D.panes.forEach(function (name, k) {
      var p = document.createElement('div'); p.className = 'pane';
      var lab = document.createElement('div'); lab.className = 'plabel'; lab.textContent = name; p.appendChild(lab);
      var src = r.images[k];
      if (src) {
        var im = document.createElement('img'); im.alt = name; im.draggable = false;
        im.addEventListener('load', function () {
          if (!st.w) { st.w = im.naturalWidth; st.h = im.naturalHeight; if (!keep) centre(); }
          apply();
        });
        im.src = src; p.appendChild(im); imgs.push(im);
      } else {
        var m = document.createElement('div'); m.className = 'missing'; m.textContent = 'not saved'; p.appendChild(m);
      }
      panes.appendChild(p);
    });
    viewer.hidden = false; apply();
  }
  function step(d) {
    var v = visibleRows(), k = v.indexOf(current);
    if (!v.length) return;
    openViewer(v[(k + d + v.length) % v.length], true);  // same zoom and place on the next image
  }
  function closeViewer() {
    viewer.hidden = true; panes.innerHTML = ''; imgs = []; if (trs[current]) trs[current].focus();
  }
  panes.addEventListener('wheel', function (e) {
    var p = e.target.closest('.pane'); if (!p) return; e.preventDefault();
    var rc = p.getBoundingClientRect(), mx = e.clientX - rc.left, my = e.clientY - rc.top;
    var f = Math.exp(-e.deltaY * 0.0015), ns = Math.min(64, Math.max(0.02, st.s * f));
    st.x = mx - (mx - st.x) * ns / st.s; st.y = my - (my - st.y) * ns / st.s; st.s = ns; apply();
  }, {passive: false});
  var drag = null;
  panes.addEventListener('pointerdown', function (e) {
    var p = e.target.closest('.pane'); if (!p) return;
    drag = {x: e.clientX - st.x, y: e.clientY - st.y, p: p};
    p.classList.add('dragging'); p.setPointerCapture(e.pointerId);
  });
  panes.addEventListener('pointermove', function (e) {
    if (drag) { st.x = e.clientX - drag.x; st.y = e.clientY - drag.y; apply(); }
  });
  function endDrag() { if (drag) { drag.p.classList.remove('dragging'); drag = null; } }
  panes.addEventListener('pointerup', endDrag); panes.addEventListener('pointercancel', endDrag);
  document.getElementById('vclose').onclick = closeViewer;
  document.getElementById('vfit').onclick = fit; document.getElementById('vone').onclick = one;
  document.getElementById('vprev').onclick = function () { step(-1); };
  document.getElementById('vnext').onclick = function () { step(1); };
  document.addEventListener('keydown', function (e) {
    if (viewer.hidden) return;
    if (e.key === 'Escape') closeViewer(); else if (e.key === 'ArrowRight') step(1);
    else if (e.key === 'ArrowLeft') step(-1); else if (e.key === '1') one(); else if (e.key === 'f') fit();
  });
  window.addEventListener('resize', function () { if (!viewer.hidden) apply(); });
})();
</script>
</body>
</html>
'''
