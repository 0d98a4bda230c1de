"""The model base class: device, DDP wrapping, precision, optimiser and scheduler, EMA, freezing, checkpoints.

Subclasses add ``feed_data``, the loss in ``compute_loss`` and ``validation``. The training step itself lives
here (``optimize_parameters``), so every model gets autocast, GradScaler (fp16 only), gradient clipping, the
non-finite-gradient guard and the EMA update the same way.
"""
from __future__ import annotations

import copy
import fnmatch
import logging
import math
import os
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

from codes.archs import build_network
from codes.losses import build_loss
from codes.metrics import build_metric
from codes.models.optim import build_optimizer, build_scheduler
from codes.utils import dist as du
from codes.utils.build import OptionError
from codes.utils.checkpoint import atomic_save, get_rng_states, load_network, set_rng_states

__all__ = ['BaseModel', 'select_device']

logger = logging.getLogger(__name__)

_DTYPES = {'fp32': torch.float32, 'fp16': torch.float16, 'bf16': torch.bfloat16}


def select_device(opt: dict) -> torch.device:
    """``cuda:LOCAL_RANK`` when CUDA is available and ``num_gpu`` is not 0, else the CPU."""
    num_gpu = opt['num_gpu']
    if num_gpu != 0 and torch.cuda.is_available():
        return torch.device('cuda', du.local_rank())
    if num_gpu not in (0, 'auto'):
        logger.warning('num_gpu is %s but CUDA is not available: running on the CPU', num_gpu)
    return torch.device('cpu')


