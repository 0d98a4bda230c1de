"""Run a trained model on your own bursts or images: ``python infer.py -opt options/infer.yml`` or
``python infer.py --weights W --input PATH --output DIR [--device cpu|cuda] [--tile 64 --tile-overlap 8]``."""
import sys

from codes.infer import infer_pipeline
from codes.utils.build import OptionError
from codes.utils.checkpoint import CheckpointError

if __name__ == '__main__':
    try:
        infer_pipeline()
    except (OptionError, CheckpointError, FileNotFoundError, ValueError, ImportError, OSError) as exc:
        sys.exit(f'infer.py: error: {exc}')
