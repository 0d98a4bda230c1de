"""load_state_dict_strict: the one key/shape check behind load_network, PWCNet.load_official and SpyNet loading."""
import logging

import pytest
import torch
import torch.nn as nn

from codes.utils.checkpoint import CheckpointError, load_state_dict_strict


class _Net(nn.Module):
    def __init__(self, width: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, width, 3)
        self.register_buffer('mean', torch.full((1,), 0.5))


def _state(width: int = 3) -> dict:
    torch.manual_seed(width)
    return {k: torch.randn_like(v) for k, v in _Net(width).state_dict().items()}


def test_loads_a_fitting_state_dict_and_calls_no_hint():
    net, sd = _Net(), _state()
    load_state_dict_strict(net, sd, 'w.pth', hint=lambda: pytest.fail('hint built without an error'))
    assert all(torch.equal(net.state_dict()[k], v) for k, v in sd.items())


def test_strict_names_the_file_and_every_kind_of_difference():
    sd = _state()
    del sd['conv.bias']
    sd['extra.weight'] = torch.zeros(1)
    sd['conv.weight'] = torch.zeros(5, 1, 3, 3)
    with pytest.raises(CheckpointError) as info:
        load_state_dict_strict(_Net(), sd, 'w.pth', hint='. Check network_g.')
    assert str(info.value) == ("w.pth: does not fit _Net: 1 missing (e.g. ['conv.bias']); 1 unexpected (e.g. "
                               "['extra.weight']); 1 with other shapes (e.g. ['conv.weight: file (5, 1, 3, 3) vs "
                               "model (3, 1, 3, 3)']). Check network_g.")


def test_only_the_parts_that_occur_and_a_custom_headline_and_error():
    sd = _state()
    del sd['mean']
    with pytest.raises(ValueError, match=r"^x\.pth: not the weights: 1 missing \(e\.g\. \['mean'\]\)$"):
        load_state_dict_strict(_Net(), sd, 'x.pth', mismatch='not the weights', error=ValueError)


def test_non_strict_loads_the_rest_and_warns(caplog):
    net, sd = _Net(), _state()
    before = net.state_dict()['mean'].clone()
    del sd['mean']
    sd['extra'] = torch.zeros(1)
    log = logging.getLogger('codes.utils.checkpoint')
    log.addHandler(caplog.handler)  # an earlier setup_logging may have stopped 'codes' propagating to the root
    try:
        load_state_dict_strict(net, sd, 'w.pth', strict=False)
    finally:
        log.removeHandler(caplog.handler)
    assert 'loaded non-strictly' in caplog.text and "'mean'" in caplog.text and "'extra'" in caplog.text
    assert torch.equal(net.conv.weight, sd['conv.weight']) and torch.equal(net.mean, before)
    # a shape mismatch is refused even without strict
    with pytest.raises(CheckpointError, match=r"2 with other shapes \(e\.g\. \['conv\.weight: file \(4, 1, 3, 3\)"):
        load_state_dict_strict(_Net(), _state(4), 'w.pth', strict=False)


def test_optional_keys_may_be_absent_and_keep_their_values():
    net, sd = _Net(), _state()
    del sd['mean']
    load_state_dict_strict(net, sd, 'w.pth', optional=['mean'])
    assert torch.equal(net.mean, torch.full((1,), 0.5)) and torch.equal(net.conv.weight, sd['conv.weight'])
    # optional keys that the file does hold are loaded, and other missing keys still count
    full = _state()
    load_state_dict_strict(net, full, 'w.pth', optional=['mean'])
    assert torch.equal(net.mean, full['mean'])
    del full['conv.bias']
    with pytest.raises(CheckpointError, match=r"1 missing \(e\.g\. \['conv\.bias'\]\)"):
        load_state_dict_strict(net, full, 'w.pth', optional=['mean'])
