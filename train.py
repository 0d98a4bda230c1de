"""Train a model from an option file: ``python train.py -opt options/train_synthetic.yml``.

Distributed: ``torchrun --nproc_per_node=N train.py -opt ...`` (``--launcher pytorch`` and ``--local_rank`` are
accepted for old launch scripts; the process group is taken from the environment). SLURM: ``srun python train.py
-opt ... --launcher slurm`` (see ``scripts/slurm_train.sbatch``). On SIGTERM / SIGUSR1 the run saves its state and
exits with status 75; torchrun restarts resume by themselves.
"""
from pathlib import Path

from codes.train import train_pipeline
from codes.utils.errors import run_cli

if __name__ == '__main__':
    run_cli(lambda: train_pipeline(Path(__file__).resolve().parent), 'train.py')
