"""Time of a 50 ms window read from DSEC events.h5 files of growing length.

A window read is two ``/ms_to_idx`` look-ups plus a read of the chunks that hold the window,
so its time should not depend on the file's length. This script writes synthetic DSEC files
(same event rate, growing duration) with ``DsecEventWriter`` in bounded-memory chunks, then
times window reads at seeded random positions:

    taskset -c 0 python benchmarks/bench_dsec_window.py                      # 1M, 10M, 100M events
    taskset -c 0 python benchmarks/bench_dsec_window.py --sizes 1e6 1e7 5e7  # smaller disk/time

Files live in a temporary folder (``--dir`` to choose, ``--keep`` to keep them). h5py's chunk
cache is switched off, so every read decompresses its chunks (otherwise a small file fits in the
cache and looks faster); the OS page cache is warm (the files were just written).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "BLOSC_NTHREADS"):
    os.environ.setdefault(_var, "1")

import argparse
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

from evspec.run.rundir import cpu_name
from evspec.data.events import (
    DEFAULT_SENSOR_SIZE,
    DsecEventFile,
    DsecEventWriter,
    EventStream,
)


def write_file(path: Path, n_events: int, rate_per_s: float, seed: int, chunk: int = 1_000_000) -> float:
    """Write ``n_events`` uniform-rate random events in chunks; return seconds taken."""
    rng = np.random.default_rng(seed)
    width, height = DEFAULT_SENSOR_SIZE
    mean_gap_us = 1e6 / rate_per_s
    start = time.perf_counter()
    t_next = 0.0
    with DsecEventWriter(path, t_offset=1_000_000_000) as writer:
        for begin in range(0, n_events, chunk):
            n = min(chunk, n_events - begin)
            t = t_next + np.cumsum(rng.exponential(mean_gap_us, n))
            t_next = float(t[-1])
            stream = EventStream.from_arrays(
                rng.integers(0, width, n, dtype=np.uint16),
                rng.integers(0, height, n, dtype=np.uint16),
                t.astype(np.int64),
                rng.integers(0, 2, n, dtype=np.uint8),
                (width, height),
            )
            writer.append(stream)
    return time.perf_counter() - start


def time_windows(
    paths: list[Path], window_us: int, repeats: int, seed: int
) -> list[tuple[list[float], list[int], float]]:
    """Per file: seconds per window read, events per window, and file-open seconds.

    Reads go round-robin over the files (file 1, 2, 3, 1, 2, 3, ...) so that load from other
    processes falls on every file alike.
    """
    rng = np.random.default_rng(seed)
    handles, opens = [], []
    for path in paths:
        start = time.perf_counter()
        handles.append(DsecEventFile(path, chunk_cache_bytes=0))  # each read decompresses its own chunks
        opens.append(time.perf_counter() - start)
    try:
        starts = [rng.integers(f.t_first_us, f.t_last_us - window_us, repeats + 3) for f in handles]
        times: list[list[float]] = [[] for _ in paths]
        counts: list[list[int]] = [[] for _ in paths]
        for i in range(repeats + 3):
            for k, f in enumerate(handles):
                t0 = int(starts[k][i])
                begin = time.perf_counter()
                w = f.window(t0, t0 + window_us)
                elapsed = time.perf_counter() - begin
                if i >= 3:  # the first reads warm up code paths
                    times[k].append(elapsed)
                    counts[k].append(len(w))
    finally:
        for f in handles:
            f.close()
    return list(zip(times, counts, opens))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=float, nargs="+", default=[1e6, 1e7, 1e8], help="events per file")
    parser.add_argument(
        "--rate", type=float, default=2.5e6, help="events per second (EventGPT's DSEC sample: ~2.7 M/s)"
    )
    parser.add_argument("--window-ms", type=float, default=50.0)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()

    folder = args.dir or Path(tempfile.mkdtemp(prefix="evspec_dsec_bench_"))
    folder.mkdir(parents=True, exist_ok=True)
    window_us = int(args.window_ms * 1000)
    print(f"python {platform.python_version()}, numpy {np.__version__}, h5py {h5py.__version__}, CPU: {cpu_name()}")
    print(f"cores allowed: {sorted(os.sched_getaffinity(0))}; files in {folder}; seed {args.seed}")
    print(
        f"synthetic DSEC files: uniform random x,y on {DEFAULT_SENSOR_SIZE}, {args.rate / 1e6:g} M events/s, "
        f"Blosc-ZSTD (clevel 1, shuffle), 65536-event chunks; {args.window_ms:g} ms windows at {args.repeats} "
        "random starts (after 3 warm-up reads), h5py chunk cache off, warm OS page cache; median of repeats"
    )
    rows = []
    paths: list[Path] = []
    try:
        writes = []
        for size in args.sizes:
            paths.append(folder / f"events_{int(size)}.h5")
            writes.append(write_file(paths[-1], int(size), args.rate, args.seed))
        results = time_windows(paths, window_us, args.repeats, args.seed + 1)
        for size, path, write_s, (times, counts, open_s) in zip(args.sizes, paths, writes, results):
            rows.append(
                (
                    int(size),
                    path.stat().st_size,
                    write_s,
                    open_s,
                    statistics.median(times),
                    min(times),
                    max(times),
                    statistics.median(counts),
                )
            )
    finally:
        if not args.keep:
            for path in paths:
                path.unlink(missing_ok=True)
            if args.dir is None:
                shutil.rmtree(folder, ignore_errors=True)
    print(
        f"{'events':>12s} {'file MB':>8s} {'write s':>8s} {'open ms':>8s} {'window ms (median)':>19s} "
        f"{'min':>7s} {'max':>7s} {'events/window':>14s}"
    )
    for n, nbytes, write_s, open_s, med, lo, hi, count in rows:
        print(
            f"{n:12,d} {nbytes / 1e6:8.0f} {write_s:8.1f} {open_s * 1e3:8.2f} {med * 1e3:19.2f} "
            f"{lo * 1e3:7.2f} {hi * 1e3:7.2f} {count:14,.0f}"
        )
    medians = [r[4] for r in rows]
    print(
        f"largest / smallest median window time: {max(medians) / min(medians):.2f}x "
        f"over a {rows[-1][0] // rows[0][0]}x longer file"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
