"""Shared fixtures: the repository root on sys.path, and sample data generated once per session."""
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@pytest.fixture(scope='session')
def sample_data(tmp_path_factory) -> Path:
    """Zurich-layout training photos and a SyntheticBurstVal-format set made from scikit-image's photographs."""
    from codes.scripts.make_sample_data import ensure_sample_data
    out = tmp_path_factory.mktemp('data') / 'sample'
    ensure_sample_data(str(out))
    return out


@pytest.fixture(scope='module')
def one_thread():
    """Tiny tensors gain nothing from intra-op threads, and on a busy 2-core box they spin (3x slower)."""
    import torch
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
