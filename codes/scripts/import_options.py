"""Convert an official configuration into an option file of ours with the same recipe.

``python -m codes.scripts.import_options FILE_OR_COMMAND -o options/x.yml`` reads either

* an official DCLS option file (the MMSR schema of megvii-research/DCLS-SR: ``codes/config/DCLS/options``:
  ``network_G.which_model_G``, ``degradation``, ``lr_G``/``lr_E``, ``niter``, ``lr_steps``, ``dataroot_GT``, a global
  ``batch_size``, ``gpu_ids``, ...), train or test, or
* an official BSRT ``main.py`` command line (Algolzw/BSRT: ``code/{synthetic,real}/bsrt/main.py``: ``--n_GPUs --lr
  --decay --batch_size --burst_size --patch_size --model_level --fp16 --pre_train ...``), given as the command text
  or as a file holding it.

The global batch is split over the GPUs (``batch_size_per_gpu``), epochs become iterations for the dataset size
the recipe states (``--dataset-size`` overrides it), and everything that has no counterpart is listed with the
reason. The result is validated with the same front end as train.py (data folders excepted: they are the
paths of the original file, to be pointed at your copies).
"""
from __future__ import annotations

import argparse
import math
import shlex
import sys
from pathlib import Path
from typing import Any, Sequence

import yaml

from codes.utils.errors import UserError, run_cli
from codes.utils.options import OptionError, OptionErrors, load_yaml, validate_options

__all__ = ['convert_dcls', 'convert_bsrt_command', 'import_options', 'main']

#: training-set sizes of the official recipes (one epoch), and how the original loaders round an epoch
EPOCH_SAMPLES = {'synthetic': 46839, 'real': 5405}
_LOSSES = {'l1': {'type': 'L1Loss'}, 'l2': {'type': 'MSELoss'}, 'cb': {'type': 'CharbonnierLoss', 'eps': 1e-3}}


class _Notes:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def skip(self, key: str, why: str) -> None:
        self.lines.append(f'{key}: not mapped ({why})')


