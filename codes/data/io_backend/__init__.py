"""Storage backends of the datasets: image folders, and LMDBs (ours and the two legacy formats) read by key.

BasicSR's ``FileClient`` / ``LmdbBackend`` (``XPixelGroup/BasicSR: basicsr/utils/file_client.py``) and MMSR/DCLS's
``_read_img_lmdb`` (``megvii-research/DCLS-SR: codes/data/util.py``) are the models; the differences are the point:

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

Modules: ``backend`` (the interface, the ``io_backend`` option, ``open_backend``), ``disk``, ``lmdb_env``
(per-process environments, the reader base), ``lmdb_backend`` (ours, ``open_lmdb``), ``foreign_lmdb`` (BasicSR,
MMSR/DCLS), ``format`` (format record, meta_info lines, value decoding), ``errors``, ``images`` (value conversions).
"""
from __future__ import annotations

from codes.data.io_backend.backend import (IO_BACKEND_KEYS, Backend, check_io_backend, io_backend_problems,
                                          open_backend)
from codes.data.io_backend.disk import DiskBackend
from codes.data.io_backend.errors import CorruptValueError, LmdbError, LmdbFormatError, MissingKeyError
from codes.data.io_backend.foreign_lmdb import BasicSRLmdbBackend, DclsLmdbBackend
from codes.data.io_backend.format import (FORMAT_KEY, FORMAT_NAME, FORMAT_VERSION, LAYOUTS, META_PREFIX, ValueInfo,
                                          decode_value, format_meta_line, key_from_name, parse_format_record,
                                          parse_meta_line)
from codes.data.io_backend.images import check_png16, read_png16, to_bgr_uint8
from codes.data.io_backend.lmdb_backend import LmdbBackend, is_lmdb, open_lmdb, resolve_lmdb_path
from codes.data.io_backend.lmdb_env import check_lmdb_length

__all__ = ['FORMAT_NAME', 'FORMAT_VERSION', 'FORMAT_KEY', 'META_PREFIX', 'LAYOUTS', 'IO_BACKEND_KEYS', 'Backend',
           'ValueInfo', 'LmdbError', 'LmdbFormatError', 'CorruptValueError', 'MissingKeyError', 'check_io_backend',
           'io_backend_problems', 'check_lmdb_length', 'open_backend', 'open_lmdb', 'resolve_lmdb_path', 'is_lmdb',
           'DiskBackend',
           'LmdbBackend', 'BasicSRLmdbBackend', 'DclsLmdbBackend', 'format_meta_line', 'parse_meta_line',
           'parse_format_record', 'decode_value', 'key_from_name', 'to_bgr_uint8', 'check_png16', 'read_png16']
