"""Published results of the networks of the toolkit, with their sources, and the rules that match a run to them.

A figure is a (network variant, dataset, metric kind) triple with its value and its source (paper and table, or
the repository figure it was read off). A run of ``test.py`` matches a figure when

* its network is the published variant: ``network.type`` equal and every option of :data:`NETWORKS` equal to the
  run's value (the constructor's default where the run's options leave it out), e.g. BSRT ``level: S`` without
  overrides of its dimensions, 14 frames; Burstormer's ``track``; DCLS's ``scale`` and ``kernel_size``
  (21: setting 1, Gaussian8; 11 / 31: setting 2, DIV2KRK);
* its dataset is the published one (:func:`dataset_id`: ``SyntheticBurstVal``, ``BurstSR_val``, ``DIV2KRK`` or a
  Gaussian8 set by name; a sample or a subset under another name matches nothing);
* the metric is of the same kind (:func:`metric_kind`, from the metric's options that ``metrics.json`` records):
  linear PSNR / SSIM / LPIPS on SyntheticBurstVal, AlignedPSNR on BurstSR val, Y-channel PSNR / SSIM for DCLS.

All burst figures are ×4 with 14 frames, SyntheticBurst val of 2021 (300 bursts) and BurstSR val (882 bursts).
Values marked ``approx`` were read off a figure (±0.1 dB). These are the papers' numbers, not reproduced here.
"""
from __future__ import annotations

import inspect
import re
from dataclasses import dataclass
from typing import Any, Mapping

__all__ = ['Figure', 'NETWORKS', 'FIGURES', 'network_variant', 'dataset_id', 'metric_kind', 'find_figure']

# ---------------------------------------------------------------------------------------------------- sources
_BURSTM = 'Kang et al., "BurstM", ECCV 2024, Table 2'
BSRT = ('Luo et al., "BSRT: Improving Burst Super-Resolution with Swin Transformer and Flow-Guided Deformable '
        f'Alignment", CVPR Workshops 2022; as tabulated in {_BURSTM}')
EBSR = ('Luo et al., "EBSR: Feature Enhanced Burst Super-Resolution With Deformable Alignment", CVPR Workshops 2021; '
        'read off the PSNR-versus-parameters figure of the BSRT paper (Algolzw/BSRT, figs/ts.png), ±0.1 dB')
BURSTORMER = ('Dudhane et al., "Burstormer: Burst Image Restoration and Enhancement Transformer", CVPR 2023; '
              f'as tabulated in {_BURSTM}')
BIPNET = ('Dudhane et al., "Burst Image Restoration and Enhancement", CVPR 2022; as tabulated in '
          f'{_BURSTM} (BIPNet issue #16 reports 48.63 in the paper for the real track)')
DBSR = ('Bhat et al., "Deep Burst Super-Resolution", CVPR 2021, as in the goutamgmb/deep-burst-sr README '
        '(later papers quote 40.76 / 48.05 for DBSR retrained in the DeepRep setting)')
DCLS_T1 = ('Luo et al., "Deep Constrained Least Squares for Blind Image Super-Resolution", CVPR 2022, Table 1 '
           '(Gaussian8, setting 1; Y channel), as listed on paperswithcode')
DCLS_T2 = ('Luo et al., "Deep Constrained Least Squares for Blind Image Super-Resolution", CVPR 2022, Table 2 '
           '(DIV2KRK, setting 2; Y channel), as listed on paperswithcode')

