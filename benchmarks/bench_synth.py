"""Time one synthetic clip (frames, MP4, ESIM events, .npy, event images, QA) on ONE core.

    python benchmarks/bench_synth.py --clips 5 --size 640x480 --fps 20 --duration 1.0

Pins itself to CPU 0 (``os.sched_setaffinity``, same as ``taskset -c 0``) and sets the thread
count of BLAS/OpenMP/FFmpeg to 1 before importing NumPy, then builds clips through the real
``build_clip`` and times each of its stages from outside with ``time.perf_counter``. The first
clip is a warm-up and is not counted. Prints the median per stage and of the whole clip.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections import defaultdict  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from contextlib import contextmanager  # noqa: E402

import numpy as np  # noqa: E402

from evspec.data.synth.builder import STEPS, SynthConfig, build_clip  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=5, help="timed clips (after one warm-up)")
    parser.add_argument("--size", default="640x480")
    parser.add_argument("--fps", type=int, default=20)
    parser.add_argument("--duration", type=float, default=1.0)
    parser.add_argument("--esim-upsample", type=int, default=SynthConfig().esim_upsample)
    parser.add_argument("--cpu", type=int, default=0, help="core to pin to (-1: no pinning)")
    args = parser.parse_args()
    if args.cpu >= 0:
        os.sched_setaffinity(0, {args.cpu})
    width, height = (int(v) for v in args.size.lower().split("x"))
    config = SynthConfig(clips=args.clips + 1, size=(width, height), fps=args.fps,
                         duration_s=args.duration, esim_upsample=args.esim_upsample)
    times: dict[str, list[float]] = defaultdict(list)
    totals: list[float] = []
    events: list[int] = []

    clip_times: dict[str, float] = {}

    @contextmanager
    def step(name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        yield
        clip_times[name] = time.perf_counter() - t0

    with tempfile.TemporaryDirectory() as out:
        for index in range(config.clips):
            clip_times.clear()
            t0 = time.perf_counter()
            record = build_clip(out, config, index, "test", step=step)
            total = time.perf_counter() - t0
            if index == 0:
                continue  # warm-up: imports, codec init, caches
            totals.append(total)
            events.append(int(record.scene["n_events"]))
            for name in STEPS:
                times[name].append(clip_times[name])

    print(f"machine: {os.cpu_count()}-core {platform.machine()} CPU, pinned to "
          f"{sorted(os.sched_getaffinity(0))}, Python {platform.python_version()}, numpy {np.__version__}, "
          f"load average {os.getloadavg()[0]:.2f} (other work on the machine inflates the figures)")
    print(f"clip: {width}x{height}, {args.fps} fps, {args.duration} s, esim_upsample "
          f"{config.esim_upsample}; {args.clips} timed clips, median events {int(np.median(events))}")
    print(f"{'step':<8} {'median ms':>10} {'min ms':>8} {'max ms':>8}")
    for name in STEPS:
        v = times[name]
        print(f"{name:<8} {statistics.median(v) * 1e3:>10.1f} {min(v) * 1e3:>8.1f} {max(v) * 1e3:>8.1f}")
    print(f"{'total':<8} {statistics.median(totals) * 1e3:>10.1f} {min(totals) * 1e3:>8.1f} "
          f"{max(totals) * 1e3:>8.1f}")


if __name__ == "__main__":
    main()
