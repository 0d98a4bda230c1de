"""Training pipeline: options -> experiment folder and logging -> data -> model -> iteration loop.

``python train.py -opt options/train_synthetic.yml`` (single process) and ``torchrun --nproc_per_node=N train.py
-opt ...`` (distributed; detected from the environment) both end up in :func:`train_pipeline`, as does the
``bsr-train`` console script. ``--print-options`` prints the resolved options and exits; ``--dry-run`` builds the
data and the model, runs one training step (and one validation sample per validation set) and exits.
"""
from __future__ import annotations

import logging
import os
import random
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch

from codes.data import build_dataset
from codes.data.loader import ShardSampler, TrainSampler, build_dataloader
from codes.models import build_model
from codes.scripts.sample_data import prepare_from_options
from codes.utils import dist as du
from codes.utils.checkpoint import STATE_KEYS, CheckpointError, extract_state_dict, find_resume_state, load_file
from codes.utils.logger import append_jsonl, build_trackers, format_options, setup_logging
from codes.utils.options import OptionError, check_limit, dump_yaml, parse_options, print_options
from codes.visualization.plots import SCALARS_FILE, plot_metrics

__all__ = ['train_pipeline', 'dry_run', 'set_random_seed', 'validate', 'limit_count', 'ValidationCallback']

#: ``callback(current_iter, results)`` with ``results`` = {val set name: mean metrics}; a true return value stops
#: the training after this validation (no final checkpoint or validation follows).
ValidationCallback = Callable[[int, dict[str, dict[str, float]]], bool]

logger = logging.getLogger('codes.train')


