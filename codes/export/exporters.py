"""Writing a network as ONNX, TorchScript or safetensors, and checking the written file against PyTorch.

ONNX: the TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``, opset 17) is tried first (every set
of dynamic axes, most dynamic first: it takes seconds where the other takes tens of seconds) and the
``torch.export``-based one (``dynamo=True``, graph optimisation off: its optimiser pass failed on the DCN graphs)
second. TorchScript: ``torch.jit.trace`` (the networks use Python control flow on shapes and lists of tensors that
``torch.jit.script`` does not take). Both formats are tried with the axes of :data:`~codes.export.layout.AXES`
dynamic first, then with fewer: a file is kept only when it reproduces the network on random inputs of two sizes
(batch 2 when the batch is dynamic) to :data:`TOLERANCE`, so the axes a file claims dynamic are the ones that were
checked. A traced graph that froze a size (a shift mask built for one feature size, an adaptive pooling size, an
FFT length) fails that check and is exported with that axis fixed instead.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.nn as nn

from codes.export.layout import AXES, InputLayout, export_module
from codes.utils.errors import UserError

__all__ = ['ExportError', 'TOLERANCE', 'ExportResult', 'export_onnx', 'export_torchscript', 'export_safetensors',
           'relative_error', 'require', 'session_options', 'META_PREFIX', 'FORMAT_VERSION', 'AXIS_CANDIDATES']

logger = logging.getLogger('codes.export')

#: largest relative error (‖exported − PyTorch‖ / ‖PyTorch‖, fp32) a written file may have
TOLERANCE = 1e-4
#: prefix of the metadata keys an exported file carries
META_PREFIX = 'bsr.'
FORMAT_VERSION = '1'
#: the sets of dynamic axes tried, most dynamic first
AXIS_CANDIDATES: tuple[tuple[str, ...], ...] = (AXES, ('batch', ), ('height', 'width'), ())


class ExportError(UserError, RuntimeError):
    """A network that could not be exported, or whose exported file does not reproduce it."""


def require(module: str, what: str) -> Any:
    """``import module``, or a one-line :class:`UserError` naming the ``export`` extra."""
    import importlib
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(f'{what} needs the Python package {module!r}: pip install "burstsr-toolkit[export]" '
                        f'(or pip install {module})') from None


def session_options(ort: Any) -> Any:
    """ONNX Runtime session options: warnings off, as many threads as torch uses (``OMP_NUM_THREADS``)."""
    options = ort.SessionOptions()
    options.log_severity_level = 4  # fatal only: a failing run is reported by the check
    options.intra_op_num_threads = torch.get_num_threads()
    return options


def relative_error(got: Sequence[torch.Tensor], want: Sequence[torch.Tensor]) -> float:
    """The largest ‖got − want‖ / ‖want‖ over the outputs."""
    worst = 0.0
    for g, w in zip(got, want):
        g, w = torch.as_tensor(g).float(), w.float()
        if g.shape != w.shape:
            return float('inf')
        worst = max(worst, float((g - w).norm() / w.norm().clamp_min(1e-12)))
    return worst


@dataclass
class ExportResult:
    """What was written: the format, the exporter, the layout (its ``dynamic`` axes) and the check's errors."""
    path: Path
    format: str
    exporter: str
    layout: InputLayout
    errors: list[tuple[tuple[int, ...], float]]


def _outputs(out: Any) -> list[torch.Tensor]:
    return list(out) if isinstance(out, (tuple, list)) else [out]


def _check_inputs(layout: InputLayout, dynamic: tuple[str, ...], size: int) -> list[tuple[torch.Tensor, ...]]:
    """Random inputs: batch 2 (1 when the batch is fixed), the second one larger on the dynamic sides; with a
    dynamic batch also batch 1 (what the tiled inference feeds), so that a size frozen from the batch shows."""
    batch = 2 if 'batch' in dynamic else 1
    h = w = layout.round_size(size)
    h2 = layout.round_size(h + layout.multiple) if 'height' in dynamic else h
    w2 = layout.round_size(w + 2 * layout.multiple) if 'width' in dynamic else w
    checks = [layout.example(batch, h, w, seed=1), layout.example(batch, h2, w2, seed=2)]
    if 'batch' in dynamic:
        checks.append(layout.example(1, h2, w2, seed=3))
    return checks


