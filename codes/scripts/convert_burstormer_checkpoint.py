"""Convert an official Burstormer (or BIPNet) checkpoint into this toolkit's weights file (``{'params': ...}``).

    python -m codes.scripts.convert_burstormer_checkpoint Burstormer.ckpt experiments/pretrained_models/burstormer.pth
    python -m codes.scripts.convert_burstormer_checkpoint BIPNet.ckpt experiments/pretrained_models/bipnet.pth

Reads the synthetic-track Lightning ``.ckpt`` (weights under ``'state_dict'``), the real-track ``.pth``
(``{'epoch', 'model_state_dict', 'optimizer_state_dict'}``) or a bare state_dict, finds the track from the keys,
loads the weights strictly into that Burstormer to check them, and writes only the weights. The file is read with
``torch.load(weights_only=True)``; a Lightning file whose bookkeeping holds objects that loader refuses needs
``--trust`` (``weights_only=False``: only for a file from a source you trust, since unpickling can run code).
Both released checkpoints are expected to hold the *real* layout (3,263,778 parameters; Burstormer issues #3, #10).
The two BIPNet files by the same authors (``BIPNet.ckpt``, ``BIPNet.pth``) have the same wrappings and are recognised
by their keys (a file linked as Burstormer weights was once a BIPNet checkpoint, Burstormer issue #2).
"""
from __future__ import annotations

import argparse
import pickle
import sys
from pathlib import Path

import torch

from codes.utils.checkpoint import CheckpointError, atomic_save
from codes.utils.errors import run_cli

__all__ = ['convert_file']


def convert_file(src: str | Path, dst: str | Path, trust: bool = False) -> dict:
    """Convert ``src`` into ``dst``; returns the ``network_g`` block the weights fit."""
    from codes.archs import build_network
    from codes.archs.arch_detect import network_options_from_state_dict
    from codes.archs.bipnet_arch import convert_bipnet_checkpoint
    from codes.archs.burstormer_arch import burstormer_track_of, convert_burstormer_checkpoint
    src = Path(src)
    if not src.is_file():
        raise CheckpointError(f'{src}: no such file')
    try:
        ckpt = torch.load(src, map_location='cpu', weights_only=not trust)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f'{src}: the safe loader (weights_only=True) refuses it ({first[:200]}); if the file '
                              f'comes from a source you trust, rerun with --trust') from None
    except Exception as exc:
        raise CheckpointError(f'{src}: not a readable PyTorch checkpoint: {type(exc).__name__}: {exc}') from None
    try:
        sd = convert_bipnet_checkpoint(ckpt, str(src))
        what = 'BIPNet'
    except ValueError:
        try:
            sd = convert_burstormer_checkpoint(ckpt, str(src))
        except ValueError as exc:
            raise CheckpointError(str(exc)) from None
        if burstormer_track_of(sd) is None:
            raise CheckpointError(f'{src}: a Burstormer state_dict of neither track (no back_projection1 fusion '
                                  'keys)') from None
        what = None
    net_opt = network_options_from_state_dict(sd, str(src))  # track / block counts / width, when not published
    what = what or f"Burstormer track {net_opt['track']!r}"
    with torch.device('meta'):
        net = build_network(net_opt)
    try:
        net.load_state_dict(sd, strict=True, assign=True)
    except RuntimeError as exc:
        raise CheckpointError(f'{src}: does not load strictly into {what}: {str(exc).splitlines()[0]}') from None
    atomic_save({'params': dict(sd)}, dst)
    return net_opt


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog='convert_burstormer_checkpoint', description=__doc__.split('\n\n')[0])
    p.add_argument('src', help='the official .ckpt / .pth')
    p.add_argument('dst', help='the weights file to write ({"params": ...})')
    p.add_argument('--trust', action='store_true', help='read with weights_only=False (trusted files only)')
    args = p.parse_args(argv)
    net_opt = run_cli(lambda: convert_file(args.src, args.dst, args.trust), p.prog)
    print(f"{args.dst}: {net_opt['type']} weights; network_g: {net_opt}")
    return 0


if __name__ == '__main__':
    sys.exit(main())
