"""Logging set-up for the entry points, and the experiment trackers (TensorBoard, Weights & Biases).

Modules log through ``logging.getLogger(__name__)``; only the entry points call :func:`setup_logging`, and only
rank 0 writes below WARNING. :func:`build_trackers` gives ``train.py`` one writer (``add_scalar`` / ``add_image``)
that feeds TensorBoard (``logger.use_tb_logger``) and, optionally, W&B (``logger.wandb: {project, entity,
resume_id}``; ``WANDB_MODE=offline`` works without network). The W&B run id is kept in
``experiments/<name>/wandb_run_id``, so a resumed run (``--auto_resume``) continues the same W&B run.
"""
from __future__ import annotations

import json
import logging
import os
import secrets
import string
import sys
from pathlib import Path
from typing import Any

__all__ = ['setup_logging', 'append_jsonl', 'format_options', 'Trackers', 'build_trackers', 'init_wandb',
           'WANDB_ID_FILE']

FORMAT = '%(asctime)s %(levelname)s: %(message)s'
#: File of the experiment folder that holds the W&B run id.
WANDB_ID_FILE = 'wandb_run_id'

log = logging.getLogger(__name__)


def setup_logging(log_file: str | os.PathLike | None, rank: int = 0, level: int = logging.INFO) -> logging.Logger:
    """Configure the ``codes`` logger: console on every rank (WARNING and up on ranks > 0), file on rank 0."""
    logger = logging.getLogger('codes')
    for h in list(logger.handlers):
        logger.removeHandler(h)
        h.close()
    logger.setLevel(level if rank == 0 else logging.WARNING)
    logger.propagate = False
    console = logging.StreamHandler(sys.stdout)
    console.setFormatter(logging.Formatter(FORMAT if rank == 0 else f'[rank {rank}] {FORMAT}'))
    logger.addHandler(console)
    if log_file is not None and rank == 0:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(log_file, mode='a', encoding='utf-8')
        fh.setFormatter(logging.Formatter(FORMAT))
        logger.addHandler(fh)
    return logger


def append_jsonl(path: str | os.PathLike, record: dict[str, Any]) -> None:
    """Append one JSON record as a line (flushed and fsynced, so a killed run keeps what it logged)."""
    with open(path, 'a', encoding='utf-8') as f:
        f.write(json.dumps(record, sort_keys=False) + '\n')
        f.flush()
        os.fsync(f.fileno())


def format_options(opt: dict, indent: int = 0) -> str:
    """Options as an indented multi-line string for the log."""
    lines = []
    for k, v in opt.items():
        if isinstance(v, dict):
            lines.append(' ' * indent + f'{k}:')
            lines.append(format_options(v, indent + 2))
        else:
            lines.append(' ' * indent + f'{k}: {v}')
    return '\n'.join(lines)


class Trackers:
    """TensorBoard and W&B behind TensorBoard's ``add_scalar`` / ``add_image`` / ``close`` (either may be None)."""

    def __init__(self, tb: Any = None, wandb_run: Any = None) -> None:
        self.tb, self.wandb_run = tb, wandb_run

    def __bool__(self) -> bool:
        return self.tb is not None or self.wandb_run is not None

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        if self.tb is not None:
            self.tb.add_scalar(tag, value, step)
        if self.wandb_run is not None:
            self.wandb_run.log({tag: value}, step=step)

    def add_image(self, tag: str, image: Any, step: int, dataformats: str = 'HWC') -> None:
        """``image``: a uint8 array, (H, W, 3) for 'HWC' or (H, W) for 'HW'."""
        if self.tb is not None:
            self.tb.add_image(tag, image, step, dataformats=dataformats)
        if self.wandb_run is not None:
            import wandb
            self.wandb_run.log({tag: wandb.Image(image, caption=f'{tag} @ {step}')}, step=step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb_run is not None:
            self.wandb_run.finish()
        self.tb = self.wandb_run = None


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj if isinstance(obj, (str, int, float, bool)) or obj is None else str(obj)


def init_wandb(opt: dict) -> Any:
    """Start (or continue) the W&B run of ``logger.wandb``; None when it is not configured or the package is
    missing (said in the log).

    The run id is ``logger.wandb.resume_id`` if given, else the one stored in ``<experiments_root>/wandb_run_id``
    by an earlier start of this experiment, else a new one (then stored); ``resume='allow'`` continues that run.
    The options are the run's config; files go to ``<experiments_root>/wandb/``.
    """
    cfg = (opt.get('logger') or {}).get('wandb') or {}
    if not cfg.get('project'):
        return None
    try:
        import wandb
    except ImportError:
        log.warning('logger.wandb is set but the wandb package is not installed (pip install wandb): not logging '
                    'to Weights & Biases')
        return None
    exp = Path(opt['path']['experiments_root'])
    id_file = exp / WANDB_ID_FILE
    run_id = cfg.get('resume_id') or (id_file.read_text().strip() if id_file.is_file() else None)
    run_id = run_id or ''.join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))
    exp.mkdir(parents=True, exist_ok=True)
    id_file.write_text(run_id + '\n')
    run = wandb.init(project=cfg['project'], entity=cfg.get('entity'), id=run_id, resume='allow',
                     name=opt.get('name'), dir=str(exp), config=_json_safe(opt))
    log.info('Weights & Biases run %s (project %s, mode %s)', run_id, cfg['project'],
             os.environ.get('WANDB_MODE', 'online'))
    return run


def build_trackers(opt: dict, rank: int = 0) -> Trackers:
    """The trackers of a training run: TensorBoard under ``path.tb_logger`` when ``logger.use_tb_logger``, W&B
    when ``logger.wandb`` is set; nothing on ranks > 0 (an empty, false :class:`Trackers`)."""
    if rank != 0:
        return Trackers()
    tb = None
    if (opt.get('logger') or {}).get('use_tb_logger'):
        from torch.utils.tensorboard import SummaryWriter
        tb = SummaryWriter(opt['path']['tb_logger'])
    return Trackers(tb, init_wandb(opt))
