"""Data-loading throughput: image folders versus LMDB, per dataset and DataLoader worker count.

Usage (from the repository root)::

    python benchmarks/data_loading.py [--data DIR] [--bursts 24] [--workers 0 1 2] [--epochs 2]
                                      [--storages disk lmdb png1] [--train-step-json OUT.json] [--json OUT.json]

The data is generated (once, into ``--data``, default a temporary folder) in the official layouts:

* ``SyntheticBurstVal``: ``--bursts`` bursts of 14 packed 48×48 uint16 frames and a 384×384 uint16 GT, with
  ``meta_info.pkl`` (``codes.scripts.make_sample_data``); read with ``SyntheticBurstValDataset``;
* ``BurstSR``: ``--bursts`` training crops of 14 Samsung 80×80 packed frames and a 640×640 Canon image, with the
  exifread pickles (``codes.scripts.make_burstsr_sample``); read with ``BurstSRDataset`` (14 frames, crop 80, the
  fine-tuning recipe);
* ``NAME:read`` rows: the storage reads of one item of that dataset alone (all its frames, GT and pickles, as
  arrays and bytes), without the dataset's float conversion and normalisation, which no backend changes;
* ``Zurich``: 40 RAW-to-RGB-style 448×448 JPEGs (``make_sample_data``); the sRGB *image source* of
  ``SyntheticBurstDataset`` is timed alone (read and decode, what LMDB replaces), and the full synthetic item (crop
  256, burst 14: inverse ISP, 14 warps, noise) separately, because there the CPU synthesis, not the storage, bounds
  throughput.

Storages: ``disk`` (the folders), ``lmdb`` (``create_lmdb`` default: raw arrays) and ``pngL`` (``--compress-level
L``). Each configuration runs one untimed pass (worker start-up, page cache warm-up), then ``--epochs`` timed
passes in shuffled order with ``batch_size=1`` and persistent workers, ``--repeats`` times; the best samples/s is
kept. With 0 workers the CPU time per sample of the process (user + system: file reads, decoding, collation) is
recorded too: on a shared machine it is the stable figure, and 1000 / (CPU ms per sample) is what one worker can
deliver. The page cache is warm in every row, so the numbers compare decoding and file-system overhead, not
cold-disk reads.

``--train-step-json`` takes the JSON of ``benchmarks/train_step.py`` (run on the training GPU) and adds, per
row, how many workers keep the measured BSRT-S step fed (``ceil(step bursts/s × CPU s per sample)``).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as `python benchmarks/data_loading.py`
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402

from codes.data.burstsr_dataset import BurstSRDataset  # noqa: E402
from codes.data.io_backend import DiskBackend  # noqa: E402
from codes.data.synthetic_burst_dataset import SyntheticBurstDataset, SyntheticBurstValDataset  # noqa: E402
from codes.scripts.create_lmdb import create_lmdb  # noqa: E402
from codes.scripts.make_burstsr_sample import make_burstsr_sample  # noqa: E402
from codes.scripts.make_sample_data import make_sample_data  # noqa: E402
from train_step import machine_info  # noqa: E402


DATASETS = ('SyntheticBurstVal', 'SyntheticBurstVal:read', 'BurstSR', 'BurstSR:read', 'Zurich', 'SyntheticBurst')


class ImageSource(Dataset):
    """The sRGB image read of ``SyntheticBurstDataset`` alone: item i is its (3, H, W) uint8 image."""

    def __init__(self, dataset: SyntheticBurstDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.from_numpy(self.dataset._read(index)).permute(2, 0, 1)


class StorageRead(Dataset):
    """Only the storage reads of one burst (every frame, the GT and the pickles, decoded to arrays and bytes),
    without the dataset's float conversion and normalisation: the part that the backend changes."""

    def __init__(self, name: str, root: str, storage: str) -> None:
        io = {'type': 'disk'} if storage == 'disk' else {'type': 'lmdb'}
        if name == 'SyntheticBurstVal':
            ds = SyntheticBurstValDataset(root, burst_size=14, io_backend=io)
            self.backend = ds.backend or DiskBackend(ds.root)
            self.backend.keys()  # the disk backend indexes the files once
            self.items = [[f'bursts/{n}/im_raw_{i:02d}' for i in range(14)] + [f'gt/{n}/im_rgb', f'gt/{n}/meta_info']
                          for n in ds.names]
            self.burstsr = None
        else:
            self.burstsr = BurstSRDataset(root, split='train', burst_size=14, crop_size=80, io_backend=io)
            self.items = self.burstsr.names

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> torch.Tensor:
        if self.burstsr is not None:
            files = self.burstsr._read_burst(self.items[index], range(14))
            return torch.tensor(len(files.frames))
        return torch.tensor(len(self.backend.get_many(self.items[index])))  # a token: no transfer cost