#: Published network variants: label -> ``{'type': registry name, 'options': options that must match}``.
NETWORKS: dict[str, dict[str, Any]] = {
    'BSRT-S': {'type': 'BSRT', 'options': {'level': 'S', 'embed_dim': None, 'depths': None, 'num_heads': None,
                                           'window_size': 8, 'mlp_ratio': 2.0, 'num_feat': 64,
                                           'deformable_groups': 8, 'burst_size': 14}},
    'BSRT-L': {'type': 'BSRT', 'options': {'level': 'L', 'embed_dim': None, 'depths': None, 'num_heads': None,
                                           'window_size': 8, 'mlp_ratio': 2.0, 'num_feat': 64,
                                           'deformable_groups': 8, 'burst_size': 14}},
    'EBSR': {'type': 'EBSR', 'options': {'n_feats': 128, 'n_resblocks': 8, 'n_resgroups': 5, 'burst_size': 14,
                                         'non_local': True, 'front_RBs': 5, 'deformable_groups': 8}},
    'Burstormer, synthetic': {'type': 'Burstormer', 'options': {'track': 'synthetic', 'num_features': 48,
                                                                'deformable_groups': 8, 'burst_size': 14}},
    'Burstormer, real': {'type': 'Burstormer', 'options': {'track': 'real', 'num_features': 48,
                                                           'deformable_groups': 8, 'burst_size': 14}},
    'DBSR': {'type': 'DBSR', 'options': {'burst_size': 14}},
    'BIPNet': {'type': 'BIPNet', 'options': {'burst_size': 14}},
    **{f'DCLS ×{s}, setting {n}': {'type': 'DCLS', 'options': {'scale': s, 'kernel_size': k, 'nf': 64, 'nb': 10,
                                                                'ng': 5, 'input_para': 256}}
       for s, n, k in ((2, 1, 21), (3, 1, 21), (4, 1, 21), (2, 2, 11), (4, 2, 31))},
}


@dataclass(frozen=True)
class Figure:
    """One published value: ``network`` (a key of :data:`NETWORKS`), ``dataset`` (a :func:`dataset_id`),
    ``metric`` (a :func:`metric_kind`), ``value``, ``source`` (paper and table) and ``approx`` (read off a plot)."""
    network: str
    dataset: str
    metric: str
    value: float
    source: str
    approx: bool = False


def _burst(net: str, source: str, syn: Mapping[str, float], real: Mapping[str, float],
           approx: bool = False) -> list[Figure]:
    return ([Figure(net, 'SyntheticBurstVal', m, v, source, approx) for m, v in syn.items()]
            + [Figure(net, 'BurstSR val', m, v, source, approx) for m, v in real.items()])


_G8 = ('Set5', 'Set14', 'BSD100', 'Urban100', 'Manga109')

#: Every published figure the table knows. DCLS: only the values confirmed outside the paper PDF.
FIGURES: tuple[Figure, ...] = tuple(
    _burst('BSRT-S', BSRT, {'PSNR': 42.72, 'SSIM': 0.971}, {'AlignedPSNR': 48.48, 'SSIM': 0.985})
    + _burst('BSRT-L', BSRT, {'PSNR': 43.62, 'SSIM': 0.975}, {'AlignedPSNR': 48.57, 'SSIM': 0.986})
    + _burst('EBSR', EBSR, {'PSNR': 43.0}, {'AlignedPSNR': 48.2}, approx=True)
    + _burst('Burstormer, synthetic', BURSTORMER, {'PSNR': 42.83, 'SSIM': 0.973}, {})
    + _burst('Burstormer, real', BURSTORMER, {}, {'AlignedPSNR': 48.82, 'SSIM': 0.986})
    + _burst('DBSR', DBSR, {'PSNR': 39.09, 'LPIPS': 0.084}, {'AlignedPSNR': 47.76, 'LPIPS': 0.030})
    + _burst('BIPNet', BIPNET, {'PSNR': 41.93, 'SSIM': 0.960}, {'AlignedPSNR': 48.49, 'SSIM': 0.985})
    + [Figure('DCLS ×2, setting 1', 'BSD100', 'PSNR-Y', 32.04, DCLS_T1),
       Figure('DCLS ×2, setting 1', 'BSD100', 'SSIM-Y', 0.8907, DCLS_T1),
       Figure('DCLS ×2, setting 1', 'Manga109', 'PSNR-Y', 38.31, DCLS_T1),
       Figure('DCLS ×3, setting 1', 'BSD100', 'PSNR-Y', 29.07, DCLS_T1),
       Figure('DCLS ×3, setting 1', 'BSD100', 'SSIM-Y', 0.7956, DCLS_T1)]
    + [Figure('DCLS ×4, setting 1', ds, m, v, DCLS_T1)
       for ds, psnr, ssim in (('Set5', 32.12, 0.8890), ('Set14', 28.54, 0.7728), ('BSD100', 27.60, 0.7285),
                              ('Urban100', 26.15, 0.7809))
       for m, v in (('PSNR-Y', psnr), ('SSIM-Y', ssim))]
    + [Figure('DCLS ×2, setting 2', 'DIV2KRK', 'PSNR-Y', 32.75, DCLS_T2),
       Figure('DCLS ×2, setting 2', 'DIV2KRK', 'SSIM-Y', 0.9094, DCLS_T2),
       Figure('DCLS ×4, setting 2', 'DIV2KRK', 'PSNR-Y', 28.99, DCLS_T2),
       Figure('DCLS ×4, setting 2', 'DIV2KRK', 'SSIM-Y', 0.7946, DCLS_T2)])

