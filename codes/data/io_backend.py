"""Storage backends of the datasets: image folders, and LMDBs (ours and the two legacy formats) read by key.

Restated from ``shared/spec/runner.md`` §9 and ``dcls.md`` §11 (not copied). BasicSR's ``FileClient`` /
``LmdbBackend`` (``XPixelGroup/BasicSR: basicsr/utils/file_client.py``) and MMSR/DCLS's ``_read_img_lmdb``
(``megvii-research/DCLS-SR: codes/data/util.py``) are the models; the differences are the point:

* **One interface for every backend.** ``keys(prefix)``, ``name(key)``, ``get(key)`` and ``get_many(keys)``; a
  key is the path of a file relative to the data root, without its extension (``bursts/0000/im_raw_00``), so
  files with the same name in different folders never collide. Image values are NumPy arrays exactly as
  ``cv2.imread(path, IMREAD_UNCHANGED)`` returns them (OpenCV's in-memory channel order, uint8 or uint16,
  (H, W) or (H, W, C)); pickles come back as their bytes, to be read with ``safe_loads_pickle``.
* **One read per sample.** ``get_many`` reads all the keys of a sample (a whole burst, its ground truth and its
  metadata) in one read-only transaction.
* **Lazy, per-process environments.** An LMDB is checked when the backend is made (so a bad database fails when
  the dataset is built, in the main process), then closed; each process opens its own environment on first use
  (``readonly=True, lock=False, readahead=False, meminit=False``, a configurable ``max_readers``). An environment
  is never used across ``fork`` (the process id is checked) nor pickled (spawned workers, torchrun).
* **Values are checked.** Our format records every value's shape, dtype and CRC-32 in ``meta_info.txt``; a
  truncated or corrupt value, a key missing from ``meta_info``, an incomplete build or a database of another
  format raise errors that name the database and the key.

Formats read (``open_lmdb`` detects which):

* **ours** (written by ``python -m codes.scripts.create_lmdb``): a ``__format__`` record (JSON: format name,
  version, layout, ...) and one ``__meta__/<key>`` record per value inside the database, and a ``meta_info.txt``
  with one line per value, ``<name> (<shape>) <compression> <dtype> <crc32>``, e.g.
  ``bursts/0000/im_raw_00.png (48,48,4) raw uint16 1c291ca3``. ``name`` is the source file's relative path (key
  plus extension; for ``paired``, ``gt/`` or ``lq/`` plus the path relative to the GT or LQ folder),
  ``compression`` is ``raw`` (the array's C-order bytes) or a PNG level 0-9 (the bytes of
  ``cv2.imencode('.png')``), and pickles are stored as their file bytes (dtype ``bytes``). The first three fields
  are BasicSR's, so BasicSR's own reader takes the keys of a PNG-compressed database.
* **BasicSR** image LMDBs: PNG bytes, ``meta_info.txt`` lines ``<key>.png (<h>,<w>,<c>) <level>``.
* **MMSR / DCLS** LMDBs: raw uint8 HWC bytes and a ``meta_info.pkl`` ``{'name', 'keys', 'resolution': ['C_H_W',
  ...]}`` (read with the restricted unpickler). Both legacy formats have layout ``images``.
"""
from __future__ import annotations

import json
import logging
import os
import threading
import zlib
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Protocol, Sequence, runtime_checkable

import cv2
import numpy as np

from codes.utils.errors import UserError
from codes.utils.files import IMAGE_EXTENSIONS, natural_key

__all__ = ['FORMAT_NAME', 'FORMAT_VERSION', 'FORMAT_KEY', 'META_PREFIX', 'LAYOUTS',
           'IO_BACKEND_KEYS', 'Backend', 'ValueInfo', 'LmdbError', 'LmdbFormatError', 'CorruptValueError', 'MissingKeyError',
           'check_io_backend', 'check_lmdb_length', 'open_backend', 'open_lmdb', 'resolve_lmdb_path', 'is_lmdb',
           'DiskBackend',
           'LmdbBackend', 'BasicSRLmdbBackend', 'DclsLmdbBackend', 'format_meta_line', 'parse_meta_line',
           'parse_format_record', 'decode_value', 'key_from_name', 'to_bgr_uint8', 'check_png16',
           'read_png16']

