"""Which network a state_dict belongs to, and its hyper-parameters, read from the key names and tensor shapes.

Lets ``infer.py`` load a checkpoint without being told the architecture: the project's own checkpoints
(``{'params': ..., 'params_ema': ...}``) and the official bare state_dicts carry no configuration, but every
hyper-parameter that changes a tensor shape can be read back from the shapes.
Hyper-parameters that change no shape (BSRT's drop-path rate) are irrelevant at inference.
"""
from __future__ import annotations

import math
import re
from typing import Callable, Mapping

import torch

__all__ = ['detect_family', 'network_options_from_state_dict', 'fitting_network_hint', 'FAMILIES']


def _is_bsrt(sd: Mapping[str, torch.Tensor]) -> bool:
    return all(k in sd for k in ('conv_first.weight', 'fusion.weight', 'conv_last.weight')) and any(
        k.startswith('spynet.') for k in sd) and any(k.startswith('align.') for k in sd)


def _is_ebsr(sd: Mapping[str, torch.Tensor]) -> bool:
    return 'conv_first.weight_v' in sd and any(k.startswith('pcd_align.') for k in sd) and any(
        k.startswith('recon_trunk.') for k in sd)


def _is_dcls(sd: Mapping[str, torch.Tensor]) -> bool:
    return any(k.startswith('Restorer.') for k in sd) and any(k.startswith('Estimator.') for k in sd)


def _is_burstormer(sd: Mapping[str, torch.Tensor]) -> bool:
    return 'conv1.0.weight' in sd and 'out_conv.0.weight' in sd and any(k.startswith('align.alignment0.') for k in sd)


def _is_bipnet(sd: Mapping[str, torch.Tensor]) -> bool:
    from codes.archs.bipnet_arch import is_bipnet_state_dict
    return is_bipnet_state_dict(sd)


def _is_dbsr(sd: Mapping[str, torch.Tensor]) -> bool:
    return 'encoder.init_layer.0.weight' in sd and 'merging.feat_project_layer.0.weight' in sd and any(
        k.startswith('encoder.alignment_net.net.') for k in sd)


def _count(sd: Mapping[str, torch.Tensor], pattern: str) -> int:
    rx = re.compile(pattern)
    found = {int(m.group(1)) for k in sd for m in [rx.match(k)] if m}
    return max(found) + 1 if found else 0


def _bsrt_options(sd: Mapping[str, torch.Tensor]) -> dict:
    """BSRT hyper-parameters from the shapes (``Algolzw/BSRT`` layout)."""
    embed_dim = int(sd['conv_first.weight'].shape[0])
    num_feat = int(sd['conv_last.weight'].shape[1])
    depths = [_count(sd, r'pre_layers\.(\d+)\.')]
    groups = _count(sd, r'layers\.(\d+)\.residual_group\.')
    depths += [_count(sd, rf'layers\.{g}\.residual_group\.blocks\.(\d+)\.') for g in range(groups)]
    firsts = ['pre_layers.0.'] + [f'layers.{g}.residual_group.blocks.0.' for g in range(groups)]
    tables = [sd[f'{p}attn.relative_position_bias_table'] for p in firsts]
    heads = [int(t.shape[1]) for t in tables]
    window = int(round((math.sqrt(tables[0].shape[0]) + 1) / 2))
    mlp_ratio = float(sd['pre_layers.0.mlp.fc1.weight'].shape[0]) / embed_dim
    groups_dcn = int(sd['align.L1_dcnpack.conv_offset_mask.weight'].shape[0]) // (3 * 9)
    opts = {'type': 'BSRT', 'level': None, 'embed_dim': embed_dim, 'depths': depths,
            'num_heads': heads[0] if len(set(heads)) == 1 else heads, 'window_size': window,
            'mlp_ratio': mlp_ratio, 'burst_size': int(sd['fusion.weight'].shape[1]) // num_feat,
            'num_feat': num_feat, 'deformable_groups': groups_dcn, 'drop_path_rate': 0.0}
    from codes.archs.bsrt_arch import BSRT_LEVELS
    for name, level in BSRT_LEVELS.items():
        if (embed_dim, tuple(depths), heads[0]) == (level['embed_dim'], tuple(level['depths']), level['num_heads']) \
                and len(set(heads)) == 1 and window == 8 and mlp_ratio == 2.0 and num_feat == 64:
            opts = {'type': 'BSRT', 'level': name, 'burst_size': opts['burst_size'], 'drop_path_rate': 0.0}
    return opts


