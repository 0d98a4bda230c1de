"""Exported networks: ONNX, TorchScript and safetensors files written from the registry's networks
(:mod:`~codes.export.exporters`), the input layout of each family (:mod:`~codes.export.layout`) and an ONNX file run
by ONNX Runtime as the network of ``infer.py`` (:mod:`~codes.export.runtime`). The command is
``python -m codes.scripts.export`` (``bsr-export``). ``onnx``, ``onnxruntime``, ``onnxscript`` and ``safetensors`` are
the ``export`` extra; this package imports them only when a file of that format is written or read.
"""
from codes.export.exporters import (TOLERANCE, ExportError, ExportResult, export_onnx, export_safetensors,
                                    export_torchscript)
from codes.export.layout import InputLayout, layout_of

__all__ = ['TOLERANCE', 'ExportError', 'ExportResult', 'export_onnx', 'export_torchscript', 'export_safetensors',
           'InputLayout', 'layout_of']