logger = logging.getLogger(__name__)

FORMAT_NAME = 'sr-toolkit-lmdb'
FORMAT_VERSION = 1
FORMAT_KEY = '__format__'  #: JSON format/version record inside the database
META_PREFIX = '__meta__/'  #: ``__meta__/<key>`` holds the meta_info line of ``<key>`` (for resume and checks)
LAYOUTS = ('images', 'synburst_val', 'burstsr', 'paired')
#: Files a folder scan takes besides the images (``IMAGE_EXTENSIONS``): the meta pickles.
PICKLE_EXTENSIONS = ('.pkl',)
#: ``io_backend`` option keys and their types.
IO_BACKEND_KEYS: dict[str, type] = {'type': str, 'max_readers': int, 'check_crc': bool, 'readahead': bool}
DEFAULT_MAX_READERS = 1024


# ---------------------------------------------------------------------------------------------------- errors
class LmdbError(UserError):
    """Base class of the LMDB errors; ``db`` and ``key`` name the database and the key (None if not one key)."""

    def __init__(self, db: str, message: str, key: str | None = None) -> None:
        self.db, self.key, self.message = db, key, message
        where = f'{db} [key {key!r}]' if key is not None else db
        super().__init__(f'{where}: {message}')

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0]


class LmdbFormatError(LmdbError, ValueError):
    """Not an LMDB, a database of another format or layout, an incomplete build, an inconsistent meta_info."""


class CorruptValueError(LmdbError, ValueError):
    """A value whose length, CRC-32 or decoded shape/dtype does not match its meta_info entry."""


class MissingKeyError(LmdbError, KeyError):
    """A key absent from meta_info, or listed there but absent from the database."""


# ---------------------------------------------------------------------------------------------------- interface
@runtime_checkable
class Backend(Protocol):
    """What every backend offers: :class:`DiskBackend`, :class:`LmdbBackend`, :class:`BasicSRLmdbBackend` and
    :class:`DclsLmdbBackend` (the LMDB readers also carry ``record``, their format record, and ``layout``)."""
    kind: str  #: 'disk' or 'lmdb'
    path: str  #: the data folder or the database, for messages

    def keys(self, prefix: str = '') -> list[str]:
        """The keys that start with ``prefix``."""

    def name(self, key: str) -> str:
        """The relative file name (with extension) of ``key``."""

    def describe(self, key: str) -> str:
        """Where ``key`` lives, for messages."""

    def get(self, key: str) -> np.ndarray | bytes:
        """The value of ``key``: an array as ``cv2.imread(IMREAD_UNCHANGED)`` gives it, or a pickle's bytes."""

    def get_many(self, keys: Sequence[str]) -> list:
        """The values of ``keys``, in one read where the storage allows it."""

    def close(self) -> None:
        """Release what the backend holds open in this process."""


# ---------------------------------------------------------------------------------------------------- meta_info
class ValueInfo(NamedTuple):
    """One ``meta_info.txt`` entry."""
    name: str  #: source file relative to the root, with its extension
    shape: tuple  #: array shape (H, W[, C]); (N,) bytes for pickles
    compression: int | None  #: PNG level, or None for raw bytes
    dtype: str | None  #: NumPy dtype name, 'bytes', or None (legacy BasicSR: whatever the PNG holds)
    crc: int | None  #: CRC-32 of the stored value (None for legacy databases)

    @property
    def key(self) -> str:
        return key_from_name(self.name)

    @property
    def nbytes(self) -> int:
        """Raw size of the value: the array's bytes (for PNG values, of the decoded array)."""
        if self.dtype == 'bytes':
            return int(self.shape[0])
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype or 'uint8').itemsize


