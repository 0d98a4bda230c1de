"""Optimizers and schedulers by class name: every one of torch's, checked arguments, BasicSR's restart schedules."""
import math

import pytest
import torch
from torch.optim import lr_scheduler

from codes.models.optim import OPTIMIZERS, SCHEDULERS, UNSUPPORTED, build_optimizer, build_scheduler
from codes.utils.options import OptionError, validate_options

#: the arguments each scheduler cannot do without
SCHEDULER_ARGS = {
    'StepLR': {'step_size': 2}, 'MultiStepLR': {'milestones': [2, 4]}, 'ConstantLR': {}, 'LinearLR': {},
    'ExponentialLR': {'gamma': 0.9}, 'PolynomialLR': {'total_iters': 5}, 'CosineAnnealingLR': {'T_max': 5},
    'ReduceLROnPlateau': {'patience': 1}, 'CyclicLR': {'base_lr': 0.01, 'max_lr': 0.1, 'cycle_momentum': False},
    'CosineAnnealingWarmRestarts': {'T_0': 3}, 'OneCycleLR': {'max_lr': 0.1, 'total_steps': 10},
    'SequentialLR': {'schedulers': [{'type': 'LinearLR', 'start_factor': 0.5, 'total_iters': 2},
                                    {'type': 'ExponentialLR', 'gamma': 0.9}], 'milestones': [2]},
    'ChainedScheduler': {'schedulers': [{'type': 'ConstantLR', 'factor': 0.5, 'total_iters': 2},
                                        {'type': 'ExponentialLR', 'gamma': 0.9}]},
    'MultiStepRestartLR': {'milestones': [2]}, 'CosineAnnealingRestartLR': {'periods': [5]},
}


def _params():
    return [torch.nn.Parameter(torch.randn(4, 3))]  # 2-D: Muon takes matrices only


def test_every_torch_optimizer_by_name():
    torch_names = {n for n, c in vars(torch.optim).items()
                   if isinstance(c, type) and issubclass(c, torch.optim.Optimizer) and c is not torch.optim.Optimizer}
    assert torch_names == set(OPTIMIZERS) | {n for n in UNSUPPORTED if n in torch_names}
    for name in OPTIMIZERS:
        params = _params()
        opt = build_optimizer(params, {'type': name, 'lr': '1e-2'})
        assert type(opt).__name__ == name and opt.param_groups[0]['lr'] == pytest.approx(1e-2)
        params[0].sum().backward()
        opt.step()


def test_every_torch_scheduler_by_name():
    torch_names = {n for n, c in vars(lr_scheduler).items() if isinstance(c, type) and not n.startswith('_')
                   and (issubclass(c, lr_scheduler.LRScheduler) or c is lr_scheduler.ReduceLROnPlateau)}
    torch_names -= {'LRScheduler'}
    assert torch_names | {'MultiStepRestartLR', 'CosineAnnealingRestartLR'} == \
        set(SCHEDULERS) | {n for n in UNSUPPORTED if n in torch_names}
    assert set(SCHEDULERS) == set(SCHEDULER_ARGS)
    for name, args in SCHEDULER_ARGS.items():
        optimizer = torch.optim.SGD(_params(), lr=0.1)
        sched = build_scheduler(optimizer, {'type': name, **args})
        assert type(sched).__name__ == name
        for _ in range(3):
            optimizer.step()
            sched.step(1.0) if name == 'ReduceLROnPlateau' else sched.step()


def test_arguments_are_checked_against_the_constructor():
    with pytest.raises(OptionError, match=r"'train.scheduler.T_mx': unknown key for CosineAnnealingLR. Did you mean "
                                          r"'T_max'"):
        build_scheduler(torch.optim.SGD(_params(), lr=0.1), {'type': 'CosineAnnealingLR', 'T_mx': 3})
    with pytest.raises(OptionError, match=r"'train.scheduler': StepLR needs the key\(s\) step_size"):
        build_scheduler(torch.optim.SGD(_params(), lr=0.1), {'type': 'StepLR'})
    with pytest.raises(OptionError, match=r"'train.optim_g': SGD: Invalid learning rate: -1.0"):
        build_optimizer(_params(), {'type': 'SGD', 'lr': -1})
    with pytest.raises(OptionError, match=r"'train.optim_g.params': is set by the runner"):
        build_optimizer(_params(), {'type': 'SGD', 'params': []})
    for name in UNSUPPORTED:
        with pytest.raises(OptionError, match=f"'{name}' cannot be used here"):
            (build_optimizer(_params(), {'type': name}) if name in ('LBFGS', 'SparseAdam') else
             build_scheduler(torch.optim.SGD(_params(), lr=0.1), {'type': name}))


