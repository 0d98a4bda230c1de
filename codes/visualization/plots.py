"""Curves of a run: validation metrics, training losses and learning rate (PNG), and an Optuna study's plots.

``plot_metrics`` reads an experiment folder's ``metrics.jsonl`` (one line per validation and dataset) and
``train_scalars.jsonl`` (one line per ``logger.print_freq`` iterations: losses, lr, ...; for an iteration logged
twice, by a run resumed from an earlier checkpoint, the later line counts) and draws one axis per
validation metric against iterations, one line per validation set, with the no-learning baselines
(``baseline_psnr``, ``bicubic_psnr``) dashed on the PSNR axis; then the losses and the learning rate (log scales).
Drawn with matplotlib's object API on the Agg canvas (no pyplot, no display needed).
"""
from __future__ import annotations

import json
import logging
import math
import os
import warnings
from pathlib import Path
from typing import Any

from codes.utils.errors import UserError

__all__ = ['plot_metrics', 'plot_study', 'read_jsonl', 'SCALARS_FILE', 'METRICS_FILE', 'PLOT_FILE']

logger = logging.getLogger(__name__)

METRICS_FILE = 'metrics.jsonl'
SCALARS_FILE = 'train_scalars.jsonl'
PLOT_FILE = 'metrics.png'
BASELINES = ('baseline_psnr', 'bicubic_psnr')
NOT_PLOTTED = ('iter', 'dataset', 'num_samples', 'seconds', 'epoch')


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a JSON-lines file; a truncated last line (a killed run) is skipped, other bad lines raise."""
    path = Path(path)
    if not path.is_file():
        return []
    lines = path.read_text(encoding='utf-8').splitlines()
    out = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as exc:
            if n == len(lines):
                logger.warning('%s: last line is incomplete and was skipped', path)
                continue
            raise UserError(f'{path}:{n}: not a JSON line ({exc})') from None
    return out


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _figure(n_axes: int) -> tuple[Any, list[Any]]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    cols = 2 if n_axes > 1 else 1
    rows = math.ceil(n_axes / cols)
    fig = Figure(figsize=(6.4 * cols, 3.6 * rows), dpi=100, layout='constrained')
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(rows, cols, i + 1) for i in range(n_axes)]
    return fig, axes


def plot_metrics(exp_dir: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Write the curves of the experiment folder ``exp_dir`` to ``out`` (default ``<exp_dir>/metrics.png``).

    Raises:
        UserError: the folder has neither ``metrics.jsonl`` nor ``train_scalars.jsonl`` with values.
    """
    exp_dir = Path(exp_dir)
    # a resumed run logs again the iterations after its last checkpoint: the last record of an iteration wins
    val = list({(str(r.get('dataset', 'val')), r['iter']): r for r in read_jsonl(exp_dir / METRICS_FILE)
                if _finite(r.get('iter'))}.values())
    train = sorted({r['iter']: r for r in read_jsonl(exp_dir / SCALARS_FILE) if _finite(r.get('iter'))}.values(),
                   key=lambda r: r['iter'])
    if not val and not train:
        raise UserError(f'{exp_dir}: no {METRICS_FILE} or {SCALARS_FILE} records to plot (is it an experiment '
                        'folder, experiments/<name>?)')
    datasets = list(dict.fromkeys(str(r.get('dataset', 'val')) for r in val))
    metrics = list(dict.fromkeys(k for r in val for k, v in r.items()
                                 if k not in NOT_PLOTTED and k not in BASELINES and _finite(v)))
    baselines = [b for b in BASELINES if any(_finite(r.get(b)) for r in val)]
    losses = list(dict.fromkeys(k for r in train for k, v in r.items() if k.startswith('l_') and _finite(v)))
    has_lr = any(_finite(r.get('lr')) for r in train)
    if not metrics and baselines:
        metrics = [baselines[0]]
    panels = [('metric', m) for m in metrics] + ([('losses', None)] if losses else []) + \
             ([('lr', None)] if has_lr else [])
    fig, axes = _figure(len(panels))
    psnr_axis = next((m for m in metrics if 'psnr' in m.lower()), metrics[0] if metrics else None)
    for ax, (kind, name) in zip(axes, panels):
        if kind == 'metric':
            _plot_metric(ax, name, val, datasets, baselines if name == psnr_axis else [])
        elif kind == 'losses':
            _plot_losses(ax, train, losses)
        else:
            _plot_lr(ax, train)
        ax.set_xlabel('iteration')
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle(exp_dir.resolve().name)
    out = Path(out) if out else exp_dir / PLOT_FILE
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    return out


_COLORS = [f'C{i}' for i in range(10)]


def _plot_metric(ax: Any, name: str, val: list[dict], datasets: list[str], baselines: list[str]) -> None:
    """One validation metric: a line per dataset, and dashed the ``baselines`` of each dataset in its colour."""
    for i, ds in enumerate(datasets):
        recs = sorted((r for r in val if str(r.get('dataset', 'val')) == ds), key=lambda r: r['iter'])
        pts = [(r['iter'], r[name]) for r in recs if _finite(r.get(name))]
        if pts:
            ax.plot(*zip(*pts), marker='o', ms=3, color=_COLORS[i % 10], label=ds)
        for b in baselines:
            bp = [(r['iter'], r[b]) for r in recs if _finite(r.get(b))]
            if bp:
                ax.plot(*zip(*bp), ls='--', color=_COLORS[i % 10], alpha=0.8, label=f'{ds} {b}')
    ax.set_title(f'validation {name}')
    ax.set_ylabel(name)


def _plot_losses(ax: Any, train: list[dict], losses: list[str]) -> None:
    """The training losses (log scale when all are positive)."""
    for i, k in enumerate(losses):
        pts = [(r['iter'], r[k]) for r in train if _finite(r.get(k))]
        ax.plot(*zip(*pts), lw=1, color=_COLORS[i % 10], label=k)
    if all(r[k] > 0 for r in train for k in losses if _finite(r.get(k))):
        ax.set_yscale('log')
    ax.set_title('training losses')


def _plot_lr(ax: Any, train: list[dict]) -> None:
    """The learning rate (log scale when it stays positive)."""
    pts = [(r['iter'], r['lr']) for r in train if _finite(r.get('lr'))]
    ax.plot(*zip(*pts), lw=1, color='C0')
    if all(v > 0 for _, v in pts):
        ax.set_yscale('log')
    ax.set_title('learning rate')


def plot_study(study: Any, out_dir: str | os.PathLike) -> list[Path]:
    """Optuna's optimisation history and (with at least two finished trials and a searched parameter) parameter
    importances of ``study`` as ``optimization_history.png`` / ``param_importances.png`` under ``out_dir``."""
    import optuna
    from optuna.visualization import matplotlib as ovm
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    written = []
    if not done:
        return written
    jobs = [('optimization_history.png', ovm.plot_optimization_history)]
    if len(done) >= 2 and any(t.params for t in done):
        jobs.append(('param_importances.png', ovm.plot_param_importances))
    for name, fn in jobs:
        try:
            with warnings.catch_warnings():  # optuna marks its matplotlib plots experimental
                warnings.simplefilter('ignore', optuna.exceptions.ExperimentalWarning)
                ax = fn(study)
        except (ValueError, RuntimeError) as exc:  # e.g. importances when every trial has the same value
            logger.warning('%s not written: %s', name, exc)
            continue
        fig = ax.figure
        fig.set_size_inches(8, 4.5)
        fig.tight_layout()
        fig.savefig(out_dir / name, dpi=100)
        import matplotlib.pyplot as plt
        plt.close(fig)
        written.append(out_dir / name)
    return written