def key_from_name(name: str) -> str:
    """The key of a relative file name: the path without its extension, with '/' separators."""
    name = name.replace(os.sep, '/')
    stem, ext = os.path.splitext(name)
    return stem if ext else name


def format_meta_line(info: ValueInfo) -> str:
    """``<name> (<shape>) <raw|level> <dtype> <crc32 hex>``."""
    shape = '(' + ','.join(str(int(s)) for s in info.shape) + (',)' if len(info.shape) == 1 else ')')
    comp = 'raw' if info.compression is None else str(int(info.compression))
    crc = '-' if info.crc is None else f'{info.crc:08x}'
    return f'{info.name} {shape} {comp} {info.dtype or "-"} {crc}'


def _parse_shape(text: str) -> tuple:
    if not (text.startswith('(') and text.endswith(')')):
        raise ValueError(f'bad shape {text!r}')
    return tuple(int(s) for s in text[1:-1].split(',') if s.strip())


def parse_meta_line(line: str) -> ValueInfo:
    """Parse one line of ours (5 fields) or BasicSR's (3 fields: name, shape, PNG level); names may hold spaces."""
    parts = line.rsplit(' ', 4)
    if len(parts) == 5 and parts[1].startswith('('):
        name, shape, comp, dtype, crc = parts
        return ValueInfo(name, _parse_shape(shape), None if comp == 'raw' else int(comp),
                         None if dtype == '-' else dtype, None if crc == '-' else int(crc, 16))
    parts = line.rsplit(' ', 2)
    if len(parts) == 3 and parts[1].startswith('('):
        name, shape, comp = parts
        return ValueInfo(name, _parse_shape(shape), int(comp), None, None)
    raise ValueError(f'cannot parse {line!r}')


def _read_meta_txt(db: str, path: Path) -> tuple[dict[str, ValueInfo], bytes]:
    """Key -> ValueInfo in file order, and the file's bytes."""
    data = path.read_bytes()
    index: dict[str, ValueInfo] = {}
    for number, line in enumerate(data.decode('utf-8').splitlines(), 1):
        if not line.strip():
            continue
        try:
            info = parse_meta_line(line.rstrip('\r'))
        except ValueError as exc:
            raise LmdbFormatError(db, f'{path.name} line {number}: {exc}') from None
        if info.key in index:
            raise LmdbFormatError(db, f'{path.name} line {number}: duplicate key (also named by '
                                  f'{index[info.key].name!r})', info.key)
        index[info.key] = info
    return index, data


def decode_value(db: str, key: str, info: ValueInfo, buf: Any, check_crc: bool = True) -> np.ndarray | bytes:
    """Decode one stored value (bytes or a buffer valid for the call) and check it against ``info``.

    Returns:
        a writable array for images (a copy, independent of the transaction), bytes for pickles.

    Raises:
        CorruptValueError naming ``db`` and ``key`` for a truncated or corrupt value.
    """
    size = len(buf)
    if check_crc and info.crc is not None:
        crc = zlib.crc32(buf)
        if crc != info.crc:
            raise CorruptValueError(db, f'corrupt value: CRC-32 {crc:08x} of its {size} bytes, meta_info records '
                                    f'{info.crc:08x}', key)
    if info.dtype == 'bytes':
        if size != info.shape[0]:
            raise CorruptValueError(db, f'truncated value: {size} bytes, meta_info records {info.shape[0]}', key)
        return bytes(buf)
    if info.compression is None:
        expected = info.nbytes
        if size != expected:
            raise CorruptValueError(db, f'truncated value: {size} bytes, but shape {info.shape} {info.dtype} '
                                    f'needs {expected}', key)
        return np.frombuffer(buf, dtype=info.dtype).reshape(info.shape).copy()
    array = cv2.imdecode(np.frombuffer(buf, dtype=np.uint8), cv2.IMREAD_UNCHANGED) if size else None
    if array is None:
        raise CorruptValueError(db, f'corrupt value: {size} bytes that do not decode as a PNG image', key)
    if info.dtype is not None:
        if tuple(array.shape) != tuple(info.shape) or array.dtype.name != info.dtype:
            raise CorruptValueError(db, f'decoded to {array.shape} {array.dtype}, meta_info records {info.shape} '
                                    f'{info.dtype}', key)
    elif tuple(array.shape[:2]) != tuple(info.shape[:2]):  # legacy BasicSR: the channels may differ (gray)
        raise CorruptValueError(db, f'decoded to {array.shape}, meta_info records {info.shape}', key)
    return array