def set_random_seed(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def _prepare_experiment(opt: dict, resuming: bool, auto_resume: bool = False, skipped: list | None = None) -> None:
    """Create the experiment folders; refuse to start afresh over a run that holds checkpoints.

    ``skipped`` lists the (state file, reason) pairs that ``--auto_resume`` could not use.
    """
    path = opt['path']
    states = Path(path['training_states'])
    if not resuming and states.is_dir() and any(states.glob('*.state')):
        if auto_resume:
            count = len(list(states.glob('*.state')))
            why = f' (newest: {skipped[0][0].name}: {skipped[0][1]})' if skipped else ''
            raise CheckpointError(f'--auto_resume: none of the {count} training state(s) in {states} can be resumed'
                                  f'{why}; nothing was overwritten. Move them away to start afresh, or choose '
                                  'another name')
        raise OptionError('name', f"experiment folder {path['experiments_root']} already holds training states. "
                          'Continue it with --auto_resume, or choose another name; nothing was overwritten.',
                          opt.get('opt_file'))
    for key in ('experiments_root', 'models', 'training_states', 'visualization'):
        Path(path[key]).mkdir(parents=True, exist_ok=True)


def limit_count(total: int, limit: int | float | None, where: str, file: str | None = None) -> int:
    """How many of ``total`` batches (or samples) a ``limit_*_batches`` option keeps.

    A float in (0, 1] is a fraction (at least one is kept), an int >= 1 a count (at most ``total``), None all.
    """
    try:
        limit = check_limit(limit, where)
    except OptionError as exc:
        raise exc.with_file(file) if file else exc from None
    if limit is None:
        return total
    if isinstance(limit, float):
        return max(1, int(total * limit)) if total else 0
    return min(total, limit)


def _resume_state(opt: dict, auto_resume: bool, skipped: list | None = None) -> tuple[dict, Path] | None:
    explicit = opt['path']['resume_state']
    if explicit:
        state = load_file(explicit)
        missing = [k for k in STATE_KEYS if not isinstance(state, Mapping) or k not in state]
        if missing:
            try:
                extract_state_dict(state, source=str(explicit))
                hint = '; it holds network weights: give it as path.pretrain_network_g to start from them'
            except CheckpointError:
                hint = ''
            raise CheckpointError(f'{explicit} (path.resume_state): not a training state (no {", ".join(missing)}); '
                                  f'training states are the <iter>.state files under training_states/{hint}')
        weights = Path(opt['path']['models']) / f"net_g_{state['iter']}.pth"
        if not weights.is_file():
            raise CheckpointError(f'{explicit} (path.resume_state): the weights of iteration {state["iter"]}, '
                                  f'{weights}, are missing')
        return state, weights
    if auto_resume:
        found = find_resume_state(opt['path']['training_states'], opt['path']['models'], skipped)
        if found is not None:
            return found[0], found[2]
    return None


def _val_loaders(opt: dict, rank: int, world: int) -> dict[str, Any]:
    loaders = {}
    for phase, ds_opt in opt['datasets'].items():
        if phase.startswith('val'):
            ds = build_dataset(ds_opt, f'datasets.{phase}')
            n = limit_count(len(ds), opt['val']['limit_val_batches'], 'val.limit_val_batches',
                            opt.get('opt_file'))  # the first n samples (validation batches hold one sample)
            loaders[ds_opt['name']] = build_dataloader(ds, ds_opt, ShardSampler(n, world, rank),
                                                       opt['manual_seed'], rank, train=False)
            logger.info('Validation set %s: %d samples%s', ds_opt['name'], n,
                        f' (of {len(ds)}, val.limit_val_batches)' if n != len(ds) else '')
    return loaders


def validate(model: Any, loaders: dict, opt: dict, current_iter: int, tb: Any) -> dict[str, dict[str, float]]:
    """Validate on every val set; rank 0 logs, writes TensorBoard scalars and a metrics.jsonl line per set.

    Returns {val set name: mean metrics} (the same on every rank).
    """
    val = opt['val']
    results = {}
    for name, loader in loaders.items():
        res = model.validation(loader, name, image_dir=Path(opt['path']['visualization']) / name,
                               max_images=val['max_save_img'] if val['save_img'] else 0,
                               tb_writer=tb, current_iter=current_iter)
        mean = results[name] = res['mean']
        improved = model.update_best(name, mean, current_iter)
        model.guard_divergence(name, mean, current_iter)
        if model.rank == 0:
            text = ', '.join(f'{k}: {v:.4f}' for k, v in mean.items() if k not in ('num_samples', 'seconds'))
            logger.info('Validation %s @ iter %d: %s (%d samples)%s', name, current_iter, text,
                        mean['num_samples'], f" best {', '.join(improved)}" if improved else '')
            append_jsonl(opt['path']['metrics_log'], {'iter': current_iter, 'dataset': name, **mean})
            if tb is not None:
                for k, v in mean.items():
                    tb.add_scalar(f'metrics/{name}/{k}', v, current_iter)
        first = next(iter(model.metrics), None)
        if first in mean:
            model.step_plateau(mean[first])
    return results


def _log_progress(model: Any, logs: dict[str, float], n: int, current_iter: int, total_iter: int, epoch: int,
                  t_start: float, start_iter: int, data_time: float, batch: int, tb: Any) -> None:
    means = du.reduce_mean(logs, n, model.device)  # one collective, at the same iterations on every rank
    if model.rank != 0:
        return
    elapsed = time.time() - t_start
    per_iter = elapsed / max(current_iter - start_iter, 1)
    eta = int(per_iter * (total_iter - current_iter))
    lrs = ','.join(f'{lr:.3e}' for lr in model.current_lr())
    losses = ' '.join(f'{k}: {v:.4e}' for k, v in means.items())
    bursts = batch * model.world_size / per_iter
    mem = f' mem: {torch.cuda.max_memory_allocated(model.device) / 2 ** 30:.2f}G' if model.device.type == 'cuda' else ''
    logger.info('[epoch %d iter %d/%d lr:(%s)] [eta %d:%02d:%02d, %.3fs/it, data %.3fs, %.2f bursts/s%s] %s',
                epoch, current_iter, total_iter, lrs, eta // 3600, eta // 60 % 60, eta % 60, per_iter, data_time,
                bursts, mem, losses)
    append_jsonl(Path(model.opt['path']['experiments_root']) / SCALARS_FILE,
                 {'iter': current_iter, 'epoch': epoch, **means, 'lr': model.current_lr()[0],
                  'bursts_per_s': round(bursts, 4), 's_per_iter': round(per_iter, 4)})
    if tb is not None:
        for k, v in means.items():
            tb.add_scalar(f'losses/{k}' if k.startswith('l_') else f'train/{k}', v, current_iter)
        tb.add_scalar('train/lr', model.current_lr()[0], current_iter)
        tb.add_scalar('train/bursts_per_s', bursts, current_iter)


def train_pipeline(root_path: str | Path, argv: list[str] | None = None,
                   on_validation: ValidationCallback | None = None) -> Any:
    """Run a training from the command line ``argv`` (default ``sys.argv[1:]``); returns the trained model.

    ``on_validation(current_iter, results)`` is called after every validation (``results``: {val set name: mean
    metrics}); when it returns true the run stops there, as a hyperparameter search prunes a trial. Under DDP it is
    called on every rank with the same results and must return the same answer on each.
    """
    opt, args = parse_options(root_path, is_train=True, argv=argv, prepare=prepare_from_options, prog=_prog())
    if args.print_options:
        print_options(opt)
        return None
    du.init_dist_from_options(opt['dist_params'])
    rank, world = du.get_dist_info()
    try:
        if args.dry_run:
            return dry_run(opt, rank, world)
        return _train(opt, args, rank, world, on_validation)
    finally:
        du.destroy_dist()


def _prog() -> str:
    return os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else 'train.py'


def dry_run(opt: dict, rank: int = 0, world: int = 1) -> Any:
    """``--dry-run``: build the training data and the model, run one training step and one validation sample per
    validation set, log what was built, and return the model. Writes nothing (no experiment folder)."""
    setup_logging(None, rank)
    set_random_seed(opt['manual_seed'] + rank)
    train_opt = opt['datasets']['train']
    train_set = build_dataset(train_opt, 'datasets.train')
    sampler = TrainSampler(len(train_set), world, rank, opt['manual_seed'], train_opt['shuffle'])
    loader = build_dataloader(train_set, train_opt, sampler, opt['manual_seed'], rank, train=True)
    if len(loader) == 0:
        raise OptionError('datasets.train.batch_size_per_gpu', f'larger than the {len(train_set)} samples per rank',
                          opt['opt_file'])
    model = build_model(opt)
    t0 = time.time()
    model.feed_data(next(iter(loader)))
    out = model.optimize_parameters(1)
    logger.info('Dry run: one training step of %s on %s (batch %d) in %.2f s: %s', type(model).__name__,
                model.device, train_opt['batch_size_per_gpu'], time.time() - t0,
                ', '.join(f'{k} {v:.4g}' for k, v in out.items()))
    for phase, ds_opt in opt['datasets'].items():
        if phase.startswith('val'):
            ds = build_dataset(ds_opt, f'datasets.{phase}')
            val_loader = build_dataloader(ds, ds_opt, ShardSampler(min(1, len(ds)), world, rank),
                                          opt['manual_seed'], rank, train=False)
            res = model.validation(val_loader, ds_opt['name'], image_dir=None, max_images=0)
            logger.info('Dry run: validation set %s (%d samples), first sample: %s', ds_opt['name'], len(ds),
                        ', '.join(f'{k} {v:.4g}' for k, v in res['mean'].items() if isinstance(v, float)))
    logger.info('Dry run finished: the options, data and model of %s are usable', opt['opt_file'])
    return model


def _write_curves(opt: dict, rank: int) -> None:
    """``experiments/<name>/metrics.png`` (``codes.visualization.plots``) on rank 0; a failure is only logged."""
    if rank != 0:
        return
    try:
        logger.info('Curves: %s', plot_metrics(opt['path']['experiments_root']))
    except Exception as exc:  # matplotlib missing, nothing logged yet, ...: the run itself is fine
        logger.warning('Curves not written: %s: %s', type(exc).__name__, exc)


def _train(opt: dict, args: Any, rank: int, world: int, on_validation: ValidationCallback | None = None) -> Any:
    exp_root = Path(opt['path']['experiments_root'])
    if rank == 0:
        exp_root.mkdir(parents=True, exist_ok=True)
    du.barrier()
    setup_logging(exp_root / f"train_{opt['name']}_{time.strftime('%Y%m%d_%H%M%S')}.log", rank)
    skipped: list = []
    resume = _resume_state(opt, args.auto_resume, skipped)
    if rank == 0:
        _prepare_experiment(opt, resume is not None, args.auto_resume, skipped)
    du.barrier()
    if rank == 0:
        logger.info('Command: %s\n%s', ' '.join(sys.argv), format_options(opt))
        dump_yaml(opt, exp_root / 'options.yml')
    seed = opt['manual_seed']
    set_random_seed(seed + rank)
    torch.backends.cudnn.benchmark = opt['cudnn_benchmark']

    train_opt = opt['datasets']['train']
    train_set = build_dataset(train_opt, 'datasets.train')
    sampler = TrainSampler(len(train_set), world, rank, seed, train_opt['shuffle'])
    train_loader = build_dataloader(train_set, train_opt, sampler, seed, rank, train=True)
    if len(train_loader) == 0:
        raise OptionError('datasets.train.batch_size_per_gpu', f'larger than the {len(train_set)} samples per rank',
                          opt['opt_file'])
    iters_per_epoch = limit_count(len(train_loader), opt['train']['limit_train_batches'],
                                  'train.limit_train_batches', opt['opt_file'])
    total_iter = opt['train']['total_iter']
    logger.info('Training set: %d samples, %d iterations per epoch%s, %d iterations in all (%d epochs), '
                'batch %d per rank x %d ranks', len(train_set), iters_per_epoch,
                f' (of {len(train_loader)}, train.limit_train_batches)' if iters_per_epoch != len(train_loader) else '',
                total_iter, -(-total_iter // iters_per_epoch), train_opt['batch_size_per_gpu'], world)
    val_loaders = _val_loaders(opt, rank, world)
    model = build_model(opt)

    current_iter = 0
    if resume is not None:
        model.resume_training(resume[0], resume[1])
        current_iter = resume[0]['iter']
    tb = build_trackers(opt, rank) or None  # TensorBoard and/or W&B (rank 0)
    log_cfg, val_freq = opt['logger'], opt['val']['val_freq']
    use_pbar = log_cfg['use_pbar']
    use_pbar = sys.stderr.isatty() if use_pbar is None else use_pbar
    pbar = None
    if rank == 0 and use_pbar:
        from tqdm import tqdm
        pbar = tqdm(total=total_iter, initial=current_iter, unit='it', dynamic_ncols=True)

    start_iter, t_start = current_iter, time.time()
    logs: dict[str, float] = {}
    n_logs, data_time = 0, 0.0
    last_saved = current_iter
    stopped = False
    try:
        while current_iter < total_iter and not stopped:
            epoch, within = divmod(current_iter, iters_per_epoch)
            sampler.set_epoch(epoch, within * train_opt['batch_size_per_gpu'])
            t_data = time.time()
            for data in train_loader:
                data_time = time.time() - t_data
                current_iter += 1
                model.feed_data(data)
                out = model.optimize_parameters(current_iter)
                for k, v in out.items():
                    logs[k] = logs.get(k, 0.0) + v
                n_logs += 1
                if pbar is not None:
                    pbar.update(1)
                    pbar.set_postfix(loss=f"{out['l_total']:.4e}")
                if current_iter % log_cfg['print_freq'] == 0:
                    _log_progress(model, logs, n_logs, current_iter, total_iter, epoch, t_start, start_iter,
                                  data_time, train_opt['batch_size_per_gpu'], tb)
                    logs, n_logs = {}, 0
                if current_iter % log_cfg['save_checkpoint_freq'] == 0:
                    model.save(current_iter, epoch)
                    last_saved = current_iter
                if val_freq and current_iter % val_freq == 0 and val_loaders:
                    results = validate(model, val_loaders, opt, current_iter, tb)
                    if on_validation is not None and on_validation(current_iter, results):
                        stopped = True
                        break
                if current_iter >= total_iter or current_iter % iters_per_epoch == 0:
                    break  # the end of the run, or of an epoch shortened by train.limit_train_batches
                t_data = time.time()
        if stopped:
            logger.info('Stopped at iteration %d by the validation callback, after %.1f s', current_iter,
                        time.time() - t_start)
            _write_curves(opt, rank)
            return model
        if last_saved != current_iter:
            model.save(current_iter, current_iter // iters_per_epoch)
        if val_loaders and not (val_freq and current_iter % val_freq == 0):
            results = validate(model, val_loaders, opt, current_iter, tb)
            if on_validation is not None:
                on_validation(current_iter, results)
        logger.info('Training finished at iteration %d in %.1f s', current_iter, time.time() - t_start)
        _write_curves(opt, rank)
        return model
    finally:
        if pbar is not None:
            pbar.close()
        if tb is not None:
            tb.close()
