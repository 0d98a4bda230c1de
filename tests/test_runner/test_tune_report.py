"""codes.tune.report alone: the table of trials of a study (fake trials, no database)."""
from types import SimpleNamespace

from codes.tune.report import format_table, trials_table
from codes.tune.search_space import parse_search_space


def _trial(number, state, value=None, params=None, intermediate=None, **attrs):
    return SimpleNamespace(number=number, state=SimpleNamespace(name=state), value=value, params=params or {},
                           intermediate_values=intermediate or {}, user_attrs=attrs)


class FakeStudy:
    def __init__(self, trials):
        self.trials = trials

    def get_trials(self, deepcopy=True):
        return list(self.trials)


def test_trials_table_rows_in_trial_order_with_values_and_notes():
    params = parse_search_space({'train.optim_g.lr': {'low': 1e-5, 'high': 1e-3, 'log': True},
                                 'train.scheduler.milestones': [[10], [10, 20]]})
    study = FakeStudy([
        _trial(2, 'FAIL', params={'train.optim_g.lr': 1e-4}, fail_reason='non-finite loss: too many\nmore'),
        _trial(0, 'COMPLETE', 25.123456, {'train.optim_g.lr': 2e-4, 'train.scheduler.milestones': '[10, 20]'},
               iterations=40, seconds=12.5, worker='host:1'),
        _trial(1, 'PRUNED', params={'train.optim_g.lr': 1e-5}, intermediate={10: 19.5, 20: 20.25}, pruned_at=20),
    ])
    header, rows = trials_table(study, params, 'psnr')
    assert header == ['trial', 'state', 'psnr', 'iter', 'seconds', 'worker', 'train.optim_g.lr',
                      'train.scheduler.milestones', 'note']
    assert rows[0] == ['0', 'COMPLETE', '25.1235', '40', '12.5', 'host:1', '0.0002', '[10, 20]', '']
    assert rows[1][:3] == ['1', 'PRUNED', '(20.2500)'] and rows[1][-1] == 'pruned at iteration 20'
    assert rows[2][:3] == ['2', 'FAIL', ''] and rows[2][-2] == '' and rows[2][-1] == 'non-finite loss: too many'


def test_format_table_aligns_columns():
    text = format_table(['a', 'long header'], [['wide cell', 'x'], ['y', 'z']])
    assert text.splitlines() == ['a          long header', 'wide cell  x', 'y          z']
    assert format_table(['only'], []) == 'only'