# ---------------------------------------------------------------------------------------------------- helpers
def to_bgr_uint8(image: np.ndarray) -> np.ndarray:
    """What ``cv2.imread(path, IMREAD_COLOR)`` gives for a file that ``IMREAD_UNCHANGED`` reads as ``image``:
    3-channel uint8 BGR (gray is replicated, alpha dropped, 16-bit shifted right by 8)."""
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise TypeError(f'expected a uint8 or uint16 image, got {image.dtype}')
    if image.ndim == 2 or image.shape[2] == 1:
        return cv2.cvtColor(image.reshape(image.shape[:2]), cv2.COLOR_GRAY2BGR)
    if image.shape[2] == 4:
        return np.ascontiguousarray(image[..., :3])
    return image


def check_png16(image: np.ndarray, channels: int, source: str) -> np.ndarray:
    """``image`` itself if it is a (H, W, ``channels``) uint16 array, else ``ValueError`` naming ``source``."""
    if image.dtype != np.uint16 or image.ndim != 3 or image.shape[2] != channels:
        raise ValueError(f'{source}: expected a {channels}-channel uint16 PNG, got dtype {image.dtype} and shape '
                         f'{image.shape}')
    return image


def read_png16(path: str | os.PathLike, channels: int) -> np.ndarray:
    """A uint16 PNG with ``channels`` channels as (H, W, C), read with ``IMREAD_UNCHANGED`` (in-memory order)."""
    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f'file not found: {path}')
    image = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if image is None:
        raise OSError(f'cannot decode image: {path}')
    return check_png16(image, channels, path)


def is_lmdb(path: str | os.PathLike) -> bool:
    """Whether ``path`` is an LMDB environment folder (holds ``data.mdb``)."""
    return (Path(path) / 'data.mdb').is_file()


def resolve_lmdb_path(root: str | os.PathLike) -> str:
    """``root`` if it is an LMDB folder, else ``<root>.lmdb`` if that is one; else FileNotFoundError."""
    root = os.fspath(root).rstrip('/\\') or os.fspath(root)
    if is_lmdb(root):
        return root
    sibling = root + '.lmdb'
    if not root.endswith('.lmdb') and is_lmdb(sibling):
        return sibling
    raise FileNotFoundError(f'io_backend lmdb: {root!r} is not an LMDB folder (no data.mdb)'
                            + ('' if root.endswith('.lmdb') else f', nor is {sibling!r}')
                            + '; build one with `python -m codes.scripts.create_lmdb`')


def check_io_backend(io_backend: Mapping[str, Any] | None) -> dict:
    """Validate an ``io_backend`` option dict; returns it with defaults (``type`` 'disk')."""
    opt = dict(io_backend) if io_backend is not None else {}
    if not isinstance(io_backend, (Mapping, type(None))):
        raise ValueError(f'io_backend: expected a mapping such as {{type: lmdb}}, got {io_backend!r}')
    for key, value in opt.items():
        if key not in IO_BACKEND_KEYS:
            raise ValueError(f'io_backend.{key}: unknown key; known keys: {", ".join(IO_BACKEND_KEYS)}')
        tp = IO_BACKEND_KEYS[key]
        if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
            raise ValueError(f'io_backend.{key}: expected {tp.__name__}, got {value!r}')
    opt.setdefault('type', 'disk')
    if opt['type'] not in ('disk', 'lmdb'):
        raise ValueError(f"io_backend.type: must be 'disk' or 'lmdb', got {opt['type']!r}")
    if opt['type'] == 'disk' and len(opt) > 1:
        extra = ', '.join(k for k in opt if k != 'type')
        raise ValueError(f'io_backend: {extra} only apply to type lmdb')
    if opt.get('max_readers', 1) < 1:
        raise ValueError(f'io_backend.max_readers: must be >= 1, got {opt["max_readers"]}')
    return opt