class BaseModel:
    """Owns ``net_g`` (and ``net_g_ema``), its optimisation, its checkpoints, the validation metrics
    (``val.metrics``) and the sharded gathering of per-sample validation records.

    Args:
        opt: the whole normalised option tree (``codes.utils.options.normalize_options``: every default filled in).
    """

    #: whether ``validation`` writes challenge submission files (test.py's default for ``val.save_submission``)
    writes_submission = False
    #: option blocks this model adds to ``codes.utils.options.SCHEMA`` (same notation; merged in by model_type)
    option_schema: dict = {}

    def __init__(self, opt: dict) -> None:
        self.opt = opt
        self.is_train = bool(opt.get('is_train', False))
        self.rank, self.world_size = du.get_dist_info()
        self.device = select_device(opt)
        self.net_g = build_network(opt['network_g']).to(self.device)
        n_params = sum(p.numel() for p in self.net_g.parameters())
        logger.info('Network %s: %s parameters', type(self.net_g).__name__, f'{n_params:,}')
        path = opt['path']
        self.pretrained = path['pretrain_network_g']
        if self.pretrained:
            load_network(self.net_g, self.pretrained, path['strict_load_g'], path['param_key_g'])
        self.net_g_ema: nn.Module | None = None
        self.amp_dtype = _DTYPES[opt['train']['precision']]
        self.eval_dtype = _DTYPES[opt['val']['precision']]
        self.best: dict[str, dict[str, Any]] = {}
        self.nan_skips = 0
        metrics = opt['val']['metrics']
        self.metrics: dict[str, Callable[..., float]] = {
            name: build_metric(m, f'val.metrics.{name}') for name, m in metrics.items()}
        self.better = {name: m.get('better', 'higher') for name, m in metrics.items()}
        self._unavailable: set[str] = set()
        self.warmup_iter = 0
        self.guard_metric: str | None = None  # both set from train.* by _init_training
        if self.is_train:
            self._init_training()

    # ------------------------------------------------------------------------------------------------ setup
    def _init_training(self) -> None:
        train = self.opt['train']
        self.net_g.train()
        ema_decay = float(train['ema_decay'])
        if ema_decay > 0:
            self.net_g_ema = copy.deepcopy(self.net_g).eval()
            for p in self.net_g_ema.parameters():
                p.requires_grad_(False)
            if self.pretrained:  # an EMA in the pretrain file wins over a copy of params
                try:
                    load_network(self.net_g_ema, self.pretrained, True, 'params_ema')
                except Exception as exc:  # the file has no usable params_ema: keep the copy of params
                    logger.info('EMA starts as a copy of net_g (%s)', exc)
        self.ema_decay = ema_decay
        self.freeze_patterns = list(train['freeze']['patterns'])
        self.freeze_iters = int(train['freeze']['iters'])
        if self.freeze_patterns and self.freeze_iters > 0 and self.pretrained:
            logger.info('Not freezing %s: weights come from %s (freezing is for training from scratch)',
                        self.freeze_patterns, self.pretrained)
            self.freeze_iters = 0
        self._frozen: bool | None = None
        if self.world_size > 1:
            find_unused = self.opt['find_unused_parameters']
            if find_unused is None:
                find_unused = self.freeze_iters > 0
            ids = [self.device.index] if self.device.type == 'cuda' else None
            self.net_g = DistributedDataParallel(self.net_g, device_ids=ids, find_unused_parameters=find_unused)
        self.optimizer = build_optimizer(self.optimizer_params(), train['optim_g'])
        self.scheduler = build_scheduler(self.optimizer, train['scheduler']) if train['scheduler'] else None
        self.cri_pix = build_loss(train['pixel_opt']).to(self.device)
        precision = train['precision']
        self.scaler = torch.amp.GradScaler(self.device.type) if precision == 'fp16' else None
        self.grad_clip_norm = train['grad_clip_norm']
        self.warmup_iter = max(int(train['warmup_iter']), 0)
        for g in self.optimizer.param_groups:  # schedulers set it too; the warm-up ramps towards it
            g.setdefault('initial_lr', g['lr'])
        self.nan_skip_limit = int(train['nan_skip_limit'])
        guard = train['divergence_guard']
        self.guard_metric = guard['metric']
        self.guard_max_drop = float(guard['max_drop'])
        self.guard_lr_factor = float(guard['lr_factor'])
        if self.guard_metric is not None and self.guard_metric not in self.metrics:
            raise OptionError('train.divergence_guard.metric', f"'{self.guard_metric}' is not one of val.metrics "
                              f"({', '.join(self.metrics) or 'none'})", self.opt.get('opt_file'))
        self._snapshot: dict[str, Any] | None = None
        self.rollbacks = 0
        logger.info('Training in %s on %s (world size %d)', precision, self.device, self.world_size)

    def optimizer_params(self) -> Any:
        """What the optimiser gets: all parameters of ``net_g`` (subclasses may return parameter groups)."""
        return self.bare_net.parameters()

    @property
    def bare_net(self) -> nn.Module:
        """``net_g`` without its DDP wrapper."""
        return self.net_g.module if isinstance(self.net_g, DistributedDataParallel) else self.net_g

    def autocast(self, dtype: torch.dtype | None = None):
        """Autocast to ``dtype`` (default: the training precision); a no-op for fp32."""
        dtype = dtype or self.amp_dtype
        if dtype == torch.float32:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    # --------------------------------------------------------------------------------------------- training
    def apply_freeze(self, current_iter: int) -> None:
        """Freeze parameters matching ``train.freeze.patterns`` for iterations 1..``train.freeze.iters``."""
        frozen = bool(self.freeze_patterns) and current_iter <= self.freeze_iters
        if frozen == self._frozen:
            return
        names = []
        for name, p in self.bare_net.named_parameters():
            if any(pat in name or fnmatch.fnmatch(name, pat) for pat in self.freeze_patterns):
                p.requires_grad_(not frozen)
                names.append(name)
        if self._frozen is not None or frozen:
            logger.info('%s %d parameter tensors matching %s at iteration %d', 'Froze' if frozen else 'Unfroze',
                        len(names), self.freeze_patterns, current_iter)
        self._frozen = frozen

    def compute_loss(self) -> dict[str, torch.Tensor]:
        """Forward and losses of the current batch: ``{'l_total': ..., 'l_pix': ...}``. Subclasses implement."""
        raise NotImplementedError

    def optimize_parameters(self, current_iter: int) -> dict[str, float]:
        """One training step; returns the losses as floats (and ``skipped`` when the step was skipped).

        During the linear warm-up (``train.warmup_iter`` > 0, iterations 1 … warmup_iter) every group's lr is set
        to initial_lr · current_iter / warmup_iter before the step (as BasicSR and DCLS do); the scheduler is
        stepped as usual and takes over afterwards.
        """
        self.apply_freeze(current_iter)
        if current_iter <= self.warmup_iter:
            for g in self.optimizer.param_groups:
                g['lr'] = g['initial_lr'] * current_iter / self.warmup_iter
        self.net_g.train()
        self.optimizer.zero_grad(set_to_none=True)
        losses = self.compute_loss()
        total = losses['l_total']
        if self._loss_is_non_finite(total):  # before backward: some kernels crash on NaN (deform_conv2d on CPU)
            self.optimizer.zero_grad(set_to_none=True)
            out = {k: float(v.detach()) for k, v in losses.items()}
            return self._skip_step(current_iter, out, 'loss')
        if self.scaler is not None:
            self.scaler.scale(total).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            total.backward()
        if self._frozen:  # DDP may have filled zero gradients for the frozen tensors: Adam must not see them
            for p in self.bare_net.parameters():
                if not p.requires_grad:
                    p.grad = None
        params = [p for p in self.bare_net.parameters() if p.grad is not None]
        max_norm = self.grad_clip_norm if self.grad_clip_norm else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm) if params else torch.tensor(0.0)
        out = {k: float(v.detach()) for k, v in losses.items()}
        out['grad_norm'] = float(grad_norm)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)  # skips the step itself on inf/NaN gradients
            self.scaler.update()
        elif math.isfinite(out['grad_norm']):
            self.optimizer.step()
        else:  # gradients are identical on every rank after the all-reduce, so every rank skips together
            return self._skip_step(current_iter, out, 'gradient')
        if self.scheduler is not None and not isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self.scheduler.step()
        if self.net_g_ema is not None:
            self._update_ema()
        return out

    def _loss_is_non_finite(self, total: torch.Tensor) -> bool:
        """Whether the loss is NaN/inf on this rank or on any other (one small all-reduce under DDP), so that every
        rank skips the backward together and DDP's gradient all-reduce stays matched."""
        bad = (~torch.isfinite(total.detach())).any().to(torch.float32).reshape(1)
        if self.world_size > 1:
            du.all_reduce_sum(bad)
        return bool(bad.item() > 0)

    def _skip_step(self, current_iter: int, out: dict[str, float], what: str) -> dict[str, float]:
        """Count a skipped step (non-finite ``what``: 'loss' or 'gradient'); too many end the run."""
        self.nan_skips += 1
        out['skipped'] = 1.0
        out.setdefault('grad_norm', float('nan'))
        logger.warning('Non-finite %s at iteration %d (loss %s): step skipped (%d so far)', what, current_iter,
                       out['l_total'], self.nan_skips)
        if self.nan_skips > self.nan_skip_limit:
            raise FloatingPointError(f'more than train.nan_skip_limit={self.nan_skip_limit} non-finite steps; '
                                     'lower the learning rate, set train.grad_clip_norm or use fp32')
        return out

    @torch.no_grad()
    def _update_ema(self) -> None:
        ema_params = dict(self.net_g_ema.named_parameters())
        for name, p in self.bare_net.named_parameters():
            ema_params[name].lerp_(p.detach(), 1.0 - self.ema_decay)
        ema_buffers = dict(self.net_g_ema.named_buffers())
        for name, b in self.bare_net.named_buffers():
            ema_buffers[name].copy_(b)

    def step_plateau(self, value: float) -> None:
        """Step a ReduceLROnPlateau scheduler with a validation value (other schedulers ignore it)."""
        if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self.scheduler.step(value)

    def current_lr(self) -> list[float]:
        """The learning rate of every parameter group."""
        return [g['lr'] for g in self.optimizer.param_groups]

    # --------------------------------------------------------------------------------------------- validation
    def sample_index(self, local_count: int) -> int:
        """The dataset index of this rank's ``local_count``-th sample under ``ShardSampler``."""
        return self.rank + local_count * self.world_size

    def _gather(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """All ranks' records, each sample once, in dataset order."""
        if self.world_size == 1:
            return records
        parts: list[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(parts, records)
        out = []
        for j in range(max(len(p) for p in parts)):
            out.extend(p[j] for p in parts if j < len(p))
        return out

    def update_best(self, dataset_name: str, mean: dict[str, float], current_iter: int) -> list[str]:
        """Track the best value of every metric; returns the names that improved."""
        improved = []
        best = self.best.setdefault(dataset_name, {})
        for name, value in mean.items():
            if name not in self.metrics or not math.isfinite(value):
                continue
            higher = self.better.get(name, 'higher') == 'higher'
            old = best.get(name)
            if old is None or (value > old['value'] if higher else value < old['value']):
                best[name] = {'value': value, 'iter': current_iter}
                improved.append(name)
        return improved

    def guard_divergence(self, dataset_name: str, mean: dict[str, float], current_iter: int) -> bool:
        """The divergence guard (``train.divergence_guard``), called after each validation and ``update_best``.

        When ``metric`` is non-finite or worse than its best by more than ``max_drop``, the weights, EMA, optimiser
        and scaler state of the last good validation are restored (the scheduler keeps its place), every learning
        rate is multiplied by ``lr_factor``, and True is returned. Otherwise the current state becomes the last good
        one (a CPU copy). All ranks see the same gathered metrics, so they decide alike.
        """
        metric = self.guard_metric
        if not metric or metric not in mean:
            return False
        value, best = mean[metric], self.best.get(dataset_name, {}).get(metric)
        higher = self.better.get(metric, 'higher') == 'higher'
        gap = 0.0 if best is None else (best['value'] - value if higher else value - best['value'])
        if math.isfinite(value) and gap <= self.guard_max_drop:
            self._snapshot = _to_cpu({
                'net': self.bare_net.state_dict(), 'optimizer': self.optimizer.state_dict(),
                'ema': self.net_g_ema.state_dict() if self.net_g_ema is not None else None,
                'scaler': self.scaler.state_dict() if self.scaler is not None else None, 'iter': current_iter})
            return False
        if self._snapshot is None:
            logger.warning('Divergence guard: %s %s = %s at iteration %d, but there is no earlier good state',
                           dataset_name, metric, value, current_iter)
            return False
        snap = self._snapshot
        lrs = [g['lr'] * self.guard_lr_factor for g in self.optimizer.param_groups]
        self.bare_net.load_state_dict(snap['net'])
        self.optimizer.load_state_dict(snap['optimizer'])
        for g, lr in zip(self.optimizer.param_groups, lrs):
            g['lr'] = lr
        if self.net_g_ema is not None and snap['ema'] is not None:
            self.net_g_ema.load_state_dict(snap['ema'])
        if self.scaler is not None and snap['scaler'] is not None:
            self.scaler.load_state_dict(snap['scaler'])
        self.rollbacks += 1
        logger.warning('Divergence guard: %s %s = %.4f at iteration %d (best %.4f): rolled back weights and optimiser '
                       'state to iteration %d, learning rates now %s (rollback %d)', dataset_name, metric, value,
                       current_iter, best['value'] if best else float('nan'), snap['iter'],
                       ', '.join(f'{lr:.3e}' for lr in lrs), self.rollbacks)
        return True

    @property
    def eval_net(self) -> nn.Module:
        """The network used for validation and testing: the EMA copy if there is one."""
        return self.net_g_ema if self.net_g_ema is not None else self.bare_net

    # -------------------------------------------------------------------------------------------- checkpoints
    def save(self, current_iter: int, epoch: int) -> None:
        """Write ``net_g_<iter>.pth`` and ``<iter>.state`` atomically (rank 0), then the ``last_checkpoint`` pointer.

        Every rank takes part, because the RNG states of all ranks are gathered into the state file.
        """
        rng = get_rng_states()
        if self.world_size > 1:
            gathered: list[Any] = [None] * self.world_size
            torch.distributed.all_gather_object(gathered, rng)
        else:
            gathered = [rng]
        if self.rank == 0:
            path = self.opt['path']
            weights = {'params': _cpu_state(self.bare_net)}
            if self.net_g_ema is not None:
                weights['params_ema'] = _cpu_state(self.net_g_ema)
            models_dir, states_dir = Path(path['models']), Path(path['training_states'])
            atomic_save(weights, models_dir / f'net_g_{current_iter}.pth')
            state = {
                'iter': current_iter, 'epoch': epoch, 'optimizers': [self.optimizer.state_dict()],
                'schedulers': [self.scheduler.state_dict()] if self.scheduler is not None else [],
                'scaler': self.scaler.state_dict() if self.scaler is not None else None,
                'rng': gathered, 'best': self.best, 'nan_skips': self.nan_skips, 'world_size': self.world_size,
            }
            atomic_save(state, states_dir / f'{current_iter}.state')
            pointer = Path(path['experiments_root']) / 'last_checkpoint'
            tmp = pointer.with_name('.last_checkpoint.tmp')
            tmp.write_text(f'{states_dir / f"{current_iter}.state"}\n')
            os.replace(tmp, pointer)
            logger.info('Saved checkpoint and training state at iteration %d', current_iter)
            self._prune(models_dir, states_dir, current_iter)
        du.barrier()

    def _prune(self, models_dir: Path, states_dir: Path, current_iter: int) -> None:
        keep = int(self.opt['logger']['keep_last'])
        if keep <= 0:
            return
        iters = sorted(int(p.stem) for p in states_dir.glob('*.state') if p.stem.isdigit())
        for it in iters[:-keep]:
            (states_dir / f'{it}.state').unlink(missing_ok=True)
            (models_dir / f'net_g_{it}.pth').unlink(missing_ok=True)

    def resume_training(self, state: dict, weights_path: str | os.PathLike) -> None:
        """Restore weights, EMA, optimiser, scheduler, scaler, RNG states and best metrics from a training state."""
        load_network(self.bare_net, weights_path, True, 'params')
        if self.net_g_ema is not None:
            load_network(self.net_g_ema, weights_path, True, 'params_ema')
        self.optimizer.load_state_dict(state['optimizers'][0])
        if self.scheduler is not None and state['schedulers']:
            self.scheduler.load_state_dict(state['schedulers'][0])
        if self.scaler is not None and state.get('scaler'):
            self.scaler.load_state_dict(state['scaler'])
        rng = state['rng']
        if len(rng) == self.world_size:
            set_rng_states(rng[self.rank])
        else:
            logger.warning('Training state was written by %d ranks, this run has %d: RNG states not restored',
                           len(rng), self.world_size)
        self.best = state.get('best', {})
        self.nan_skips = state.get('nan_skips', 0)
        self._frozen = None
        logger.info('Resumed training state of iteration %d (epoch %d)', state['iter'], state['epoch'])


def _to_cpu(obj: Any) -> Any:
    """A deep copy of nested dicts/lists of tensors with every tensor cloned to the CPU."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to('cpu', copy=True)
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return copy.deepcopy(obj)


def _cpu_state(net: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in net.state_dict().items()}
