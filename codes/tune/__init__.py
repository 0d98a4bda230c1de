"""Hyperparameter search: Optuna trials of the training pipeline, stored in a database that many workers share.

``python tune.py -opt options/tune_synthetic.yml [--storage URL] [--n-trials N] [--study-name NAME]``

The option file is an ordinary training option file plus two blocks:

* ``search_space``: option key path -> what to sample there (:mod:`codes.tune.search_space`). Every key path and
  every value is checked against the option schema before the study starts, and every sampled option tree is
  validated again before its trial runs.
* ``tune``: the study (name, storage, number of trials, sampler, pruner), the objective (a validation metric and its
  direction) and the per-trial budget (``max_iters``, ``limit_train_batches``, ``limit_val_batches``); see
  :data:`TUNE_SCHEMA` and the README.

Trials are counted per study, across workers and runs: ``--n-trials 20`` means "until the study holds 20 trials",
so re-running resumes an interrupted study and several workers (``--storage postgresql://...``) share the work.
Each trial trains in a child process of the worker (``tune.start_method``, default spawn), so even a native crash
fails only that trial. Proposing a trial is serialised between workers (an advisory lock on PostgreSQL/MySQL, a
file lock for SQLite), so the study ends with exactly the requested number of trials and no trial runs twice. Each
trial trains in ``experiments/<study>/trial_<n>/`` (log, TensorBoard events, checkpoints, ``trial.yml``); a trial
that fails (invalid sampled combination, non-finite loss, out of memory, any exception) is recorded as failed with
its reason and the study goes on. At the end the worker prints the table of trials, writes ``trials.csv`` and
``best.yml`` (the base options with the best trial's values and the full training budget, ready for ``train.py``).

Modules, one concern each: :mod:`~codes.tune.search_space` (the search-space language), :mod:`~codes.tune.storage`
(the database: URLs, the lock between workers, heartbeats, stale trials), :mod:`~codes.tune.study` (the ``tune``
block, the study plan, sampler, pruner, opening the study, proposing trials), :mod:`~codes.tune.trial_runner` (one
trial in a child process), :mod:`~codes.tune.report` (the table, ``trials.csv``, ``best.yml``, plots) and
:mod:`~codes.tune.cli` (the command line).
"""
from codes.tune.cli import build_tune_parser, tune_pipeline
from codes.tune.report import trials_table
from codes.tune.search_space import SearchParam, apply_params, check_search_space, parse_search_space
from codes.tune.storage import fail_stale_trials, storage_url
from codes.tune.study import TUNE_SCHEMA
from codes.tune.trial_runner import die_with_worker, start_guarded

__all__ = ['tune_pipeline', 'build_tune_parser', 'SearchParam', 'parse_search_space', 'apply_params',
           'check_search_space', 'TUNE_SCHEMA', 'trials_table', 'storage_url', 'fail_stale_trials', 'start_guarded',
           'die_with_worker']