def open_backend(io_backend: Mapping[str, Any] | None, root: str | os.PathLike,
                 layout: str | Sequence[str] | None = None) -> Backend:
    """The backend an ``io_backend`` option dict asks for, over ``root``.

    Args:
        io_backend: ``{type: disk}`` (default) or ``{type: lmdb, max_readers, check_crc, readahead}``.
        root: the data folder; for lmdb, the LMDB folder or a folder ``root.lmdb`` sits beside.
        layout: for lmdb, the layout(s) the dataset can read; a database of another layout is refused.
    """
    opt = check_io_backend(io_backend)
    if opt['type'] == 'disk':
        return DiskBackend(root)
    return open_lmdb(resolve_lmdb_path(root), max_readers=opt.get('max_readers', DEFAULT_MAX_READERS),
                     check_crc=opt.get('check_crc', True), readahead=opt.get('readahead', False), layout=layout)


# ---------------------------------------------------------------------------------------------------- disk
class DiskBackend:
    """Files under ``root`` by key (relative path without extension); images read with ``IMREAD_UNCHANGED``.

    ``get`` looks for ``root/key`` plus each extension of ``IMAGE_EXTENSIONS`` and ``.pkl`` (or uses the index
    that ``keys`` builds).
    """
    kind = 'disk'

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            if self.root.exists():
                raise NotADirectoryError(f'data folder {self.root} is a file, not a folder')
            raise FileNotFoundError(f'data folder not found: {self.root}')
        self.path = str(self.root)
        self._index: dict[str, str] | None = None

    def _scan(self) -> dict[str, str]:
        if self._index is None:
            index: dict[str, str] = {}
            exts = IMAGE_EXTENSIONS + PICKLE_EXTENSIONS
            for dirpath, dirnames, filenames in os.walk(self.root):
                dirnames.sort()
                for fn in sorted(filenames):
                    if os.path.splitext(fn)[1].lower() in exts:
                        rel = os.path.relpath(os.path.join(dirpath, fn), self.root).replace(os.sep, '/')
                        key = key_from_name(rel)
                        if key in index:
                            raise ValueError(f'{self.root}: {index[key]!r} and {rel!r} have the same key {key!r}')
                        index[key] = rel
            self._index = dict(sorted(index.items(), key=lambda kv: natural_key(kv[0])))
        return self._index

    def keys(self, prefix: str = '') -> list[str]:
        """Keys of the image and pickle files under ``root`` whose key starts with ``prefix``, natural order."""
        return [k for k in self._scan() if k.startswith(prefix)]

    def name(self, key: str) -> str:
        """The relative file name of ``key`` (with extension)."""
        if self._index is not None and key in self._index:
            return self._index[key]
        for ext in IMAGE_EXTENSIONS + PICKLE_EXTENSIONS:
            for cand in (ext, ext.upper()):
                if (self.root / (key + cand)).is_file():
                    return key + cand
        raise FileNotFoundError(f'file not found: {self.root / key}.* (looked for the extensions '
                                f'{"/".join(IMAGE_EXTENSIONS + PICKLE_EXTENSIONS)})')

    def describe(self, key: str) -> str:
        """A path for messages."""
        try:
            return str(self.root / self.name(key))
        except FileNotFoundError:
            return str(self.root / key)

    def get(self, key: str) -> np.ndarray | bytes:
        path = self.root / self.name(key)
        if path.suffix.lower() in PICKLE_EXTENSIONS:
            return path.read_bytes()
        image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if image is None:
            raise OSError(f'cannot decode image: {path}')
        return image

    def get_many(self, keys: Sequence[str]) -> list:
        return [self.get(k) for k in keys]

    def close(self) -> None:
        """Nothing to release."""