def prepare(data: Path, bursts: int, storages: list[str], log) -> dict[str, dict[str, str]]:
    """Generate the folders and build the LMDBs (kept in ``data`` for reruns); returns dataset -> storage -> root."""
    sample, bsr = data / 'sample', data / 'burstsr'
    make_sample_data(sample, num_val=bursts, seed=0, log=log)
    make_burstsr_sample(bsr, num_train=bursts, num_val=0, crop_size=80, seed=0, log=log)
    roots = {'SyntheticBurstVal': {'disk': str(sample / 'SyntheticBurstVal')},
             'BurstSR': {'disk': str(bsr)}, 'Zurich': {'disk': str(sample / 'zurich')}}
    formats = {'SyntheticBurstVal': 'synburst_val', 'BurstSR': 'burstsr', 'Zurich': 'images'}
    for name, fmt in formats.items():
        for storage in storages:
            if storage == 'disk':
                continue
            level = None if storage == 'lmdb' else int(storage[3:])
            out = data / f'{name}_{storage}.lmdb'
            if not (out / 'meta_info.txt').is_file():
                create_lmdb(fmt, roots[name]['disk'], out, compress_level=level, overwrite=out.exists(),
                            progress=False, log=log)
            roots[name][storage] = str(out)
    return roots


def build(name: str, root: str, storage: str) -> Dataset:
    if name.endswith(':read'):
        return StorageRead(name[:-5], root, storage)
    io = {'type': 'disk'} if storage == 'disk' else {'type': 'lmdb'}
    if name == 'SyntheticBurstVal':
        return SyntheticBurstValDataset(root, burst_size=14, io_backend=io)
    if name == 'BurstSR':
        return BurstSRDataset(root, split='train', burst_size=14, crop_size=80, io_backend=io)
    synthetic = SyntheticBurstDataset(root, burst_size=14, crop_size=256, io_backend=io)
    return ImageSource(synthetic) if name == 'Zurich' else synthetic


def measure(dataset: Dataset, workers: int, epochs: int, repeats: int) -> tuple[float, float | None]:
    """Best samples/s of ``repeats`` runs of ``epochs`` shuffled passes (after one untimed pass), and, with 0
    workers, the CPU time per sample of this process (user + system, so it counts file reads and decoding but
    not time lost to other processes on a shared machine)."""
    loader = DataLoader(dataset, batch_size=1, shuffle=True, num_workers=workers,
                        persistent_workers=workers > 0, generator=torch.Generator().manual_seed(0))
    for _ in loader:  # warm-up: worker start, page cache
        pass
    best, cpu = 0.0, None
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        count = 0
        for _ in range(epochs):
            for _ in loader:
                count += 1
        best = max(best, count / (time.perf_counter() - start))
        if workers == 0:
            per = (time.process_time() - start_cpu) / count
            cpu = per if cpu is None else min(cpu, per)
    return best, cpu


