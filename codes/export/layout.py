"""What an exported network takes and returns, derived from what ``infer.py`` already knows about each family.

The inference runner of a family (:data:`codes.infer.cli.RUNNERS`) fixes the input layout: the burst runner feeds
``(B, N, 4, h, w)`` packed RGGB bursts and reads ``(B, 3, 8h, 8w)``; the image runner (DCLS) feeds ``(B, C, h, w)``
images and calls the network's ``Estimator`` and ``Restorer`` separately. A network added to the registry and to
``RUNNERS`` gets its layout from the same attributes the runner reads (``burst_size``, ``input_size_rule``,
``scale``, ``kernel_size``), with no code here.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn as nn

__all__ = ['InputLayout', 'layout_of', 'ImageEntry', 'export_module', 'AXES']

#: the axes that can be dynamic, in the order they are tried
AXES = ('batch', 'height', 'width')


@dataclass
class InputLayout:
    """The tensors of one exported network.

    Attributes:
        family: the registry name (``network_g.type``).
        kind: 'burst' (input ``(B, N, 4, h, w)``) or 'image' (inputs ``(B, C, h, w)`` and a ``(B, 1, ks, ks)`` blur
            kernel; outputs the restored image and the estimated kernel).
        frames: N of a burst network (fixed: the weights are for this many frames); None for images.
        channels: input channels (4 packed RGGB, or the image channels).
        scale: output pixels per input pixel.
        multiple, min_size: the input h and w must be a multiple of ``multiple`` and at least ``min_size``.
        kernel_size: ks of the image kind's blur kernel.
        dynamic: the axes of the exported file that take any size (a subset of :data:`AXES`).
        fixed_hw: (h, w) when height and width are not dynamic.
        fixed_batch: B when the batch is not dynamic.
    """
    family: str
    kind: str
    frames: int | None
    channels: int
    scale: int
    multiple: int
    min_size: int
    kernel_size: int | None = None
    dynamic: list[str] = field(default_factory=list)
    fixed_hw: list[int] | None = None
    fixed_batch: int | None = None

    @property
    def input_names(self) -> list[str]:
        return ['burst'] if self.kind == 'burst' else ['image', 'kernel']

    @property
    def output_names(self) -> list[str]:
        return ['sr'] if self.kind == 'burst' else ['sr', 'estimated_kernel']

    def round_size(self, size: int) -> int:
        """``size`` rounded up to an input side the network takes."""
        size = max(size, self.min_size)
        return -(-size // self.multiple) * self.multiple

    def example(self, batch: int, h: int, w: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
        """Random inputs of this layout: values in [0, 1], a positive kernel summing to 1."""
        g = torch.Generator().manual_seed(seed)
        if self.kind == 'burst':
            return (torch.rand(batch, self.frames, self.channels, h, w, generator=g), )
        ks = self.kernel_size
        k = torch.rand(batch, 1, ks, ks, generator=g) + 0.05
        return torch.rand(batch, self.channels, h, w, generator=g), k / k.sum(dim=(-2, -1), keepdim=True)

    def axis_names(self, dynamic: tuple[str, ...]) -> dict[str, dict[int, str]]:
        """``{input or output name: {axis: label}}`` of the dynamic axes (the legacy exporter's ``dynamic_axes``)."""
        out: dict[str, dict[int, str]] = {}
        ranks = {'burst': 5, 'image': 4, 'kernel': 4, 'sr': 4, 'estimated_kernel': 4}
        for name in self.input_names + self.output_names:
            axes = {}
            if 'batch' in dynamic:
                axes[0] = 'batch'
            if name not in ('kernel', 'estimated_kernel'):
                r = ranks[name]
                for axis, label in ((r - 2, 'height'), (r - 1, 'width')):
                    if label in dynamic:
                        axes[axis] = label if name in self.input_names else f'{self.scale}*{label}'
            if axes:
                out[name] = axes
        return out

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> 'InputLayout':
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


class ImageEntry(nn.Module):
    """The two calls the image runner makes on a DCLS-like network as one graph: ``(image, kernel) ->
    (Restorer(image, kernel), Estimator(image))``. Holds the network's own modules (no second model code)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, image: torch.Tensor, kernel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.net.Restorer(image, kernel), self.net.Estimator(image)


def layout_of(net: nn.Module, family: str) -> InputLayout:
    """The layout of ``net`` (of registry name ``family``) as its inference runner feeds it.

    Raises ``ValueError`` for a family ``infer.py`` has no runner for.
    """
    from codes.infer.cli import RUNNERS
    from codes.infer.images import run_images
    runner = RUNNERS.get(family)
    if runner is None:
        raise ValueError(f'{family} has no inference runner (infer.py runs {", ".join(RUNNERS)}), so there is no '
                         'input layout to export it with')
    if runner is run_images:
        from codes.archs.dcls_arch import MIN_LR_SIZE
        conv = next(m for m in net.Restorer.modules() if isinstance(m, nn.Conv2d))
        return InputLayout(family, 'image', None, int(conv.in_channels), int(net.scale), 1, MIN_LR_SIZE,
                           int(net.kernel_size))
    multiple, min_size = net.input_size_rule
    return InputLayout(family, 'burst', int(net.burst_size), 4, 8, int(multiple), int(min_size))


def export_module(net: nn.Module, layout: InputLayout) -> nn.Module:
    """The module whose forward is exported: the network itself, or :class:`ImageEntry` for the image kind."""
    return net if layout.kind == 'burst' else ImageEntry(net).eval()