def _per_gpu(batch: int, gpus: int, key: str, notes: _Notes) -> int:
    if batch % gpus:
        notes.skip(key, f'the global batch {batch} does not split evenly over {gpus} GPUs; '
                        f'{max(1, batch // gpus)} per GPU is used')
    return max(1, batch // gpus)


# ------------------------------------------------------------------------------------------------ DCLS (MMSR)
def _dcls_dataset(src: dict, phase: str, scale: int, gpus: int, deg: dict, notes: _Notes) -> dict:
    where = f'datasets.{phase}'
    mode = src.get('mode')
    out: dict[str, Any] = {'name': src.get('name', phase)}
    gt = src.get('dataroot_GT')
    if mode == 'GT':
        out.update(type='BlindSRHRDataset', dataroot_gt=gt, scale=scale)
        if src.get('GT_size') is not None:
            out['gt_size'] = int(src['GT_size'])
        for theirs, ours in (('use_flip', 'use_hflip'), ('use_rot', 'use_rot')):
            if theirs in src:
                out[ours] = bool(src[theirs])
        out['kernel_size'] = int(deg.get('ksize', 21))
        for k in ('sig_min', 'sig_max', 'rate_iso', 'random_disturb', 'noise', 'noise_high'):
            if deg.get(k) is not None:
                out[k] = deg[k]
        if src.get('batch_size') is not None:
            out['batch_size_per_gpu'] = _per_gpu(int(src['batch_size']), gpus, f'{where}.batch_size', notes)
        if src.get('n_workers') is not None:
            out['num_worker_per_gpu'] = int(src['n_workers'])
        if 'LR_size' in src:
            notes.skip(f'{where}.LR_size', 'unused by the original GT dataset too: the LR patch is GT_size / scale')
        if 'use_shuffle' in src:
            out['shuffle'] = bool(src['use_shuffle'])
    elif mode == 'LQGT':
        out.update(type='PairedBlindSRDataset', dataroot_gt=gt, dataroot_lq=src.get('dataroot_LQ'), scale=scale)
    else:
        raise OptionError(f'{where}.mode', f'mode {mode!r} has no counterpart (GT and LQGT are converted)')
    if isinstance(gt, str) and gt.endswith('.lmdb'):
        out['io_backend'] = {'type': 'lmdb'}  # the legacy MMSR layout is read as it is (README, LMDB storage)
    if src.get('color') not in (None, 'RGB'):
        notes.skip(f'{where}.color', f"only RGB is supported, got {src['color']!r}")
    return out


def convert_dcls(src: dict, notes: _Notes | None = None) -> dict:
    """An official DCLS option dict -> our options (train when it has a ``train`` block, else test)."""
    notes = notes or _Notes()
    if src.get('model') not in (None, 'blind'):
        raise OptionError('model', f"model {src['model']!r} is not DCLS's blind model")
    net = src.get('network_G') or {}
    if net.get('which_model_G') != 'DCLS':
        raise OptionError('network_G.which_model_G', f"expected DCLS, got {net.get('which_model_G')!r}")
    scale = int(src.get('scale', 4))
    gpus = len(src.get('gpu_ids') or [0]) or 1
    is_train = isinstance(src.get('train'), dict)
    deg = src.get('degradation') or {}
    setting = dict(net.get('setting') or {})
    out: dict[str, Any] = {'name': src.get('name', 'dcls'), 'model_type': 'BlindSRModel', 'scale': scale,
                           'num_gpu': 'auto', 'manual_seed': int((src.get('train') or {}).get('manual_seed', 0))}
    network = {'type': 'DCLS', 'scale': scale}
    for k in ('kernel_size', 'nf', 'nb', 'ng', 'input_para', 'in_nc', 'reduction'):
        if k in setting:
            network[k] = setting.pop(k)
    for k in setting:
        notes.skip(f'network_G.setting.{k}', 'not a constructor argument of our DCLS')
    out['network_g'] = network
    if 'pca_matrix_path' in src:
        notes.skip('pca_matrix_path', 'the kernel code is not PCA-projected here: the estimator is given the '
                                      'kernel itself')
    for k in ('random_kernel', 'code_length'):
        if k in deg:
            notes.skip(f'degradation.{k}', 'kernels are always random here, with no PCA code')
    datasets = {}
    for phase, block in (src.get('datasets') or {}).items():
        key = phase if is_train else f"test_{phase[4:] if phase.startswith('test') else phase}".rstrip('_')
        datasets[key] = _dcls_dataset(block, phase, scale, gpus, deg, notes)
    out['datasets'] = datasets
    path = src.get('path') or {}
    out['path'] = {'pretrain_network_g': path.get('pretrain_model_G'), 'strict_load_g': bool(path.get(
        'strict_load', True))}
    if path.get('resume_state'):
        notes.skip('path.resume_state', "MMSR training states cannot be resumed here; start from pretrain_model_G")
    crop = src.get('crop_border') if not is_train else None
    crop = scale if crop is None else int(crop)
    out['val'] = {'metrics': {'psnr': {'type': 'calculate_psnr_matlab', 'crop_border': crop, 'test_y_channel': True},
                              'ssim': {'type': 'calculate_ssim_matlab', 'crop_border': crop, 'test_y_channel': True}}}
    if src.get('suffix'):
        notes.skip('suffix', 'image names are kept as they are')
    if is_train:
        t = src['train']
        optim = {'type': 'Adam', 'lr': float(t.get('lr_G', 4e-4)),
                 'betas': [float(t.get('beta1', 0.9)), float(t.get('beta2', 0.99))],
                 'weight_decay': float(t.get('weight_decay_G') or 0)}
        train: dict[str, Any] = {'total_iter': int(float(t['niter'])), 'optim_g': optim}
        if t.get('lr_E') is not None:
            train['lr_estimator'] = float(t['lr_E'])
        scheme = t.get('lr_scheme', 'MultiStepLR')
        if scheme == 'MultiStepLR':
            sched = {'type': 'MultiStepLR', 'milestones': [int(float(m)) for m in t.get('lr_steps') or []],
                     'gamma': float(t.get('lr_gamma', 0.5))}
            if t.get('restarts'):  # MMSR's MultiStepLR_Restart with restarts: BasicSR's MultiStepRestartLR
                sched.update(type='MultiStepRestartLR', restarts=[int(r) for r in t['restarts']],
                             restart_weights=[float(w) for w in t.get('restart_weights') or [1] * len(t['restarts'])])
            train['scheduler'] = sched
        elif scheme == 'CosineAnnealingLR_Restart':
            periods = [int(float(p)) for p in t.get('T_period') or []]
            train['scheduler'] = {'type': 'CosineAnnealingRestartLR', 'periods': periods,
                                  'restart_weights': [float(w) for w in t.get('restart_weights') or [1] * len(periods)],
                                  'eta_min': float(t.get('eta_min', 0))}
        else:
            notes.skip('train.lr_scheme', f'{scheme!r} has no counterpart; no scheduler is set')
        if t.get('warmup_iter') is not None:
            train['warmup_iter'] = int(t['warmup_iter'])
        crit = str(t.get('pixel_criterion', 'l1')).lower()
        if crit in _LOSSES:
            train['pixel_opt'] = {**_LOSSES[crit], 'loss_weight': float(t.get('pixel_weight', 1.0))}
        else:
            notes.skip('train.pixel_criterion', f'{crit!r} has no counterpart; L1 is used')
        train['kernel_opt'] = {'type': 'DCLSKernelLoss', 'loss_weight': 1.0}
        out['train'] = train
        if t.get('val_freq') is not None:
            out['val']['val_freq'] = int(float(t['val_freq']))
        out['val'].update(save_img=True, max_save_img=8)
        lg = src.get('logger') or {}
        out['logger'] = {'print_freq': int(lg.get('print_freq', 100)),
                         'save_checkpoint_freq': int(float(lg.get('save_checkpoint_freq', 5000))),
                         'use_tb_logger': bool(src.get('use_tb_logger', True))}
    if gpus > 1:
        notes.lines.append(f'gpu_ids: {gpus} GPUs; start with torchrun --nproc_per_node={gpus} train.py -opt ...')
    return out


# ------------------------------------------------------------------------------------------------ BSRT (main.py)
def _bsrt_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog='main.py', add_help=False)
    p.add_argument('--n_GPUs', type=int, default=1)
    p.add_argument('--lr', type=float, default=1e-4)
    p.add_argument('--decay', default='200-400')
    p.add_argument('--gamma', type=float, default=0.5)
    p.add_argument('--epochs', type=int, default=None)
    p.add_argument('--batch_size', type=int, default=8)
    p.add_argument('--burst_size', type=int, default=14)
    p.add_argument('--patch_size', type=int, default=256)
    p.add_argument('--model', default='BSRT')
    p.add_argument('--model_level', default='S')
    p.add_argument('--fp16', action='store_true')
    p.add_argument('--swinfeature', action='store_true')
    p.add_argument('--pre_train', default='')
    p.add_argument('--loss', default='1*L1')
    p.add_argument('--save', default=None)
    p.add_argument('--root', default=None)
    p.add_argument('--seed', type=int, default=None)
    return p


