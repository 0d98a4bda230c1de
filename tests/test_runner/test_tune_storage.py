"""codes.tune.storage alone: the SQLite study lock, the heartbeat thread and URL display (no Optuna study)."""
import fcntl
import logging
import threading
import time

import pytest

pytest.importorskip('sqlalchemy')
from codes.tune.storage import display_url, heartbeat, study_lock  # noqa: E402


def _locked_elsewhere(path) -> bool:
    """Whether another open file description of ``path`` cannot take the flock now."""
    with open(path, 'a+b') as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fh, fcntl.LOCK_UN)
        return False


def test_sqlite_lock_is_a_file_lock_beside_the_database(tmp_path):
    db = tmp_path / 'study.db'
    lock = tmp_path / 'study.db.lock'
    with study_lock(f'sqlite:///{db}', 'a study', None):
        assert _locked_elsewhere(lock)
    assert not _locked_elsewhere(lock)


def test_sqlite_lock_serialises_two_holders(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    events = []

    def hold(name):
        with study_lock(url, 's', None):
            events.append(f'{name} in')
            time.sleep(0.2)
            events.append(f'{name} out')

    threads = [threading.Thread(target=hold, args=(n,)) for n in 'ab']
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert events in (['a in', 'a out', 'b in', 'b out'], ['b in', 'b out', 'a in', 'a out'])


def test_in_memory_sqlite_has_no_lock_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with study_lock('sqlite:///:memory:', 's', None):
        pass
    assert list(tmp_path.iterdir()) == []


class FakeStorage:
    def __init__(self, fail_first=False):
        self.beats = []
        self.fail_first = fail_first

    def record_heartbeat(self, trial_id):
        self.beats.append(trial_id)
        if self.fail_first and len(self.beats) == 1:
            raise ConnectionError('database gone')


def test_heartbeat_beats_while_the_block_runs_and_stops_after():
    storage = FakeStorage(fail_first=True)
    warnings = []
    handler = logging.Handler()
    handler.emit = lambda record: warnings.append(record.getMessage())
    log = logging.getLogger('codes.tune.storage')
    log.addHandler(handler)  # the 'codes' logger may not propagate (setup_logging), so listen here
    try:
        with heartbeat(storage, 7, 1):
            time.sleep(1.5)
            assert [t for t in threading.enumerate() if t.name == 'tune-heartbeat']
    finally:
        log.removeHandler(handler)
    count = len(storage.beats)
    assert count >= 2 and set(storage.beats) == {7}  # the failed first beat did not stop the thread
    assert warnings == ['Could not record the heartbeat of trial id 7: database gone']
    assert not [t for t in threading.enumerate() if t.name == 'tune-heartbeat']
    time.sleep(1.2)
    assert len(storage.beats) == count


def test_no_heartbeat_when_the_interval_is_zero():
    storage = FakeStorage()
    with heartbeat(storage, 7, 0):
        assert not [t for t in threading.enumerate() if t.name == 'tune-heartbeat']
    assert storage.beats == []


def test_display_url_hides_the_password():
    assert display_url('postgresql+psycopg2://me:secret@db:5432/optuna') == 'postgresql+psycopg2://me:***@db:5432/optuna'
    assert display_url('not a url') == 'not a url'
