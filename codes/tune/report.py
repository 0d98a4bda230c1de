"""What a study reports when a worker ends: the table of trials (logged and written to ``trials.csv``), ``best.yml``
(the base options with the best trial's values and the full training budget) and the study's plots."""
from __future__ import annotations

import csv
import io
import logging
from typing import Any

import yaml

from codes.tune.search_space import SearchParam, apply_params
from codes.tune.storage import display_url
from codes.tune.study import StudyPlan
from codes.utils.files import atomic_write_text

__all__ = ['trials_table', 'format_table', 'write_results', 'write_best_options', 'write_study_plots']

logger = logging.getLogger(__name__)


def trials_table(study: Any, params: list[SearchParam], metric: str) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of every trial of ``study``: number, state, value, iterations, seconds, worker, parameters,
    and the failure reason."""
    header = ['trial', 'state', metric, 'iter', 'seconds', 'worker'] + [p.key for p in params] + ['note']
    rows = []
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        value = '' if t.value is None else f'{t.value:.4f}'
        if t.state.name == 'PRUNED' and t.intermediate_values:
            step = max(t.intermediate_values)
            value = f'({t.intermediate_values[step]:.4f})'
        cells = [str(t.number), t.state.name, value, str(t.user_attrs.get('iterations', '')),
                 str(t.user_attrs.get('seconds', '')), str(t.user_attrs.get('worker', ''))]
        cells += [p.describe(t.params[p.key]) if p.key in t.params else '' for p in params]
        note = t.user_attrs.get('fail_reason', '')
        if t.state.name == 'PRUNED':
            note = f"pruned at iteration {t.user_attrs.get('pruned_at', max(t.intermediate_values or [0]))}"
        cells.append(note.splitlines()[0][:120] if note else '')
        rows.append(cells)
    return header, rows


def format_table(header: list[str], rows: list[list[str]]) -> str:
    """``header`` and ``rows`` as left-aligned text columns."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    lines = ['  '.join(h.ljust(w) for h, w in zip(header, widths)).rstrip()]
    lines += ['  '.join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return '\n'.join(lines)


def write_results(study: Any, plan: StudyPlan) -> None:
    """Log the table of trials, write ``trials.csv`` and (when a trial completed) ``best.yml``."""
    header, rows = trials_table(study, plan.params, plan.metric)
    logger.info('Study %s (%s, %s %s on %s): %d trials\n%s', plan.study_name, display_url(plan.url), plan.direction,
                plan.metric, plan.dataset, len(rows), format_table(header, rows))
    buf = io.StringIO()
    csv.writer(buf).writerows([header] + rows)
    atomic_write_text(plan.study_dir / 'trials.csv', buf.getvalue())
    from optuna.trial import TrialState
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        logger.warning('No trial has completed yet: best.yml not written')
        return
    write_best_options(study.best_trial, plan)


def write_best_options(best: Any, plan: StudyPlan) -> None:
    """``best.yml``: the base options with the values of the trial ``best`` and the base's full budget."""
    opt = apply_params(plan.base, plan.params, best.params)
    opt['name'] = f'{plan.study_name}_best'
    if plan.base.get('path', {}).get('experiments_root'):
        opt['path']['experiments_root'] = str(plan.study_dir.parent / opt['name'])
    values = ', '.join(f'{p.key}={p.describe(best.params[p.key])}' for p in plan.params if p.key in best.params)
    path = plan.study_dir / 'best.yml'
    head = (f'# Best trial {best.number} of study {plan.study_name} ({plan.metric} {best.value:.4f} on '
            f'{plan.dataset}, {plan.direction}) found by tune.py\n# from {plan.file}: {values}\n'
            f'# Full training budget (train.total_iter {opt["train"]["total_iter"]}); run: python train.py -opt '
            f'{path}\n')
    atomic_write_text(path, head + yaml.safe_dump(opt, sort_keys=False))
    logger.info('Best: trial %d, %s = %.4f; options in %s', best.number, plan.metric, best.value, path)


def write_study_plots(study: Any, plan: StudyPlan) -> None:
    """``optimization_history.png`` and ``param_importances.png`` in the study folder; a failure is only logged."""
    try:
        from codes.visualization.plots import plot_study
        for path in plot_study(study, plan.study_dir):
            logger.info('Plot: %s', path)
    except Exception as exc:  # matplotlib missing, a storage hiccup: the study itself is fine
        logger.warning('Study plots not written: %s: %s', type(exc).__name__, exc)
