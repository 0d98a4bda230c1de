"""Exact resume: 8 iterations straight and 4 + ``--auto_resume`` to 8 end bit-identical (weights, EMA, optimiser,
scheduler) for the BSRT and DCLS demos with 1 and 2 data workers; the data after a resume are the uninterrupted
run's data."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from codes.data.loader import SeededDataset, SeededSampler, TrainSampler, build_dataloader
from codes.data.synthetic_burst_dataset import SyntheticBurstDataset
from codes.train import train_pipeline
from tests.test_runner.resume_cases import (ROOT, blind_train_images, bsrt_demo, dcls_demo, differences,
                                            final_state, write)

pytestmark = pytest.mark.usefixtures('one_thread')


def straight_and_resumed(tmp: Path, make, workers: int, precision: str = 'fp32') -> tuple[Path, Path]:
    """Train ``make(...)`` 8 iterations straight, and 4 then ``--auto_resume`` to 8; the two experiment folders."""
    exps = []
    for kind in ('straight', 'resumed'):
        opt = make(f'{kind}{workers}_{precision}', workers)
        opt['train']['precision'] = precision
        path = write(tmp / f'{kind}{workers}_{precision}.yml', opt)
        if kind == 'straight':
            train_pipeline(ROOT, ['-opt', str(path)])
        else:
            train_pipeline(ROOT, ['-opt', str(path), '--force_yml', 'train.total_iter=4'])
            train_pipeline(ROOT, ['-opt', str(path), '--auto_resume'])
        exps.append(Path(opt['path']['experiments_root']))
    return exps[0], exps[1]


@pytest.fixture(scope='module', params=[1, 2], ids=['1worker', '2workers'])
def bsrt_runs(request, tmp_path_factory, sample_data):
    tmp = tmp_path_factory.mktemp('bsrt_resume')
    return straight_and_resumed(tmp, lambda name, w: bsrt_demo(tmp, sample_data, name, w), request.param)


@pytest.fixture(scope='module', params=[(1, 'fp32'), (2, 'fp32'), (1, 'fp16')],
                ids=['1worker', '2workers', '1worker-fp16-GradScaler'])
def dcls_runs(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp('dcls_resume')
    hr = blind_train_images(tmp / 'data')
    workers, precision = request.param
    return straight_and_resumed(tmp, lambda name, w: dcls_demo(tmp, hr, name, w), workers, precision)


def _check(runs: tuple[Path, Path]) -> None:
    straight, resumed = runs
    a, b = final_state(straight), final_state(resumed)
    assert not differences(a, b), differences(a, b)[:10]
    # the comparison is not vacuous: the run moved the weights away from the checkpoint it resumed from
    assert differences(final_state(resumed, 4)['params'], b['params'])


def test_bsrt_resume_is_bit_identical(bsrt_runs):
    _check(bsrt_runs)
    log = ''.join(p.read_text() for p in sorted(bsrt_runs[1].glob('train_*.log')))
    state = bsrt_runs[1] / 'training_states' / '4.state'
    assert f'Resumed from {state} at iteration 4: the data continue at epoch' in log
    assert 'random streams (Python, NumPy, torch) restored' in log
    assert 'Unfroze' in log  # the freeze (iterations 1-5) ends after the resume point


def test_dcls_resume_is_bit_identical(dcls_runs):
    _check(dcls_runs)
    scaler = final_state(dcls_runs[1])['scaler']
    if dcls_runs[1].name.endswith('fp16'):
        assert scaler is not None and scaler['scale'] > 0  # the GradScaler's state was compared too


def test_batches_after_a_mid_epoch_resume_are_the_uninterrupted_batches(sample_data):
    """With ``dataset_enlarge_ratio`` and 2 workers, batch k after a restart at batch 3 is batch 3 + k of the
    epoch, and the samples do not depend on the worker count."""
    ds = SyntheticBurstDataset(str(sample_data / 'zurich'), burst_size=2, crop_size=192, dataset_enlarge_ratio=3)
    opt = {'num_worker_per_gpu': 2, 'batch_size_per_gpu': 2, 'pin_memory': False, 'timeout': 0,
           'persistent_workers': False, 'prefetch_factor': None}

    def batches(workers: int, start: int, count: int) -> list[torch.Tensor]:
        sampler = SeededSampler(TrainSampler(len(ds), 1, 0, seed=7))
        sampler.set_epoch(2, start * 2)
        loader = build_dataloader(SeededDataset(ds), {**opt, 'num_worker_per_gpu': workers}, sampler, 7)
        out = []
        for batch in loader:
            out.append(batch['lq'])
            if len(out) == count:
                break
        return out

    full = batches(2, 0, 5)
    assert all(torch.equal(x, y) for x, y in zip(batches(2, 3, 2), full[3:]))
    assert all(torch.equal(x, y) for x, y in zip(batches(0, 0, 5), full))
    assert not torch.equal(full[0], full[1])
