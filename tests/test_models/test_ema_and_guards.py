"""WeightEMA, NonFiniteGuard, BestMetrics and DivergenceGuard on their own (no model, no data)."""
import logging

import pytest
import torch
import torch.nn as nn

from codes.models.ema import WeightEMA
from codes.models.guards import BestMetrics, DivergenceGuard, NonFiniteGuard


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2, 2)
        self.register_buffer('count', torch.zeros(1))


def test_ema_moves_towards_the_network_and_copies_buffers():
    net = _Net()
    ema = WeightEMA(net, 0.9)
    assert all(not p.requires_grad for p in ema.net.parameters()) and not ema.net.training
    start = ema.net.lin.weight.detach().clone()
    with torch.no_grad():
        net.lin.weight.add_(1.0)
        net.count.fill_(5)
    ema.update(net)
    assert torch.allclose(ema.net.lin.weight, start + 0.1)
    assert ema.net.count.item() == 5
    copy = WeightEMA(net, 0.5)
    copy.load_state_dict(ema.state_dict())
    assert torch.equal(copy.net.lin.weight, ema.net.lin.weight)
    with pytest.raises(ValueError, match='decay'):
        WeightEMA(net, 0.0)


def test_ema_starts_from_params_ema_of_the_pretrain_file(tmp_path, caplog):
    net = _Net()
    other = _Net()
    path = tmp_path / 'w.pth'
    torch.save({'params': net.state_dict(), 'params_ema': other.state_dict()}, path)
    assert torch.equal(WeightEMA(net, 0.9, path).net.lin.weight, other.lin.weight)
    torch.save({'params': net.state_dict(), 'params_ema': {'lin.weight': torch.zeros(5, 5)}}, path)  # unusable
    with caplog.at_level(logging.INFO):
        assert torch.equal(WeightEMA(net, 0.9, path).net.lin.weight, net.lin.weight)
    assert 'EMA starts as a copy of net_g' in caplog.text


def test_non_finite_guard_counts_and_stops_past_the_limit():
    guard = NonFiniteGuard(limit=1)
    assert not guard.loss_is_non_finite(torch.tensor(1.0), world_size=1)
    assert guard.loss_is_non_finite(torch.tensor(float('inf')), world_size=1)
    out = guard.skip(3, {'l_total': float('nan')}, 'loss')
    assert out['skipped'] == 1.0 and out['grad_norm'] != out['grad_norm'] and guard.count == 1
    with pytest.raises(FloatingPointError, match='nan_skip_limit=1'):
        guard.skip(4, {'l_total': float('nan'), 'grad_norm': 1.0}, 'gradient')


def test_best_metrics_honour_better_and_ignore_non_finite_and_unknown():
    best = BestMetrics({'psnr': 'higher', 'lpips': 'lower'})
    assert best.update('val', {'psnr': 20.0, 'lpips': 0.5, 'num_samples': 4}, 1) == ['psnr', 'lpips']
    assert best.update('val', {'psnr': 19.0, 'lpips': 0.4}, 2) == ['lpips']
    assert best.update('val', {'psnr': float('nan'), 'lpips': float('inf')}, 3) == []
    assert best.get('val', 'psnr') == {'value': 20.0, 'iter': 1} and best.get('val', 'lpips')['iter'] == 2
    assert best.get('other', 'psnr') is None and 'num_samples' not in best.best['val']


def _guarded(metric='psnr', better='higher'):
    net = nn.Linear(2, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    best = BestMetrics({metric: better})
    return net, opt, best, DivergenceGuard(metric, 2.0, 0.5, best, opt, {'net': net, 'ema': None})


def _step(net, opt):
    opt.zero_grad()
    net(torch.ones(1, 2)).sum().backward()
    opt.step()


def test_divergence_guard_rolls_back_to_the_last_good_validation():
    net, opt, best, guard = _guarded()
    _step(net, opt)
    best.update('val', {'psnr': 30.0}, 1)
    assert not guard.check('val', {'psnr': 30.0}, 1)
    good = {k: v.clone() for k, v in net.state_dict().items()}
    good_momentum = opt.state_dict()['state'][0]['momentum_buffer'].clone()
    _step(net, opt)
    with torch.no_grad():
        net.weight.fill_(100.0)
    best.update('val', {'psnr': 10.0}, 2)
    assert guard.check('val', {'psnr': 10.0}, 2) and guard.rollbacks == 1
    assert all(torch.equal(v, good[k]) for k, v in net.state_dict().items())
    assert torch.equal(opt.state_dict()['state'][0]['momentum_buffer'], good_momentum)
    assert opt.param_groups[0]['lr'] == pytest.approx(0.05)
    assert not guard.check('val', {'other': 1.0}, 3)  # the watched metric absent: nothing to judge


def test_divergence_guard_without_a_good_state_or_metric_does_nothing(caplog):
    net, opt, best, guard = _guarded(better='lower')
    with caplog.at_level(logging.WARNING):
        assert not guard.check('val', {'psnr': float('nan')}, 1)
    assert 'no earlier good state' in caplog.text and guard.rollbacks == 0
    best.update('val', {'psnr': 1.0}, 2)
    assert not guard.check('val', {'psnr': 2.5}, 2)  # lower is better: 1.5 worse, within max_drop
    assert guard.check('val', {'psnr': 3.5}, 3)  # 2.5 worse
    off = DivergenceGuard(None, 2.0, 0.5, best, opt, {'net': net})
    assert not off.check('val', {'psnr': float('nan')}, 4)


def test_divergence_guard_state_survives_a_save_and_load(tmp_path):
    """A resumed run rolls back to the same last good state as the run that saved it."""
    from codes.utils.checkpoint import atomic_save, load_file
    net, opt, best, guard = _guarded()
    _step(net, opt)
    best.update('val', {'psnr': 30.0}, 1)
    guard.check('val', {'psnr': 30.0}, 1)
    good = {k: v.clone() for k, v in net.state_dict().items()}
    atomic_save({'guard': guard.state_dict()}, tmp_path / 'g.state')

    net2, opt2, best2, guard2 = _guarded()
    best2.update('val', {'psnr': 30.0}, 1)
    guard2.load_state_dict(load_file(tmp_path / 'g.state')['guard'])
    _step(net2, opt2)
    assert guard2.check('val', {'psnr': 10.0}, 2) and guard2.rollbacks == 1
    assert all(torch.equal(v, good[k]) for k, v in net2.state_dict().items())
