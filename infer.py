"""Run a trained model on your own bursts or images: ``python infer.py -opt options/infer.yml`` or
``python infer.py --weights W --input PATH --output DIR [--device cpu|cuda] [--tile 64 --tile-overlap 8]``."""
from codes.infer import infer_pipeline
from codes.utils.errors import run_cli

if __name__ == '__main__':
    run_cli(infer_pipeline, 'infer.py')
