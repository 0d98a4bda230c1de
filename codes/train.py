"""Training pipeline: options -> experiment folder and logging -> data -> model -> iteration loop.

``python train.py -opt options/train_synthetic.yml`` (single process) and ``torchrun --nproc_per_node=N train.py
-opt ...`` (distributed; detected from the environment) both end up in :func:`train_pipeline`, as does the
``bsr-train`` console script. ``--print-options`` prints the resolved options and exits; ``--dry-run`` builds the
data and the model, runs one training step (and one validation sample per validation set) and exits.

Clusters: ``--launcher slurm`` takes the process group from srun's variables (``codes.utils.slurm``); a worker
restarted by torchrun (``TORCHELASTIC_RESTART_COUNT`` > 0) resumes by itself; SIGTERM / SIGUSR1 stop every rank at
the same iteration with a saved state and exit status 75 (``codes.utils.preemption``).
"""
from __future__ import annotations

import logging
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch.utils.data import DataLoader

from codes.data import build_dataset
from codes.data.loader import (SeededDataset, SeededSampler, ShardSampler, TrainSampler, build_dataloader,
                               shutdown_workers)
from codes.models import build_model
from codes.models.base_model import BaseModel, Options
from codes.scripts.sample_data import prepare_from_options
from codes.utils import dist as dist_utils
from codes.utils.checkpoint import (POINTER_NAME, STATE_KEYS, CheckpointError, extract_state_dict, find_resume_state,
                                    load_file)
from codes.utils.logger import append_jsonl, build_trackers, format_options, setup_logging
from codes.utils.options import OptionError, check_limit, dump_yaml, parse_options, print_options
from codes.utils.preemption import Preempted, StopSignals, agree
from codes.utils.slurm import apply_slurm_env
from codes.visualization.plots import SCALARS_FILE, plot_metrics

__all__ = ['train_pipeline', 'run_training', 'dry_run', 'set_random_seed', 'validate', 'limit_count',
           'ValidationCallback', 'elastic_restart_count', 'configure_determinism']

#: ``callback(current_iter, results)`` with ``results`` = {val set name: mean metrics}; a true return value stops
#: the training after this validation (no final checkpoint or validation follows).
ValidationCallback = Callable[[int, dict[str, dict[str, float]]], bool]

logger = logging.getLogger('codes.train')