def _ebsr_options(sd: Mapping[str, torch.Tensor]) -> dict:
    """EBSR hyper-parameters from the shapes (one non-local block pair per frame, LRSC groups of blocks)."""
    nf = int(sd['conv_first.weight_v'].shape[0])
    non_local = any(k.startswith('fusion.non_local_T.') for k in sd)
    burst_size = (_count(sd, r'fusion\.non_local_T\.(\d+)\.') if non_local
                  else int(sd['fusion.weight_v'].shape[1]) // nf)
    return {'type': 'EBSR', 'n_feats': nf, 'n_resblocks': _count(sd, r'recon_trunk\.0\.0\.body\.(\d+)\.'),
            'n_resgroups': _count(sd, r'recon_trunk\.0\.(\d+)\.'), 'burst_size': burst_size,
            'non_local': non_local, 'front_RBs': _count(sd, r'feature_extraction\.(\d+)\.'),
            'deformable_groups': int(sd['pcd_align.L1_dcnpack.conv_offset_mask.weight'].shape[0]) // (3 * 9)}


def _dcls_options(sd: Mapping[str, torch.Tensor]) -> dict:
    """DCLS hyper-parameters from the shapes (``megvii-research/DCLS-SR`` layout)."""
    from codes.archs.dcls_arch import Estimator, FILTER_STRUCTURES
    nf, in_nc = (int(v) for v in sd['Restorer.conv_first.weight'].shape[:2])
    nf2 = int(sd['Restorer.head1.weight'].shape[0])
    ng = _count(sd, r'Restorer\.body\.(\d+)\.')
    nb = _count(sd, r'Restorer\.body\.0\.body\.(\d+)\.')
    n_dec = _count(sd, r'Estimator\.dec\.(\d+)\.')
    chans_in = [in_nc] + [Estimator.G_CHAN] * (n_dec - 1)
    chans_out = [Estimator.G_CHAN] * (n_dec - 1) + [in_nc]
    sizes = tuple(int(round(math.sqrt(sd[f'Estimator.dec.{i}.weight'].shape[0] / (ci * co))))
                  for i, (ci, co) in enumerate(zip(chans_in, chans_out)))
    kernel_size = next((k for k, v in FILTER_STRUCTURES.items() if tuple(v) == sizes), None)
    if kernel_size is None:
        raise KeyError(f'Estimator.dec filter sizes {sizes} match no kernel size of {dict(FILTER_STRUCTURES)}')
    if 'Restorer.upscale.4.weight' in sd:
        scale = 4
    else:
        out0 = int(sd['Restorer.upscale.0.weight'].shape[0])
        scale = 1 if out0 == in_nc and 'Restorer.upscale.2.weight' not in sd else int(round(math.sqrt(out0 / nf)))
    return {'type': 'DCLS', 'scale': scale, 'kernel_size': kernel_size, 'nf': nf, 'nb': nb, 'ng': ng,
            'in_nc': in_nc, 'reduction': nf // nf2, 'input_para': int(sd['Estimator.tail.4.weight'].shape[0])}


def _burstormer_options(sd: Mapping[str, torch.Tensor]) -> dict:
    """Burstormer track and width from the keys and shapes (the two official key lists)."""
    from codes.archs.burstormer_arch import burstormer_track_of
    track = burstormer_track_of(sd)
    if track is None:
        raise KeyError('back_projection1.feat_fusion.0.weight (synthetic) or '
                       'back_projection1.diff_fusion.weight (real)')
    nf = int(sd['conv1.0.weight'].shape[0])
    groups = int(sd['align.alignment0.offset_conv.weight'].shape[0]) // (3 * 9)
    if (nf, groups) == (48, 8):
        return {'type': 'Burstormer', 'track': track}
    return {'type': 'Burstormer', 'track': track, 'num_features': nf, 'deformable_groups': groups}


def _bipnet_options(sd: Mapping[str, torch.Tensor]) -> dict:
    """BIPNet block counts from the keys (width and burst size are fixed; the published counts are the defaults)."""
    units = _count(sd, r'encoder\.0\.module\.(\d+)\.') - 1  # RGCA units, then the block's conv
    stages = ('feat_ext1', 'feat_ext2', 'feat_ext3', 'feat_ext5', 'feat_ext6')
    counts = {'num_blocks': _count(sd, r'encoder\.(\d+)\.'), 'num_units': units,
              'unet_blocks': [_count(sd, rf'UNet\.0\.{s}\.(\d+)\.') for s in stages],
              'unet_units': _count(sd, r'UNet\.0\.feat_ext1\.0\.module\.(\d+)\.') - 1}
    published = {'num_blocks': 3, 'num_units': 3, 'unet_blocks': [2, 2, 1, 2, 2], 'unet_units': 2}
    if _count(sd, r'feat_ext1\.(\d+)\.') != counts['num_blocks'] or int(sd['conv2.0.weight'].shape[1]) != 14:
        raise KeyError('encoder and feat_ext1 block counts differ, or conv2.0.weight is not for 14 frames')
    return {'type': 'BIPNet', **{k: v for k, v in counts.items() if v != published[k]}}


def _dbsr_options(sd: Mapping[str, torch.Tensor]) -> dict:
    """DBSR widths and depths from the shapes (``goutamgmb/deep-burst-sr`` layout); only those that differ from
    the published ``dbsrnet_cvpr2021`` are written. The track cannot be read (same network for both)."""
    post = int(sd['decoder.post_res_layers.0.conv1.0.weight'].shape[0]) if 'decoder.post_res_layers.0.conv1.0.weight' \
        in sd else int(sd['decoder.predictor.0.weight'].shape[1])
    up = int(sd['decoder.upsample_layer.conv_layer.0.weight'].shape[0])
    found = {
        'enc_init_dim': int(sd['encoder.init_layer.0.weight'].shape[0]),
        'enc_num_res_blocks': _count(sd, r'encoder\.res_layers\.(\d+)\.'),
        'enc_out_dim': int(sd['encoder.out_layer.0.weight'].shape[0]),
        'dec_init_conv_dim': int(sd['decoder.init_layer.0.weight'].shape[0]),
        'dec_num_pre_res_blocks': _count(sd, r'decoder\.pre_res_layers\.(\d+)\.'),
        'dec_post_conv_dim': post,
        'dec_num_post_res_blocks': _count(sd, r'decoder\.post_res_layers\.(\d+)\.'),
        'upsample_factor': int(round(math.sqrt(up / post))),
        'offset_feat_dim': int(sd['merging.offset_feat_extractor.0.0.weight'].shape[0]),
        'weight_pred_proj_dim': int(sd['merging.feat_project_layer.0.weight'].shape[0]),
        'num_offset_feat_extractor_res': _count(sd, r'merging\.offset_feat_extractor\.(\d+)\.') - 1,
        'num_weight_predictor_res': _count(sd, r'merging\.weight_predictor\.(\d+)\.') - 2,
        'icnrinit': 'decoder.upsample_layer.conv_layer.0.bias' not in sd,
    }
    import inspect
    from codes.archs.dbsr_arch import DBSR
    defaults = {k: p.default for k, p in inspect.signature(DBSR).parameters.items()}
    return {'type': 'DBSR', **{k: v for k, v in found.items() if v != defaults[k]}}


#: family -> (recogniser, options reader or None when the family has no reader yet).
FAMILIES: dict[str, tuple[Callable[[Mapping[str, torch.Tensor]], bool],
                          Callable[[Mapping[str, torch.Tensor]], dict] | None]] = {
    'BSRT': (_is_bsrt, _bsrt_options),
    'EBSR': (_is_ebsr, _ebsr_options),
    'DCLS': (_is_dcls, _dcls_options),
    'Burstormer': (_is_burstormer, _burstormer_options),
    'BIPNet': (_is_bipnet, _bipnet_options),
    'DBSR': (_is_dbsr, _dbsr_options),
}


def detect_family(sd: Mapping[str, torch.Tensor]) -> str | None:
    """'BSRT', 'EBSR', 'DCLS', 'Burstormer', 'BIPNet', 'DBSR' or None, from the key names of a bare state_dict."""
    for name, (recognise, _) in FAMILIES.items():
        if recognise(sd):
            return name
    return None


def network_options_from_state_dict(sd: Mapping[str, torch.Tensor], source: str = 'checkpoint') -> dict:
    """A ``network_g`` block (``type`` + constructor keys) that builds a network this state_dict fits.

    Raises ``ValueError`` naming ``source`` when the keys belong to no known architecture.
    """
    family = detect_family(sd)
    if family is None:
        keys = list(sd)[:4]
        raise ValueError(f'{source}: its keys belong to no known architecture ({", ".join(FAMILIES)}); first keys '
                         f'{keys}. Name the architecture with --arch / network_g if it is one of ours.')
    reader = FAMILIES[family][1]
    if reader is None:
        raise ValueError(f'{source}: a {family} checkpoint, but its hyper-parameters cannot be read from it; give '
                         f'them with network_g in an option file')
    try:
        return reader(sd)
    except (KeyError, IndexError, ZeroDivisionError) as exc:
        raise ValueError(f'{source}: looks like {family} but a tensor the hyper-parameters are read from is '
                         f'missing or malformed ({type(exc).__name__}: {exc})') from None


def fitting_network_hint(sd: Mapping[str, torch.Tensor]) -> str:
    """' Its keys and shapes fit network_g {...}.' when the architecture can be read from ``sd``, else '' (the
    ``describe`` of ``codes.utils.checkpoint.load_network``)."""
    try:
        return f' Its keys and shapes fit network_g {network_options_from_state_dict(sd)}.'
    except ValueError:
        return ''
