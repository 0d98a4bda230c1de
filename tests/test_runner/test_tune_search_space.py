"""codes.tune.search_space alone: parsing each form, sampled values and their option values, writing them into an
option tree, and the values a user enqueues (no Optuna, no training)."""
import pytest

from codes.tune.search_space import SearchParam, apply_params, parse_search_space, set_path
from codes.utils.options import OptionError


class FakeTrial:
    """The three ``suggest_*`` calls of an Optuna trial, answering with the low end (or the first choice)."""

    def __init__(self):
        self.calls = []

    def suggest_float(self, name, low, high, log=False, step=None):
        self.calls.append(('float', name, low, high, log, step))
        return low

    def suggest_int(self, name, low, high, log=False, step=1):
        self.calls.append(('int', name, low, high, log, step))
        return low

    def suggest_categorical(self, name, choices):
        self.calls.append(('categorical', name, tuple(choices)))
        return choices[0]


def params_by_key(block):
    return {p.key: p for p in parse_search_space(block, 'f.yml')}


def test_range_kinds_and_their_suggest_calls():
    params = params_by_key({'a.lr': {'low': 1e-5, 'high': 1e-3, 'log': True},
                            'a.n': {'low': 2.0, 'high': 8.0, 'type': 'int'},
                            'a.f': {'low': 1, 'high': 3, 'type': 'float', 'step': 1},
                            'a.c': ['x', 'y']})
    assert params['a.n'] == SearchParam('a.n', 'int', low=2, high=8)  # integral floats become ints
    assert isinstance(params['a.f'].low, float) and params['a.f'].step == 1.0
    trial = FakeTrial()
    sampled = {k: p.suggest(trial) for k, p in params.items()}
    assert trial.calls == [('float', 'a.lr', 1e-5, 1e-3, True, None), ('int', 'a.n', 2, 8, False, 1),
                           ('float', 'a.f', 1.0, 3.0, False, 1.0), ('categorical', 'a.c', ('x', 'y'))]
    assert sampled == {'a.lr': 1e-5, 'a.n': 2, 'a.f': 1.0, 'a.c': 'x'}
    assert params['a.lr'].describe(1.23456e-4) == '0.0001235' and params['a.lr'].probes() == [1e-5, 1e-3]


@pytest.mark.parametrize('spec,match', [
    ({'low': 1.5, 'high': 3, 'type': 'int'}, 'an int range needs integer'),
    ({'low': 1e-3, 'high': 1.0, 'log': True, 'step': 0.1}, 'log and step cannot be combined'),
    ({'low': 1, 'high': 2, 'step': 0}, r'step.*must be > 0'),
    ({'low': 1, 'high': float('inf')}, r'high.*expected a finite number'),
    ({'low': True, 'high': 2}, r'low.*expected a finite number'),
    ({'low': 1, 'high': 2, 'log': 'yes'}, r'log.*expected true or false'),
    ({'low': 1, 'high': 2, 'type': 'str'}, r'type.*must be float or int'),
    ([1, 2, 1], 'listed twice'),
    ({'choices': {'Adam': {'type': 'AdamW'}}}, 'without "type"'),
    ('Adam', 'expected a list of choices'),
])
def test_bad_specs_name_the_file_and_the_key(spec, match):
    key = 'train.optim_g.type' if isinstance(spec, dict) and 'choices' in spec else 'train.x'
    with pytest.raises(OptionError, match=rf"f\.yml: option 'search_space\.{key}.*{match}"):
        parse_search_space({key: spec}, 'f.yml')


@pytest.mark.parametrize('block', [None, {}, [1, 2]])
def test_the_block_must_be_a_non_empty_mapping(block):
    with pytest.raises(OptionError, match=r"option 'search_space': expected a mapping"):
        parse_search_space(block, 'f.yml')


def test_bad_key_paths_are_refused():
    with pytest.raises(OptionError, match='keys are option key paths'):
        parse_search_space({'train..lr': [1]}, 'f.yml')


def test_apply_params_writes_type_blocks_first_and_leaves_the_base_alone():
    params = parse_search_space({
        'train.scheduler.gamma': [0.25],  # listed first, written after the block it belongs to
        'train.scheduler.type': {'choices': {'MultiStepLR': {'milestones': [5]}, 'CosineAnnealingLR': None}},
        'train.scheduler.milestones': [[10], [10, 20]],
        'network_g.new_block.depth': [3],  # missing blocks are added
    })
    base = {'train': {'scheduler': {'type': 'StepLR', 'step_size': 4}}, 'network_g': {'type': 'BSRT'}}
    sampled = {'train.scheduler.gamma': 0.25, 'train.scheduler.type': 'MultiStepLR',
               'train.scheduler.milestones': '[10, 20]', 'network_g.new_block.depth': 3}
    tree = apply_params(base, params, sampled)
    assert tree['train']['scheduler'] == {'type': 'MultiStepLR', 'milestones': [10, 20], 'gamma': 0.25}
    assert tree['network_g'] == {'type': 'BSRT', 'new_block': {'depth': 3}}
    assert base == {'train': {'scheduler': {'type': 'StepLR', 'step_size': 4}}, 'network_g': {'type': 'BSRT'}}
    cosine = apply_params(base, params, {'train.scheduler.type': 'CosineAnnealingLR'})
    assert cosine['train']['scheduler'] == {'type': 'CosineAnnealingLR'}  # only the sampled keys are written
    tree['train']['scheduler']['milestones'].append(30)  # decoded values are copies
    assert params[2].decode('[10, 20]') == [10, 20]


def test_encode_maps_enqueued_values_to_sampled_values():
    params = params_by_key({'m': [[10], [10, 20]], 's.type': {'choices': {'A': {}, 'B': {}}},
                            'lr': {'low': 1e-4, 'high': 1e-2}, 'n': {'low': 1, 'high': 4}})
    assert params['m'].encode([10, 20], 'w', 'f.yml') == '[10, 20]'
    assert params['s.type'].encode('B', 'w', 'f.yml') == 'B' and params['s.type'].describe('B') == 'B'
    assert params['n'].encode(3.0, 'w', 'f.yml') == 3 and type(params['n'].encode(3.0, 'w', 'f.yml')) is int
    assert params['lr'].encode(1e-3, 'w', 'f.yml') == 1e-3
    for key, value, match in [('m', [5], r'\[5\] is not one of the choices'), ('lr', 1.0, r'expected a number in \[0.0001'),
                              ('n', True, 'expected a number')]:
        with pytest.raises(OptionError, match=rf"f\.yml: option 'tune\.enqueue\[0\]\.{key}': {match}"):
            params[key].encode(value, f'tune.enqueue[0].{key}', 'f.yml')


def test_set_path_refuses_to_go_through_a_value():
    tree = {'train': {'total_iter': 5}}
    set_path(tree, 'train.optim_g.lr', 1e-3)
    assert tree == {'train': {'total_iter': 5, 'optim_g': {'lr': 1e-3}}}
    with pytest.raises(OptionError, match="option 'train.total_iter': is 5, not a mapping"):
        set_path(tree, 'train.total_iter.x', 1)
