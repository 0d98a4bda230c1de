"""Checkpointer (save, prune by keep_last, RNG states) and the last_checkpoint pointer that auto-resume reads."""
import errno
import logging
import random
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from codes.models.checkpointer import Checkpointer
from codes.utils.checkpoint import (POINTER_NAME, STATE_KEYS, SaveError, find_resume_state, load_file, read_pointer,
                                    write_pointer)


def _checkpointer(tmp_path: Path, keep_last: int = 0) -> Checkpointer:
    return Checkpointer(tmp_path / 'models', tmp_path / 'training_states', tmp_path / POINTER_NAME, keep_last)


def _save(ckpt: Checkpointer, it: int, net: nn.Module) -> None:
    ckpt.save(it, 0, {'params': net}, {'optimizers': [{}], 'schedulers': [], 'best': {}, 'nan_skips': 0})


def test_save_writes_weights_state_and_pointer(tmp_path):
    net = nn.Linear(2, 3)
    ckpt = _checkpointer(tmp_path)
    _save(ckpt, 7, net)
    weights = load_file(tmp_path / 'models' / 'net_g_7.pth')
    assert set(weights) == {'params'} and torch.equal(weights['params']['weight'], net.weight.detach())
    state = load_file(tmp_path / 'training_states' / '7.state')
    assert set(STATE_KEYS) <= set(state) and state['iter'] == 7 and state['world_size'] == 1
    assert len(state['rng']) == 1 and 'torch' in state['rng'][0]
    assert (tmp_path / POINTER_NAME).read_text() == f"{tmp_path / 'training_states' / '7.state'}\n"
    assert read_pointer(tmp_path / POINTER_NAME, tmp_path / 'training_states') == ckpt.state_path(7)


def test_keep_last_prunes_the_oldest_pairs(tmp_path):
    net = nn.Linear(2, 2)
    ckpt = _checkpointer(tmp_path, keep_last=2)
    for it in (1, 2, 3, 10):
        _save(ckpt, it, net)
    assert ckpt.saved_iters() == [3, 10]
    assert sorted(p.name for p in (tmp_path / 'models').iterdir()) == ['net_g_10.pth', 'net_g_3.pth']
    keep_all = _checkpointer(tmp_path / 'all')
    for it in (1, 2, 3):
        _save(keep_all, it, net)
    assert keep_all.saved_iters() == [1, 2, 3]


def test_restore_rng_puts_the_generators_back(tmp_path, caplog):
    ckpt = _checkpointer(tmp_path)
    torch.manual_seed(1)
    random.seed(1)
    _save(ckpt, 1, nn.Linear(1, 1))
    expected = (torch.rand(3), random.random())
    torch.rand(5)
    ckpt.restore_rng(load_file(ckpt.state_path(1)))
    got = (torch.rand(3), random.random())
    assert torch.equal(got[0], expected[0]) and got[1] == expected[1]
    two_ranks = Checkpointer(tmp_path / 'm', tmp_path / 's', tmp_path / 'p', world_size=2, rank=1)
    with caplog.at_level(logging.WARNING):
        two_ranks.restore_rng(load_file(ckpt.state_path(1)))
    assert 'written by 1 ranks, this run has 2' in caplog.text


def test_a_failed_pointer_write_is_a_one_line_save_error(tmp_path, monkeypatch):
    import codes.utils.files as files
    pointer = tmp_path / POINTER_NAME
    write_pointer(pointer, tmp_path / '1.state')

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, 'No space left on device')

    monkeypatch.setattr(files, 'open', full, raising=False)
    with pytest.raises(SaveError) as info:
        write_pointer(pointer, tmp_path / '2.state')
    msg = str(info.value)
    assert msg.startswith(f'could not write {pointer}: no space left on the device; the previous file')
    assert 'intact' in msg and '\n' not in msg
    monkeypatch.undo()
    assert pointer.read_text().strip() == str(tmp_path / '1.state')
    assert sorted(p.name for p in tmp_path.iterdir()) == [POINTER_NAME]  # no temporary file left


def _run_with_states(tmp_path: Path, iters: tuple[int, ...]) -> Checkpointer:
    ckpt = _checkpointer(tmp_path)
    for it in iters:
        _save(ckpt, it, nn.Linear(2, 2))
    return ckpt


def test_auto_resume_takes_the_pointer_when_it_names_the_newest_state(tmp_path, caplog):
    ckpt = _run_with_states(tmp_path, (1, 2))
    with caplog.at_level(logging.INFO, logger='codes.utils.checkpoint'):
        state, path, weights = find_resume_state(ckpt.states_dir, ckpt.models_dir, pointer=ckpt.pointer)
    assert state['iter'] == 2 and path == ckpt.state_path(2) and weights == ckpt.weights_path(2)
    assert f'Resuming from {ckpt.state_path(2)}, named by {ckpt.pointer}' in caplog.text
    assert 'scanning' not in caplog.text


def test_auto_resume_scans_when_the_pointer_is_missing_stale_or_broken(tmp_path, caplog):
    ckpt = _run_with_states(tmp_path, (1, 2))
    # stale: a newer complete pair exists (written without the pointer)
    write_pointer(ckpt.pointer, ckpt.state_path(1))
    with caplog.at_level(logging.INFO, logger='codes.utils.checkpoint'):
        assert find_resume_state(ckpt.states_dir, ckpt.models_dir, pointer=ckpt.pointer)[0]['iter'] == 2
    assert 'names an older state' in caplog.text and 'named by' not in caplog.text
    # garbage or missing pointer
    for text in ('not a path\n', ''):
        ckpt.pointer.write_text(text)
        assert find_resume_state(ckpt.states_dir, ckpt.models_dir, pointer=ckpt.pointer)[0]['iter'] == 2
    ckpt.pointer.unlink()
    assert find_resume_state(ckpt.states_dir, ckpt.models_dir, pointer=ckpt.pointer)[0]['iter'] == 2
    # the pointer names the newest state, but its weights are gone: the older pair is taken, the broken one reported
    write_pointer(ckpt.pointer, ckpt.state_path(2))
    ckpt.weights_path(2).unlink()
    skipped = []
    state, path, _ = find_resume_state(ckpt.states_dir, ckpt.models_dir, skipped, pointer=ckpt.pointer)
    assert state['iter'] == 1 and path == ckpt.state_path(1)
    assert [p for p, _ in skipped] == [ckpt.state_path(2)]


def test_the_pointer_resolves_in_a_moved_experiment_folder(tmp_path):
    old = tmp_path / 'old'
    ckpt = _run_with_states(old, (3,))
    moved = tmp_path / 'moved'
    old.rename(moved)
    assert read_pointer(moved / POINTER_NAME, moved / 'training_states') == moved / 'training_states' / '3.state'
    state, path, _ = find_resume_state(moved / 'training_states', moved / 'models', pointer=moved / POINTER_NAME)
    assert state['iter'] == 3 and path.parent == moved / 'training_states'
    assert ckpt.pointer.parent == old  # the pointer file itself still names the old place
