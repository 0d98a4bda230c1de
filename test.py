"""Evaluate a checkpoint on the datasets of an option file: ``python test.py -opt options/test.yml``."""
from pathlib import Path

from codes.test import test_pipeline
from codes.utils.errors import run_cli

if __name__ == '__main__':
    run_cli(lambda: test_pipeline(Path(__file__).resolve().parent), 'test.py')
