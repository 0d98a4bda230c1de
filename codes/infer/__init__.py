"""Inference pipeline: run a trained BSRT on your own bursts (or DCLS on your own images), any size, any device.

``python infer.py -opt options/infer.yml`` or ``python infer.py --weights W --input PATH --output DIR
[--device cpu|cuda] [--tile 64 --tile-overlap 8] [--precision bf16]``. Command-line flags override the option file.

Which network the weights are for (first match wins):

1. ``network_g`` in the option file: a full constructor block, as in the train/test option files;
2. ``--arch NAME`` (and ``--level S|L`` for BSRT, ``--burst-size N`` for BSRT, Burstormer and DBSR): the family is
   checked against the checkpoint's keys, and the hyper-parameters not given are read from its tensor shapes;
3. nothing: family and hyper-parameters are read from the checkpoint (``codes.archs.arch_detect``).

The weights are always loaded strictly with ``weights_only=True`` (``codes.utils.checkpoint``; ``.safetensors``
without pickle), or, for a trainer checkpoint that pickles its own bookkeeping classes (DBSR's), with the
restricted unpickler that admits those only as inert records; a file that is not a checkpoint, or that does not fit
the network, is refused with a message naming the file. An ``.onnx`` file written by ``python -m
codes.scripts.export`` runs through ONNX Runtime in place of the network (:mod:`codes.export.runtime`): its
metadata says the family, options and burst size, checked against 1-2.

Per input, under ``--output``: ``<name>_srgb.png`` (8-bit sRGB for viewing) and ``<name>_linear.png`` or
``.tiff`` (16-bit linear RGB, clamp to [0, 1] × 65535, channels in RGB order on disk), plus for DCLS
``<name>_kernel.png`` / ``<name>_kernel.npy``; ``infer_summary.json`` lists what was done. With ``--compare``
(a ground truth and/or a second model's checkpoint), also ``<name>_compare.png``, a labelled comparison panel
(``codes.visualization.infer_compare``).

Modules, one concern each: :mod:`~codes.infer.cli` (options, command line, dry run, ``--compare``, the summary),
:mod:`~codes.infer.network` (device, the network for the weights, strict loading), :mod:`~codes.infer.bursts` (the
burst runner), :mod:`~codes.infer.images` (the DCLS image runner), :mod:`~codes.infer.inputs` (input errors, RAW
refused for DCLS) and :mod:`~codes.infer.outputs` (the streamed 16-bit linear and 8-bit sRGB files, kernels).
"""
from codes.infer.bursts import run_bursts
from codes.infer.cli import INFER_SCHEMA, RUNNERS, build_infer_arg_parser, infer_pipeline, parse_infer_options
from codes.infer.images import estimate_kernel, run_images
from codes.infer.inputs import check_image_input
from codes.infer.network import load_inference_network, network_call, resolve_device
from codes.infer.outputs import linear_to_uint16, save_kernel, save_linear, save_srgb, stream_outputs

__all__ = ['infer_pipeline', 'INFER_SCHEMA', 'build_infer_arg_parser', 'load_inference_network', 'save_linear',
           'linear_to_uint16', 'stream_outputs', 'check_image_input', 'resolve_device', 'parse_infer_options',
           'RUNNERS', 'run_bursts', 'run_images', 'estimate_kernel', 'network_call', 'save_srgb', 'save_kernel']