def test_option_files_accept_any_optimizer_and_nested_schedulers(tmp_path):
    (tmp_path / 'imgs').mkdir()
    opt = {'name': 'o', 'model_type': 'BurstSRModel',
           'datasets': {'train': {'type': 'SyntheticBurstDataset', 'dataroot': str(tmp_path / 'imgs'),
                                  'burst_size': 2, 'batch_size_per_gpu': 1}},
           'network_g': {'type': 'BSRT', 'embed_dim': 12, 'depths': [1, 1], 'num_heads': 2, 'burst_size': 2},
           'train': {'total_iter': 2, 'optim_g': {'type': 'SGD', 'lr': 1e-3, 'momentum': 0.9, 'nesterov': True},
                     'scheduler': dict(type='SequentialLR', **SCHEDULER_ARGS['SequentialLR'])}}
    checked = validate_options(opt)
    assert checked['train']['scheduler']['schedulers'][1] == {'type': 'ExponentialLR', 'gamma': 0.9}
    opt['train']['scheduler']['schedulers'][1]['gama'] = 0.9
    with pytest.raises(OptionError, match=r"'train.scheduler.schedulers\[1\].gama': unknown key"):
        validate_options(opt)


def _curve(sched_opt: dict, n: int) -> list[float]:
    optimizer = torch.optim.SGD(_params(), lr=1.0)
    sched = build_scheduler(optimizer, sched_opt)
    lrs = [optimizer.param_groups[0]['lr']]
    for _ in range(n):
        optimizer.step()
        sched.step()
        lrs.append(optimizer.param_groups[0]['lr'])
    return lrs


def test_multistep_restart_lr_follows_basicsr():
    # milestones 2, 4, 7 halve the lr; iteration 5 restarts it at initial_lr * 0.5
    lrs = _curve({'type': 'MultiStepRestartLR', 'milestones': [2, 4, 7], 'gamma': 0.5, 'restarts': [5],
                  'restart_weights': [0.5]}, 8)
    assert lrs == pytest.approx([1.0, 1.0, 0.5, 0.5, 0.25, 0.5, 0.5, 0.25, 0.25])
    # a milestone listed twice multiplies by gamma twice; the default restarts=[0] is MultiStepLR
    assert _curve({'type': 'MultiStepRestartLR', 'milestones': [1, 1], 'gamma': 0.1}, 2) == pytest.approx(
        [1.0, 0.01, 0.01])


def test_cosine_annealing_restart_lr_follows_basicsr():
    # periods 4 and 6 (cumulative ends 4, 10), weights 1 and 0.5, eta_min 0.1: an iteration t belongs to the first
    # period whose end is >= t, lr = eta_min + w * (1 - eta_min) * (1 + cos(pi * (t - start) / period)) / 2
    lrs = _curve({'type': 'CosineAnnealingRestartLR', 'periods': [4, 6], 'restart_weights': [1, 0.5],
                  'eta_min': 0.1}, 12)
    half = 0.5 * 0.9
    expected = [0.1 + half * (1 + math.cos(math.pi * t / 4)) for t in range(5)]
    expected += [0.1 + 0.5 * half * (1 + math.cos(math.pi * (t - 4) / 6)) for t in range(5, 11)]
    expected += [0.1, 0.1]  # after the last period: its end value
    assert lrs == pytest.approx(expected)
    assert lrs[0] == pytest.approx(1.0) and lrs[2] == pytest.approx(0.55) and lrs[4] == pytest.approx(0.1)
    assert lrs[5] == pytest.approx(0.1 + 0.225 * (1 + math.cos(math.pi / 6))) and lrs[7] == pytest.approx(0.325)
    with pytest.raises(OptionError, match='periods .2 values. and restart_weights .1.'):
        _curve({'type': 'CosineAnnealingRestartLR', 'periods': [4, 6], 'restart_weights': [1]}, 1)


def test_restart_schedulers_resume_exactly():
    optimizer = torch.optim.SGD(_params(), lr=1.0)
    opt = {'type': 'CosineAnnealingRestartLR', 'periods': [3, 3], 'restart_weights': [1, 0.5]}
    sched = build_scheduler(optimizer, opt)
    for _ in range(4):
        optimizer.step()
        sched.step()
    state, lr = sched.state_dict(), optimizer.param_groups[0]['lr']
    optimizer2 = torch.optim.SGD(_params(), lr=1.0)
    sched2 = build_scheduler(optimizer2, opt)
    sched2.load_state_dict(state)
    optimizer.step()
    sched.step()
    optimizer2.param_groups[0]['lr'] = lr
    optimizer2.step()
    sched2.step()
    assert optimizer2.param_groups[0]['lr'] == pytest.approx(optimizer.param_groups[0]['lr'])
