"""The study database that workers share: its URL, the lock that serialises workers, the heartbeat of a running
trial, and the failing of trials whose worker died.

Optuna, SQLAlchemy and the database drivers are imported inside the functions that need them.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
from typing import Any, Iterator

from codes.utils.file_lock import exclusive_lock

__all__ = ['storage_url', 'display_url', 'study_lock', 'heartbeat', 'fail_stale_trials']

logger = logging.getLogger(__name__)

#: The prefix of the lock names; every worker of a study must derive the same name, whatever its version.
_LOCK_NAMESPACE = 'codes.tune'


def storage_url(url: str) -> str:
    """``url`` with the PostgreSQL driver made explicit: a plain ``postgresql://`` URL means psycopg2 (which
    ``requirements.txt`` installs), not SQLAlchemy 2.1's default psycopg 3; ``postgresql+<driver>://`` is kept.
    Anything that is not a URL is returned as it is (and reported when the study is opened)."""
    try:
        from sqlalchemy.engine import make_url
        parsed = make_url(url)
    except Exception:
        return url
    if parsed.drivername == 'postgresql':
        return parsed.set(drivername='postgresql+psycopg2').render_as_string(hide_password=False)
    return url


def display_url(url: str) -> str:
    """``url`` with its password hidden, for logs and error messages."""
    try:
        from sqlalchemy.engine import make_url
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


@contextlib.contextmanager
def study_lock(url: str, study_name: str, engine: Any) -> Iterator[None]:
    """Serialise study set-up and trial proposal between workers of the same study.

    SQLite: an exclusive ``flock`` on ``<database>.lock`` (workers on one machine). PostgreSQL:
    ``pg_advisory_xact_lock``; MySQL/MariaDB: ``GET_LOCK``, both held by a connection of ``engine``. Other
    databases get no lock (a few extra trials may then be proposed when workers finish together).
    """
    from sqlalchemy import text
    from sqlalchemy.engine import make_url
    backend = make_url(url).get_backend_name()
    digest = hashlib.sha256(f'{_LOCK_NAMESPACE}:{study_name}'.encode()).digest()
    if backend == 'sqlite':
        database = make_url(url).database
        if not database or database == ':memory:':
            yield
            return
        with exclusive_lock(f'{database}.lock'):
            yield
    elif backend == 'postgresql':
        key = int.from_bytes(digest[:8], 'big', signed=True)
        with engine.begin() as conn:  # the lock lasts until this transaction ends
            conn.execute(text('SELECT pg_advisory_xact_lock(:k)'), {'k': key})
            yield
    elif backend in ('mysql', 'mariadb'):
        name = f'{_LOCK_NAMESPACE}.{digest.hex()[:40]}'
        with engine.connect() as conn:
            got = conn.execute(text('SELECT GET_LOCK(:n, 600)'), {'n': name}).scalar()
            if got != 1:
                raise TimeoutError(f'could not take the study lock {name} within 600 s')
            try:
                yield
            finally:
                conn.execute(text('SELECT RELEASE_LOCK(:n)'), {'n': name})
    else:
        yield


@contextlib.contextmanager
def heartbeat(storage: Any, trial_id: int, interval: int) -> Iterator[None]:
    """Record the trial's heartbeat every ``interval`` s (none when ``interval`` <= 0) while the block runs, so a
    worker that dies leaves a trial other workers can mark as failed (:func:`fail_stale_trials`)."""
    if interval <= 0:
        yield
        return
    stop = threading.Event()

    def beat() -> None:
        while True:
            try:
                storage.record_heartbeat(trial_id)
            except Exception as exc:  # a lost connection must not kill the training thread
                logger.warning('Could not record the heartbeat of trial id %d: %s', trial_id, exc)
            if stop.wait(interval):
                return

    thread = threading.Thread(target=beat, name='tune-heartbeat', daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def fail_stale_trials(study: Any) -> list[int]:
    """Fail the running trials whose worker stopped recording heartbeats (killed, or its machine or database
    connection lost), recording why in their ``fail_reason``; returns their numbers. Optuna's own
    ``fail_stale_trials`` gives no reason."""
    import optuna
    from optuna.trial import TrialState
    storage = study._storage
    stale_ids = getattr(storage, '_get_stale_trial_ids', None)
    if stale_ids is None:  # another storage: Optuna's function, without the reason
        optuna.storages.fail_stale_trials(study)
        return []
    grace = storage.get_heartbeat_interval() if hasattr(storage, 'get_heartbeat_interval') else None
    failed = []
    for trial_id in stale_ids(study._study_id):
        try:
            trial = storage.get_trial(trial_id)
            worker = trial.user_attrs.get('worker', 'its worker')
            storage.set_trial_user_attr(trial_id, 'fail_reason', f'the worker {worker} stopped sending heartbeats '
                                        f'(every {grace} s) during the trial: killed, or its machine or database '
                                        'connection was lost; its trial process ends with it')
            if storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
                failed.append(trial.number)
        except optuna.exceptions.UpdateFinishedTrialError:  # another worker failed it first
            pass
    for number in failed:
        logger.warning('Trial %d failed: its worker stopped sending heartbeats', number)
    return failed