def set_random_seed(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def _create_experiment_folders(opt: Options, resuming: bool, auto_resume: bool = False,
                               skipped: list | None = None) -> None:
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


def elastic_restart_count() -> int:
    """How often torchrun's agent has restarted the workers (``TORCHELASTIC_RESTART_COUNT``; 0 outside torchrun).
    A restarted worker resumes by itself from the newest complete training state."""
    try:
        return max(int(os.environ.get('TORCHELASTIC_RESTART_COUNT', '0') or 0), 0)
    except ValueError:
        return 0


def configure_determinism(deterministic: bool, cudnn_benchmark: bool = True) -> None:
    """``train.deterministic``: deterministic algorithms (``torch.use_deterministic_algorithms`` with
    ``warn_only``, so an op without a deterministic kernel warns with its name instead of stopping the run),
    deterministic cuDNN without autotuning, and cuBLAS's fixed workspace (``CUBLAS_WORKSPACE_CONFIG``). Otherwise
    ``cudnn.benchmark`` follows the ``cudnn_benchmark`` option. CPU training is bit-reproducible either way."""
    if deterministic:
        os.environ.setdefault('CUBLAS_WORKSPACE_CONFIG', ':4096:8')
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        logger.info('train.deterministic: deterministic algorithms on (ops without a deterministic CUDA kernel '
                    'warn), cudnn.benchmark off')
    else:
        torch.backends.cudnn.benchmark = cudnn_benchmark


def _resume_state(opt: Options, auto_resume: bool, skipped: list | None = None) -> tuple[dict, Path, Path] | None:
    """The training state to continue from, with its own path and its weights file: ``path.resume_state``, or with
    ``--auto_resume`` the newest usable one (the one ``last_checkpoint`` names when it is that), or None."""
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
        return state, Path(explicit), weights
    if auto_resume:
        path = opt['path']
        found = find_resume_state(path['training_states'], path['models'], skipped,
                                  pointer=Path(path['experiments_root']) / POINTER_NAME)
        if found is not None:
            return found
    return None


def _val_loaders(opt: Options, rank: int, world: int) -> dict[str, DataLoader]:
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


def validate(model: BaseModel, loaders: Mapping[str, DataLoader], opt: Options, current_iter: int,
             tb: Any) -> dict[str, dict[str, float]]:
    """Validate on every val set; rank 0 logs, writes TensorBoard scalars and a metrics.jsonl line per set.

    After each set the model updates its best values and its divergence guard; a ``ReduceLROnPlateau`` scheduler
    is stepped with the first metric, unless the guard has just rolled the weights back (that value measured
    weights that are gone, and the guard has lowered the learning rates already).
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
        rolled_back = model.guard_divergence(name, mean, current_iter)
        if model.rank == 0:
            text = ', '.join(f'{k}: {v:.4f}' for k, v in mean.items() if k not in ('num_samples', 'seconds'))
            logger.info('Validation %s @ iter %d: %s (%d samples)%s%s', name, current_iter, text,
                        mean['num_samples'], f" best {', '.join(improved)}" if improved else '',
                        '; diverged: rolled back to the last good state' if rolled_back else '')
            append_jsonl(opt['path']['metrics_log'], {'iter': current_iter, 'dataset': name, **mean})
            if tb is not None:
                for k, v in mean.items():
                    tb.add_scalar(f'metrics/{name}/{k}', v, current_iter)
        first = next(iter(model.metrics), None)
        if first in mean and not rolled_back:
            model.step_plateau(mean[first])
    return results


def train_pipeline(root_path: str | Path, argv: list[str] | None = None,
                   on_validation: ValidationCallback | None = None) -> BaseModel | None:
    """Run a training from the command line ``argv`` (default ``sys.argv[1:]``); returns the trained model.

    ``on_validation(current_iter, results)`` is called after every validation (``results``: {val set name: mean
    metrics}); when it returns true the run stops there, as a hyperparameter search prunes a trial. Under DDP it is
    called on every rank with the same results and must return the same answer on each.
    """
    opt, args = parse_options(root_path, is_train=True, argv=argv, prepare=prepare_from_options, prog=_prog())
    if args.print_options:
        print_options(opt)
        return None
    if args.launcher == 'slurm':
        apply_slurm_env(opt['dist_params']['port'])
    dist_utils.init_dist_from_options(opt['dist_params'])
    rank, world = dist_utils.get_dist_info()
    try:
        if args.dry_run:
            return dry_run(opt, rank, world)
        model = run_training(opt, args, rank, world, on_validation)
        # every rank is past its last collective before the group is torn down: a rank that left while another was
        # still writing its curves was seen to abort in gloo's teardown ('terminate called without an active
        # exception')
        dist_utils.barrier()
        return model
    finally:
        dist_utils.destroy_dist()


def _prog() -> str:
    return os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else 'train.py'


def dry_run(opt: Options, rank: int = 0, world: int = 1) -> BaseModel:
    """``--dry-run``: build the training data and the model, run one training step and one validation sample per
    validation set, log what was built, and return the model. Writes nothing (no experiment folder)."""
    setup_logging(None, rank)
    set_random_seed(opt['manual_seed'] + rank)
    train_opt = opt['datasets']['train']
    _, loader = _train_loader(opt, rank, world)
    model = build_model(opt)
    t0 = time.time()
    batches = iter(loader)
    try:
        model.feed_data(next(batches))
    finally:
        shutdown_workers(loader, batches)
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


def _train_loader(opt: Options, rank: int, world: int) -> tuple[SeededSampler, DataLoader]:
    """The sampler and loader of ``datasets.train``; a batch larger than a rank's share is an option error.

    Every sample is loaded with its own seed (``SeededSampler``: a function of the run's seed, the epoch and the
    sample's place in it), so the data of a run does not depend on the worker count or on where it was resumed.
    """
    train_opt, seed = opt['datasets']['train'], opt['manual_seed']
    train_set = build_dataset(train_opt, 'datasets.train')
    sampler = SeededSampler(TrainSampler(len(train_set), world, rank, seed, train_opt['shuffle']))
    loader = build_dataloader(SeededDataset(train_set), train_opt, sampler, seed, rank, train=True)
    if len(loader) == 0:
        raise OptionError('datasets.train.batch_size_per_gpu', f'larger than the {len(train_set)} samples per rank',
                          opt['opt_file'])
    return sampler, loader


def _write_curves(opt: Options, rank: int) -> None:
    """``experiments/<name>/metrics.png`` (``codes.visualization.plots``) on rank 0; a failure is only logged."""
    if rank != 0:
        return
    try:
        logger.info('Curves: %s', plot_metrics(opt['path']['experiments_root']))
    except Exception as exc:  # matplotlib missing, nothing logged yet, ...: the run itself is fine
        logger.warning('Curves not written: %s: %s', type(exc).__name__, exc)


# ------------------------------------------------------------------------------------------- the training run
@dataclass
class _TrainingRun:
    """Everything the loop works with (built by :func:`_set_up_training`); ``current_iter`` advances."""

    opt: Options
    model: BaseModel
    sampler: SeededSampler
    train_loader: DataLoader
    val_loaders: dict[str, DataLoader]
    iters_per_epoch: int
    current_iter: int
    tb: Any = None
    pbar: Any = None
    start_iter: int = 0
    last_saved: int = 0
    t_start: float = field(default_factory=time.time)
    last_save_time: float = field(default_factory=time.time)
    stop: StopSignals | None = None
    train_iter: Any = None  # the running iter(train_loader), whose workers are stopped however the run ends

    @property
    def total_iter(self) -> int:
        return self.opt['train']['total_iter']

    @property
    def batch(self) -> int:
        return self.opt['datasets']['train']['batch_size_per_gpu']


class _LossMeter:
    """Sums of the step outputs (losses, ``grad_norm``, ...) since the last progress line."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.count = 0

    def add(self, out: Mapping[str, float]) -> None:
        for k, v in out.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.count += 1

    def reset(self) -> None:
        self.sums, self.count = {}, 0


def run_training(opt: Options, args: Any, rank: int, world: int,
                 on_validation: ValidationCallback | None = None) -> BaseModel:
    """Train on options already resolved by the front end (``parse_options``): set up, run the loop, then (unless
    ``on_validation`` stopped it) the final save and validation. ``args`` are the parsed command-line flags."""
    run = _set_up_training(opt, args, rank, world)
    try:
        with StopSignals(opt['preemption']['signals']) as run.stop:
            stopped = _train_loop(run, on_validation)
        if stopped:
            logger.info('Stopped at iteration %d by the validation callback, after %.1f s', run.current_iter,
                        time.time() - run.t_start)
        else:
            _finish(run, on_validation)
        _write_curves(opt, rank)
        return run.model
    finally:
        shutdown_workers(run.train_loader, run.train_iter)
        for loader in run.val_loaders.values():
            shutdown_workers(loader)
        if run.pbar is not None:
            run.pbar.close()
        if run.tb is not None:
            run.tb.close()


def _set_up_training(opt: Options, args: Any, rank: int, world: int) -> _TrainingRun:
    """Experiment folder and logging, the state to resume from, seeds, data, model, trackers, progress bar."""
    exp_root = Path(opt['path']['experiments_root'])
    if rank == 0:
        exp_root.mkdir(parents=True, exist_ok=True)
    dist_utils.barrier()
    setup_logging(exp_root / f"train_{opt['name']}_{time.strftime('%Y%m%d_%H%M%S')}.log", rank)
    restarts = elastic_restart_count()
    auto_resume = args.auto_resume or restarts > 0
    if restarts:
        logger.info('torchrun restart %d (TORCHELASTIC_RESTART_COUNT): resuming from the newest complete training '
                    'state', restarts)
    if args.launcher == 'slurm':
        logger.info('SLURM launch: rank %s of %s (local rank %s), master %s:%s', os.environ['RANK'],
                    os.environ['WORLD_SIZE'], os.environ['LOCAL_RANK'], os.environ['MASTER_ADDR'],
                    os.environ['MASTER_PORT'])
    skipped: list = []
    resume = _resume_state(opt, auto_resume, skipped)
    if rank == 0:
        _create_experiment_folders(opt, resume is not None, auto_resume, skipped)
    dist_utils.barrier()
    if rank == 0:
        logger.info('Command: %s\n%s', ' '.join(sys.argv), format_options(opt))
        dump_yaml(opt, exp_root / 'options.yml')
    set_random_seed(opt['manual_seed'] + rank)
    configure_determinism(opt['train']['deterministic'], opt['cudnn_benchmark'])

    sampler, train_loader = _train_loader(opt, rank, world)
    iters_per_epoch = limit_count(len(train_loader), opt['train']['limit_train_batches'],
                                  'train.limit_train_batches', opt['opt_file'])
    total_iter, batch = opt['train']['total_iter'], opt['datasets']['train']['batch_size_per_gpu']
    logger.info('Training set: %d samples, %d iterations per epoch%s, %d iterations in all (%d epochs), '
                'batch %d per rank x %d ranks', len(train_loader.dataset), iters_per_epoch,
                f' (of {len(train_loader)}, train.limit_train_batches)' if iters_per_epoch != len(train_loader) else '',
                total_iter, -(-total_iter // iters_per_epoch), batch, world)
    val_loaders = _val_loaders(opt, rank, world)
    model = build_model(opt)
    current_iter = 0
    if resume is not None:
        model.resume_training(resume[0], resume[2])
        current_iter = resume[0]['iter']
        epoch, within = divmod(current_iter, iters_per_epoch)
        logger.info('Resumed from %s at iteration %d: the data continue at epoch %d, batch %d of %d (sample %d of '
                    "this rank's share; sampler seeded by (seed, epoch), sample seeds by (seed, epoch, position)), "
                    'so the next batch is the one an uninterrupted run would take', resume[1], current_iter, epoch,
                    within + 1, iters_per_epoch, within * batch)
    run = _TrainingRun(opt, model, sampler, train_loader, val_loaders, iters_per_epoch, current_iter,
                       start_iter=current_iter, last_saved=current_iter)
    run.tb = build_trackers(opt, rank) or None  # TensorBoard and/or W&B (rank 0)
    use_pbar = opt['logger']['use_pbar']
    if rank == 0 and (sys.stderr.isatty() if use_pbar is None else use_pbar):
        from tqdm import tqdm
        run.pbar = tqdm(total=total_iter, initial=current_iter, unit='it', dynamic_ncols=True)
    run.t_start = time.time()
    return run


def _train_loop(run: _TrainingRun, on_validation: ValidationCallback | None) -> bool:
    """Train up to ``train.total_iter``, logging, saving and validating at their frequencies; True when
    ``on_validation`` asked to stop."""
    model, log_cfg, val_freq = run.model, run.opt['logger'], run.opt['val']['val_freq']
    meter = _LossMeter()
    while run.current_iter < run.total_iter:
        epoch, within = divmod(run.current_iter, run.iters_per_epoch)
        run.sampler.set_epoch(epoch, within * run.batch)
        t_data = time.time()
        run.train_iter = iter(run.train_loader)
        for data in run.train_iter:
            data_time = time.time() - t_data
            run.current_iter += 1
            it = run.current_iter
            model.feed_data(data)
            out = model.optimize_parameters(it)
            meter.add(out)
            if run.pbar is not None:
                run.pbar.update(1)
                run.pbar.set_postfix(loss=f"{out['l_total']:.4e}")
            if it % log_cfg['print_freq'] == 0:
                _log_progress(run, meter, epoch, data_time)
                meter.reset()
            if it % log_cfg['save_checkpoint_freq'] == 0:
                _save(run, it)
            _stop_or_save_by_time(run, it)
            if val_freq and it % val_freq == 0 and run.val_loaders:
                results = validate(model, run.val_loaders, run.opt, it, run.tb)
                if on_validation is not None and on_validation(it, results):
                    return True
            if it >= run.total_iter or it % run.iters_per_epoch == 0:
                break  # the end of the run, or of an epoch shortened by train.limit_train_batches
            t_data = time.time()
    return False


def _save(run: _TrainingRun, it: int) -> None:
    """Checkpoint iteration ``it`` with the data position the next iteration starts from."""
    epoch, within = divmod(it, run.iters_per_epoch)
    run.model.save(it, epoch, {'epoch': epoch, 'next_sample': within * run.batch})
    run.last_saved = it
    run.last_save_time = time.time()


def _stop_or_save_by_time(run: _TrainingRun, it: int) -> None:
    """After each step: save when ``logger.save_checkpoint_minutes`` have passed since the last save, and on a stop
    signal save and raise ``Preempted``. The ranks decide together (one all-reduce of both flags per step under
    DDP), so all of them save, and stop, at the same iteration."""
    minutes = run.opt['logger']['save_checkpoint_minutes']
    signalled = run.stop is not None and run.stop.received is not None
    due = bool(minutes) and time.time() - run.last_save_time >= 60 * minutes
    if run.model.world_size > 1:
        signalled, due = agree([signalled, due], run.model.device)
    if not (signalled or due):
        return
    if run.last_saved != it:
        if due and not signalled:
            logger.info('%.1f minutes since the last checkpoint (logger.save_checkpoint_minutes): saving', minutes)
        _save(run, it)
    if signalled:
        name = run.stop.received if run.stop is not None and run.stop.received else 'another rank'
        code = run.opt['preemption']['exit_code']
        logger.warning('Stop signal (%s) received: the state of iteration %d is saved; exiting with status %d so '
                       'that the scheduler requeues the job (continue with --auto_resume)', name, it, code)
        raise Preempted(it, name, code)


def _finish(run: _TrainingRun, on_validation: ValidationCallback | None) -> None:
    """The final checkpoint and validation, unless the last iteration already had them."""
    it, val_freq = run.current_iter, run.opt['val']['val_freq']
    if run.last_saved != it:
        _save(run, it)
    if run.val_loaders and not (val_freq and it % val_freq == 0):
        results = validate(run.model, run.val_loaders, run.opt, it, run.tb)
        if on_validation is not None:
            on_validation(it, results)
    logger.info('Training finished at iteration %d in %.1f s', it, time.time() - run.t_start)


def _log_progress(run: _TrainingRun, meter: _LossMeter, epoch: int, data_time: float) -> None:
    """One progress line (rank 0): losses averaged over the ranks, lr, speed, ETA; also train_scalars.jsonl and
    TensorBoard. Every rank takes part (one collective, at the same iterations)."""
    model, it = run.model, run.current_iter
    means = dist_utils.reduce_mean(meter.sums, meter.count, model.device)
    if model.rank != 0:
        return
    per_iter = (time.time() - run.t_start) / max(it - run.start_iter, 1)
    eta = int(per_iter * (run.total_iter - it))
    lrs = ','.join(f'{lr:.3e}' for lr in model.current_lr())
    losses = ' '.join(f'{k}: {v:.4e}' for k, v in means.items())
    bursts = run.batch * model.world_size / per_iter
    mem = f' mem: {torch.cuda.max_memory_allocated(model.device) / 2 ** 30:.2f}G' if model.device.type == 'cuda' else ''
    logger.info('[epoch %d iter %d/%d lr:(%s)] [eta %d:%02d:%02d, %.3fs/it, data %.3fs, %.2f bursts/s%s] %s',
                epoch, it, run.total_iter, lrs, eta // 3600, eta // 60 % 60, eta % 60, per_iter, data_time,
                bursts, mem, losses)
    append_jsonl(Path(run.opt['path']['experiments_root']) / SCALARS_FILE,
                 {'iter': it, 'epoch': epoch, **means, 'lr': model.current_lr()[0],
                  'bursts_per_s': round(bursts, 4), 's_per_iter': round(per_iter, 4)})
    if run.tb is not None:
        for k, v in means.items():
            run.tb.add_scalar(f'losses/{k}' if k.startswith('l_') else f'train/{k}', v, it)
        run.tb.add_scalar('train/lr', model.current_lr()[0], it)
        run.tb.add_scalar('train/bursts_per_s', bursts, it)
