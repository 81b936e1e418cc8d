"""Speed of EventGPT event-image rendering (and histogram / voxel grid for reference).

Target: 5 EventGPT frames from 1 M events at 640x480 at >= 20 M events/s on ONE core.
Run pinned to one core, single-threaded math libraries:

    taskset -c 0 python benchmarks/bench_render.py

Prints numpy version, CPU, sizes, seed and the median (and min) over repeats.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse
import platform
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np

from evspec.run.rundir import cpu_name
from evspec.data.events import EventStream
from evspec.data.render import (
    render_eventgpt_frames,
    render_histogram,
    render_voxel_grid,
)

TARGET_EVENTS_PER_S = 20e6


def make_stream(n: int, width: int, height: int, duration_us: int, seed: int) -> EventStream:
    rng = np.random.default_rng(seed)
    t = np.sort(rng.integers(0, duration_us, n))
    return EventStream.from_arrays(
        rng.integers(0, width, n), rng.integers(0, height, n), t, rng.integers(0, 2, n), (width, height)
    )


def time_it(fn: Callable[[], object], repeats: int, warmup: int = 2) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--frames", type=int, default=5)
    parser.add_argument("--duration-us", type=int, default=50_000)
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    stream = make_stream(args.events, args.width, args.height, args.duration_us, args.seed)
    affinity = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "n/a"
    print(f"python {platform.python_version()}, numpy {np.__version__}, CPU: {cpu_name()} ({platform.machine()})")
    print(f"cores allowed: {affinity} (run under `taskset -c 0` for the one-core figure); OMP/MKL threads = 1")
    print(
        f"stream: {args.events:,} uniform random events, {args.width}x{args.height}, {args.duration_us} us, "
        f"seed {args.seed}; {args.repeats} timed repeats after 2 warm-up runs; time.perf_counter"
    )
    cases: list[tuple[str, Callable[[], object]]] = [
        (f"render_eventgpt_frames(n_frames={args.frames})", lambda: render_eventgpt_frames(stream, args.frames)),
        ("render_histogram", lambda: render_histogram(stream)),
        ("render_voxel_grid(n_bins=5)", lambda: render_voxel_grid(stream, 5)),
    ]
    print(f"{'function':40s} {'median ms':>10s} {'min ms':>8s} {'M events/s (median)':>20s}")
    frames_rate = 0.0
    for name, fn in cases:
        times = time_it(fn, args.repeats)
        median = statistics.median(times)
        rate = args.events / median
        frames_rate = frames_rate or rate
        print(f"{name:40s} {median * 1e3:10.2f} {min(times) * 1e3:8.2f} {rate / 1e6:20.1f}")
    verdict = "PASS" if frames_rate >= TARGET_EVENTS_PER_S else "FAIL"
    print(
        f"EventGPT frames: {frames_rate / 1e6:.1f} M events/s "
        f"vs target {TARGET_EVENTS_PER_S / 1e6:.0f} M events/s: {verdict}"
    )
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