# ---------------------------------------------------------------------------------------------------- lmdb
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


class _LmdbReader:
    """Lazily opened, per-process, read-only LMDB environment."""
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


class LmdbBackend(_LmdbReader):
    """A database written by ``codes.scripts.create_lmdb`` (format record, meta_info.txt with shape/dtype/CRC).

    Args:
        path: the ``.lmdb`` folder.
        max_readers, readahead: passed to ``lmdb.open`` (always ``readonly=True, lock=False, meminit=False``).
        check_crc: compare every value's CRC-32 with meta_info (about 1 ms per MB).
        layout: accepted layout(s); None accepts any.
    """

    def __init__(self, path: str | os.PathLike, max_readers: int = DEFAULT_MAX_READERS, check_crc: bool = True,
                 readahead: bool = False, layout: str | Sequence[str] | None = None) -> None:
        super().__init__(os.fspath(path), max_readers, readahead)
        self.check_crc = check_crc
        env = self._open()
        try:
            with env.begin() as txn:
                raw = txn.get(FORMAT_KEY.encode())
        finally:
            self.close()
        if raw is None:
            raise LmdbFormatError(self.path, f'no {FORMAT_KEY!r} record: not a database written by create_lmdb')
        self.record = parse_format_record(self.path, raw)
        self.layout = self.record['layout']
        _check_layout(self.path, self.layout, layout)
        meta = Path(self.path) / 'meta_info.txt'
        if not meta.is_file():
            raise LmdbFormatError(self.path, 'meta_info.txt is missing')
        self.index, data = _read_meta_txt(self.path, meta)
        if zlib.crc32(data) != self.record.get('meta_crc') or len(self.index) != self.record.get('num_keys'):
            raise LmdbFormatError(self.path, f'meta_info.txt ({len(self.index)} keys) does not belong to this '
                                  f'database ({self.record.get("num_keys")} keys, other checksum); rebuild it or '
                                  'copy the matching meta_info.txt')

    def _decode(self, key: str, info: ValueInfo, buf: Any) -> np.ndarray | bytes:
        return decode_value(self.path, key, info, buf, self.check_crc)


class BasicSRLmdbBackend(_LmdbReader):
    """A BasicSR image LMDB: PNG (or other cv2-decodable) bytes keyed by the names in ``meta_info.txt``."""

    def __init__(self, path: str | os.PathLike, max_readers: int = DEFAULT_MAX_READERS,
                 readahead: bool = False) -> None:
        super().__init__(os.fspath(path), max_readers, readahead)
        self.index, _ = _read_meta_txt(self.path, Path(self.path) / 'meta_info.txt')
        if not self.index:
            raise LmdbFormatError(self.path, 'meta_info.txt lists no keys')
        self.record = {'format': 'basicsr', 'layout': 'images'}

    def _decode(self, key: str, info: ValueInfo, buf: Any) -> np.ndarray | bytes:
        return decode_value(self.path, key, info, buf, check_crc=False)


class DclsLmdbBackend(_LmdbReader):
    """An MMSR/DCLS LMDB: raw uint8 (H, W, C) bytes, keys and 'C_H_W' resolutions in ``meta_info.pkl``."""

    def __init__(self, path: str | os.PathLike, max_readers: int = DEFAULT_MAX_READERS,
                 readahead: bool = False) -> None:
        super().__init__(os.fspath(path), max_readers, readahead)
        from codes.utils.safe_pickle import safe_load_pickle
        meta_path = Path(self.path) / 'meta_info.pkl'
        meta = safe_load_pickle(meta_path)
        if not isinstance(meta, dict) or not isinstance(meta.get('keys'), list) \
                or not isinstance(meta.get('resolution'), list):
            raise LmdbFormatError(self.path, f'{meta_path.name}: expected a dict with the lists "keys" and '
                                  f'"resolution", got {type(meta).__name__}')
        keys, res = meta['keys'], meta['resolution']
        if len(res) == 1:
            res = res * len(keys)
        if len(res) != len(keys):
            raise LmdbFormatError(self.path, f'{meta_path.name}: {len(keys)} keys but {len(res)} resolutions')
        for key, r in zip(keys, res):
            try:
                c, h, w = (int(v) for v in str(r).split('_'))
            except ValueError:
                raise LmdbFormatError(self.path, f'{meta_path.name}: resolution {r!r} is not "C_H_W"', str(key)) \
                    from None
            if str(key) in self.index:
                raise LmdbFormatError(self.path, f'{meta_path.name}: duplicate key', str(key))
            self.index[str(key)] = ValueInfo(str(key), (h, w, c), None, 'uint8', None)
        self.record = {'format': 'dcls', 'layout': 'images', 'name': meta.get('name')}

    def _raw_get(self, txn: Any, key: str) -> Any:
        return txn.get(key.encode('ascii'))

    def _decode(self, key: str, info: ValueInfo, buf: Any) -> np.ndarray | bytes:
        return decode_value(self.path, key, info, buf, check_crc=False)


