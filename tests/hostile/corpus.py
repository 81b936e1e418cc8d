"""A corpus of hostile and damaged inputs, built at run time, and the tally of what evspec did with them.

Every case is a command line run through the CLI entry point in-process (``evspec.cli.main``),
with stdin replaced by a stream full of "y" answers that records whether anything read it.
Each input that would run code writes a marker file when (and only when) its code runs.
A case ends in exactly one verdict:

- ``clear error``: a non-zero exit with evspec's one-line ``error:`` (or ``data check``'s table
  of problems, or click's usage error), and the text a case must show literally is there;
- ``traceback``: an exception escaped ``main``, or evspec reported an internal error, or the run
  hit the time limit;
- ``silent result``: exit code 0 (a damaged or hostile input accepted);
- ``code execution``: the marker file appeared, or something read stdin.

Used by ``tests/hostile/test_corpus.py`` and ``benchmarks/hostile_inputs.py``.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import signal
import struct
import sys
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from evspec.data.events import (
    EventStream,
    write_dsec_h5,
    write_eventgpt_npy,
    write_npz,
    write_structured_npy,
)

SENSOR = (640, 480)
CASE_SECONDS = 120  # a case still running after this is a hang
VERDICTS = ("clear error", "traceback", "silent result", "code execution")


@dataclass(frozen=True)
class Case:
    """One hostile input and the command that meets it."""

    name: str
    kind: str  # the class of damage (events, dataset, checkpoint, options, markup, pickle)
    argv: tuple[str, ...]
    must_show: str | None = None  # literal text the error output must contain (markup is shown, not obeyed)


@dataclass
class Outcome:
    case: Case
    exit_code: int | None
    output: str
    raised: str | None = None
    code_ran: bool = False
    stdin_read: bool = False

    @property
    def verdict(self) -> str:
        if self.code_ran or self.stdin_read:
            return "code execution"
        if self.raised is not None or "internal error" in self.output or "Traceback" in self.output:
            return "traceback"
        if self.exit_code == 0:
            return "silent result"
        clear = "error:" in self.output or "problems in" in self.output or "Error:" in self.output
        if clear and (self.case.must_show is None or self.case.must_show in self.output):
            return "clear error"
        return "traceback"  # a non-zero exit that explains nothing is no better


@dataclass
class Corpus:
    root: Path
    marker: Path
    cases: list[Case] = field(default_factory=list)

    def add(self, name: str, kind: str, *argv: str | Path, must_show: str | None = None) -> None:
        self.cases.append(Case(name, kind, tuple(str(a) for a in argv), must_show))


# --------------------------------------------------------------------------- running


class _AnsweringStdin(io.StringIO):
    """stdin that answers "y" to any prompt and remembers that it was asked."""

    def __init__(self) -> None:
        super().__init__("y\n" * 64)
        self.was_read = False

    def read(self, *args):  # type: ignore[override]
        self.was_read = True
        return super().read(*args)

    def readline(self, *args):  # type: ignore[override]
        self.was_read = True
        return super().readline(*args)


@contextmanager
def _time_limit(seconds: int) -> Iterator[None]:
    def _stop(signum, frame):  # noqa: ARG001
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, _stop)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def run_case(case: Case, marker: Path) -> Outcome:
    """Run one case through ``evspec.cli.main`` and observe it (module docstring)."""
    from evspec.cli import main

    marker.unlink(missing_ok=True)
    out = io.StringIO()
    stdin, sys.stdin = sys.stdin, _AnsweringStdin()
    trap = sys.stdin
    raised = None
    code: int | None = None
    try:
        with redirect_stdout(out), redirect_stderr(out), _time_limit(CASE_SECONDS):
            code = main(list(case.argv))
    except BaseException as error:  # anything escaping main is the failure being counted
        raised = f"{type(error).__name__}: {error}"
    finally:
        sys.stdin = stdin
    return Outcome(case, code, out.getvalue(), raised, marker.exists(), trap.was_read)


def tally(outcomes: list[Outcome]) -> Counter[str]:
    counts: Counter[str] = Counter({v: 0 for v in VERDICTS})
    counts.update(o.verdict for o in outcomes)
    return counts


def summary_line(outcomes: list[Outcome]) -> str:
    counts = tally(outcomes)
    return (
        f"{len(outcomes)} hostile inputs tried: {counts['clear error']} clear errors, {counts['traceback']} tracebacks, "
        f"{counts['silent result']} silent results, {counts['code execution']} code executions"
    )


# --------------------------------------------------------------------------- building blocks


def _stream(n: int = 400, seed: int = 0) -> EventStream:
    rng = np.random.default_rng(seed)
    t = np.sort(rng.integers(0, 40_000, n)).astype(np.int64)
    return EventStream.from_arrays(
        rng.integers(0, SENSOR[0], n), rng.integers(0, SENSOR[1], n), t, rng.integers(0, 2, n), SENSOR
    )


def _columns(n: int = 400) -> dict[str, np.ndarray]:
    s = _stream(n)
    return {"x": s.x.astype(np.int64), "y": s.y.astype(np.int64), "t": s.t.astype(np.int64), "p": s.p.astype(np.int64)}


def _column_damage() -> dict[str, Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]]:
    """Ways to damage x, y, t, p columns (each returns new columns)."""

    def with_(name: str, fn: Callable[[np.ndarray], np.ndarray]):
        return lambda cols: {**cols, name: fn(cols[name].copy())}

    def setat(i: int, v):
        def fn(a: np.ndarray) -> np.ndarray:
            a[i] = v
            return a

        return fn

    return {
        "x-beyond-sensor": with_("x", setat(7, SENSOR[0] + 5)),
        "y-beyond-sensor": with_("y", setat(9, SENSOR[1])),
        "unsorted-t": with_("t", lambda a: a[::-1].copy()),
        "float-t": with_("t", lambda a: a.astype(np.float64) + 0.5),
        "negative-t": with_("t", lambda a: a - 1000),
        "polarity-2": with_("p", setat(3, 2)),
        "polarity-minus-1": with_("p", lambda a: np.where(a == 0, -1, 1)),
        "float-x": with_("x", lambda a: a.astype(np.float32)),
    }


def _pickle_runs(marker: Path) -> bytes:
    """A pickle that, if loaded with a plain unpickler, writes ``marker``."""

    class Payload:
        def __reduce__(self):
            return (exec, (f"open({str(marker)!r}, 'w').write('ran')",))

    return pickle.dumps(Payload(), protocol=2)


def _pickle_allocates() -> bytes:
    """A pickle of only numpy's own globals whose array declares 10^11 int8 elements (93 GiB)."""
    from numpy._core import multiarray

    class Payload:
        def __reduce__(self):
            return (multiarray._reconstruct, (np.ndarray, (10**11,), b"b"))

    return pickle.dumps(Payload(), protocol=2)