def _verify(run: Callable[[tuple[torch.Tensor, ...]], list[torch.Tensor]], module: nn.Module, layout: InputLayout,
            dynamic: tuple[str, ...], size: int) -> list[tuple[tuple[int, ...], float]]:
    errors = []
    for args in _check_inputs(layout, dynamic, size):
        with torch.no_grad():
            want = _outputs(module(*args))
        try:
            got = run(args)
        except Exception as exc:  # noqa: BLE001 - a runtime that cannot run the file at this size
            logger.debug('run at %s failed: %s', tuple(args[0].shape), exc)
            got = None
        errors.append((tuple(args[0].shape), float('inf') if got is None else relative_error(got, want)))
    return errors


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporters' progress lines, warnings and graph dumps (also those written by C++ to file descriptors 1
    and 2), kept out of the terminal."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile() as sink, warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter('ignore')
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


def _fixed(layout: InputLayout, dynamic: tuple[str, ...], example: tuple[torch.Tensor, ...]) -> InputLayout:
    h, w = example[0].shape[-2:]
    return InputLayout(**{**layout.to_json(), 'dynamic': list(dynamic),
                          'fixed_hw': None if 'height' in dynamic else [int(h), int(w)],
                          'fixed_batch': None if 'batch' in dynamic else int(example[0].shape[0])})


def _metadata(layout: InputLayout, net_opt: dict, exporter: str) -> dict[str, str]:
    return {f'{META_PREFIX}format_version': FORMAT_VERSION, f'{META_PREFIX}family': layout.family,
            f'{META_PREFIX}network_g': json.dumps(net_opt), f'{META_PREFIX}layout': json.dumps(layout.to_json()),
            f'{META_PREFIX}exporter': exporter}


def _fail(fmt: str, layout: InputLayout, tried: list[str]) -> ExportError:
    hint = ('. A file that ran but missed the tolerance may pass with a smaller --size (the float32 DFT of ONNX '
            'Runtime loses accuracy with the input size; README: Export)' if any('relative error' in t for t in tried)
            else '')
    return ExportError(f'{layout.family} could not be exported to {fmt} within the relative error tolerance '
                       f'{TOLERANCE:g} (fp32): ' + '; '.join(tried) + hint)


def _describe(dynamic: tuple[str, ...], exporter: str, outcome: str) -> str:
    return f"{exporter} with dynamic {'/'.join(dynamic) or 'none'}: {outcome}"


# ---------------------------------------------------------------------------------------------------- ONNX
def _onnx_export(module: nn.Module, example: tuple[torch.Tensor, ...], path: Path, layout: InputLayout,
                 dynamic: tuple[str, ...], exporter: str) -> None:
    names = layout.axis_names(dynamic)
    kwargs: dict[str, Any] = {'input_names': layout.input_names, 'output_names': layout.output_names}
    if exporter == 'torchscript-onnx':
        torch.onnx.export(module, example, str(path), dynamo=False, opset_version=17, dynamic_axes=names or None,
                          do_constant_folding=True, **kwargs)
    else:
        shapes = tuple(names.get(n) or None for n in layout.input_names) if dynamic else None
        torch.onnx.export(module, example, str(path), dynamo=True, dynamic_shapes=shapes, optimize=False,
                          external_data=False, **kwargs)


