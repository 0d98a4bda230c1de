"""Hyperparameter search with Optuna: ``python tune.py -opt options/tune_synthetic.yml [--storage URL]
[--n-trials N] [--study-name NAME]``.

Several workers (one per GPU, on any number of machines) share one study through ``--storage`` (any SQLAlchemy
URL, e.g. ``postgresql://user:pass@host/db``); the default is a SQLite file under ``experiments/<study>/``.
"""
from pathlib import Path

from codes.tune import tune_pipeline
from codes.utils.errors import run_cli

if __name__ == '__main__':
    run_cli(lambda: tune_pipeline(Path(__file__).resolve().parent), 'tune.py')
