"""The model interface, one precision table, the optimiser's weight-decay groups (train.no_weight_decay) and
validate()'s use of the divergence guard."""
import inspect
import logging
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from codes.models.base_model import BaseModel
from codes.models.optim import build_optimizer, weight_decay_groups
from codes.utils import precision
from codes.utils.options import OptionError, normalize_options, validate_options
from codes.utils.registry import MODEL_REGISTRY
from tests.test_runner.tiny import tiny_options

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.usefixtures('one_thread')


def test_base_model_declares_the_interface_every_model_implements():
    assert inspect.isabstract(BaseModel)
    assert {'feed_data', 'compute_loss', 'score_sample', 'save_visuals'} <= BaseModel.__abstractmethods__
    for name in ('BurstSRModel', 'RealBurstSRModel', 'BlindSRModel'):
        cls = MODEL_REGISTRY.get(name)
        assert issubclass(cls, BaseModel) and not inspect.isabstract(cls), name
        assert cls.validation is BaseModel.validation, f'{name} keeps its own validation loop'


def test_one_precision_table_for_training_and_inference():
    from codes.infer import images, network
    assert network._autocast is precision.autocast and images._autocast is precision.autocast
    assert precision.to_dtype('bf16') is torch.bfloat16 and precision.to_dtype(torch.float16) is torch.float16
    with pytest.raises(ValueError, match='fp64'):
        precision.to_dtype('fp64')
    with precision.autocast(torch.device('cpu'), 'fp32'):
        assert not torch.is_autocast_enabled('cpu')
    with precision.autocast('cpu', 'bf16'):
        assert torch.is_autocast_enabled('cpu') and torch.get_autocast_dtype('cpu') is torch.bfloat16


class _Named(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(3, 3)
        self.norm = nn.LayerNorm(3)
        self.table = nn.Parameter(torch.zeros(4, 2))
        self.pos_embed = nn.Parameter(torch.zeros(1, 3))

    def no_weight_decay(self):
        return {'table'}

    def no_weight_decay_keywords(self):
        return ('pos_',)


def _names(net, group):
    ids = {id(p): n for n, p in net.named_parameters()}
    return sorted(ids[id(p)] for p in group['params'])


def test_weight_decay_groups_as_timm_does():
    net = _Named()
    params = net.parameters()
    assert weight_decay_groups(params, net, None) is params  # off: exactly what the model gave
    named = weight_decay_groups(net.parameters(), net, 'named')
    assert [_names(net, g) for g in named] == [['norm.bias', 'norm.weight', 'proj.bias', 'proj.weight'],
                                               ['pos_embed', 'table']]
    assert 'weight_decay' not in named[0] and named[1]['weight_decay'] == 0.0
    one_d = weight_decay_groups(net.parameters(), net, 'named_and_1d')
    assert [_names(net, g) for g in one_d] == [['proj.weight'], ['norm.bias', 'norm.weight', 'pos_embed',
                                                                 'proj.bias', 'table']]
    groups = [{'params': [net.proj.weight, net.table], 'lr': 0.1}, {'params': [net.norm.weight]}]
    split = weight_decay_groups(groups, net, 'named')  # parameter groups keep their own keys
    assert [(len(g['params']), g.get('lr'), g.get('weight_decay')) for g in split] == [
        (1, 0.1, None), (1, 0.1, 0.0), (1, None, None)]
    optimizer = build_optimizer(split, {'type': 'AdamW', 'lr': 1e-3, 'weight_decay': 0.5})
    assert [g['weight_decay'] for g in optimizer.param_groups] == [0.5, 0.0, 0.5]


def _opt(tmp_path, sample_data, **train):
    return normalize_options(validate_options(tiny_options(tmp_path, sample_data, **train)), ROOT, is_train=True)


def test_bsrt_relative_position_tables_skip_weight_decay_when_asked(tmp_path, sample_data):
    from codes.models import build_model
    optim = {'type': 'AdamW', 'lr': 1e-3, 'weight_decay': 0.05}
    default = build_model(_opt(tmp_path, sample_data, optim_g=optim))
    assert default.opt['train']['no_weight_decay'] is None
    assert [g['weight_decay'] for g in default.optimizer.param_groups] == [0.05]  # the original behaviour
    model = build_model(_opt(tmp_path, sample_data, optim_g=optim, no_weight_decay='named'))
    decay, exempt = model.optimizer.param_groups
    assert decay['weight_decay'] == 0.05 and exempt['weight_decay'] == 0.0
    tables = {id(p) for n, p in model.bare_net.named_parameters() if n.endswith('relative_position_bias_table')}
    assert tables and {id(p) for p in exempt['params']} == tables
    assert len(decay['params']) + len(exempt['params']) == len(list(model.bare_net.parameters()))
    with pytest.raises(OptionError, match="'train.no_weight_decay': must be one of None, named, named_and_1d"):
        validate_options(tiny_options(tmp_path, sample_data, no_weight_decay='bias'))


def test_validate_steps_the_plateau_scheduler_only_without_a_rollback(tmp_path, sample_data, caplog):
    from codes.models import build_model
    from codes.train import validate
    opt = _opt(tmp_path, sample_data, scheduler={'type': 'ReduceLROnPlateau', 'patience': 0},
               divergence_guard={'metric': 'psnr', 'max_drop': 1.0, 'lr_factor': 0.5})
    model = build_model(opt)
    means = iter([{'psnr': 20.0, 'num_samples': 1, 'seconds': 0.0}, {'psnr': 5.0, 'num_samples': 1, 'seconds': 0.0}])
    model.validation = lambda loader, name, **kw: {'mean': next(means), 'per_image': []}
    stepped = []
    model.step_plateau = stepped.append
    Path(opt['path']['experiments_root']).mkdir(parents=True)
    with caplog.at_level(logging.INFO, logger='codes.train'):
        validate(model, {'val': None}, opt, 1, None)
        validate(model, {'val': None}, opt, 2, None)
    assert stepped == [20.0] and model.rollbacks == 1
    assert 'diverged: rolled back to the last good state' in caplog.text
