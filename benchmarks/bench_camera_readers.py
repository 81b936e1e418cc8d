"""Which library reads the field's camera files into arrays: speed and correctness, measured.

Candidates that install from PyPI here: faery (reads and writes .aedat4, .raw EVT2/EVT3, .dat),
expelliarmus (reads/writes .dat, EVT2, EVT3), aedat (reads .aedat4), evlib (reads all four into a
polars LazyFrame; it pulls in polars, pyarrow and pandera). A library that is not installed is
left out of the table (faery is needed: it writes the files).

Files are written by faery from one seeded stream (``--events`` events on a 1280x720 sensor over
1 s, sorted timestamps, random polarity); every reader reads every file it supports; a read is
correct when x, y, t and p equal the written events exactly (t relative to the file's first
event, since EVT/DAT files store times from a header offset). One core, median of ``--repeats``:

    taskset -c 0 python benchmarks/bench_camera_readers.py --events 2000000
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS", "RAYON_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse
import importlib.util
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

import numpy as np

WIDTH, HEIGHT = 1280, 720
FORMATS = {"aedat4": ("stream.aedat4", None), "evt2": ("stream_evt2.raw", "evt2"),
           "evt3": ("stream_evt3.raw", "evt3"), "dat": ("stream.dat", "dat2")}


def make_events(n: int, seed: int) -> np.ndarray:
    import faery

    rng = np.random.default_rng(seed)
    events = np.zeros(n, dtype=faery.EVENTS_DTYPE)
    events["t"] = np.sort(rng.integers(0, 1_000_000, n))
    events["x"] = rng.integers(0, WIDTH, n)
    events["y"] = rng.integers(0, HEIGHT, n)
    events["on"] = rng.integers(0, 2, n).astype(bool)
    return events


def write_files(events: np.ndarray, folder: Path) -> dict[str, Path]:
    import faery

    paths = {}
    for name, (file_name, file_version) in FORMATS.items():
        path = folder / file_name
        faery.events_stream_from_array(events, (WIDTH, HEIGHT)).to_file(path, version=file_version)
        paths[name] = path
    return paths


def read_faery(path: Path) -> tuple[np.ndarray, ...]:
    import faery

    a = faery.events_stream_from_file(path).to_array()
    return a["x"], a["y"], a["t"], a["on"]


def read_expelliarmus(path: Path, encoding: str) -> tuple[np.ndarray, ...]:
    from expelliarmus import Wizard

    a = Wizard(encoding=encoding).read(path)
    return a["x"], a["y"], a["t"], a["p"]


def read_aedat(path: Path) -> tuple[np.ndarray, ...]:
    import aedat

    parts = [packet["events"] for packet in aedat.Decoder(path) if "events" in packet]
    a = np.concatenate(parts)
    return a["x"], a["y"], a["t"], a["on"]


def read_evt3_by_the_documented_layout(path: Path) -> tuple[np.ndarray, ...]:
    """A plain decoder of Prophesee's EVT 3.0 (docs.prophesee.ai, "EVT 3.0 Format"): 16-bit
    little-endian words, type in bits 15..12; ADDR_Y 0x0, ADDR_X 0x2 (polarity bit 11), VECT_BASE_X
    0x3, VECT_12 0x4, VECT_8 0x5, TIME_LOW 0x6 (time bits 11..0), TIME_HIGH 0x8 (bits 23..12).
    Slow (a Python loop): the arbiter when two libraries disagree, not a candidate."""
    data = path.read_bytes()
    start = 0
    while data[start:start + 1] == b"%":
        start = data.index(b"\n", start) + 1
    words = np.frombuffer(data[start:start + (len(data) - start) // 2 * 2], dtype="<u2").tolist()
    out: list[tuple[int, int, int, int]] = []
    x = y = p = high = low = 0
    for word in words:
        kind, value = word >> 12, word & 0xFFF
        if kind == 0x0:
            y = value & 0x7FF
        elif kind == 0x2:
            out.append(((high << 12) | low, value & 0x7FF, y, (value >> 11) & 1))
        elif kind == 0x3:
            x, p = value & 0x7FF, (value >> 11) & 1
        elif kind in (0x4, 0x5):
            n = 12 if kind == 0x4 else 8
            out.extend(((high << 12) | low, x + i, y, p) for i in range(n) if (value >> i) & 1)
            x += n
        elif kind == 0x6:
            low = value
        elif kind == 0x8:
            high = value
    a = np.array(out, dtype=np.int64).reshape(-1, 4)
    return a[:, 1], a[:, 2], a[:, 0], a[:, 3]


def read_evlib(path: Path) -> tuple[np.ndarray, ...]:
    import evlib

    frame = evlib.load_events(str(path), sort=False).collect()
    t = frame["t"].dt.total_microseconds().to_numpy()
    return frame["x"].to_numpy(), frame["y"].to_numpy(), t, frame["polarity"].to_numpy() > 0


def correct(got: tuple[np.ndarray, ...], events: np.ndarray) -> bool:
    x, y, t, p = got
    if len(x) != len(events):
        return False
    t = np.asarray(t, dtype=np.int64)
    return (np.array_equal(x, events["x"]) and np.array_equal(y, events["y"])
            and np.array_equal(t - t[0], events["t"].astype(np.int64) - int(events["t"][0]))
            and np.array_equal(np.asarray(p).astype(bool), events["on"]))


def timed(job: Callable[[], tuple[np.ndarray, ...]], repeats: int) -> tuple[float, tuple[np.ndarray, ...]]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = job()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result  # type: ignore[return-value]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=2_000_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--expelliarmus-evt3", action="store_true",
                        help="also decode an EVT 3.0 file written by expelliarmus with the documented layout")
    args = parser.parse_args()
    installed = {lib for lib in ("faery", "expelliarmus", "aedat", "evlib") if importlib.util.find_spec(lib)}
    print(f"python {platform.python_version()}, numpy {np.__version__}, " + ", ".join(
        f"{lib} {version(lib)}" for lib in sorted(installed)))
    print(f"{args.events:,} events, {WIDTH}x{HEIGHT}, 1 s, seed {args.seed}; median of {args.repeats} reads")
    events = make_events(args.events, args.seed)
    readers: dict[str, dict[str, Callable[[Path], tuple[np.ndarray, ...]]]] = {
        "faery": {f: read_faery for f in FORMATS},
        "expelliarmus": {"evt2": lambda p: read_expelliarmus(p, "evt2"), "evt3": lambda p: read_expelliarmus(p, "evt3"),
                         "dat": lambda p: read_expelliarmus(p, "dat")},
        "aedat": {"aedat4": read_aedat},
        "evlib": {f: read_evlib for f in FORMATS},
        "documented": {"evt3": read_evt3_by_the_documented_layout},
    }
    readers = {name: table for name, table in readers.items() if name == "documented" or name in installed}
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_files(events, Path(tmp))
        print(f"{'reader':<14}{'format':<8}{'size MB':>9}{'ms':>10}{'M events/s':>12}  correct")
        for reader, table in readers.items():
            for fmt, read in table.items():
                path = paths[fmt]
                try:
                    seconds, got = timed(lambda: read(path), args.repeats)
                    ok = "yes" if correct(got, events) else "NO"
                    rate = f"{args.events / seconds / 1e6:12.1f}"
                    ms = f"{seconds * 1e3:10.1f}"
                except Exception as error:  # a reader that fails is a result, not a crash
                    ms, rate, ok = f"{'-':>10}", f"{'-':>12}", f"error: {type(error).__name__}: {error}"
                print(f"{reader:<14}{fmt:<8}{path.stat().st_size / 1e6:9.1f}{ms}{rate}  {ok}")
        if args.expelliarmus_evt3:
            from expelliarmus import Wizard

            table = np.zeros(len(events), dtype=[("t", "<i8"), ("x", "<i2"), ("y", "<i2"), ("p", "u1")])
            table["t"], table["x"], table["y"], table["p"] = events["t"], events["x"], events["y"], events["on"]
            theirs = Path(tmp) / "expelliarmus_evt3.raw"
            Wizard(encoding="evt3").save(theirs, table)
            print("EVT 3.0 written by expelliarmus, decoded by the documented layout: correct",
                  "yes" if correct(read_evt3_by_the_documented_layout(theirs), events) else "NO")


if __name__ == "__main__":
    main()
