"""The model base class: the interface every model implements, the training step and the validation template.

``BaseModel`` builds ``net_g`` (on its device, DDP-wrapped under torchrun) and, when training, the optimiser,
scheduler, loss, GradScaler (fp16 only), freezing and warm-up; its training step (``optimize_parameters``) gives
every model autocast, clipping, the non-finite guard and the EMA update the same way. The model owns the small
objects that hold the rest of the training state, because each of them saves or restores the model's own parts:

* ``WeightEMA`` (``codes.models.ema``): the EMA copy of the weights;
* ``NonFiniteGuard``, ``BestMetrics``, ``DivergenceGuard`` (``codes.models.guards``);
* ``Checkpointer`` (``codes.models.checkpointer``): save, prune (``logger.keep_last``), RNG states on resume.

Every setting is read from the option tree here, in ``__init__`` / ``_init_training``, and handed to those
objects as constructor arguments; what changes from call to call (where validation writes images, how many) is
an argument of the call. Subclasses implement ``feed_data``, ``compute_loss``, ``score_sample`` and
``save_visuals``; ``validation`` is one template for all of them.
"""
from __future__ import annotations

import abc
import fnmatch
import logging
import math
import os
import time
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from codes.archs import build_network
from codes.archs.arch_detect import fitting_network_hint
from codes.losses import build_loss
from codes.metrics import build_metric
from codes.metrics.metric_util import MetricUnavailable
from codes.models.checkpointer import Checkpointer
from codes.models.ema import WeightEMA
from codes.models.guards import BestMetrics, DivergenceGuard, NonFiniteGuard
from codes.models.optim import build_optimizer, build_scheduler, weight_decay_groups
from codes.utils import dist as dist_utils
from codes.utils import precision
from codes.utils.build import OptionError
from codes.utils.checkpoint import POINTER_NAME, load_network
from codes.visualization.panels import panel_metric

__all__ = ['BaseModel', 'Options', 'select_device']

logger = logging.getLogger(__name__)

#: the normalised option tree (``codes.utils.options.normalize_options``: every default filled in)
Options = dict[str, Any]


def select_device(opt: Options) -> torch.device:
    """``cuda:LOCAL_RANK`` when CUDA is available and ``num_gpu`` is not 0, else the CPU."""
    num_gpu = opt['num_gpu']
    if num_gpu != 0 and torch.cuda.is_available():
        return torch.device('cuda', dist_utils.local_rank())
    if num_gpu not in (0, 'auto'):
        logger.warning('num_gpu is %s but CUDA is not available: running on the CPU', num_gpu)
    return torch.device('cpu')