#: Dataset names (lower case, letters and digits only) -> the published dataset.
_DATASETS = {'syntheticburstval': 'SyntheticBurstVal', 'burstsrval': 'BurstSR val', 'div2krk': 'DIV2KRK',
             'set5': 'Set5', 'set14': 'Set14', 'bsd100': 'BSD100', 'b100': 'BSD100', 'bsds100': 'BSD100',
             'urban100': 'Urban100', 'manga109': 'Manga109'}
_KINDS = {'calculate_psnr_linear': 'PSNR', 'calculate_ssim_linear': 'SSIM', 'calculate_lpips': 'LPIPS',
          'calculate_aligned_psnr': 'AlignedPSNR'}
_Y_KINDS = {'calculate_psnr_matlab': 'PSNR', 'calculate_psnr': 'PSNR', 'calculate_ssim_matlab': 'SSIM',
            'calculate_ssim': 'SSIM'}
_Y_DEFAULT = {'calculate_psnr_matlab': True, 'calculate_ssim_matlab': True, 'calculate_psnr': False,
              'calculate_ssim': False}


def _with_defaults(net_type: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """The run's network options completed with the registered constructor's defaults (none when the type is not
    registered in this installation)."""
    from codes.utils.registry import ARCH_REGISTRY
    full: dict[str, Any] = {}
    try:
        cls = ARCH_REGISTRY.get(net_type)
    except (KeyError, ImportError):  # not registered here, or its module does not import
        cls = None
    if cls is not None:
        for name, p in inspect.signature(cls).parameters.items():
            if p.default is not inspect.Parameter.empty:
                full[name] = p.default
    full.update(options)
    return full


def _same(a: Any, b: Any) -> bool:
    """Equal option values: lists and tuples element by element, a bool only equal to the same bool."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    return a == b


def network_variant(net_type: str, options: Mapping[str, Any]) -> str | None:
    """The key of :data:`NETWORKS` that ``network_g`` (``type`` and its other options) is, or None."""
    full = _with_defaults(net_type, options)
    for label, spec in NETWORKS.items():
        # an option the run leaves out and no registered constructor defines cannot be checked: it passes
        if spec['type'] == net_type and all(k not in full or _same(full[k], v) for k, v in spec['options'].items()):
            return label
    return None


def dataset_id(name: str) -> str | None:
    """The published dataset a result folder's dataset name denotes (``SyntheticBurstVal``, ``BurstSR_val``,
    ``Set5``, ``B100``, ...), or None (``SyntheticBurstVal_sample`` is not SyntheticBurstVal)."""
    return _DATASETS.get(re.sub(r'[^a-z0-9]', '', name.lower()))


def metric_kind(options: Mapping[str, Any] | None) -> str | None:
    """The published metric a metric's options compute: ``PSNR``, ``SSIM``, ``LPIPS`` (linear RGB, burst SR),
    ``AlignedPSNR``, ``PSNR-Y`` / ``SSIM-Y`` (Y channel); None for another metric or unknown options."""
    if not isinstance(options, Mapping):
        return None
    t = options.get('type')
    if t in _KINDS:
        return _KINDS[t]
    if t in _Y_KINDS:
        return f'{_Y_KINDS[t]}-Y' if options.get('test_y_channel', _Y_DEFAULT[t]) else f'{_Y_KINDS[t]}-RGB'
    return None


def find_figure(network: str | None, dataset: str | None, metric: str | None) -> Figure | None:
    """The published figure of this network variant, dataset and metric kind, or None."""
    if network is None or dataset is None or metric is None:
        return None
    return next((f for f in FIGURES if (f.network, f.dataset, f.metric) == (network, dataset, metric)), None)
