"""Read-only LMDB environments, opened lazily once per process, and the reader every LMDB backend builds on.

An environment is never used across ``fork`` (the process id is checked) nor pickled (spawned workers, torchrun);
it is opened ``readonly=True, lock=False, readahead=False, meminit=False`` with a configurable ``max_readers``,
after checking that ``data.mdb`` is as long as its own meta pages say.
"""
from __future__ import annotations

import os
import threading
from typing import Any, Sequence

import numpy as np

from codes.data.io_backend.errors import LmdbFormatError, MissingKeyError
from codes.data.io_backend.format import ValueInfo

__all__ = ['DEFAULT_MAX_READERS', 'LmdbReader', 'check_lmdb_length']

DEFAULT_MAX_READERS = 1024


class _EnvCache:
    """The read-only environments open in this process, shared by every backend on the same database.

    py-lmdb refuses to open one environment twice in a process, so two datasets on one database (or a dataset
    rebuilt in a test) must share it. After a fork the inherited environments are closed, never used, and the
    child opens its own (with ``lock=False`` closing them touches no lock of the parent's).
    """

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.envs: dict[tuple, list] = {}  # (realpath, dev, inode) -> [environment, users]
        self.lock = threading.Lock()

    def _forget_inherited(self) -> None:
        if self.pid != os.getpid():
            for env, _ in self.envs.values():
                try:
                    env.close()
                except Exception:  # pragma: no cover - closing an inherited handle is best effort
                    pass
            self.envs.clear()
            self.pid = os.getpid()

    @staticmethod
    def ident(path: str) -> tuple:
        real = os.path.realpath(path)
        try:
            st = os.stat(os.path.join(real, 'data.mdb'))
            return real, st.st_dev, st.st_ino
        except OSError:
            return real, None, None

    def acquire(self, path: str, max_readers: int, readahead: bool) -> tuple[Any, tuple]:
        import lmdb
        with self.lock:
            self._forget_inherited()
            ident = self.ident(path)
            slot = self.envs.get(ident)
            if slot is None:
                try:
                    env = lmdb.open(path, readonly=True, lock=False, readahead=readahead, meminit=False,
                                    max_readers=max_readers, subdir=True)
                except lmdb.Error as exc:
                    raise LmdbFormatError(path, f'cannot open the LMDB: {exc}') from None
                try:
                    check_lmdb_length(path, env)
                except BaseException:
                    env.close()
                    raise
                slot = self.envs[ident] = [env, 0]
            slot[1] += 1
            return slot[0], ident

    def release(self, ident: tuple) -> None:
        with self.lock:
            if self.pid != os.getpid():
                return
            slot = self.envs.get(ident)
            if slot is not None:
                slot[1] -= 1
                if slot[1] <= 0:
                    del self.envs[ident]
                    slot[0].close()


def check_lmdb_length(path: str, env: Any) -> None:
    """Refuse a ``data.mdb`` shorter than the pages its own meta page counts, before any read maps them.

    LMDB maps the file and reading a page past its end kills the process with SIGBUS (a truncated copy, a full
    disk during a copy). The environment's last page number (``env.info()['last_pgno']``) and page size
    (``env.stat()['psize']``) come from the meta pages at the start of the file, so the length it needs is known
    without touching any other page.
    """
    pages = int(env.info()['last_pgno']) + 1
    psize = int(env.stat()['psize'])
    need = pages * psize
    have = os.path.getsize(os.path.join(path, 'data.mdb'))
    if have < need:
        raise LmdbFormatError(path, f'data.mdb is truncated: {have:,} bytes, but the database holds {pages:,} '
                              f'pages of {psize} bytes ({need:,} bytes); copy it again in full or rebuild it with '
                              '`python -m codes.scripts.create_lmdb`')


_ENVS = _EnvCache()  # one per process by construction (see _forget_inherited)


class LmdbReader:
    """Lazily opened, per-process, read-only LMDB environment; the base of every LMDB backend (a subclass fills
    ``index`` and implements ``_decode``)."""
    kind = 'lmdb'
    layout = 'images'

    def __init__(self, path: str, max_readers: int = DEFAULT_MAX_READERS, readahead: bool = False) -> None:
        self.path = os.fspath(path)
        self.max_readers = max_readers
        self.readahead = readahead
        self._env: Any = None
        self._ident: tuple | None = None
        self._pid: int | None = None
        self.index: dict[str, ValueInfo] = {}

    def _open(self) -> Any:
        pid = os.getpid()
        if self._env is None or self._pid != pid:  # never reuse an environment inherited across fork
            self._env, self._ident = _ENVS.acquire(self.path, self.max_readers, self.readahead)
            self._pid = pid
        return self._env

    def close(self) -> None:
        """Release this process's environment (it reopens on the next read)."""
        if self._env is not None and self._pid == os.getpid():
            _ENVS.release(self._ident)
        self._env, self._ident, self._pid = None, None, None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state['_env'], state['_ident'], state['_pid'] = None, None, None
        return state

    def __del__(self) -> None:  # pragma: no cover - interpreter shutdown order varies
        try:
            self.close()
        except Exception:
            pass

    def _raw_get(self, txn: Any, key: str) -> Any:
        return txn.get(key.encode('utf-8'))

    def keys(self, prefix: str = '') -> list[str]:
        """Keys (from meta_info) that start with ``prefix``, in meta_info order."""
        return [k for k in self.index if k.startswith(prefix)]

    def info(self, key: str) -> ValueInfo:
        try:
            return self.index[key]
        except KeyError:
            import difflib
            close = difflib.get_close_matches(key, list(self.index), n=3)
            hint = f'; close keys: {close}' if close else ''
            raise MissingKeyError(self.path, f'key not in meta_info ({len(self.index)} keys){hint}', key) from None

    def name(self, key: str) -> str:
        """The source file name recorded for ``key``."""
        return self.info(key).name

    def describe(self, key: str) -> str:
        return f'{self.path} [key {key!r}]'

    def _decode(self, key: str, info: ValueInfo, buf: Any) -> np.ndarray | bytes:
        raise NotImplementedError

    def get(self, key: str) -> np.ndarray | bytes:
        """The value of ``key`` (an array, or bytes for pickles)."""
        return self.get_many([key])[0]

    def get_many(self, keys: Sequence[str]) -> list:
        """The values of ``keys``, read in one transaction."""
        infos = [self.info(k) for k in keys]
        import lmdb
        env = self._open()
        try:
            txn = env.begin(write=False, buffers=True)
        except lmdb.MapResizedError:  # another process grew the database since this one mapped it
            env.set_mapsize(0)
            txn = env.begin(write=False, buffers=True)
        with txn:
            out = []
            for key, info in zip(keys, infos):
                buf = self._raw_get(txn, key)
                if buf is None:
                    raise MissingKeyError(self.path, 'listed in meta_info but absent from the database '
                                          '(an incomplete or altered build?)', key)
                out.append(self._decode(key, info, buf))
        return out

    def __len__(self) -> int:
        return len(self.index)
