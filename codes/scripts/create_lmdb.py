"""Build an LMDB from a dataset folder, for fast loading (``io_backend: {type: lmdb}``).

``python -m codes.scripts.create_lmdb --format FORMAT --input DIR --output OUT.lmdb [--compress-level L]
[--resume | --overwrite] [--verify] [--batch N] [--workers N] [--map-size BYTES]``

Formats (keys are paths relative to the input folder without the extension, ``/``-separated; each format's
entries are collected by ``codes/scripts/lmdb_sources.py``, this module writes and verifies them):

* ``images``: every image under ``DIR`` (recursive; .png .jpg .jpeg .bmp .ppm .tif .tiff in either case): Zurich
  RAW-to-RGB (``train/canon/0``), DIV2K, Flickr2K, ...
* ``synburst_val``: the SyntheticBurstVal layout (``DIR`` or ``DIR/val`` holding ``bursts/`` and ``gt/``):
  ``bursts/0000/im_raw_00`` ... ``im_raw_13``, ``gt/0000/im_rgb``, ``gt/0000/meta_info``.
* ``burstsr``: the BurstSR layout, ``DIR`` holding ``train/``/``val/`` or one split's burst folders:
  ``train/0000_0001/samsung_00/im_raw``, ``.../samsung_00/meta_info``, ``.../canon/im_raw``, ``.../canon/meta_info``.
* ``paired``: LQ/GT folders for blind SR, ``DIR/GT`` (or ``HR``) and ``DIR/LQ`` (or ``LR``), or ``--input GT
  --lq LQ``: keys ``gt/<k>`` and ``lq/<k>``, whose sets must match.

Values are the arrays ``cv2.imread(IMREAD_UNCHANGED)`` returns (uint16 RAW and uint8 sRGB kept as they are), raw by
default or as PNG bytes with ``--compress-level``; ``meta_info.pkl`` files are stored byte for byte. The
database also holds a format record and per-key records (see ``codes/data/io_backend/format.py``);
``meta_info.txt`` lists key, shape, compression, dtype and CRC-32. ``map_size`` is estimated from the data and doubled whenever LMDB
reports ``MDB_MAP_FULL``; values are committed in batches, so an interrupted build keeps what it committed and
``--resume`` skips it. An existing database is never touched without ``--resume`` or ``--overwrite``.
"""
from __future__ import annotations

import argparse
import datetime
import functools
import json
import logging
import os
import shutil
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple, Sequence

import cv2
import numpy as np

from codes.data.io_backend import (FORMAT_KEY, FORMAT_NAME, FORMAT_VERSION, LAYOUTS, META_PREFIX,
                                   LmdbBackend, ValueInfo, format_meta_line, is_lmdb)
from codes.scripts.lmdb_sources import BuildError, Entry, collect_entries
from codes.utils.files import atomic_write_bytes, natural_key

__all__ = ['Entry', 'BuildSummary', 'BuildError', 'collect_entries', 'encode_entry', 'create_lmdb', 'verify_lmdb',
           'GrowingMap', 'main']

logger = logging.getLogger(__name__)

BATCH_BYTES = 256 * 1024 ** 2
MAP_OVERHEAD = 64 * 1024 ** 2


class BuildSummary(NamedTuple):
    output: str
    layout: str
    num_keys: int
    written: int
    skipped: int
    stored_bytes: int
    raw_bytes: int
    map_size: int
    map_growths: int
    seconds: float
    verified: int | None


# ---------------------------------------------------------------------------------------------------- encoding
def encode_entry(entry: Entry, compress_level: int | None) -> tuple[bytes, ValueInfo]:
    """Read one source file (one read) and return the value to store and its meta_info entry."""
    data = Path(entry.path).read_bytes()
    if entry.is_pickle:
        return data, ValueInfo(entry.name, (len(data),), None, 'bytes', zlib.crc32(data))
    array = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED) if data else None
    if array is None:
        raise BuildError(f'cannot decode image: {entry.path}')
    if compress_level is None:
        value = np.ascontiguousarray(array).tobytes()
    else:
        try:
            ok, buf = cv2.imencode('.png', array, [cv2.IMWRITE_PNG_COMPRESSION, compress_level])
        except cv2.error as exc:
            raise BuildError(f'{entry.path}: cannot PNG-encode a {array.dtype} {array.shape} image ({exc}); build '
                             'without --compress-level') from None
        if not ok:
            raise BuildError(f'{entry.path}: cannot PNG-encode a {array.dtype} {array.shape} image')
        value = buf.tobytes()
    return value, ValueInfo(entry.name, tuple(array.shape), compress_level, array.dtype.name, zlib.crc32(value))


