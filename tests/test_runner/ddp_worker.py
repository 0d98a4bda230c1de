"""Run the training pipeline under torchrun and save this rank's final weights to ``OUT/rank<r>.pth``."""
import os
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from codes.train import train_pipeline  # noqa: E402

if __name__ == '__main__':
    out = Path(sys.argv[1])
    model = train_pipeline(ROOT, sys.argv[2:])
    torch.save(model.bare_net.state_dict(), out / f"rank{os.environ.get('RANK', '0')}.pth")