class BaseModel(abc.ABC):
    """Owns ``net_g`` (and its EMA), its optimisation, its checkpoints, the validation metrics (``val.metrics``)
    and the sharded gathering of per-sample validation records.

    ``feed_data`` sets ``self.lq``, ``self.gt`` (None without a ground truth) and ``self.keys`` (the sample keys,
    or None), which the training step and the validation template read.

    Args:
        opt: the whole normalised option tree.
    """

    #: whether ``validation`` writes challenge submission files (test.py's default for ``val.save_submission``)
    writes_submission = False
    #: option blocks this model adds to ``codes.utils.options.SCHEMA`` (same notation; merged in by model_type)
    option_schema: dict = {}
    #: per-sample values that ``score_sample`` adds besides the metrics (the trivial answer's score), averaged too
    reference_values: tuple[str, ...] = ()
    #: whether test.py's validation (``current_iter`` 0) logs one line per sample
    logs_per_sample = False

    def __init__(self, opt: Options) -> None:
        self.opt = opt
        self.is_train = bool(opt.get('is_train', False))
        self.rank, self.world_size = dist_utils.get_dist_info()
        self.device = select_device(opt)
        self.net_g = build_network(opt['network_g']).to(self.device)
        n_params = sum(p.numel() for p in self.net_g.parameters())
        logger.info('Network %s: %s parameters', type(self.net_g).__name__, f'{n_params:,}')
        path = opt['path']
        self.pretrained = path['pretrain_network_g']
        if self.pretrained:
            load_network(self.net_g, self.pretrained, path['strict_load_g'], path['param_key_g'],
                         describe=fitting_network_hint)
        self.ema: WeightEMA | None = None
        self.amp_dtype = precision.to_dtype(opt['train']['precision'])
        self.eval_dtype = precision.to_dtype(opt['val']['precision'])
        metrics = opt['val']['metrics']
        self.metrics: dict[str, Callable[..., float]] = {
            name: build_metric(m, f'val.metrics.{name}') for name, m in metrics.items()}
        self.best_metrics = BestMetrics({name: m.get('better', 'higher') for name, m in metrics.items()})
        self.panel_metric: str | None = panel_metric(metrics)  # the metric shown in the comparison panels' labels
        self.non_finite = NonFiniteGuard(opt['train']['nan_skip_limit'])
        self.divergence_guard: DivergenceGuard | None = None
        self.checkpointer: Checkpointer | None = None
        self._unavailable: set[str] = set()
        self.warmup_iter = 0
        if self.is_train:
            self._init_training()

    # ------------------------------------------------------------------------------------------------ setup
    def _init_training(self) -> None:
        opt, train = self.opt, self.opt['train']
        self.net_g.train()
        if float(train['ema_decay']) > 0:
            self.ema = WeightEMA(self.net_g, float(train['ema_decay']), self.pretrained)
        self.freeze_patterns = list(train['freeze']['patterns'])
        self.freeze_iters = int(train['freeze']['iters'])
        if self.freeze_patterns and self.freeze_iters > 0 and self.pretrained:
            logger.info('Not freezing %s: weights come from %s (freezing is for training from scratch)',
                        self.freeze_patterns, self.pretrained)
            self.freeze_iters = 0
        self._frozen: bool | None = None
        if self.world_size > 1:
            find_unused = opt['find_unused_parameters']
            if find_unused is None:
                find_unused = self.freeze_iters > 0
            ids = [self.device.index] if self.device.type == 'cuda' else None
            self.net_g = DistributedDataParallel(self.net_g, device_ids=ids, find_unused_parameters=find_unused)
        params = weight_decay_groups(self.optimizer_params(), self.bare_net, train['no_weight_decay'])
        self.optimizer = build_optimizer(params, train['optim_g'])
        self.scheduler = build_scheduler(self.optimizer, train['scheduler']) if train['scheduler'] else None
        self.cri_pix = build_loss(train['pixel_opt']).to(self.device)
        self.scaler = torch.amp.GradScaler(self.device.type) if train['precision'] == 'fp16' else None
        self.grad_clip_norm = train['grad_clip_norm']
        self.warmup_iter = max(int(train['warmup_iter']), 0)
        for g in self.optimizer.param_groups:  # schedulers set it too; the warm-up ramps towards it
            g.setdefault('initial_lr', g['lr'])
        guard = train['divergence_guard']
        if guard['metric'] is not None and guard['metric'] not in self.metrics:
            raise OptionError('train.divergence_guard.metric', f"'{guard['metric']}' is not one of val.metrics "
                              f"({', '.join(self.metrics) or 'none'})", opt.get('opt_file'))
        self.divergence_guard = DivergenceGuard(
            guard['metric'], guard['max_drop'], guard['lr_factor'], self.best_metrics, self.optimizer,
            {'net': self.bare_net, 'ema': self.ema, 'scaler': self.scaler})
        path = opt['path']
        self.checkpointer = Checkpointer(path['models'], path['training_states'],
                                         Path(path['experiments_root']) / POINTER_NAME, opt['logger']['keep_last'],
                                         self.rank, self.world_size)
        logger.info('Training in %s on %s (world size %d)', train['precision'], self.device, self.world_size)

    def optimizer_params(self) -> Any:
        """What the optimiser gets: all parameters of ``net_g`` (subclasses may return parameter groups)."""
        return self.bare_net.parameters()

    @property
    def bare_net(self) -> nn.Module:
        """``net_g`` without its DDP wrapper."""
        return self.net_g.module if isinstance(self.net_g, DistributedDataParallel) else self.net_g

    @property
    def eval_net(self) -> nn.Module:
        """The network used for validation and testing: the EMA copy if there is one."""
        return self.ema.net if self.ema is not None else self.bare_net

    def autocast(self, dtype: torch.dtype | None = None) -> AbstractContextManager:
        """Autocast to ``dtype`` (default: the training precision); a no-op for fp32."""
        return precision.autocast(self.device, dtype or self.amp_dtype)

    # --------------------------------------------------------------------------------- the model's own steps
    @abc.abstractmethod
    def feed_data(self, data: dict[str, Any]) -> None:
        """Move a collated batch to the device: set ``lq``, ``gt`` (or None) and ``keys`` (or None)."""

    @abc.abstractmethod
    def compute_loss(self) -> dict[str, torch.Tensor]:
        """Forward and losses of the current batch: ``{'l_total': ..., 'l_pix': ...}``."""

    @abc.abstractmethod
    def score_sample(self, output: Any, gt: torch.Tensor, i: int, names: list[str]) -> dict[str, float]:
        """The values of sample ``i`` of the batch: the metrics ``names`` (see :meth:`apply_metrics`) and the
        ``reference_values``. ``output`` is that sample's part of :meth:`predict`'s result, ``gt`` (3, H, W)."""

    @abc.abstractmethod
    def save_visuals(self, output: Any, i: int, key: str, rec: dict[str, Any], image_dir: str | Path | None,
                     tb_writer: Any, dataset_name: str, current_iter: int) -> None:
        """Write the pictures of sample ``i`` (its record ``rec``) to ``image_dir`` and/or ``tb_writer``."""

    def save_submission(self, output: Any, path: Path) -> None:
        """Write sample ``output`` in the challenge's submission format (models without one write nothing)."""

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
        # before backward: some kernels crash on NaN (deform_conv2d on CPU)
        if self.non_finite.loss_is_non_finite(total, self.world_size):
            self.optimizer.zero_grad(set_to_none=True)
            return self.non_finite.skip(current_iter, {k: float(v.detach()) for k, v in losses.items()}, 'loss')
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
            return self.non_finite.skip(current_iter, out, 'gradient')
        if self.scheduler is not None and not isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.bare_net)
        return out

    def step_plateau(self, value: float) -> None:
        """Step a ReduceLROnPlateau scheduler with a validation value (other schedulers ignore it)."""
        if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self.scheduler.step(value)

    def current_lr(self) -> list[float]:
        """The learning rate of every parameter group."""
        return [g['lr'] for g in self.optimizer.param_groups]

    @property
    def nan_skips(self) -> int:
        """How many steps were skipped for a non-finite loss or gradient."""
        return self.non_finite.count

    @property
    def nan_skip_limit(self) -> int:
        """``train.nan_skip_limit``: more skipped steps than this end the run."""
        return self.non_finite.limit

    @nan_skip_limit.setter
    def nan_skip_limit(self, value: int) -> None:
        self.non_finite.limit = int(value)

    # -------------------------------------------------------------------------------- after each validation
    @property
    def best(self) -> dict[str, dict[str, Any]]:
        """``{val set: {metric: {'value': ..., 'iter': ...}}}``: the best validation values so far."""
        return self.best_metrics.best

    def update_best(self, dataset_name: str, mean: dict[str, float], current_iter: int) -> list[str]:
        """Track the best value of every metric; returns the names that improved."""
        return self.best_metrics.update(dataset_name, mean, current_iter)

    def guard_divergence(self, dataset_name: str, mean: dict[str, float], current_iter: int) -> bool:
        """The divergence guard (``train.divergence_guard``; see ``DivergenceGuard.check``), called after each
        validation and ``update_best``: True when it rolled the training state back."""
        return self.divergence_guard is not None and self.divergence_guard.check(dataset_name, mean, current_iter)

    @property
    def rollbacks(self) -> int:
        """How many times the divergence guard rolled back."""
        return self.divergence_guard.rollbacks if self.divergence_guard is not None else 0

    # --------------------------------------------------------------------------------------------- validation
    @torch.no_grad()
    def predict(self, lq: torch.Tensor) -> Any:
        """Eval-mode forward of ``eval_net`` (EMA if any) in ``val.precision`` (fp32 by default); the output (a
        tensor, or a tuple of them) as float32."""
        net = self.eval_net
        was_training = net.training
        net.eval()
        with self.autocast(self.eval_dtype):
            out = net(lq.to(self.device))
        net.train(was_training)
        return tuple(o.float() for o in out) if isinstance(out, tuple) else out.float()

    def validation(self, loader: DataLoader, dataset_name: str, *, image_dir: str | Path | None = None,
                   submission_dir: str | Path | None = None, max_images: int = 0,
                   tb_writer: Any = None, current_iter: int = 0) -> dict[str, Any]:
        """Score every sample of ``loader`` (sharded over ranks) and return ``{'mean': {...}, 'per_image': [...]}``.

        Args:
            loader: a batch-1 loader whose sampler shards the dataset (``ShardSampler``).
            dataset_name: used in logs and image names.
            image_dir: write the pictures of the first ``max_images`` samples here (:meth:`save_visuals`).
            submission_dir: write every prediction here in the submission format (:meth:`save_submission`).
            max_images: how many samples get pictures (also sent to TensorBoard when ``tb_writer`` is given).
            current_iter: the training iteration (0: test.py).
        """
        names = [n for n in self.metrics if n not in self._unavailable]
        records: list[dict[str, Any]] = []
        start = time.time()
        for data in loader:
            self.feed_data(data)
            outputs = self.predict(self.lq)
            for i, output in enumerate(zip(*outputs) if isinstance(outputs, tuple) else outputs):
                key = self.keys[i] if self.keys is not None else str(len(records))
                rec: dict[str, Any] = {'key': key}
                if self.gt is not None:
                    rec.update(self.score_sample(output, self.gt[i].float(), i, names))
                if submission_dir is not None:
                    self.save_submission(output, Path(submission_dir) / f'{key}.png')
                if self.sample_index(len(records)) < max_images and (image_dir is not None or tb_writer is not None):
                    self.save_visuals(output, i, key, rec, image_dir, tb_writer, dataset_name, current_iter)
                records.append(rec)
        per_image = self._gather(records)
        value_names = [n for n in names + list(self.reference_values) if per_image and n in per_image[0]]
        if self.logs_per_sample and not current_iter and self.rank == 0:
            for rec in per_image:
                logger.info('%s %s: %s', dataset_name, rec['key'],
                            ', '.join(f'{n}: {rec[n]:.4f}' for n in value_names if n in rec))
        mean = {n: float(np.mean([r[n] for r in per_image])) for n in value_names}
        mean['num_samples'] = len(per_image)
        mean['seconds'] = round(time.time() - start, 3)
        return {'mean': mean, 'per_image': per_image}

    def apply_metrics(self, pred: torch.Tensor, gt: torch.Tensor, names: list[str],
                      extra: dict[str, dict[str, Any]] | None = None) -> dict[str, float]:
        """Run the metrics ``names`` (with per-metric keyword arguments ``extra``); a metric that raises
        ``MetricUnavailable`` is logged once and removed from ``names`` for the rest of the run."""
        rec = {}
        for name in list(names):
            try:
                rec[name] = float(self.metrics[name](pred, gt, **(extra or {}).get(name, {})))
            except MetricUnavailable as exc:
                logger.warning('Metric %s skipped: %s', name, exc)
                self._unavailable.add(name)
                names.remove(name)
        return rec

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

    # -------------------------------------------------------------------------------------------- checkpoints
    def save(self, current_iter: int, epoch: int, data_position: dict[str, int] | None = None) -> None:
        """Write ``net_g_<iter>.pth``, ``<iter>.state`` and the ``last_checkpoint`` pointer (``Checkpointer``).

        ``data_position`` (the epoch and the next sample of this rank's share, from the training loop) is stored
        with the state, so that a resume can say where its data continues."""
        weights = {'params': self.bare_net}
        if self.ema is not None:
            weights['params_ema'] = self.ema.net
        self.checkpointer.save(current_iter, epoch, weights, {
            'optimizers': [self.optimizer.state_dict()],
            'schedulers': [self.scheduler.state_dict()] if self.scheduler is not None else [],
            'scaler': self.scaler.state_dict() if self.scaler is not None else None,
            'best': self.best, 'nan_skips': self.nan_skips,
            'divergence_guard': self.divergence_guard.state_dict() if self.divergence_guard is not None else None,
            'data_position': dict(data_position or {})})

    def resume_training(self, state: dict, weights_path: str | os.PathLike) -> None:
        """Restore weights, EMA, optimiser, scheduler, scaler, RNG states and best metrics from a training state."""
        load_network(self.bare_net, weights_path, True, 'params')
        if self.ema is not None:
            load_network(self.ema.net, weights_path, True, 'params_ema')
        self.optimizer.load_state_dict(state['optimizers'][0])
        if self.scheduler is not None and state['schedulers']:
            self.scheduler.load_state_dict(state['schedulers'][0])
        if self.scaler is not None and state.get('scaler'):
            self.scaler.load_state_dict(state['scaler'])
        rng = self.checkpointer.restore_rng(state)
        self.best_metrics.best = state.get('best', {})
        self.non_finite.count = state.get('nan_skips', 0)
        if self.divergence_guard is not None and state.get('divergence_guard'):
            self.divergence_guard.load_state_dict(state['divergence_guard'])
        self._frozen = None
        logger.info('Resumed training state of iteration %d (epoch %d): weights, EMA, optimiser, scheduler%s, '
                    'best metrics and guards restored; random streams (Python, NumPy, torch%s) %s',
                    state['iter'], state['epoch'], ', GradScaler' if self.scaler is not None else '',
                    ', CUDA' if torch.cuda.is_available() else '',
                    'restored' if rng else 'NOT restored (another rank count wrote the state)')
