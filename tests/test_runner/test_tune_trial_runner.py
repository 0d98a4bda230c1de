"""codes.tune.trial_runner and the trial's options: resolved in the worker exactly as train.py resolves an option
file, trained in the child from the resolved tree (no file read there), validations relayed to the reporter."""
from pathlib import Path

import pytest

from codes.tune.study import resolve_trial_options, with_budget
from codes.tune.trial_runner import ValidationReporter, run_trial_process
from codes.utils.options import OptionError, load_yaml, parse_options
from tests.test_runner.tiny import tiny_options, write_options

ROOT = Path(__file__).resolve().parents[2]


def test_trial_options_are_resolved_as_train_py_resolves_its_file(tmp_path, sample_data):
    tree = with_budget(tiny_options(tmp_path, sample_data, name='res', total_iter=8),
                       {'max_iters': 2, 'limit_val_batches': 1})
    path = write_options(tmp_path / 'res.yml', tree)
    from_file, _ = parse_options(ROOT, True, ['-opt', str(path)])
    resolved = resolve_trial_options(tree, ROOT, str(path))
    assert resolved == from_file
    assert resolved['train']['total_iter'] == 2 and resolved['val']['limit_val_batches'] == 1
    assert resolved['path']['models'] == str(tmp_path / 'experiments' / 'res' / 'models')
    tree['network_g']['num_heads'] = 'two'
    with pytest.raises(OptionError, match=r"res\.yml: option 'network_g\.num_heads'"):
        resolve_trial_options(tree, ROOT, str(path))


class FakeTrial:
    def __init__(self, prune_at=None):
        self.reported, self.prune_at = [], prune_at

    def report(self, value, step):
        self.reported.append((step, value))

    def should_prune(self):
        return bool(self.reported) and self.reported[-1][0] == self.prune_at


def test_reporter_reports_the_objective_and_stops_when_the_pruner_says_so():
    trial = FakeTrial(prune_at=4)
    reporter = ValidationReporter(trial, 'psnr', 'val')
    assert reporter(2, {'val': {'psnr': 20.0, 'num_samples': 1}, 'other': {'psnr': 99.0}}) is False
    assert reporter(4, {'val': {'psnr': 21.5}}) is True
    assert trial.reported == [(2, 20.0), (4, 21.5)] and reporter.history == [(2, 20.0), (4, 21.5)]
    assert reporter.pruned_at == 4 and reporter.missing is None


def test_reporter_stops_on_a_missing_or_non_finite_objective():
    trial = FakeTrial()
    reporter = ValidationReporter(trial, 'psnr', 'val')
    assert reporter(1, {'val': {'ssim': 0.5, 'num_samples': 1, 'seconds': 0.1}}) is True
    assert reporter.missing == "validation gave no 'psnr' on 'val' (got: ssim)" and reporter.history == []
    reporter = ValidationReporter(trial, 'psnr', 'val')
    assert reporter(3, {'val': {'psnr': float('nan')}}) is True
    assert trial.reported == [] and reporter.history[0][0] == 3 and reporter.pruned_at is None


def test_child_trains_on_the_resolved_tree_without_reading_an_option_file(tmp_path, sample_data):
    opt = tiny_options(tmp_path, sample_data, name='child_dict', total_iter=1)
    opt['val'].update(val_freq=1, save_img=False, limit_val_batches=1)
    missing = tmp_path / 'never_written.yml'
    resolved = resolve_trial_options(opt, ROOT, str(missing))
    seen = []

    def reporter(current_iter, results):
        seen.append((current_iter, results['val']['num_samples']))
        return False

    assert run_trial_process(resolved, 'spawn', reporter) is None
    assert seen == [(1, 1)] and not missing.exists()
    exp = Path(resolved['path']['experiments_root'])
    assert load_yaml(exp / 'options.yml') == resolved  # the resolved options, written once, by the training
    assert (exp / 'models' / 'net_g_1.pth').is_file()