def convert_bsrt_command(command: str, track: str = 'auto', dataset_size: int | None = None,
                         notes: _Notes | None = None) -> dict:
    """An official BSRT ``main.py`` command line -> our training options (synthetic or real track)."""
    notes = notes or _Notes()
    words = shlex.split(command.replace('\\\n', ' '))
    script = next((w for w in words if w.endswith('.py')), '')
    flags = words[words.index(script) + 1:] if script else [w for w in words if w not in ('python', 'python3')]
    args, unknown = _bsrt_parser().parse_known_args(flags)
    for u in unknown:
        if u.startswith('--'):
            notes.skip(u, 'not a flag this converter knows')
    if track == 'auto':
        track = 'real' if '/real/' in script or (args.pre_train and args.patch_size <= 80) else 'synthetic'
        origin = 'the script path' if '/real/' in script else 'the flags'
        notes.lines.append(f'track: {track} (from {origin}; --track overrides)')
    if args.model != 'BSRT':
        raise OptionError('--model', f'only BSRT is converted, got {args.model!r}')
    if args.model_level not in ('S', 'L'):
        raise OptionError('--model_level', f'expected S or L, got {args.model_level!r}')
    gpus = max(1, args.n_GPUs)
    per_gpu = _per_gpu(args.batch_size, gpus, '--batch_size', notes)
    size = dataset_size or EPOCH_SAMPLES[track]
    global_batch = per_gpu * gpus
    # one epoch: the synthetic trainer pads its DistributedSampler (ceil), the real one drops the last batch (floor)
    ipe = math.ceil(size / global_batch) if track == 'synthetic' else max(1, size // global_batch)
    epochs = args.epochs or (300 if track == 'synthetic' else 100)
    try:
        decay = [int(e) for e in str(args.decay).split('-') if e]
    except ValueError:
        raise OptionError('--decay', f'expected epochs such as 150-300, got {args.decay!r}') from None
    notes.lines.append(f'epochs -> iterations: {size} samples / global batch {global_batch} = {ipe} iterations per '
                       f'epoch; {epochs} epochs = {epochs * ipe} iterations')
    network = {'type': 'BSRT', 'level': args.model_level, 'burst_size': args.burst_size}
    if not args.swinfeature:
        notes.skip('--swinfeature (absent)', 'our BSRT always uses the Swin feature extractor of the paper')
    loss = args.loss.split('*')[-1].upper()
    train: dict[str, Any] = {
        'total_iter': epochs * ipe, 'precision': 'fp16' if args.fp16 else 'fp32',
        'optim_g': {'type': 'Adam', 'lr': args.lr, 'betas': [0.9, 0.999], 'eps': 1e-8, 'weight_decay': 0},
        'scheduler': {'type': 'MultiStepLR', 'milestones': [e * ipe for e in decay], 'gamma': args.gamma},
    }
    if track == 'synthetic':
        train['pixel_opt'] = {'L1': {'type': 'L1Loss'}, 'MSE': {'type': 'MSELoss'},
                              'CB': {'type': 'CharbonnierLoss', 'eps': 1e-3}}.get(loss, {'type': 'L1Loss'})
        if loss not in ('L1', 'MSE', 'CB'):
            notes.skip('--loss', f'{args.loss!r} has no counterpart; L1 is used')
        if not args.pre_train:
            train['freeze'] = {'patterns': ['spynet', 'dcnpack'], 'iters': 4 * ipe}  # epochs 1-4, as the original
        datasets = {
            'train': {'name': 'zurich_raw2rgb', 'type': 'SyntheticBurstDataset',
                      'dataroot': 'datasets/zurich-raw-to-rgb',
                      'burst_size': args.burst_size, 'crop_size': args.patch_size, 'channel_order': 'bgr',
                      'batch_size_per_gpu': per_gpu, 'num_worker_per_gpu': min(per_gpu, 8)},
            'val': {'name': 'SyntheticBurstVal', 'type': 'SyntheticBurstValDataset',
                    'dataroot': 'datasets/SyntheticBurstVal', 'burst_size': args.burst_size},
        }
        model_type = 'BurstSRModel'
        metrics = {'psnr': {'type': 'calculate_psnr_linear', 'crop_border': 40},
                   'ssim': {'type': 'calculate_ssim_linear', 'crop_border': 40}}
    else:
        train['pixel_opt'] = {'type': 'AlignedL1Loss', 'boundary_ignore': 40, 'sr_factor': 4, 'flow_estimator': 'auto',
                              'pwcnet_path': 'experiments/pretrained_models/pwcnet-network-default.pth'}
        if loss != 'L1':
            notes.skip('--loss', 'the real track trains with AlignedL1 (PWC-Net alignment), as the original')
        datasets = {
            'train': {'name': 'BurstSR_train', 'type': 'BurstSRDataset', 'dataroot': 'datasets/burstsr',
                      'split': 'train', 'burst_size': args.burst_size, 'crop_size': args.patch_size,
                      'center_crop': True, 'random_flip': True, 'batch_size_per_gpu': per_gpu,
                      'num_worker_per_gpu': 4},
            'val': {'name': 'BurstSR_val', 'type': 'BurstSRDataset', 'dataroot': 'datasets/burstsr', 'split': 'val',
                    'burst_size': args.burst_size, 'crop_size': args.patch_size, 'center_crop': True},
        }
        model_type = 'RealBurstSRModel'
        metrics = {'psnr': {'type': 'calculate_aligned_psnr', 'crop_border': 40}}
    out = {'name': f'BSRT_{args.model_level}_{track}_imported', 'model_type': model_type, 'scale': 4,
           'num_gpu': 'auto', 'manual_seed': 1 if args.seed is None else args.seed,
           'datasets': datasets, 'network_g': network,
           'path': {'pretrain_network_g': args.pre_train or None, 'strict_load_g': True},
           'train': train,
           'val': {'val_freq': ipe, 'save_img': True, 'max_save_img': 4, 'metrics': metrics},
           'logger': {'print_freq': 100, 'save_checkpoint_freq': ipe, 'use_tb_logger': True}}
    if args.save:
        notes.skip('--save', 'runs are written to experiments/<name>; set name instead')
    if args.root:
        notes.skip('--root', f'data folders are datasets.*.dataroot (set to the README layout; was {args.root})')
    if gpus > 1:
        notes.lines.append(f'--n_GPUs {gpus}: start with torchrun --nproc_per_node={gpus} train.py -opt ...')
    return out


# ------------------------------------------------------------------------------------------------ entry point
def import_options(source: str, track: str = 'auto', dataset_size: int | None = None) -> tuple[dict, list[str]]:
    """Convert ``source`` (a DCLS option file, a file holding a BSRT command line, or the command itself);
    returns (our options, the notes on what was not mapped)."""
    notes = _Notes()
    path = Path(source)
    if path.is_file():
        text = path.read_text(encoding='utf-8')
        if path.suffix in ('.yml', '.yaml'):
            return convert_dcls(load_yaml(path), notes), notes.lines
        source = text
    if '--' not in source:
        raise UserError(f'{source!r}: neither an option file (.yml) nor a BSRT command line (main.py --flags ...)')
    return convert_bsrt_command(source, track, dataset_size, notes), notes.lines


def _check(opt: dict, out: str) -> list[str]:
    """Validate like train.py/test.py; data folders that do not exist here are reported, not fatal."""
    try:
        validate_options(opt, out, is_train='train' in opt)
    except OptionError as exc:
        errors = OptionErrors.flatten(exc)
        fatal = [e for e in errors if 'does not exist' not in e.detail]
        OptionErrors.raise_all(fatal)
        return [f'{e.where}: {e.detail.split(".")[0]} here; point it at your copy' for e in errors]
    return []


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('source', help='an official DCLS option file, or a BSRT main.py command line (or a file with it)')
    p.add_argument('-o', '--output', required=True, help='the option file to write')
    p.add_argument('--track', choices=['auto', 'synthetic', 'real'], default='auto', help='BSRT: which recipe')
    p.add_argument('--dataset-size', type=int, default=None,
                   help='BSRT: samples per epoch (default: 46839 synthetic, 5405 real, as the official recipes)')
    args = p.parse_args(argv)
    opt, notes = import_options(args.source, args.track, args.dataset_size)
    notes += _check(opt, args.output)
    head = f'# Converted from {args.source} by codes.scripts.import_options\n'
    if notes:
        head += ''.join(f'# - {n}\n' for n in notes)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(head + yaml.safe_dump(opt, sort_keys=False), encoding='utf-8')
    for n in notes:
        print(f'note: {n}', file=sys.stderr)
    print(f'wrote {args.output}')
    return 0


if __name__ == '__main__':
    run_cli(main, 'import_options')