def _estimate_map_size(entries: Sequence[Entry], compress_level: int | None) -> int:
    """Sum of file sizes × the stored/file ratio of up to 16 evenly spread samples, × 1.5, plus page overhead."""
    if not entries:
        return MAP_OVERHEAD
    sizes = [os.path.getsize(e.path) for e in entries]
    step = max(1, len(entries) // 16)
    sample = list(range(0, len(entries), step))[:16]
    stored = sum(len(encode_entry(entries[i], compress_level)[0]) for i in sample)
    ratio = stored / max(1, sum(sizes[i] for i in sample))
    return int(sum(sizes) * ratio * 1.5) + 2 * 4096 * len(entries) + MAP_OVERHEAD


# ---------------------------------------------------------------------------------------------------- building
def _read_existing(env: object, output: str) -> tuple[dict | None, dict[str, str]]:
    """The format record (unchecked) and the meta lines already in a database (for --resume)."""
    with env.begin() as txn:  # type: ignore[attr-defined]
        stored_record = txn.get(FORMAT_KEY.encode())
        record = None
        if stored_record is not None:
            try:
                record = json.loads(bytes(stored_record).decode('utf-8'))
            except ValueError:
                raise BuildError(f'{output}: its {FORMAT_KEY!r} record is not JSON; use --overwrite') from None
        lines: dict[str, str] = {}
        cursor = txn.cursor()
        prefix = META_PREFIX.encode()
        if cursor.set_range(prefix):
            for k, v in cursor:
                if not k.startswith(prefix):
                    break
                lines[k[len(prefix):].decode('utf-8')] = bytes(v).decode('utf-8')
    return record, lines


def _claim_output_folder(output: Path, resume: bool, overwrite: bool) -> None:
    """Check that the build may write ``output`` (new, or an LMDB to ``resume``); with ``overwrite``, delete the
    database there first (only an LMDB folder, or an empty folder, is ever deleted)."""
    if output.suffix != '.lmdb':
        raise BuildError(f'--output must end in .lmdb, got {output}')
    if resume and overwrite:
        raise BuildError('--resume and --overwrite exclude each other')
    if not output.exists():
        if resume:
            raise BuildError(f'--resume: {output} does not exist')
        return
    if resume:
        if not is_lmdb(output):
            raise BuildError(f'--resume: {output} is not an LMDB (no data.mdb)')
        return
    if not overwrite:
        raise BuildError(f'{output} already exists; pass --resume to continue an interrupted build or --overwrite '
                         'to replace it')
    if not output.is_dir() or (any(output.iterdir()) and not is_lmdb(output)):
        raise BuildError(f'--overwrite: {output} is not an LMDB folder (no data.mdb); refusing to delete it')
    shutil.rmtree(output)


def _check_resumable(output: Path, record: dict | None, lines: dict[str, str], entries: Sequence[Entry], fmt: str,
                     compress_level: int | None) -> None:
    """A database to ``--resume`` must have been written by this tool, with the same layout and compression, and
    hold no key the input no longer has."""
    if (record is None and lines) or (record is not None and record.get('format') != FORMAT_NAME):
        raise BuildError(f'--resume: {output} was not written by create_lmdb (no {FORMAT_NAME} record)')
    for name, want in (('layout', fmt), ('compress_level', compress_level)):
        if record is not None and record.get(name) != want:
            raise BuildError(f'--resume: {output} has {name} {record.get(name)!r}, this build {want!r}; use '
                             'the same arguments, or --overwrite')
    stale = sorted(set(lines) - {e.key for e in entries}, key=natural_key)
    if stale:
        raise BuildError(f'--resume: {output} holds {len(stale)} keys the input no longer has (e.g. '
                         f'{stale[:3]}); use --overwrite')


class GrowingMap:
    """An open LMDB environment whose map grows whenever a write transaction reports ``MDB_MAP_FULL``.

    LMDB rolls the failed transaction back whole, so the write is retried after each growth, to
    ``max(2 x size, size + 2 x nbytes)`` where ``nbytes`` is what the write adds. ``size`` is the current map
    size and ``growths`` counts the growths so far.
    """

    def __init__(self, env: Any, size: int, name: str) -> None:
        self.env, self.size, self.name = env, size, name
        self.growths = 0

    def write(self, put: Callable[[Any], None], nbytes: int = 0) -> None:
        """Run ``put(txn)`` in one write transaction, growing the map and retrying while the map is full."""
        import lmdb
        while True:
            try:
                with self.env.begin(write=True) as txn:
                    put(txn)
                return
            except lmdb.MapFullError:
                self.size = max(2 * self.size, self.size + 2 * nbytes)
                self.env.set_mapsize(self.size)
                self.growths += 1
                logger.info('%s: MDB_MAP_FULL, map_size grown to %d bytes', self.name, self.size)


def _put_values(txn: Any, group: list[tuple[Entry, bytes, ValueInfo]]) -> None:
    for entry, value, info in group:
        key = entry.key.encode('utf-8')
        txn.put(key, value)
        txn.put(META_PREFIX.encode() + key, format_meta_line(info).encode('utf-8'))


def _put_record(txn: Any, record: dict) -> None:
    txn.put(FORMAT_KEY.encode(), json.dumps(record, sort_keys=True).encode('utf-8'))


def _byte_groups(chunk: Sequence[Entry], encoded: Sequence[tuple[bytes, ValueInfo]]
                 ) -> Iterator[tuple[list[tuple[Entry, bytes, ValueInfo]], int]]:
    """(group, stored bytes) of ``chunk``, split so that one transaction never holds more than BATCH_BYTES."""
    group: list[tuple[Entry, bytes, ValueInfo]] = []
    group_bytes = 0
    for entry, (value, info) in zip(chunk, encoded):
        group.append((entry, value, info))
        group_bytes += len(value)
        if group_bytes >= BATCH_BYTES:
            yield group, group_bytes
            group, group_bytes = [], 0
    if group:
        yield group, group_bytes


@dataclass
class _Written:
    """What a build wrote: values, their stored bytes and their bytes as arrays."""
    values: int = 0
    stored_bytes: int = 0
    array_bytes: int = 0


def _write_values(db: GrowingMap, pending: Sequence[Entry], total: int, lines: dict[str, str],
                  compress_level: int | None, batch: int, workers: int, progress: bool) -> _Written:
    """Encode and commit ``pending`` in transactions of ``batch`` values (or BATCH_BYTES); ``lines`` gets the meta
    line of every value written."""
    from tqdm import tqdm
    written = _Written()
    bar = tqdm(total=total, initial=total - len(pending), unit='val', desc=Path(db.name).name,
               disable=not progress, dynamic_ncols=True)
    pool = ThreadPoolExecutor(workers) if workers > 1 else None
    try:
        for lo in range(0, len(pending), batch):
            chunk = pending[lo:lo + batch]
            if pool is not None:
                encoded = list(pool.map(lambda e: encode_entry(e, compress_level), chunk))
            else:
                encoded = [encode_entry(e, compress_level) for e in chunk]
            for group, group_bytes in _byte_groups(chunk, encoded):
                for entry, value, info in group:
                    lines[entry.key] = format_meta_line(info)
                    written.stored_bytes += len(value)
                    written.array_bytes += info.nbytes
                db.write(functools.partial(_put_values, group=group), group_bytes)
                written.values += len(group)
                bar.update(len(group))
    finally:
        if pool is not None:
            pool.shutdown()
        bar.close()
    return written


def _finish(db: GrowingMap, record: dict, lines: dict[str, str], entries: Sequence[Entry], output: Path) -> None:
    """Write ``meta_info.txt`` and mark the format record complete (with the CRC of that file)."""
    text = ''.join(lines[e.key] + '\n' for e in entries).encode('utf-8')
    atomic_write_bytes(output / 'meta_info.txt', text)
    record.update(complete=True, num_keys=len(entries), meta_crc=zlib.crc32(text),
                  created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'))
    db.write(functools.partial(_put_record, record=record))


def create_lmdb(fmt: str, input_dir: str | os.PathLike, output: str | os.PathLike,
                lq_dir: str | os.PathLike | None = None, compress_level: int | None = None, batch: int = 1000,
                resume: bool = False, overwrite: bool = False, verify: bool = False, workers: int = 1,
                map_size: int | None = None, progress: bool = True,
                log: Callable[[str], None] = print) -> BuildSummary:
    """Build (or resume) the LMDB ``output`` from ``input_dir`` in format ``fmt`` (see the module docstring).

    Args:
        compress_level: None stores raw arrays; 0-9 stores PNG bytes at that zlib level.
        batch: values per write transaction (also committed every 256 MB).
        workers: threads that read and encode files.
        map_size: initial map size in bytes (default: estimated from the data); grown on MDB_MAP_FULL.

    Raises:
        BuildError: bad input, an existing output without ``resume``/``overwrite``, a resume with other settings.
    """
    import lmdb
    start = time.perf_counter()
    if compress_level is not None and not 0 <= compress_level <= 9:
        raise BuildError(f'--compress-level must be 0-9, got {compress_level}')
    if batch < 1 or workers < 1:
        raise BuildError('--batch and --workers must be >= 1')
    output = Path(output)
    entries, facts = collect_entries(fmt, input_dir, lq_dir)
    _claim_output_folder(output, resume, overwrite)
    existing_size = (output / 'data.mdb').stat().st_size if is_lmdb(output) else 0
    size = map_size or max(existing_size + _estimate_map_size(entries, compress_level), existing_size)
    db = GrowingMap(lmdb.open(str(output), map_size=size, subdir=True, meminit=False, max_dbs=0), size, str(output))
    try:
        record, lines = _read_existing(db.env, str(output))
        if resume:
            _check_resumable(output, record, lines, entries, fmt, compress_level)
        record = {'format': FORMAT_NAME, 'version': FORMAT_VERSION, 'layout': fmt, 'compress_level': compress_level,
                  'complete': False, 'source': str(Path(input_dir).resolve()), 'tool': 'codes.scripts.create_lmdb',
                  **facts}
        db.write(functools.partial(_put_record, record=record))
        pending = [e for e in entries if e.key not in lines]
        written = _write_values(db, pending, len(entries), lines, compress_level, batch, workers, progress)
        _finish(db, record, lines, entries, output)
        size = db.env.info()['map_size']
    finally:
        db.env.close()
    verified = verify_lmdb(output, entries, progress=progress) if verify else None
    summary = BuildSummary(str(output), fmt, len(entries), written.values, len(entries) - written.values,
                           written.stored_bytes, written.array_bytes, size, db.growths, time.perf_counter() - start,
                           verified)
    log(_summary_text(summary, facts, compress_level))
    return summary


def _summary_text(summary: BuildSummary, facts: dict, compress_level: int | None) -> str:
    mb = 1024 ** 2
    return (f'{summary.output}: {summary.num_keys} keys ({facts.get("num_samples")} samples, layout '
            f'{summary.layout}), {summary.written} written, {summary.skipped} already present; '
            f'{summary.stored_bytes / mb:.1f} MB stored '
            f'({"raw" if compress_level is None else f"PNG level {compress_level}"}; {summary.raw_bytes / mb:.1f} MB '
            f'as arrays) in {summary.seconds:.1f} s; map_size {summary.map_size / mb:.0f} MB ({summary.map_growths} '
            'growths)' + (f'; verified {summary.verified} keys against the source'
                          if summary.verified is not None else ''))


# ---------------------------------------------------------------------------------------------------- verify
def verify_lmdb(output: str | os.PathLike, entries: Sequence[Entry], progress: bool = True) -> int:
    """Re-read every key through the reader and compare it with its source file (arrays exactly, pickles byte
    for byte); returns the number of keys checked.

    Raises:
        BuildError: listing the keys that differ (or are missing).
    """
    from tqdm import tqdm
    backend = LmdbBackend(output)
    bad: list[str] = []
    try:
        for entry in tqdm(entries, desc=f'verify {Path(output).name}', unit='val', disable=not progress):
            try:
                value = backend.get(entry.key)
            except (KeyError, ValueError) as exc:
                bad.append(f'{entry.key}: {exc}')
                continue
            if entry.is_pickle:
                same = value == Path(entry.path).read_bytes()
            else:
                source = cv2.imread(entry.path, cv2.IMREAD_UNCHANGED)
                same = (isinstance(value, np.ndarray) and source is not None and value.dtype == source.dtype
                        and value.shape == source.shape and np.array_equal(value, source))
            if not same:
                bad.append(f'{entry.key}: differs from {entry.path}')
    finally:
        backend.close()
    if bad:
        raise BuildError(f'--verify: {len(bad)} of {len(entries)} keys of {output} do not match the source:\n  '
                         + '\n  '.join(bad[:20]))
    return len(entries)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--format', required=True, choices=LAYOUTS, help='input layout')
    parser.add_argument('--input', required=True, help='dataset folder (for paired: holding GT/ and LQ/, or the GT '
                        'folder with --lq)')
    parser.add_argument('--output', required=True, help='the LMDB folder to write (must end in .lmdb)')
    parser.add_argument('--lq', default=None, help='paired only: the LQ folder (then --input is the GT folder)')
    parser.add_argument('--compress-level', type=int, default=None,
                        help='store PNG bytes at this zlib level 0-9 (default: raw arrays)')
    parser.add_argument('--resume', action='store_true', help='continue an interrupted build (skip existing keys)')
    parser.add_argument('--overwrite', action='store_true', help='replace an existing database')
    parser.add_argument('--verify', action='store_true', help='re-read every key and compare it with the source')
    parser.add_argument('--batch', type=int, default=1000, help='values per commit (default 1000)')
    parser.add_argument('--workers', type=int, default=1, help='threads reading and encoding files (default 1)')
    parser.add_argument('--map-size', type=int, default=None, help='initial map size in bytes (default: estimated; '
                        'grown automatically)')
    parser.add_argument('--quiet', action='store_true', help='no progress bar')
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    try:
        create_lmdb(args.format, args.input, args.output, lq_dir=args.lq, compress_level=args.compress_level,
                    batch=args.batch, resume=args.resume, overwrite=args.overwrite, verify=args.verify,
                    workers=args.workers, map_size=args.map_size, progress=not args.quiet)
    except BuildError as exc:
        parser.exit(1, f'create_lmdb: error: {exc}\n')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
