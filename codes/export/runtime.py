"""An exported ONNX file as the network of an inference run: ONNX Runtime behind the calls the runners make.

:func:`load_onnx_network` reads the file's metadata (written by :func:`codes.export.exporters.export_onnx`),
refuses a file that is not one of ours, is for another family than asked, or whose graph does not match its
metadata, and returns an :class:`OnnxNetwork`. That object answers what the runners ask a PyTorch network
(``burst_size``, ``input_size_rule``, ``scale``, ``kernel_size``) and is called like one (``net(x)``, and for the
image kind ``net.Estimator(x)`` / ``net.Restorer(x, kernel)``), so the tiled pipeline of ``codes.infer`` runs
unchanged. The CUDA execution provider is used when ``onnxruntime-gpu`` is installed and the device is CUDA.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from codes.export.exporters import FORMAT_VERSION, META_PREFIX, require, session_options
from codes.export.layout import InputLayout
from codes.utils.checkpoint import CheckpointError, CheckpointNotFoundError

__all__ = ['OnnxNetwork', 'load_onnx_network', 'onnx_providers', 'is_onnx_file']


def is_onnx_file(path: str | Path) -> bool:
    """Whether ``path`` names an ONNX file (by its suffix)."""
    return Path(path).suffix.lower() == '.onnx'


def onnx_providers(device: torch.device) -> list[str]:
    """The execution providers for ``device``: CUDA first when asked for and available, else the CPU."""
    ort = require('onnxruntime', 'Running an ONNX file')
    if device.type == 'cuda':
        if 'CUDAExecutionProvider' not in ort.get_available_providers():
            raise CheckpointError('an ONNX file on CUDA needs onnxruntime-gpu (pip install onnxruntime-gpu); use '
                                  '--device cpu for the CPU provider')
        return ['CUDAExecutionProvider', 'CPUExecutionProvider']
    return ['CPUExecutionProvider']


class OnnxNetwork:
    """An ONNX Runtime session with the attributes and calls of the PyTorch network it was exported from."""

    def __init__(self, session: Any, layout: InputLayout, net_opt: dict, path: Path, exporter: str) -> None:
        self.session, self.layout, self.net_opt, self.path, self.exporter = session, layout, net_opt, path, exporter
        self.burst_size = layout.frames
        self.scale = layout.scale
        self.kernel_size = layout.kernel_size
        fixed = layout.fixed_hw
        # a file with fixed h and w takes tiles of exactly that size: the runners pad to it and tile with it
        self.input_size_rule = (layout.multiple, max(fixed) if fixed else layout.min_size)
        self.fixed_tile = fixed[0] if fixed else None
        self._names = [i.name for i in session.get_inputs()]

    def __repr__(self) -> str:
        return f'OnnxNetwork({self.layout.family}, {self.path})'

    def _run(self, args: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
        batch = self.layout.fixed_batch
        b = args[0].shape[0]
        if batch is not None and b != batch:  # a file of fixed batch: one sample at a time
            parts = [self._run(tuple(a[i:i + 1].expand(batch, *a.shape[1:]) for a in args)) for i in range(b)]
            return [torch.cat([p[k][:1] for p in parts]) for k in range(len(parts[0]))]
        feed = {n: np.ascontiguousarray(a.detach().cpu().float().numpy()) for n, a in zip(self._names, args)}
        return [torch.from_numpy(o) for o in self.session.run(None, feed)]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self._run((x, ))[0]

    def Estimator(self, image: torch.Tensor) -> torch.Tensor:  # noqa: N802 - the attribute name of the network
        """The image kind's kernel estimate (the graph's second output; its kernel input is a delta)."""
        ks = self.kernel_size
        delta = torch.zeros(image.shape[0], 1, ks, ks)
        delta[..., ks // 2, ks // 2] = 1
        return self._run((image, delta))[1]

    def Restorer(self, image: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:  # noqa: N802
        """The image kind's restoration with a given kernel (the graph's first output)."""
        return self._run((image, kernel.expand(image.shape[0], *kernel.shape[1:])))[0]


def _meta(session: Any, path: Path) -> dict[str, str]:
    meta = dict(session.get_modelmeta().custom_metadata_map)
    if f'{META_PREFIX}family' not in meta:
        raise CheckpointError(f'{path}: an ONNX file without the metadata bsr-export writes ({META_PREFIX}family, '
                              f'{META_PREFIX}layout, ...): not a network of this toolkit; export the weights with '
                              'python -m codes.scripts.export')
    if meta.get(f'{META_PREFIX}format_version') != FORMAT_VERSION:
        raise CheckpointError(f'{path}: exported with metadata version {meta.get(f"{META_PREFIX}format_version")}, '
                              f'expected {FORMAT_VERSION}; export the weights again')
    return meta


def _check_graph(session: Any, layout: InputLayout, path: Path) -> None:
    """The graph's first input has the rank, frames and channels the metadata says."""
    shape = list(session.get_inputs()[0].shape)
    rank = 5 if layout.kind == 'burst' else 4
    want = [layout.frames, layout.channels] if layout.kind == 'burst' else [layout.channels]
    got = shape[1:1 + len(want)] if len(shape) == rank else None
    if got != want:
        what = f'bursts of {layout.frames} frames (B, {layout.frames}, 4, h, w)' if layout.kind == 'burst' else \
            f'(B, {layout.channels}, h, w) images'
        raise CheckpointError(f'{path}: its metadata says {layout.family} for {what}, but the graph takes input '
                              f'shape {shape}; the file was altered or mixed up, export the weights again')