def parse_format_record(db: str, raw: Any) -> dict:
    """Parse and check the ``__format__`` record (format name, version, complete flag)."""
    try:
        record = json.loads(bytes(raw).decode('utf-8'))
    except (UnicodeDecodeError, ValueError):
        raise LmdbFormatError(db, f'the {FORMAT_KEY!r} record is not JSON') from None
    if not isinstance(record, dict) or record.get('format') != FORMAT_NAME:
        found = record.get('format') if isinstance(record, dict) else record
        raise LmdbFormatError(db, f'database of another format ({found!r}, expected {FORMAT_NAME!r})')
    if not isinstance(record.get('version'), int) or record['version'] > FORMAT_VERSION:
        raise LmdbFormatError(db, f'format version {record.get("version")!r} is newer than this reader '
                              f'({FORMAT_VERSION})')
    if record.get('layout') not in LAYOUTS:
        raise LmdbFormatError(db, f'unknown layout {record.get("layout")!r}')
    if not record.get('complete'):
        raise LmdbFormatError(db, 'incomplete build (interrupted?): rerun `python -m codes.scripts.create_lmdb` '
                              'with the same arguments and --resume')
    return record


def _check_layout(db: str, layout: str, accepted: str | Sequence[str] | None) -> None:
    if accepted is None:
        return
    accepted = (accepted,) if isinstance(accepted, str) else tuple(accepted)
    if layout not in accepted:
        raise LmdbFormatError(db, f"database of another format: layout {layout!r}, this dataset reads "
                              f"{' or '.join(map(repr, accepted))} (create_lmdb --format {accepted[0]})")


def open_lmdb(path: str | os.PathLike, max_readers: int = DEFAULT_MAX_READERS, check_crc: bool = True,
              readahead: bool = False, layout: str | Sequence[str] | None = None) -> _LmdbReader:
    """Open an LMDB of any supported format (detected: format record, else meta_info.pkl, else meta_info.txt).

    Raises:
        LmdbFormatError: not an LMDB, unknown or other format/layout, incomplete build, bad meta_info.
    """
    path = os.fspath(path)
    if not is_lmdb(path):
        raise LmdbFormatError(path, 'not an LMDB folder (no data.mdb)')
    probe = _LmdbReader(path, max_readers)
    try:
        with probe._open().begin() as txn:
            has_record = txn.get(FORMAT_KEY.encode()) is not None
    finally:
        probe.close()
    if has_record:
        return LmdbBackend(path, max_readers, check_crc, readahead, layout)
    root = Path(path)
    if (root / 'meta_info.pkl').is_file():
        backend: _LmdbReader = DclsLmdbBackend(path, max_readers, readahead)
    elif (root / 'meta_info.txt').is_file():
        backend = BasicSRLmdbBackend(path, max_readers, readahead)
    else:
        raise LmdbFormatError(path, 'database of unknown format: no format record, no meta_info.txt (BasicSR) '
                              'and no meta_info.pkl (MMSR/DCLS)')
    _check_layout(path, backend.layout, layout)
    return backend
