"""The codes.infer package: its modules, what the package re-exports, and the small seams between them."""
import pytest
import torch
import torch.nn as nn

import codes.infer as infer
from codes.archs.arch_detect import FAMILIES
from codes.infer import bursts, cli, images, inputs, network, outputs
from codes.utils.build import OptionError


def test_the_package_reexports_its_modules_objects():
    for module in (bursts, cli, images, inputs, network, outputs):
        for name in module.__all__:
            if name in infer.__all__:
                assert getattr(infer, name) is getattr(module, name), name
    assert all(hasattr(infer, name) for name in infer.__all__)
    from codes.cli import infer_main  # the console script bsr-infer
    assert callable(infer_main)


def test_every_family_has_its_runner():
    assert set(cli.RUNNERS) == set(FAMILIES)
    assert cli.RUNNERS['DCLS'] is images.run_images
    assert all(cli.RUNNERS[name] is bursts.run_bursts for name in FAMILIES if name != 'DCLS')


def test_network_call_runs_without_gradients_in_float():
    net = nn.Conv2d(1, 1, 1)
    out = network.network_call(net, torch.device('cpu'), 'bf16')(torch.ones(1, 1, 2, 2))
    assert out.dtype is torch.float32 and not out.requires_grad


def test_resolve_device():
    assert network.resolve_device('cpu') == torch.device('cpu')
    with pytest.raises(OptionError, match="option 'device': expected 'auto', 'cpu', 'cuda' or 'cuda:N'"):
        network.resolve_device('gpu0')


def test_input_errors_become_one_line_option_errors():
    with pytest.raises(OptionError, match=r"option 'input': no such burst \(BSRT weights w.pth\)"):
        with inputs.input_errors({'weights': 'w.pth'}, 'BSRT'):
            raise FileNotFoundError('no such burst')