def _check_wanted(layout: InputLayout, net_opt: dict, opt: dict, path: Path) -> None:
    """The family and burst size asked for (``network_g`` or ``--arch`` / ``--burst-size``) are the file's."""
    given = dict(opt.get('network_g') or {})
    arch = opt.get('arch') or {}
    wanted = given.get('type') or arch.get('type')
    if wanted and wanted != layout.family:
        raise CheckpointError(f'{path}: an ONNX export of {layout.family}, not {wanted} (as asked); pass a '
                              f'{wanted} export or drop the architecture option')
    frames = arch.get('burst_size') or given.get('burst_size')
    if frames and layout.kind == 'burst' and int(frames) != layout.frames:
        raise CheckpointError(f'{path}: exported for bursts of {layout.frames} frames, not {frames} (as asked); '
                              f'export the weights with burst_size {frames} or drop the burst size option')
    for key, value in given.items():
        if key not in ('type', 'impl', 'compile') and key in net_opt and net_opt[key] != value:
            raise CheckpointError(f'{path}: exported with network_g.{key} = {net_opt[key]!r}, not {value!r} (as '
                                  'given); pass the matching export or drop network_g')


def load_onnx_network(path: str | Path, opt: dict, device: torch.device) -> tuple[OnnxNetwork, dict, str]:
    """The ONNX file ``path`` as ``(network, network_g, 'onnx')``, like ``load_inference_network``.

    Raises:
        CheckpointError (one line, naming the file) for a missing, corrupt or foreign file, or one for another
        family or burst size than ``opt`` asks for.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointNotFoundError(f'ONNX file not found: {path}')
    ort = require('onnxruntime', 'Running an ONNX file')
    providers = onnx_providers(device)
    try:
        session = ort.InferenceSession(str(path), session_options(ort), providers=providers)
    except Exception as exc:  # noqa: BLE001 - ONNX Runtime raises its own types for corrupt files
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f'{path}: not a readable ONNX model (truncated or another format): {first}') from None
    meta = _meta(session, path)
    try:
        layout = InputLayout.from_json(json.loads(meta[f'{META_PREFIX}layout']))
        net_opt = json.loads(meta[f'{META_PREFIX}network_g'])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f'{path}: malformed {META_PREFIX}layout / {META_PREFIX}network_g metadata '
                              f'({type(exc).__name__}: {exc}); export the weights again') from None
    _check_graph(session, layout, path)
    _check_wanted(layout, net_opt, opt, path)
    return OnnxNetwork(session, layout, net_opt, path, meta.get(f'{META_PREFIX}exporter', '?')), net_opt, 'onnx'