def markdown(rows: list[dict], info: dict, step: float | None) -> str:
    """One line per dataset and storage: CPU ms per sample and the capacity of one worker it implies (1000 / ms),
    its ratio to the folders, and the DataLoader's samples/s for each worker count."""
    workers = sorted({r['workers'] for r in rows})
    head = ['dataset', 'storage', 'CPU ms/sample', 'samples/s per worker', 'vs disk'] + \
        [f'DataLoader, {w} worker{"s" if w != 1 else ""}' for w in workers]
    if step:
        head.append(f'workers for {step:.1f} bursts/s')
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    groups: dict[tuple, dict] = {}
    for r in rows:
        g = groups.setdefault((r['dataset'], r['storage']), {'rates': {}, 'cpu': None})
        g['rates'][r['workers']] = r['samples_per_s']
        if r.get('cpu_s_per_sample') is not None:
            g['cpu'] = r['cpu_s_per_sample']
    for (name, storage), g in groups.items():
        cpu, disk = g['cpu'], groups.get((name, 'disk'), {}).get('cpu')
        cells = [name, storage, f'{1000 * cpu:.2f}' if cpu else '-', f'{1 / cpu:.0f}' if cpu else '-',
                 f'{disk / cpu:.1f}×' if cpu and disk else '-']
        cells += [f'{g["rates"][w]:.1f}' if w in g['rates'] else '-' for w in workers]
        if step:
            cells.append(str(math.ceil(step * cpu)) if cpu else '-')
        lines.append('| ' + ' | '.join(cells) + ' |')
    machine = (f"Machine: {info['cpu']}, {info['cores']} cores, torch {info['torch']}, Python {info['python']}; "
               'batch 1, shuffled, warm page cache, best of the repeats')
    return '\n'.join(lines + ['', machine])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--data', default=None, help='folder for the generated data and LMDBs (default: a temp folder)')
    p.add_argument('--bursts', type=int, default=24, help='bursts per burst dataset (default 24)')
    p.add_argument('--workers', type=int, nargs='+', default=[0, 1, 2], help='DataLoader num_workers values')
    p.add_argument('--epochs', type=int, default=2, help='timed passes per run (default 2)')
    p.add_argument('--repeats', type=int, default=3, help='runs per row; the best is kept (default 3)')
    p.add_argument('--storages', nargs='+', default=['disk', 'lmdb', 'png1'],
                   help='disk, lmdb (raw arrays), pngL (PNG at zlib level L)')
    p.add_argument('--datasets', nargs='+', choices=DATASETS, default=list(DATASETS),
                   help='rows to run (NAME:read = the storage reads of that dataset only)')
    p.add_argument('--train-step-json', default=None, help='JSON of benchmarks/train_step.py (first BSRT-S row)')
    p.add_argument('--json', default=None, help='also write the rows here')
    args = p.parse_args(argv)
    for s in args.storages:
        if s not in ('disk', 'lmdb') and not (s.startswith('png') and s[3:].isdigit() and int(s[3:]) <= 9):
            p.error(f'unknown storage {s!r}')
    if args.bursts < 1 or args.epochs < 1 or args.repeats < 1 or min(args.workers) < 0:
        p.error('--bursts, --epochs and --repeats must be >= 1, --workers >= 0')
    if 0 not in args.workers:
        args.workers = [0] + args.workers  # the CPU time per sample is measured in-process
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    step = None
    if args.train_step_json:
        rows = json.loads(Path(args.train_step_json).read_text())['rows']
        step = next((r['bursts_per_s'] for r in rows if r.get('level') == 'S' and r.get('bursts_per_s')), None)
    tmp = None
    if args.data is None:
        tmp = tempfile.TemporaryDirectory(prefix='data_loading_')
        data = Path(tmp.name)
    else:
        data = Path(args.data)
        data.mkdir(parents=True, exist_ok=True)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    roots = prepare(data, args.bursts, args.storages, log)
    results = []
    for name in args.datasets:
        source = 'Zurich' if name == 'SyntheticBurst' else name.split(':')[0]
        for storage in args.storages:
            dataset = build(name, roots[source][storage], storage)
            for workers in args.workers:
                rate, cpu = measure(dataset, workers, args.epochs, args.repeats)
                results.append({'dataset': name, 'storage': storage, 'workers': workers, 'samples_per_s': rate,
                                'cpu_s_per_sample': cpu})
                log(f'{name:18s} {storage:5s} {workers} workers: {rate:8.1f} samples/s'
                    + (f', {1000 * cpu:.2f} CPU ms/sample' if cpu is not None else ''))
    info = machine_info(torch.device('cpu'))
    print(markdown(results, info, step))
    if args.json:
        Path(args.json).write_text(json.dumps({'machine': info, 'rows': results, 'train_step_bursts_per_s': step},
                                              indent=2))
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == '__main__':
    sys.exit(main())
