"""The network of an inference run: the device, the architecture the weights are for, strict loading, the call.

The weights may also be an ONNX file written by ``python -m codes.scripts.export``: it is run by ONNX Runtime
(:mod:`codes.export.runtime`) behind the same call, so the runners and the tiling are those of the PyTorch path.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Mapping

import torch
import torch.nn as nn

from codes.archs import build_network
from codes.archs.arch_detect import FAMILIES, detect_family, fitting_network_hint, network_options_from_state_dict
from codes.utils.build import OptionError
from codes.utils.checkpoint import CheckpointError, extract_state_dict, load_file, load_network
from codes.utils.precision import autocast as _autocast

__all__ = ['resolve_device', 'load_inference_network', 'network_call', 'runner_tile']

logger = logging.getLogger('codes.infer')


def resolve_device(name: str) -> torch.device:
    """'auto' -> CUDA when available, else CPU; 'cuda' without CUDA is an error."""
    if name == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    try:
        device = torch.device(name)
    except RuntimeError:
        raise OptionError('device', f"expected 'auto', 'cpu', 'cuda' or 'cuda:N', got {name!r}") from None
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise OptionError('device', 'CUDA was asked for but is not available here; use --device cpu')
    return device


def _network_options(sd: Mapping[str, torch.Tensor], opt: dict, source: str) -> dict:
    """The ``network_g`` block for these weights (the rule: see :mod:`codes.infer`)."""
    family = detect_family(sd)
    if opt.get('network_g'):
        given = opt['network_g']['type']
        if family is not None and given in FAMILIES and family != given:
            raise CheckpointError(f'{source}: holds a {family} network, not {given} (network_g.type in '
                                  f'{opt.get("opt_file")}); pass the {given} weights or fix network_g')
        return dict(opt['network_g'])
    arch = opt.get('arch') or {}
    wanted = arch.get('type')
    if wanted is None:
        return network_options_from_state_dict(sd, source)
    if family is not None and family != wanted:
        raise CheckpointError(f'{source}: holds a {family} network, not {wanted} (--arch {wanted}); pass the '
                              f'{wanted} weights, or drop --arch to use these')
    if family is None:
        raise CheckpointError(f'{source}: its keys are not those of {wanted} (first keys {list(sd)[:4]}); is it a '
                              'checkpoint of another architecture?')
    net_opt = network_options_from_state_dict(sd, source)
    if wanted == 'BSRT' and arch.get('level'):
        net_opt = {'type': 'BSRT', 'level': arch['level'], 'burst_size': net_opt['burst_size'], 'drop_path_rate': 0.0}
    if arch.get('burst_size'):
        net_opt['burst_size'] = arch['burst_size']
    return net_opt


def load_inference_network(weights: str | Path, opt: dict, device: torch.device) -> tuple[nn.Module, dict, str]:
    """Build the network for ``weights`` and load them strictly; returns (net in eval mode, network_g, param_key)."""
    weights = Path(weights)
    if weights.suffix.lower() == '.onnx':
        from codes.export.runtime import load_onnx_network
        return load_onnx_network(weights, opt, device)
    ckpt = load_file(weights)
    if not isinstance(ckpt, Mapping):
        raise CheckpointError(f'{weights}: expected a state_dict or a {{"params": ...}} checkpoint, got a '
                              f'{type(ckpt).__name__}')
    param_key = opt.get('param_key', 'auto')
    if param_key == 'auto':
        param_key = 'params_ema' if isinstance(ckpt.get('params_ema'), Mapping) else 'params'
    sd = extract_state_dict(ckpt, param_key, str(weights))
    if not sd:
        raise CheckpointError(f'{weights}: holds no tensors')
    try:
        net_opt = _network_options(sd, opt, str(weights))
    except ValueError as exc:
        raise CheckpointError(str(exc)) from None
    net = build_network(net_opt)
    load_network(net, weights, strict=True, param_key=param_key, describe=fitting_network_hint)
    return net.to(device).eval(), net_opt, param_key


def network_call(net: nn.Module, device: torch.device, precision: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """``x -> net(x)`` on ``device`` under no_grad and autocast, float32 out; an exported graph (not an
    ``nn.Module``) is called as it is, in the fp32 it was checked in."""
    if not isinstance(net, nn.Module):
        if precision != 'fp32':
            raise OptionError('precision', f'{net} runs in fp32, the precision it was exported and checked in; '
                              'drop --precision')
        return net

    def call(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), _autocast(device, precision):
            return net(x.to(device)).float()
    return call


def runner_tile(net: object, tile: int | None) -> int | None:
    """The tile size to run ``net`` with: ``tile``, or the one size an exported graph of fixed h and w takes."""
    fixed = getattr(net, 'fixed_tile', None)
    if fixed is None:
        return tile
    if tile != fixed:
        logger.info('%s takes inputs of %dx%d only (fixed when exported): tiles of that size are used instead of '
                    '%s', net, fixed, fixed, tile)
    return fixed