def _ort_runner(path: Path, layout: InputLayout) -> Callable[[tuple[torch.Tensor, ...]], list[torch.Tensor]]:
    ort = require('onnxruntime', 'ONNX export')
    session = ort.InferenceSession(str(path), session_options(ort), providers=['CPUExecutionProvider'])
    names = [i.name for i in session.get_inputs()]

    def run(args: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
        return [torch.from_numpy(o) for o in session.run(None, {n: a.numpy() for n, a in zip(names, args)})]
    return run


def export_onnx(net: nn.Module, layout: InputLayout, net_opt: dict, path: str | Path, size: int = 32,
                exporters: Sequence[str] = ('torchscript-onnx', 'dynamo')) -> ExportResult:
    """Write ``net`` as an ONNX file with the metadata ``infer.py`` reads, checked with ONNX Runtime (CPU).

    Raises:
        ExportError listing each try and its error when no exporter and set of dynamic axes reproduces ``net``.
    """
    onnx = require('onnx', 'ONNX export')
    require('onnxruntime', 'ONNX export')
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module = export_module(net, layout)
    tried = []
    for exporter, dynamic in [(e, d) for e in exporters for d in AXIS_CANDIDATES]:
        checks = _check_inputs(layout, dynamic, size)
        try:
            with _quiet():
                _onnx_export(module, checks[0], path, layout, dynamic, exporter)
        except Exception as exc:  # noqa: BLE001 - every exporter failure is a reason to try the next one
            tried.append(_describe(dynamic, exporter, f'export failed ({type(exc).__name__}: '
                                                      f'{str(exc).splitlines()[0][:120] if str(exc) else ""})'))
            continue
        errors = _verify(_ort_runner(path, layout), module, layout, dynamic, size)
        worst = max(e for _, e in errors)
        if worst > TOLERANCE:
            tried.append(_describe(dynamic, exporter, f'relative error {worst:.2e}'))
            continue
        final = _fixed(layout, dynamic, checks[0])
        model = onnx.load(str(path))
        del model.metadata_props[:]
        for key, value in _metadata(final, net_opt, exporter).items():
            entry = model.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.save(model, str(path))
        return ExportResult(path, 'onnx', exporter, final, errors)
    path.unlink(missing_ok=True)
    raise _fail('ONNX', layout, tried)


# ---------------------------------------------------------------------------------------------- TorchScript
def export_torchscript(net: nn.Module, layout: InputLayout, net_opt: dict, path: str | Path,
                       size: int = 32) -> ExportResult:
    """Write ``net`` traced (``torch.jit.trace``) with the metadata as the extra file ``bsr_meta.json``, checked by
    running ``torch.jit.load`` of the written file.

    Raises:
        ExportError when no trace reproduces ``net`` even with every axis fixed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module = export_module(net, layout)
    tried = []
    for dynamic in AXIS_CANDIDATES:
        checks = _check_inputs(layout, dynamic, size)
        try:
            with _quiet(), torch.no_grad():
                traced = torch.jit.trace(module, checks[0], check_trace=False)
        except Exception as exc:  # noqa: BLE001
            tried.append(_describe(dynamic, 'torch.jit.trace', f'trace failed ({type(exc).__name__})'))
            continue
        final = _fixed(layout, dynamic, checks[0])
        meta = json.dumps(_metadata(final, net_opt, 'torch.jit.trace'))
        with warnings.catch_warnings():  # torch.jit.save / load are deprecated in favour of torch.export
            warnings.simplefilter('ignore', FutureWarning)
            torch.jit.save(traced, str(path), _extra_files={'bsr_meta.json': meta})
            loaded = torch.jit.load(str(path), map_location='cpu')

        def run(args: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
            with torch.no_grad():
                return _outputs(loaded(*args))
        errors = _verify(run, module, layout, dynamic, size)
        worst = max(e for _, e in errors)
        if worst <= TOLERANCE:
            return ExportResult(path, 'torchscript', 'torch.jit.trace', final, errors)
        tried.append(_describe(dynamic, 'torch.jit.trace', f'relative error {worst:.2e}'))
    path.unlink(missing_ok=True)
    raise _fail('TorchScript', layout, tried)


# ---------------------------------------------------------------------------------------------- safetensors
def export_safetensors(net: nn.Module, layout: InputLayout, net_opt: dict, path: str | Path) -> ExportResult:
    """Write the bare state_dict of ``net`` (no pickle) with ``network_g`` in the header metadata."""
    st = require('safetensors.torch', 'safetensors export')
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().clone().contiguous() for k, v in net.state_dict().items()}
    meta = _metadata(layout, net_opt, 'safetensors')
    st.save_file(state, str(path), metadata=meta)
    loaded = st.load_file(str(path))
    bad = [k for k in state if not torch.equal(loaded[k], state[k])]
    if bad or set(loaded) != set(state):
        raise ExportError(f'{path}: the written tensors differ from the network ({bad[:3]})')
    return ExportResult(path, 'safetensors', 'safetensors', layout, [])