def _npy_bytes(header: dict, payload: bytes) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, header)
    return buffer.getvalue() + payload


def _write_h5(path: Path, cols: dict[str, np.ndarray], *, dtypes: dict[str, str] | None = None,
              ms_to_idx: np.ndarray | None = None, ms_shape: int | None = None, t_offset=0) -> None:
    dtypes = {"x": "u2", "y": "u2", "t": "u4", "p": "u1", **(dtypes or {})}
    with h5py.File(path, "w") as f:
        for name in "xytp":
            f.create_dataset(f"events/{name}", data=np.asarray(cols[name]).astype(dtypes[name]))
        if ms_shape is not None:  # a huge table that costs no disk: chunked and never written
            f.create_dataset("ms_to_idx", shape=(ms_shape,), dtype="u8", chunks=(1 << 16,))
        else:
            if ms_to_idx is None:
                t = np.asarray(cols["t"]).astype(np.int64)
                ms = np.arange(int(t.max()) // 1000 + 2) * 1000
                ms_to_idx = np.searchsorted(t, ms, side="left").astype(np.uint64)
            f.create_dataset("ms_to_idx", data=ms_to_idx)
        f.create_dataset("t_offset", data=t_offset)


# --------------------------------------------------------------------------- the corpus


def build_corpus(root: Path, *, with_models: bool = True) -> Corpus:
    """Write every hostile input under ``root`` and return the cases that meet them."""
    root.mkdir(parents=True, exist_ok=True)
    corpus = Corpus(root, root / "CODE_RAN")
    files = root / "files"
    files.mkdir(exist_ok=True)
    event_files: list[tuple[str, Path]] = []

    # .npy (structured), EventGPT .npy (pickled dict), .npz, .h5: the same column damage in each
    for damage, fn in _column_damage().items():
        cols = fn(_columns())
        structured = np.zeros(len(cols["x"]), dtype=[(n, cols[n].dtype) for n in "xytp"])
        for n in "xytp":
            structured[n] = cols[n]
        np.save(files / f"structured-{damage}.npy", structured)
        np.save(files / f"eventgpt-{damage}.npy", cols, allow_pickle=True)
        np.savez(files / f"npz-{damage}.npz", **cols)
        h5_types = {"t": "f8"} if damage == "float-t" else {"t": "i8"} if damage == "negative-t" else \
            {"p": "i1"} if damage == "polarity-minus-1" else {"x": "f4"} if damage == "float-x" else None
        _write_h5(files / f"dsec-{damage}.h5", cols, dtypes=h5_types)
        for kind in ("structured", "eventgpt"):
            event_files.append((f"{kind} .npy: {damage}", files / f"{kind}-{damage}.npy"))
        event_files.append((f".npz: {damage}", files / f"npz-{damage}.npz"))
        event_files.append((f"DSEC .h5: {damage}", files / f"dsec-{damage}.h5"))

    good = _stream()
    write_structured_npy(good, files / "good.npy")
    raw = (files / "good.npy").read_bytes()
    write_eventgpt_npy(good, files / "good-eventgpt.npy")
    raw_eventgpt = (files / "good-eventgpt.npy").read_bytes()
    write_npz(good, files / "good.npz")
    write_dsec_h5(good, files / "good.h5")
    raw_h5 = (files / "good.h5").read_bytes()

    def put(name: str, data: bytes) -> Path:
        (files / name).write_bytes(data)
        return files / name

    rng = np.random.default_rng(1)
    event_files += [
        (".npy: empty file", put("empty.npy", b"")),
        (".npy: random bytes", put("random.npy", rng.bytes(2048))),
        (".npy: truncated header", put("cut-header.npy", raw[:40])),
        (".npy: truncated data", put("cut-data.npy", raw[: len(raw) - 100])),
        (".npy: header claims 10^12 rows", put("huge.npy", _npy_bytes(
            {"descr": np.lib.format.dtype_to_descr(good.events.dtype), "fortran_order": False, "shape": (10**12,)},
            raw[128:1400]))),
        (".npy: 2-D structured array", put("twod.npy", _npy_bytes(
            {"descr": np.lib.format.dtype_to_descr(good.events.dtype), "fortran_order": False, "shape": (20, 20)},
            good.events.tobytes()))),
        (".npy: missing field p", _save(files / "no-p.npy", np.zeros(5, dtype=[("x", "u2"), ("y", "u2"), ("t", "i8")]))),
        (".npy: plain float array", _save(files / "plain.npy", np.zeros((10, 4)))),
        (".npy: structured with objects", put("objects.npy", _npy_bytes(
            {"descr": [("x", "O"), ("y", "<u2"), ("t", "<i8"), ("p", "u1")], "fortran_order": False, "shape": (1,)},
            _pickle_runs(corpus.marker)))),
        ("EventGPT .npy: pickle that runs code", put("evil.npy", _npy_bytes(
            {"descr": "|O", "fortran_order": False, "shape": ()}, _pickle_runs(corpus.marker)))),
        ("EventGPT .npy: pickle of os.system", put("evil-system.npy", _npy_bytes(
            {"descr": "|O", "fortran_order": False, "shape": ()},
            b"cos\nsystem\n(V" + f"touch {corpus.marker}".encode() + b"\ntR."))),
        ("EventGPT .npy: pickle building a 10^11-element array from 1 KB", put("bomb.npy", _npy_bytes(
            {"descr": "|O", "fortran_order": False, "shape": ()}, _pickle_allocates()))),
        ("EventGPT .npy: persistent id", put("persid.npy", _npy_bytes(
            {"descr": "|O", "fortran_order": False, "shape": ()}, b"\x80\x02X\x01\x00\x00\x00aQ."))),
        ("EventGPT .npy: truncated pickle", put("cut-pickle.npy", raw_eventgpt[: len(raw_eventgpt) // 2])),
        ("EventGPT .npy: a list, not a dict", _save(files / "list.npy", np.array([1, 2, 3], dtype=object), pickle=True)),
        ("EventGPT .npy: extra keys", _save_dict(files / "extra.npy", {**_columns(), "evil": np.zeros(3)})),
        ("EventGPT .npy: empty arrays", _save_dict(files / "empty-arrays.npy", {n: np.zeros(0, np.int64) for n in "xytp"})),
        (".npz: not a zip", put("notzip.npz", rng.bytes(500))),
        (".npz: truncated zip", put("cut.npz", (files / "good.npz").read_bytes()[:300])),
        (".npz: scalar sensor_size", _savez(files / "scalar-sensor.npz", **_columns(), sensor_size=np.int64(640))),
        (".npz: float sensor_size", _savez(files / "float-sensor.npz", **_columns(), sensor_size=np.array([640.5, 480.0]))),
        (".npz: three-number sensor_size", _savez(files / "three-sensor.npz", **_columns(), sensor_size=np.array([640, 480, 3]))),
        (".npz: zero-width sensor_size", _savez(files / "zero-sensor.npz", **_columns(), sensor_size=np.array([0, 480]))),
        (".npz: member header claims 10^12 rows", _zip_members(files / "huge-member.npz", {"x.npy": _npy_bytes(
            {"descr": "<i8", "fortran_order": False, "shape": (10**12,)}, b"\0" * 64)})),
        (".npz: pickled member", _savez(files / "pickled-member.npz", x=np.array([{"a": 1}], dtype=object))),
        (".npz: a member that is not .npy", _zip_members(files / "text-member.npz", {"notes.txt": b"hello"})),
        (".npz: missing arrays", _savez(files / "missing.npz", x=np.zeros(3, int), y=np.zeros(3, int))),
        (".h5: random bytes", put("random.h5", rng.bytes(4096))),
        (".h5: empty file", put("empty.h5", b"")),
        (".h5: truncated", put("cut.h5", raw_h5[: len(raw_h5) // 2])),
        (".h5: zeroed ms_to_idx", _h5(files / "zero-table.h5", ms_to_idx=np.zeros(41, np.uint64))),
        (".h5: ms_to_idx off by one", _h5(files / "shifted-table.h5", ms_to_idx=_good_table() + 1)),
        (".h5: float ms_to_idx", _h5(files / "float-table.h5", ms_to_idx=np.linspace(0, 400, 41))),
        (".h5: ms_to_idx claims 3e9 entries", _h5(files / "huge-table.h5", ms_shape=3_000_000_000)),
        (".h5: float t_offset", _h5(files / "float-offset.h5", t_offset=1.5)),
        (".h5: events of unequal length", _h5_unequal(files / "unequal.h5")),
        (".h5: no events group", _h5_plain(files / "no-events.h5")),
    ]

    out = root / "out"
    for label, path in event_files:
        corpus.add(f"{label} / data inspect", "events", "data", "inspect", path)
        corpus.add(f"{label} / data render", "events", "data", "render", path, "--out", out / path.name)

    # datasets: each damaged events file as the one row of a dataset, through `data check`
    for label, path in event_files:
        folder = root / "datasets" / f"row-{path.name}"
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, folder / path.name)
        _dataset(folder, [{"id": "a", "query": "what moves?", "event_data": path.name}])
        corpus.add(f"{label} / data check", "events", "data", "check", folder)

    _dataset_cases(corpus, root / "datasets", good)
    _option_cases(corpus, files / "good.npy", files / "good.h5", root)
    if with_models:
        _checkpoint_cases(corpus, root / "checkpoints")
    return corpus


def _save(path: Path, array: np.ndarray, pickle: bool = False) -> Path:
    np.save(path, array, allow_pickle=pickle)
    return path


def _save_dict(path: Path, data: dict) -> Path:
    np.save(path, data, allow_pickle=True)
    return path


def _savez(path: Path, **arrays) -> Path:
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    return path


def _zip_members(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def _good_table() -> np.ndarray:
    t = _columns()["t"]
    return np.searchsorted(t, np.arange(int(t.max()) // 1000 + 2) * 1000, side="left").astype(np.int64)


def _h5(path: Path, **kwargs) -> Path:
    _write_h5(path, _columns(), **kwargs)
    return path


def _h5_unequal(path: Path) -> Path:
    cols = _columns()
    cols["p"] = cols["p"][:-5]
    with h5py.File(path, "w") as f:
        for name in "xytp":
            f.create_dataset(f"events/{name}", data=cols[name])
        f.create_dataset("ms_to_idx", data=np.zeros(3, np.uint64))
        f.create_dataset("t_offset", data=0)
    return path


def _h5_plain(path: Path) -> Path:
    with h5py.File(path, "w") as f:
        f.create_dataset("data", data=np.arange(10))
    return path


def _dataset(folder: Path, rows: object, name: str = "dataset.json") -> Path:
    (folder / name).write_text(rows if isinstance(rows, str) else json.dumps(rows), encoding="utf-8")
    return folder


def _dataset_cases(corpus: Corpus, base: Path, good: EventStream) -> None:
    """Dataset JSON of the wrong shapes, paths leaving the root, and markup in what gets printed."""
    def folder(name: str) -> Path:
        path = base / name
        path.mkdir(parents=True, exist_ok=True)
        write_eventgpt_npy(good, path / "clip.npy")
        return path

    row = {"id": "a", "query": "what moves?", "event_data": "clip.npy"}
    shapes: dict[str, object] = {
        "empty list": [],
        "an object, not a list": {"id": "a"},
        "a string": "\"rows\"",
        "rows that are numbers": [1, 2, 3],
        "duplicate ids": [row, {**row}],
        "no question": [{"id": "a", "event_data": "clip.npy"}],
        "no id": [{"query": "q", "event_data": "clip.npy"}],
        "id is a list": [{**row, "id": [1, 2]}],
        "event_image is an object": [{**row, "event_image": {"a": 1}}],
        "conversations of numbers": [{"id": "a", "conversations": [1, 2]}],
        "deeply nested JSON": "[" * 100_000 + "]" * 100_000,
        "deeply nested row": "[{\"id\": \"a\", \"query\": \"q\", \"scene\": " + "{\"a\": " * 5000 + "1" + "}" * 5000 + "}]",
        "not JSON": "{rows: [}",
        "not UTF-8": None,
        "../ path": [{**row, "event_data": "../outside.npy"}],
        "absolute path": [{**row, "event_data": "/etc/passwd"}],
        "absolute video path": [{**row, "video_data": "/etc/hostname"}],
        "image path ../": [{**row, "event_image": ["../../x.png"]}],
    }
    for name, rows in shapes.items():
        path = folder(name.replace(" ", "-").replace("/", "").replace(".", ""))
        if rows is None:
            (path / "dataset.json").write_bytes(b"\xff\xfe[\x00")
        else:
            _dataset(path, rows)
        corpus.add(f"dataset: {name} / data check", "dataset", "data", "check", path)
        corpus.add(f"dataset: {name} / data inspect", "dataset", "data", "inspect", path)
        # the same loader behind the run commands: refused before any model loads
        runs = base.parent / "dataset-runs" / path.name
        corpus.add(f"dataset: {name} / bench", "dataset", "bench", "--model", "tiny-eventgpt", "--dataset", path,
                   "--device", "cpu", "--out", runs / "bench")
        corpus.add(f"dataset: {name} / spec", "dataset", "spec", "--dataset", path, "--device", "cpu",
                   "--out", runs / "spec")
    (base / "outside.npy").write_bytes(b"")
    # a symlink out of the root
    path = folder("symlink-out")
    (path / "link.npy").symlink_to(base / "outside.npy")
    _dataset(path, [{**row, "event_data": "link.npy"}])
    corpus.add("dataset: symlink leaving the root / data check", "dataset", "data", "check", path)
    path = folder("symlinked-folder")
    (path / "sub").symlink_to(base)
    _dataset(path, [{**row, "event_data": "sub/outside.npy"}])
    corpus.add("dataset: symlinked folder leaving the root / data check", "dataset", "data", "check", path)
    # markup in what a command prints must be shown literally
    path = folder("markup-file")
    _dataset(path, [{**row, "event_data": "[bold]missing.npy"}])
    corpus.add("markup: [bold] in a file name / data check", "markup", "data", "check", path, must_show="[bold]missing.npy")
    path = folder("markup-id")
    _dataset(path, [{**row, "id": "[/x]", "event_data": "missing.npy"}])
    corpus.add("markup: [/x] as a sample id / data check", "markup", "data", "check", path, must_show="[/x]")
    path = folder("markup-error")
    _dataset(path, [{**row, "id": "[red]x[/red]", "event_data": "../[/y].npy"}])
    corpus.add("markup: [/y] in an error message / data check", "markup", "data", "check", path, must_show="[/y].npy")
    weird = base / "[bold]weird[red].npy"
    weird.write_bytes(b"junk")
    corpus.add("markup: [bold] in an events file name / data inspect", "markup", "data", "inspect", weird,
               must_show="[bold]weird[red].npy")
    corpus.add("markup: [red] in a dataset folder name / data check", "markup", "data", "check", base / "[red]nope[/]",
               must_show="[red]nope[/]")
    corpus.add("markup: [bold] in a checkpoint folder / verify", "markup", "verify", f"eventgpt:{base}/[bold]nope",
               "--device", "cpu", must_show="[bold]nope")
    path = folder("markup-bench")
    _dataset(path, [{**row, "id": "[/x]", "event_data": "[bold]missing.npy"}])
    corpus.add("markup: [/x] as the id of a failing sample / bench", "markup", "bench", "--model", "tiny-eventgpt",
               "--dataset", path, "--device", "cpu", "--warmup", "0", "--max-new-tokens", "2", "--out",
               base / "[red]run", must_show="[bold]missing.npy")
    weird = base / "[i]x[/i"  # a folder "[i]x[" holding "i"
    weird.mkdir(parents=True, exist_ok=True)
    (weird / "e.npz").write_bytes(b"PK\x03\x04junk")
    corpus.add("markup: [i] in a folder of a damaged .npz / data render", "markup", "data", "render", weird / "e.npz",
               "--out", base / "out", must_show="[i]x[/i/e.npz")
    # broken media referenced by a dataset
    path = folder("broken-media")
    (path / "frame.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 50)
    (path / "clip.mp4").write_bytes(b"\0\0\0\x18ftypmp42" + os.urandom(400))
    _dataset(path, [{**row, "event_image": ["frame.png"]}])
    corpus.add("dataset: truncated PNG / data check", "dataset", "data", "check", path)
    path = folder("broken-video")
    (path / "clip.mp4").write_bytes(b"\0\0\0\x18ftypmp42" + os.urandom(400))
    _dataset(path, [{**row, "video_data": "clip.mp4"}])
    corpus.add("dataset: random bytes as MP4 / data check", "dataset", "data", "check", path)
    corpus.add("video: random bytes as MP4 / data inspect", "dataset", "data", "inspect", path / "clip.mp4")
    (path / "empty.mp4").write_bytes(b"")
    corpus.add("video: empty MP4 / data inspect", "dataset", "data", "inspect", path / "empty.mp4")


def _option_cases(corpus: Corpus, npy: Path, h5: Path, root: Path) -> None:
    """Options that cannot work: refused before any model is loaded or memory allocated."""
    out = root / "out-options"
    existing = root / "a-file"
    existing.write_text("not a folder")
    for events in (npy, h5):
        corpus.add("--sensor 65536x65536 histogram", "options", "data", "render", events, "--out", out,
                   "--style", "histogram", "--sensor", "65536x65536")
        corpus.add("--sensor 65536x65536 eventgpt on the sensor's canvas", "options", "data", "render", events,
                   "--out", out, "--sensor", "65536x65536", "--event-canvas", "sensor")
    corpus.add("--style voxel --frames 1000000", "options", "data", "render", npy, "--out", out, "--style", "voxel",
               "--frames", "1000000")
    corpus.add("--frames 0", "options", "data", "render", npy, "--out", out, "--frames", "0")
    corpus.add("--frames -5", "options", "data", "render", npy, "--out", out, "--frames", "-5")
    corpus.add("--sensor 0x480", "options", "data", "render", npy, "--out", out, "--sensor", "0x480")
    corpus.add("--sensor 640x480x3", "options", "data", "render", npy, "--out", out, "--sensor", "640x480x3")
    corpus.add("--sensor -640x480", "options", "data", "render", npy, "--out", out, "--sensor", "-640x480")
    corpus.add("--sensor 100000x480", "options", "data", "render", npy, "--out", out, "--sensor", "100000x480")
    corpus.add("render --out naming an existing file", "options", "data", "render", npy, "--out", existing)
    corpus.add("render --t1 before --t0", "options", "data", "render", h5, "--out", out, "--t0", "500", "--t1", "100")
    corpus.add("render window with no events", "options", "data", "render", h5, "--out", out, "--t0", "10000000",
               "--t1", "10000001")
    corpus.add("synth --out naming an existing file", "options", "data", "synth", existing, "--clips", "1")
    corpus.add("synth --duration inf", "options", "data", "synth", root / "s1", "--duration", "inf", "--clips", "1")
    corpus.add("synth --duration nan", "options", "data", "synth", root / "s2", "--duration", "nan", "--clips", "1")
    corpus.add("synth --size 7x7", "options", "data", "synth", root / "s3", "--size", "7x7", "--clips", "1")
    corpus.add("synth --clips 0", "options", "data", "synth", root / "s4", "--clips", "0")
    corpus.add("synth --size 65536x65536", "options", "data", "synth", root / "s5", "--size", "65536x65536",
               "--clips", "1", must_show="needs about")
    corpus.add("synth --duration 100000", "options", "data", "synth", root / "s6", "--duration", "100000",
               "--clips", "1", must_show="needs about")
    bench = ("bench", "--model", "tiny-eventgpt", "--device", "cpu")
    for flag, value in (("--temperature", "nan"), ("--temperature", "inf"), ("--temperature", "-1"),
                        ("--top-p", "nan"), ("--top-p", "0"), ("--max-new-tokens", "0"),
                        ("--max-new-tokens", "1000000"), ("--min-new-tokens", "5000"), ("--warmup", "-1")):
        corpus.add(f"bench {flag} {value}", "options", *bench, flag, value, "--out", root / f"b{len(corpus.cases)}")
    corpus.add("bench --out naming an existing file", "options", *bench, "--out", existing)
    good_identity = None
    for label, config_text, records_text in (
        ("config.json nested 100000 deep", "[" * 100_000 + "]" * 100_000, None),
        ("config.json that is a list", "[1, 2]", None),
        ("config.json whose identity is a list", json.dumps({"identity": [1]}), None),
        ("config.json not UTF-8", "\udcff", None),
        ("records.jsonl with a bad line in the middle", good_identity, "{\"a\": 1}\nnot json\n{\"b\": 2}\n"),
        ("records.jsonl with a line nested 100000 deep", good_identity, "[" * 100_000 + "]" * 100_000 + "\n{}\n"),
    ):
        run = root / "runs" / label.replace(" ", "-")
        run.mkdir(parents=True, exist_ok=True)
        if config_text is not None:
            (run / "config.json").write_bytes(config_text.encode("utf-8", "surrogateescape"))
        if records_text is not None:
            (run / "records.jsonl").write_text(records_text)
        corpus.add(f"bench into a run folder with {label}", "options", *bench, "--out", run, "--max-samples", "1",
                   "--max-new-tokens", "2", "--warmup", "0", must_show=str(run))
    corpus.add("bench --dtype float8", "options", *bench, "--dtype", "float8", "--out", root / "b-dtype")
    corpus.add("bench --model unknown", "options", "bench", "--model", "tiny-nothing", "--out", root / "b-model")
    spec = ("spec", "--device", "cpu")
    for flag, value in (("--temperature", "nan"), ("--gamma", "0"), ("--draft", "oracle:nan"),
                        ("--draft", "oracle:2"), ("--min-new-tokens", "100000"), ("--max-new-tokens", "100000")):
        corpus.add(f"spec {flag} {value}", "options", *spec, flag, value, "--out", root / f"s{len(corpus.cases)}")
    corpus.add("spec --out naming an existing file", "options", *spec, "--out", existing)
    corpus.add("verify --max-new-tokens 1000000", "options", "verify", "tiny-eventgpt", "--max-new-tokens", "1000000",
               "--device", "cpu", "--no-hooks")
    corpus.add("verify --repeats 0", "options", "verify", "tiny-eventgpt", "--repeats", "0", "--device", "cpu")
    corpus.add("verify --max-samples 0", "options", "verify", "tiny-eventgpt", "--max-samples", "0", "--device", "cpu")
    corpus.add("verify --device cuda:7", "options", "verify", "tiny-eventgpt", "--device", "cuda:7")
    corpus.add("verify --dtype float8", "options", "verify", "tiny-eventgpt", "--dtype", "float8", "--device", "cpu")
    corpus.add("verify --quantize 3bit", "options", "verify", "tiny-eventgpt", "--quantize", "3bit", "--device", "cpu")
    corpus.add("verify --min-new-tokens 5000", "options", "verify", "tiny-eventgpt", "--max-new-tokens", "6000",
               "--min-new-tokens", "5000", "--device", "cpu", "--no-hooks")
    corpus.add("verify --min-new-tokens 1020: within the context, beyond the room a prompt leaves", "options",
               "verify", "tiny-eventgpt", "--max-new-tokens", "1020", "--min-new-tokens", "1020", "--device", "cpu",
               "--no-hooks", "--max-samples", "1")


def _checkpoint_cases(corpus: Corpus, base: Path) -> None:
    """Checkpoints that ask for custom code, hold pickles, or are damaged."""
    from evspec.models.loading import quiet_transformers
    from evspec.models.tiny import tiny_checkpoint

    with quiet_transformers():
        sources = {family: tiny_checkpoint(f"tiny-{family}") for family in ("eventgpt", "llava", "videollava")}
    marker = corpus.marker

    def copy(family: str, name: str) -> Path:
        target = base / f"{family}-{name}"
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(sources[family], target)
        return target

    def edit_json(path: Path, change: Callable[[dict], None]) -> None:
        raw = json.loads(path.read_text())
        change(raw)
        path.write_text(json.dumps(raw))

    evil_module = f"open({str(marker)!r}, 'w').write('ran')\nfrom transformers import *  # noqa\n"

    def verify(family: str, folder: Path, label: str) -> None:
        corpus.add(f"checkpoint {family}: {label}", "checkpoint", "verify", f"{family}:{folder}", "--device", "cpu",
                   "--no-hooks", "--max-samples", "1", "--max-new-tokens", "2")

    for family in sources:
        folder = copy(family, "auto-map-tokenizer")
        (folder / "evil.py").write_text(evil_module + "class EvilTokenizer(PreTrainedTokenizerFast): pass\n")
        edit_json(folder / "tokenizer_config.json", lambda raw: raw.update(
            tokenizer_class="EvilTokenizer", auto_map={"AutoTokenizer": ["evil.EvilTokenizer", "evil.EvilTokenizer"]}))
        verify(family, folder, "tokenizer_config.json with an auto_map")

        folder = copy(family, "custom-tokenizer-class")
        edit_json(folder / "tokenizer_config.json", lambda raw: raw.update(tokenizer_class="EvilTokenizer"))
        verify(family, folder, "tokenizer_config.json naming a class transformers lacks")

        folder = copy(family, "auto-map-config")
        (folder / "evil.py").write_text(evil_module)
        edit_json(folder / "config.json", lambda raw: raw.update(auto_map={"AutoConfig": "evil.EvilConfig",
                                                                           "AutoModel": "evil.EvilModel"}))
        verify(family, folder, "config.json with an auto_map")

        processor = "processor_config.json" if family == "llava" else "preprocessor_config.json"
        if family != "eventgpt":
            folder = copy(family, "auto-map-processor")
            (folder / "evil.py").write_text(evil_module)
            edit_json(folder / processor, lambda raw: raw.update(auto_map={"AutoProcessor": "evil.EvilProcessor",
                                                                           "AutoImageProcessor": "evil.EvilProcessor"}))
            verify(family, folder, f"{processor} with an auto_map")
        else:
            folder = copy(family, "auto-map-processor")
            (folder / "evil.py").write_text(evil_module)
            (folder / "preprocessor_config.json").write_text(json.dumps(
                {**json.loads((folder / "clip_tower" / "preprocessor_config.json").read_text()),
                 "auto_map": {"AutoImageProcessor": "evil.EvilProcessor"}}))
            verify(family, folder, "preprocessor_config.json with an auto_map")

        data = (sources[family] / "model.safetensors").read_bytes()
        for label, damaged in (
            ("truncated safetensors", data[: len(data) // 2]),
            ("random bytes as safetensors", os.urandom(4096)),
            ("empty safetensors", b""),
            ("safetensors header claiming gigabytes", _lying_safetensors()),
            ("safetensors header length beyond the file", struct.pack("<Q", 2**40) + b"{}"),
        ):
            folder = copy(family, label.replace(" ", "-"))
            (folder / "model.safetensors").write_bytes(damaged)
            verify(family, folder, label)

        folder = copy(family, "pickled-bin")
        (folder / "model.safetensors").unlink()
        (folder / "pytorch_model.bin").write_bytes(_pickle_runs(marker))
        verify(family, folder, "pickled pytorch_model.bin that runs code")

        folder = copy(family, "torch-zip-with-code")
        (folder / "model.safetensors").unlink()
        _torch_zip_with_code(folder / "pytorch_model.bin", marker)
        verify(family, folder, "torch zip pytorch_model.bin whose pickle runs code")

        folder = copy(family, "nested-config")
        (folder / "config.json").write_text("{\"a\": " * 50_000 + "1" + "}" * 50_000)
        verify(family, folder, "config.json nested 50000 deep")

        folder = copy(family, "nested-generation-config")
        (folder / "generation_config.json").write_text("[" * 50_000 + "]" * 50_000)
        verify(family, folder, "generation_config.json nested 50000 deep")

        folder = copy(family, "generation-config-wrong-types")
        (folder / "generation_config.json").write_text(json.dumps({"temperature": "hot", "top_p": [1], "do_sample": 3}))
        corpus.add(f"checkpoint {family}: generation_config.json of the wrong types / bench --generation-config checkpoint",
                   "checkpoint", "bench", "--model", f"{family}:{folder}", "--generation-config", "checkpoint",
                   "--device", "cpu", "--out", folder / "run", "--max-samples", "1", "--max-new-tokens", "2",
                   "--warmup", "0")

        for key, value in (("hidden_size", "abc"), ("num_attention_heads", 0), ("vocab_size", -5),
                           ("num_hidden_layers", 100_000), ("hidden_size", 65), ("rms_norm_eps", "x"),
                           ("num_key_value_heads", 3), ("max_position_embeddings", True)):
            folder = copy(family, f"config-{key}-{value}")

            def damage(raw: dict, key: str = key, value: object = value) -> None:
                (raw["text_config"] if isinstance(raw.get("text_config"), dict) else raw)[key] = value

            edit_json(folder / "config.json", damage)
            verify(family, folder, f"config.json with {key} {value!r}")

        folder = copy(family, "config-list")
        (folder / "config.json").write_text("[1, 2]")
        verify(family, folder, "config.json that is a list")

        folder = copy(family, "broken-tokenizer-json")
        (folder / "tokenizer.json").write_text("{\"version\": 1, \"model\": 7}")
        verify(family, folder, "tokenizer.json of the wrong shape")

        folder = copy(family, "index-naming-outside")
        from safetensors import safe_open

        with safe_open(str(folder / "model.safetensors"), framework="pt") as weights:
            weight_map = {key: "../../../etc/passwd" for key in weights.keys()}
        (folder / "model.safetensors").unlink()
        (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
        verify(family, folder, "weight index naming a shard outside the folder")

    for family, processor in (("eventgpt", "clip_tower/preprocessor_config.json"),
                              ("videollava", "preprocessor_config.json"), ("llava", "processor_config.json")):
        folder = copy(family, "image-size-mismatch")

        def resize(raw: dict) -> None:
            target = raw.get("image_processor", raw)
            target["crop_size"] = {"height": 100, "width": 100}
            target["size"] = {"shortest_edge": 100}

        edit_json(folder / processor, resize)
        verify(family, folder, "image processor size that does not match the tower")


def _lying_safetensors() -> bytes:
    header = json.dumps({"w": {"dtype": "F32", "shape": [100_000, 100_000], "data_offsets": [0, 40_000_000_000]}})
    return struct.pack("<Q", len(header)) + header.encode() + b"\0" * 64


def _torch_zip_with_code(path: Path, marker: Path) -> None:
    """A torch.save-style zip whose data.pkl runs code when unpickled without weights_only."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", _pickle_runs(marker))
        archive.writestr("archive/version", "3\n")
        archive.writestr("archive/byteorder", "little")


def run_corpus(corpus: Corpus, on_outcome: Callable[[Outcome], None] | None = None) -> list[Outcome]:
    outcomes = []
    for case in corpus.cases:
        outcome = run_case(case, corpus.marker)
        outcomes.append(outcome)
        if on_outcome is not None:
            on_outcome(outcome)
    return outcomes
