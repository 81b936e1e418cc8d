"""Event streams and the safe readers/writers for the event files evspec meets.

An :class:`EventStream` wraps a NumPy structured array with fields ``x, y, t, p`` (t in
microseconds), the same array tonic uses, so tonic users can hand theirs in unchanged.
Readers cover EventGPT's pickled-dict ``.npy`` (loaded WITHOUT running pickled code),
plain structured ``.npy``, ``.npz`` and DSEC ``events.h5`` (windowed reads through
``/ms_to_idx`` that never touch the whole file).
"""

from __future__ import annotations

import io
import os
import pickle
import tempfile
import zipfile
import zlib
from tokenize import TokenError
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any, Literal

import h5py
import numpy as np
import numpy.lib.format as npy_format

from evspec.errors import ConfigError, InputError, UnsafeFileError
from evspec.memory import require_memory

EVENT_DTYPE = np.dtype([("x", "<u2"), ("y", "<u2"), ("t", "<i8"), ("p", "u1")])
DEFAULT_SENSOR_SIZE: tuple[int, int] = (640, 480)  # (width, height): DSEC / EventGPT clips

_FIELDS = ("x", "y", "t", "p")
_UINT32_MAX = 2**32 - 1


# ----------------------------------------------------------------------------- validation


def _check_sensor_size(sensor_size: Any, path: str | Path | None = None) -> tuple[int, int]:
    """Return ``sensor_size`` as a ``(width, height)`` tuple of ints, or raise."""
    try:
        w, h = (int(v) for v in sensor_size)
    except (TypeError, ValueError):
        raise InputError(f"sensor_size must be (width, height), got {sensor_size!r}", path) from None
    if not (0 < w <= 65536 and 0 < h <= 65536):
        raise InputError(f"sensor_size {sensor_size!r} must be two integers in 1..65536", path)
    return w, h


def _bad_summary(mask: np.ndarray) -> tuple[int, int]:
    """(how many, first index) of the True entries of ``mask``."""
    bad = np.flatnonzero(mask)
    return int(bad.size), int(bad[0])


def _check_events(events: Any, sensor_size: tuple[int, int], path: str | Path | None) -> None:
    """Raise InputError unless ``events`` is a valid x,y,t,p structured array on ``sensor_size``."""
    if not isinstance(events, np.ndarray) or events.dtype.names is None:
        raise InputError(
            f"events must be a NumPy structured array with fields x, y, t, p; got {type(events).__name__}"
            + (f" of dtype {events.dtype}" if isinstance(events, np.ndarray) else ""),
            path,
        )
    missing = [f for f in _FIELDS if f not in events.dtype.names]
    if missing:
        raise InputError(f"event array lacks field(s) {missing}; has {list(events.dtype.names)}", path)
    if events.ndim != 1:
        raise InputError(f"event array must be 1-D, got shape {events.shape}", path)
    _check_columns({n: events[n] for n in _FIELDS}, sensor_size, path)


def _check_columns(cols: dict[str, np.ndarray], sensor_size: tuple[int, int], path: str | Path | None) -> None:
    """Raise InputError unless the x, y, t, p columns are integer, sorted in t and on the sensor.

    Columns read from a file (``path`` given) must also have t >= 0: files store time since the
    recording started, and a negative t there is damage (in memory, relative times may be negative).
    Checks are min/max reductions first; the (slower) masks that count and locate bad events
    are only built when something is wrong.
    """
    for name in _FIELDS:
        if cols[name].dtype.kind not in "iub":
            raise InputError(
                f"field {name!r} has dtype {cols[name].dtype}; evspec needs integer (or bool) values"
                + (" -- t must be integer microseconds" if name == "t" else ""),
                path,
            )
    if cols["t"].size == 0:
        return
    width, height = sensor_size
    t = cols["t"]
    if t.dtype.kind == "u" and int(t[-1]) > np.iinfo(np.int64).max:
        raise InputError("timestamps exceed the int64 range", path)
    if t.size > 1:
        unsorted = t[1:] < t[:-1]
        if unsorted.any():
            n_bad, first = _bad_summary(unsorted)
            raise InputError(
                f"timestamps are not sorted: {n_bad} event(s) earlier than their predecessor, first at index "
                f"{first + 1} (t={int(t[first + 1])} after t={int(t[first])})",
                path,
            )
    if path is not None and int(t[0]) < 0:  # sorted, so t[0] is the smallest
        n_bad, first = _bad_summary(t < 0)
        raise InputError(
            f"{n_bad} event(s) have negative timestamps, first at index {first} (t={int(t[first])}); "
            "evspec needs t >= 0 microseconds (shift the stream, or move the offset out of t)",
            path,
        )
    for name, limit, label in (("x", width, "width"), ("y", height, "height")):
        v = cols[name]
        if int(v.min()) < 0 or int(v.max()) >= limit:
            n_bad, first = _bad_summary((v < 0) | (v >= limit))
            raise InputError(
                f"{n_bad} event(s) have {name} outside 0..{limit - 1} (sensor {label} {limit}), first at index "
                f"{first} ({name}={int(v[first])}); pass the right sensor_size=(width, height)",
                path,
            )
    p = cols["p"]
    if int(p.min()) < 0 or int(p.max()) > 1:
        n_bad, first = _bad_summary((p < 0) | (p > 1))
        raise InputError(
            f"{n_bad} event(s) have polarity outside {{0, 1}}, first at index {first} (p={int(p[first])}); "
            "convert -1/+1 polarities with p = (p > 0)",
            path,
        )


def _as_integer_array(name: str, values: Any, path: str | Path | None) -> np.ndarray:
    """1-D integer/bool array from ``values``; floats and objects are refused, not rounded."""
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise InputError(f"{name} must be 1-D, got shape {arr.shape}", path)
    if arr.dtype.kind not in "iub":
        raise InputError(f"{name} has dtype {arr.dtype}; evspec needs integer (or bool) values", path)
    return arr


def _build(x: Any, y: Any, t: Any, p: Any, sensor_size: Any, path: str | Path | None) -> EventStream:
    """Validate four arrays against the sensor, then pack them into EVENT_DTYPE.

    Validation runs on the raw arrays BEFORE the casts, so an out-of-range value is reported
    instead of wrapping around in uint16.
    """
    size = _check_sensor_size(sensor_size, path)
    cols = {n: _as_integer_array(n, v, path) for n, v in zip(_FIELDS, (x, y, t, p))}
    lengths = {n: a.size for n, a in cols.items()}
    if len(set(lengths.values())) != 1:
        raise InputError(f"x, y, t, p must have equal lengths, got {lengths}", path)
    _check_columns(cols, size, path)
    events = np.empty(lengths["x"], dtype=EVENT_DTYPE)
    for n in _FIELDS:
        events[n] = cols[n]
    return EventStream._unchecked(events, size)


# ----------------------------------------------------------------------------- EventStream


@dataclass(frozen=True, eq=False, repr=False)
class EventStream:
    """Events of one sensor, time-sorted, t in microseconds.

    ``events`` is any structured array with integer/bool fields x, y, t, p (e.g. tonic's int64
    fields or DSEC-style int16/int64); it is kept as given -- no copy, no dtype conversion -- so
    tonic arrays round-trip untouched. Validation happens once, here; slices of a valid stream
    skip it (they are valid by construction).
    """

    events: np.ndarray
    sensor_size: tuple[int, int]  # (width, height)

    def __post_init__(self) -> None:
        size = _check_sensor_size(self.sensor_size)
        object.__setattr__(self, "sensor_size", size)
        _check_events(self.events, size, None)

    @classmethod
    def _unchecked(cls, events: np.ndarray, sensor_size: tuple[int, int]) -> EventStream:
        """A stream known to be valid (a slice of a valid one, or just validated)."""
        obj = object.__new__(cls)
        object.__setattr__(obj, "events", events)
        object.__setattr__(obj, "sensor_size", sensor_size)
        return obj

    @classmethod
    def from_arrays(cls, x: Any, y: Any, t: Any, p: Any, sensor_size: tuple[int, int]) -> EventStream:
        """Pack four 1-D integer arrays into a canonical EVENT_DTYPE stream (validated)."""
        return _build(x, y, t, p, sensor_size, None)

    def __len__(self) -> int:
        return int(self.events.shape[0])

    def __repr__(self) -> str:
        span = f", t=[{int(self.t[0])}, {int(self.t[-1])}]us" if len(self) else ""
        return f"EventStream(n={len(self)}, sensor_size={self.sensor_size}{span}, dtype={self.events.dtype})"

    @property
    def x(self) -> np.ndarray:
        return self.events["x"]

    @property
    def y(self) -> np.ndarray:
        return self.events["y"]

    @property
    def t(self) -> np.ndarray:
        return self.events["t"]

    @property
    def p(self) -> np.ndarray:
        return self.events["p"]

    @property
    def width(self) -> int:
        return self.sensor_size[0]

    @property
    def height(self) -> int:
        return self.sensor_size[1]

    @property
    def duration_us(self) -> int:
        """t[-1] - t[0] (0 for an empty stream)."""
        return int(self.t[-1]) - int(self.t[0]) if len(self) else 0

    def _sub(self, start: int, stop: int) -> EventStream:
        return EventStream._unchecked(self.events[start:stop], self.sensor_size)

    def slice_time(self, t0_us: int, t1_us: int) -> EventStream:
        """Events with t0 <= t < t1 (half-open, so adjacent windows never share an event)."""
        if t1_us < t0_us:
            raise InputError(f"slice_time: t1_us={t1_us} is before t0_us={t0_us}")
        t = self.t
        return self._sub(int(np.searchsorted(t, t0_us, side="left")), int(np.searchsorted(t, t1_us, side="left")))

    def slice_count(self, start: int, stop: int) -> EventStream:
        """Events start..stop-1 by index; requires 0 <= start <= stop <= len."""
        if not 0 <= start <= stop <= len(self):
            raise InputError(f"slice_count({start}, {stop}) is outside 0 <= start <= stop <= {len(self)}")
        return self._sub(start, stop)

    def split_count(self, n: int, *, remainder: Literal["spread", "last"] = "spread") -> list[EventStream]:
        """``n`` chunks of (nearly) equal event count.

        ``remainder="spread"``: np.array_split's sizes (the first ``len % n`` chunks take one extra
        event). ``remainder="last"``: upstream EventGPT's rule, the first ``n - 1`` chunks hold
        ``len // n`` events each and the last chunk the rest. Chunks are views; concatenated they
        give the stream back. With n > len some are empty.
        """
        if n < 1:
            raise InputError(f"split_count needs n >= 1, got {n}")
        q, r = divmod(len(self), n)
        if remainder == "spread":
            sizes = [q + 1] * r + [q] * (n - r)
        elif remainder == "last":
            sizes = [q] * (n - 1) + [q + r]
        else:
            raise InputError(f"split_count: remainder must be 'spread' or 'last', got {remainder!r}")
        bounds = np.concatenate([[0], np.cumsum(sizes)])
        return [self._sub(int(a), int(b)) for a, b in pairwise(bounds)]

    def split_time(self, n: int) -> list[EventStream]:
        """``n`` windows of equal duration over [t_first, t_last]; the last window is closed.

        Window edges are integers ``t_first + (duration * i) // n``, so durations differ by at
        most 1 us. An empty stream gives ``n`` empty streams.
        """
        if n < 1:
            raise InputError(f"split_time needs n >= 1, got {n}")
        if len(self) == 0:
            return [self._sub(0, 0) for _ in range(n)]
        t_first, duration = int(self.t[0]), self.duration_us
        inner = [t_first + (duration * i) // n for i in range(1, n)]
        cuts = np.searchsorted(self.t, inner, side="left") if inner else np.empty(0, np.intp)
        bounds = [0, *(int(c) for c in cuts), len(self)]
        return [self._sub(a, b) for a, b in pairwise(bounds)]


# ----------------------------------------------------------------------------- file helpers


def _require_file(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise InputError("file not found", path)
    if not path.is_file():
        raise InputError("is not a regular file", path)
    return path


def _require_events(stream: EventStream, path: str | Path, what: str) -> None:
    if not isinstance(stream, EventStream):
        raise InputError(f"{what} needs an EventStream, got {type(stream).__name__}", path)
    if len(stream) == 0:
        raise InputError(f"refusing to {what} an empty event stream", path)


def _register_blosc():
    """Importing hdf5plugin registers the Blosc filters DSEC files need before h5py opens them.
    Imported here, not at module load: most evspec runs read no .h5 file."""
    import hdf5plugin

    return hdf5plugin


# Temporary files of atomic writes: ".<name>.<pid>.<random>.evspec.tmp". The writer's pid in the
# name tells a killed write's leftover (its process is gone) from a write still under way.
TEMP_SUFFIX = ".evspec.tmp"
_swept_folders: set[Path] = set()


def _writer_pid(temp_name: str) -> int | None:
    """The pid in a temporary file's name, None when the name is not one of ours."""
    if not (temp_name.startswith(".") and temp_name.endswith(TEMP_SUFFIX)):
        return None
    parts = temp_name[: -len(TEMP_SUFFIX)].split(".")
    return int(parts[-2]) if len(parts) >= 4 and parts[-2].isdigit() else None


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def remove_stale_temp_files(folder: str | Path) -> list[Path]:
    """Delete the temporary files that killed atomic writes left in ``folder`` (their writer's
    process no longer exists); returns what was removed. Writes in progress are left alone."""
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        pid = _writer_pid(entry.name)
        if pid is None or pid == os.getpid() or _process_alive(pid):
            continue
        try:
            os.unlink(entry.path)
            removed.append(Path(entry.path))
        except OSError:  # another run removed it first, or it is not ours to remove
            pass
    return removed


def _temp_sibling(path: Path) -> Path:
    """An empty temporary file next to ``path`` (same filesystem, so os.replace is atomic).

    The first write of this process into a folder also removes the leftovers of killed writes there.
    """
    if not path.parent.is_dir():
        raise InputError("parent folder does not exist", path)
    folder = path.parent.resolve()
    if folder not in _swept_folders:
        remove_stale_temp_files(folder)
        _swept_folders.add(folder)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=TEMP_SUFFIX)
    os.close(fd)
    # mkstemp makes the file private (0600); give it the mode an ordinary open() would.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_name, 0o666 & ~umask)
    return Path(tmp_name)


def _commit(tmp: Path, path: Path) -> None:
    """fsync ``tmp`` and move it onto ``path`` in one step."""
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success fsync it and ``os.replace`` it in.

    Readers never see a half-written file, and a failed write leaves the old file intact.
    """
    path = Path(path)
    tmp = _temp_sibling(path)
    try:
        yield tmp
        _commit(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _read_npy_header(f: io.BufferedReader, path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) from a .npy header, or a clear InputError for a non-.npy / cut file."""
    try:
        version = npy_format.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = npy_format.read_array_header_1_0(f)
        elif version in ((2, 0), (3, 0)):  # 3.0 differs from 2.0 only in the header's text encoding
            shape, _, dtype = npy_format.read_array_header_2_0(f)
        else:
            raise ValueError(f"unsupported .npy format version {version}")
    except (ValueError, OSError, EOFError, SyntaxError, TokenError, RecursionError, TypeError, KeyError) as err:
        # numpy parses the header with Python's own tokenizer: a damaged one raises its errors
        raise InputError(f"not a readable .npy file (bad magic or header: {type(err).__name__}: {err})", path) from None
    return shape, dtype


def _declared_bytes(shape: tuple[int, ...], dtype: np.dtype) -> int:
    """Bytes an array of ``shape`` and ``dtype`` holds (Python ints: no overflow)."""
    count = 1
    for dim in shape:
        count *= int(dim)
    return count * dtype.itemsize


def _check_declared_size(
    shape: tuple[int, ...], dtype: np.dtype, stored_bytes: int, path: Path, what: str = "the file"
) -> None:
    """A header's shape must match the bytes stored after it, and fit in memory, before any array
    is allocated (a 1 KB file can declare 10^12 rows)."""
    declared = _declared_bytes(shape, dtype)
    if declared != stored_bytes:
        raise InputError(
            f"header declares shape {shape} of {dtype} ({declared:,} bytes) but {what} holds {stored_bytes:,} "
            "bytes of data; truncated or corrupt",
            path,
        )
    require_memory(declared, f"an array of shape {shape} of {dtype}", path)


# ----------------------------------------------------------------------------- EventGPT .npy
#
# EventGPT stores events as np.save(dict) -- a pickle inside a 0-d object array -- and loads
# them with np.load(allow_pickle=True), which runs whatever code the pickle names. NumPy only
# offers all-or-nothing allow_pickle, so we parse the .npy header ourselves and unpickle the
# payload with an Unpickler whose find_class allows only the globals NumPy itself emits to
# rebuild plain numeric arrays (both the numpy 1.x "numpy.core" and 2.x "numpy._core"
# spellings). Anything else raises UnsafeFileError before it can be called.


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """Stand-in for ``_codecs.encode``: protocol-2 pickles spell raw bytes this way."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("_codecs.encode is only allowed as str -> latin1 bytes")
    return text.encode("latin1")


def _reconstruct_empty(reconstruct: Any) -> Any:
    """numpy's ``_reconstruct``, for the one call numpy's pickles make: an empty ndarray that the
    pickle's state then fills (numpy checks the state's bytes against its shape). Any other shape
    would allocate memory the file never holds (a 1 KB pickle can ask for 10^11 elements)."""

    def empty_only(subtype: Any, shape: Any, dtype: Any) -> Any:
        if subtype is not np.ndarray or tuple(shape) != (0,):
            raise UnsafeFileError(
                f"pickle builds an array of shape {str(shape)[:40]} directly, not as numpy writes arrays; refusing "
                "it (nothing was executed or allocated)"
            )
        return reconstruct(subtype, shape, dtype)

    return empty_only


def _numpy_globals() -> dict[tuple[str, str], Any]:
    try:
        from numpy._core import multiarray
    except ImportError:  # numpy < 2
        from numpy.core import multiarray  # type: ignore[no-redef]

    allowed: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = _reconstruct_empty(multiarray._reconstruct)
        allowed[(module, "scalar")] = multiarray.scalar
    allowed[("_codecs", "encode")] = _latin1_encode
    return allowed


_SAFE_GLOBALS = _numpy_globals()


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that can build numeric arrays and dtypes and nothing else."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _SAFE_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafeFileError(
                f"pickle references {module}.{name}, which is not a NumPy array constructor; refusing to load it "
                "(nothing was executed)"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafeFileError("pickle uses persistent ids; refusing to load it (nothing was executed)")


def read_eventgpt_npy(path: str | Path, sensor_size: tuple[int, int] | None = None) -> EventStream:
    """Read EventGPT's ``np.save(dict(x=, y=, t=, p=))`` file without executing pickled code.

    Only a 0-d object array holding a plain dict with exactly the keys x, y, t, p of 1-D
    numeric arrays of equal length is accepted. ``sensor_size`` defaults to 640x480.
    """
    path = _require_file(path)
    with open(path, "rb") as f:
        shape, dtype = _read_npy_header(f, path)
        if dtype != np.dtype(object) or shape != ():
            hint = " (a structured array: use read_structured_npy)" if dtype.names else ""
            raise InputError(
                f"not an EventGPT event file: expected a pickled dict (0-d object array), found dtype {dtype} "
                f"shape {shape}{hint}",
                path,
            )
        try:
            obj = _NumpyOnlyUnpickler(f).load()
        except UnsafeFileError as err:
            raise UnsafeFileError(str(err), path) from None
        except Exception as err:
            raise InputError(f"corrupt or truncated pickle payload ({type(err).__name__}: {err})", path) from None
    if not (isinstance(obj, np.ndarray) and obj.dtype == np.dtype(object) and obj.shape == ()):
        raise InputError(f"payload is a {type(obj).__name__}, not a 0-d object array", path)
    data = obj.item()
    if type(data) is not dict:
        raise InputError(f"payload holds a {type(data).__name__}; expected a dict with keys x, y, t, p", path)
    if set(data) != set(_FIELDS):
        raise InputError(f"dict keys are {sorted(map(str, data))}; expected exactly ['p', 't', 'x', 'y']", path)
    for key in _FIELDS:
        value = data[key]
        if not isinstance(value, np.ndarray) or value.dtype.kind not in "iub":
            what = f"array of dtype {value.dtype}" if isinstance(value, np.ndarray) else type(value).__name__
            raise InputError(f"key {key!r} holds a {what}; expected a numeric integer array", path)
    if len(data["x"]) == 0:
        raise InputError("file contains no events", path)
    return _build(data["x"], data["y"], data["t"], data["p"], sensor_size or DEFAULT_SENSOR_SIZE, path)


def write_eventgpt_npy(stream: EventStream, path: str | Path, *, relative: bool = False) -> None:
    """Write ``stream`` the way EventGPT stores clips: ``np.save`` of a dict of arrays.

    x, y are uint16, t uint32 microseconds, p uint8. ``relative=True`` stores t - t[0]
    (EventGPT clips start near 0); otherwise t must already fit uint32 -- it is refused, never
    wrapped. Written atomically.
    """
    _require_events(stream, path, "write")
    t = stream.t.astype(np.int64)
    if relative:
        t = t - t[0]
    if int(t[0]) < 0 or int(t[-1]) > _UINT32_MAX:
        raise InputError(
            f"t spans [{int(t[0])}, {int(t[-1])}] us, outside uint32 [0, {_UINT32_MAX}]; pass relative=True "
            "or slice a shorter window",
            path,
        )
    data = {
        "x": stream.x.astype(np.uint16),
        "y": stream.y.astype(np.uint16),
        "t": t.astype(np.uint32),
        "p": stream.p.astype(np.uint8),
    }
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, data, allow_pickle=True)


# ----------------------------------------------------------------------------- structured .npy / .npz


def read_structured_npy(path: str | Path, sensor_size: tuple[int, int] | None = None) -> EventStream:
    """Read a plain structured ``.npy`` (fields x, y, t, p; e.g. tonic's), never unpickling.

    The array is handed to EventStream unchanged (its dtype is kept).
    """
    path = _require_file(path)
    with open(path, "rb") as f:
        shape, dtype = _read_npy_header(f, path)
        if dtype.names is None:
            hint = " (a pickled object: for EventGPT files use read_eventgpt_npy)" if dtype == np.dtype(object) else ""
            raise InputError(f"expected a structured array with fields x, y, t, p, found dtype {dtype}{hint}", path)
        if dtype.hasobject:
            raise UnsafeFileError("structured array holds Python objects; refusing to unpickle them", path)
        _check_declared_size(shape, dtype, path.stat().st_size - f.tell(), path)
        f.seek(0)
        try:
            events = npy_format.read_array(f, allow_pickle=False)
        except (ValueError, OSError, EOFError) as err:
            raise InputError(f"corrupt or truncated .npy data ({err})", path) from None
    if events.size == 0:
        raise InputError("file contains no events", path)
    size = _check_sensor_size(sensor_size or DEFAULT_SENSOR_SIZE, path)
    _check_events(events, size, path)
    return EventStream._unchecked(events, size)


def write_structured_npy(stream: EventStream, path: str | Path) -> None:
    """``np.save`` of the stream's structured array as is (dtype kept; sensor size not stored)."""
    _require_events(stream, path, "write")
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, stream.events, allow_pickle=False)


def read_npz(path: str | Path, sensor_size: tuple[int, int] | None = None) -> EventStream:
    """Read ``.npz`` with arrays x, y, t, p (or one structured array), never unpickling.

    A ``sensor_size`` array in the file (as :func:`write_npz` stores) is used unless the
    caller passes one; otherwise 640x480.
    """
    path = _require_file(path)
    if not zipfile.is_zipfile(path):  # else np.load would guess "pickle" for any non-zip bytes
        raise InputError("not a .npz file (no zip archive found; truncated or corrupt?)", path)
    try:
        _check_npz_members(path)
        with np.load(path, allow_pickle=False) as z:
            names = [n for n in z.files if n != "sensor_size"]
            if sensor_size is None and "sensor_size" in z.files:
                sensor_size = _stored_sensor_size(z["sensor_size"], path)
            if set(_FIELDS) <= set(names):
                cols = [z[n] for n in _FIELDS]
                if cols[0].size == 0:
                    raise InputError("file contains no events", path)
                return _build(*cols, sensor_size or DEFAULT_SENSOR_SIZE, path)
            if len(names) == 1:
                events = z[names[0]]
                if events.dtype.names is not None and events.size == 0:
                    raise InputError("file contains no events", path)
                size = _check_sensor_size(sensor_size or DEFAULT_SENSOR_SIZE, path)
                _check_events(events, size, path)
                return EventStream._unchecked(events, size)
            raise InputError(f"expected arrays x, y, t, p or one structured array; found {sorted(z.files)}", path)
    except InputError:
        raise
    except ValueError as err:
        if "allow_pickle" in str(err):
            raise UnsafeFileError("holds pickled Python objects; refusing to unpickle them", path) from None
        raise InputError(f"corrupt or truncated .npz ({err})", path) from None
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error, KeyError, NotImplementedError, RuntimeError) as err:
        # NotImplementedError: an unsupported compression method; RuntimeError: an encrypted member
        raise InputError(f"corrupt or truncated .npz ({type(err).__name__}: {err})", path) from None


def _check_npz_members(path: Path) -> None:
    """Each member's .npy header against the bytes the archive says it holds, and their total
    against memory, before np.load allocates anything (a zip member can declare any shape)."""
    total = 0
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            if not info.filename.endswith(".npy"):
                raise InputError(f"member {info.filename!r} is not a .npy array; not an evspec .npz", path)
            with archive.open(info) as member:
                shape, dtype = _read_npy_header(member, path)
                header_bytes = member.tell()
            if dtype.hasobject:
                raise UnsafeFileError(f"member {info.filename!r} holds pickled Python objects; refusing to unpickle it", path)
            _check_declared_size(shape, dtype, info.file_size - header_bytes, path, f"member {info.filename!r}")
            total += _declared_bytes(shape, dtype)
    require_memory(total, "the arrays of this .npz", path)


def _stored_sensor_size(stored: np.ndarray, path: Path) -> tuple[int, int]:
    """The ``sensor_size`` array a .npz carries: exactly two integers."""
    if stored.shape != (2,) or stored.dtype.kind not in "iu":
        raise InputError(f"stored sensor_size must be two integers (width, height), got {stored.dtype} {stored.shape}", path)
    return _check_sensor_size(stored, path)


def write_npz(stream: EventStream, path: str | Path, *, compressed: bool = True) -> None:
    """Save arrays x, y, t, p (stream dtypes kept) and ``sensor_size``; atomic."""
    _require_events(stream, path, "write")
    arrays = {n: np.ascontiguousarray(stream.events[n]) for n in _FIELDS}
    save = np.savez_compressed if compressed else np.savez
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        save(f, **arrays, sensor_size=np.asarray(stream.sensor_size, dtype=np.int64))


# ----------------------------------------------------------------------------- DSEC events.h5

_DSEC_DATASETS = ("events/p", "events/t", "events/x", "events/y", "ms_to_idx", "t_offset")


def _load_rectify_map(path: str | Path, sensor_size: tuple[int, int]) -> np.ndarray:
    """``rectify_map`` (H, W, 2) float array from DSEC's rectify_map.h5."""
    path = _require_file(path)
    width, height = sensor_size
    try:
        _register_blosc()
        with h5py.File(path, "r") as f:
            dataset = f.get("rectify_map")
            if not isinstance(dataset, h5py.Dataset):
                raise InputError(f"no 'rectify_map' dataset (has {sorted(f.keys())})", path)
            # shape and type from the header: a damaged file's map is refused before it is read
            if dataset.shape != (height, width, 2) or dataset.dtype.kind not in "fiu":
                raise InputError(
                    f"rectify_map must be numeric with shape ({height}, {width}, 2), got {dataset.shape} {dataset.dtype}",
                    path,
                )
            return dataset[()]
    except (OSError, KeyError, TypeError, ValueError, RuntimeError) as err:
        raise InputError(f"cannot read as HDF5 (truncated or not HDF5: {err})", path) from None


def write_rectify_map(path: str | Path, rectify_map: np.ndarray) -> None:
    """Write DSEC's rectify_map.h5 layout: dataset ``rectify_map`` of shape (H, W, 2)."""
    rmap = np.asarray(rectify_map)
    if rmap.ndim != 3 or rmap.shape[2] != 2 or rmap.dtype.kind not in "fiu":
        raise InputError(f"rectify_map must be numeric (H, W, 2), got {rmap.shape} {rmap.dtype}", path)
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("rectify_map", data=rmap.astype(np.float32))


def rectify(stream: EventStream, rectify_map: np.ndarray) -> EventStream:
    """Map each event through ``rectify_map[y, x] -> (x_rect, y_rect)``.

    Rectified coordinates are rounded to the nearest pixel (np.rint); events whose rectified
    position falls outside the sensor (or is not finite) are DROPPED, as a pixel grid cannot
    hold them. Time order is unchanged.
    """
    width, height = stream.sensor_size
    if rectify_map.shape != (height, width, 2):
        raise InputError(f"rectify_map shape {rectify_map.shape} does not match sensor ({height}, {width}, 2)")
    xy = rectify_map[stream.y, stream.x]
    xr, yr = np.rint(xy[:, 0]), np.rint(xy[:, 1])
    keep = np.isfinite(xr) & np.isfinite(yr) & (xr >= 0) & (xr < width) & (yr >= 0) & (yr < height)
    out = np.empty(int(keep.sum()), dtype=EVENT_DTYPE)
    out["x"], out["y"] = xr[keep], yr[keep]
    out["t"], out["p"] = stream.t[keep], stream.p[keep]
    return EventStream._unchecked(out, stream.sensor_size)


class DsecEventFile:
    """A DSEC ``events.h5`` opened for windowed reads (use as a context manager).

    Layout: ``/events/{p,t,x,y}`` (uint8, uint32 us, uint16, uint16), ``/ms_to_idx`` (uint64,
    ``ms_to_idx[ms]`` = first event with t >= ms*1000) and ``/t_offset`` (int64; t + t_offset is
    image-clock time). ``ms_to_idx`` is loaded on open (size grows with the recording's duration,
    not its event count); a window read then costs two table look-ups and reads only the chunks
    holding the window, so its time does not depend on the file's length.
    ``chunk_cache_bytes`` sets h5py's per-dataset chunk cache (default 1 MiB); 0 makes every
    read decompress its chunks afresh (what the window benchmark times).
    """

    def __init__(
        self,
        path: str | Path,
        rectify_map: str | Path | None = None,
        *,
        sensor_size: tuple[int, int] = DEFAULT_SENSOR_SIZE,
        chunk_cache_bytes: int | None = None,
    ) -> None:
        self.path = _require_file(path)
        self.sensor_size = _check_sensor_size(sensor_size, path)
        cache = {} if chunk_cache_bytes is None else {"rdcc_nbytes": int(chunk_cache_bytes)}
        try:
            _register_blosc()
            self._file = h5py.File(self.path, "r", **cache)
        except OSError as err:
            raise InputError(f"cannot open as HDF5 (truncated or not an HDF5 file: {err})", self.path) from None
        try:
            self._open()
            self._rectify_map = _load_rectify_map(rectify_map, self.sensor_size) if rectify_map is not None else None
        except (OSError, KeyError, TypeError, ValueError, RuntimeError) as err:
            self._file.close()  # h5py's own errors on a damaged file, named here
            raise InputError(f"damaged HDF5 file ({type(err).__name__}: {err})", self.path) from None
        except BaseException:
            self._file.close()
            raise

    def _open(self) -> None:
        f = self._file
        missing = [name for name in _DSEC_DATASETS if not isinstance(f.get(name), h5py.Dataset)]
        if missing:
            raise InputError(f"not a DSEC events file: missing dataset(s) {missing}", self.path)
        self._p, self._t, self._x, self._y = (f[f"events/{n}"] for n in "ptxy")
        lengths = {n: d.shape[0] if d.ndim == 1 else None for n, d in zip("ptxy", (self._p, self._t, self._x, self._y))}
        if None in lengths.values() or len(set(lengths.values())) != 1:
            raise InputError(f"/events datasets must be 1-D of equal length, got {lengths}", self.path)
        self._n = int(lengths["t"])
        if self._n == 0:
            raise InputError("file contains no events", self.path)
        # The same rules as every other reader, on the datasets' types before any value is read:
        # integer t (a float t would be truncated), integer coordinates and polarities.
        for name, data in (("events/t", self._t), ("events/x", self._x), ("events/y", self._y), ("events/p", self._p)):
            if data.dtype.kind not in "iub" or (name == "events/t" and data.dtype == np.uint64):
                raise InputError(
                    f"/{name} has dtype {data.dtype}; DSEC stores integers (t as integer microseconds, int64 at most)",
                    self.path,
                )
        table = f["ms_to_idx"]
        if table.ndim != 1 or table.shape[0] == 0 or table.dtype.kind not in "iu":
            raise InputError(
                f"/ms_to_idx must be a non-empty 1-D integer array, got {table.dtype} of shape {table.shape}", self.path
            )
        try:
            t_offset = np.asarray(f["t_offset"][()]).reshape(-1)
            if t_offset.size != 1 or t_offset.dtype.kind not in "iu":
                raise InputError(
                    f"/t_offset must be one integer, got {t_offset.dtype} of size {t_offset.size}", self.path
                )
            self.t_offset = int(t_offset[0])
            self.t_first_us = int(self._t[0])
            self.t_last_us = int(self._t[self._n - 1])
        except (OSError, TypeError, ValueError, KeyError, RuntimeError) as err:
            raise InputError(
                f"cannot read DSEC datasets ({err}); file corrupt or Blosc plugin missing", self.path
            ) from None
        if self.t_first_us < 0 or self.t_last_us < self.t_first_us:
            raise InputError(
                f"/events/t runs from {self.t_first_us} to {self.t_last_us} us; file-clock t must be >= 0 and sorted",
                self.path,
            )
        # ms_to_idx has one entry per millisecond of the recording (and one past its end): a longer
        # table is damage, and loading it could exhaust memory.
        most = self.t_last_us // 1000 + 2
        if table.shape[0] > most:
            raise InputError(
                f"/ms_to_idx has {table.shape[0]:,} entries, but events end at t={self.t_last_us} us "
                f"(at most {most:,} millisecond entries); file corrupt",
                self.path,
            )
        require_memory(table.shape[0] * 8, f"/ms_to_idx of {table.shape[0]:,} entries", self.path)
        try:
            ms_to_idx = np.asarray(table[()], dtype=np.int64)
        except (OSError, TypeError, ValueError, RuntimeError) as err:
            raise InputError(f"cannot read /ms_to_idx ({err}); file corrupt or Blosc plugin missing", self.path) from None
        if np.any(np.diff(ms_to_idx) < 0) or ms_to_idx[0] < 0 or ms_to_idx[-1] > self._n:
            raise InputError(f"/ms_to_idx is not a non-decreasing index into {self._n} events; file corrupt", self.path)
        self._ms_to_idx = ms_to_idx

    def __len__(self) -> int:
        return self._n

    def __enter__(self) -> DsecEventFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()

    def _index_bounds(self, t0: int, t1: int) -> tuple[int, int, int, int]:
        """Coarse [lo, hi) event range containing [t0, t1), and the ms boundaries used."""
        table, n = self._ms_to_idx, self._n
        last = table.size - 1
        ms0 = min(max(t0 // 1000, 0), last)  # events with t >= ms0*1000 start at table[ms0] <= first t >= t0
        ms1 = -(-t1 // 1000)  # ceil: every event with t < t1 lies before table[ms1]
        lo = int(table[ms0])
        if ms1 > last:
            hi, ms1 = n, -1
        else:
            hi = int(table[max(ms1, 0)])
        return lo, max(hi, lo), ms0, ms1

    def window(self, t0_us: int, t1_us: int, *, apply_t_offset: bool = False) -> EventStream:
        """Events with t0 <= t < t1, read from disk without scanning the file.

        Times are in the file's clock (raw t) unless ``apply_t_offset``, in which case both the
        inputs and the returned t are image-clock time (t + t_offset). May be empty. With a
        rectify map, coordinates are rectified and events mapped off the sensor are dropped.
        """
        t0, t1 = int(t0_us), int(t1_us)
        if t1 < t0:
            raise InputError(f"window: t1_us={t1_us} is before t0_us={t0_us}", self.path)
        offset = self.t_offset if apply_t_offset else 0
        t0, t1 = t0 - offset, t1 - offset
        lo, hi, ms0, ms1 = self._index_bounds(t0, t1)
        a, b = max(lo - 1, 0), min(hi + 1, self._n)  # one event of margin each side to check the table
        # t as int64 plus the x, y, p read and the packed stream: about 32 bytes an event at most
        require_memory((b - a) * 32, f"a window of {b - a:,} events", self.path)
        try:
            t = np.asarray(self._t[a:b], dtype=np.int64)
            self._check_table(t, a, lo, ms0)
            if ms1 >= 0:
                self._check_table(t, a, hi, ms1)
            inner = t[lo - a : hi - a]
            i0, i1 = (int(i) for i in np.searchsorted(inner, [t0, t1], side="left"))
            s, e = lo + i0, lo + i1
            x, y, p = self._x[s:e], self._y[s:e], self._p[s:e]
        except (OSError, TypeError, ValueError, RuntimeError) as err:
            raise InputError(
                f"cannot read events ({err}); file truncated/corrupt or Blosc plugin missing", self.path
            ) from None
        stream = _build(x, y, inner[i0:i1] + offset, p, self.sensor_size, self.path)
        return rectify(stream, self._rectify_map) if self._rectify_map is not None else stream

    def _check_table(self, t: np.ndarray, a: int, idx: int, ms: int) -> None:
        """Verify ms_to_idx's promise at ``idx``: t[idx-1] < ms*1000 <= t[idx]."""
        bound = ms * 1000
        ok_after = idx >= self._n or t[idx - a] >= bound
        ok_before = idx == 0 or t[idx - 1 - a] < bound
        if not (ok_after and ok_before):
            raise InputError(f"/ms_to_idx[{ms}]={idx} disagrees with /events/t; file corrupt", self.path)

    def validate(self, chunk_events: int = 1 << 20) -> None:
        """Check every event and the whole ``ms_to_idx`` table, a chunk at a time (memory stays at
        one chunk): the checks each window read applies (coordinates on the sensor, t sorted and
        >= 0, polarity 0/1), across chunk edges too, and ``ms_to_idx[ms]`` equal to the index of
        the first event with t >= ms * 1000 for every entry. Raises InputError at the first damage."""
        table, n_ms = self._ms_to_idx, self._ms_to_idx.size
        bounds = np.arange(n_ms, dtype=np.int64) * 1000
        expected = np.full(n_ms, self._n, dtype=np.int64)  # boundaries after the last event
        previous_last = -1
        for start in range(0, self._n, chunk_events):
            stop = min(start + chunk_events, self._n)
            try:
                cols = {name: data[start:stop] for name, data in zip("xytp", (self._x, self._y, self._t, self._p))}
            except (OSError, TypeError, ValueError, RuntimeError) as err:
                raise InputError(
                    f"cannot read events {start}..{stop} ({err}); file truncated/corrupt or Blosc plugin missing",
                    self.path,
                ) from None
            try:
                _check_columns(cols, self.sensor_size, self.path)
            except InputError as err:
                raise InputError(f"in events {start}..{stop}: {str(err).removeprefix(f'{self.path}: ')}", self.path) from None
            t = cols["t"].astype(np.int64)
            if int(t[0]) < previous_last:
                raise InputError(f"timestamps are not sorted: event {start} (t={int(t[0])}) is earlier than its predecessor", self.path)
            # boundaries in (previous_last, t[-1]] have their first event at or after t >= boundary in this chunk
            lo, hi = np.searchsorted(bounds, [previous_last, int(t[-1])], side="right")
            expected[lo:hi] = start + np.searchsorted(t, bounds[lo:hi], side="left")
            previous_last = int(t[-1])
        wrong = np.flatnonzero(expected != table)
        if wrong.size:
            ms = int(wrong[0])
            raise InputError(
                f"/ms_to_idx disagrees with /events/t at {wrong.size:,} of {n_ms:,} entries, first at ms {ms} "
                f"(says {int(table[ms])}, the events say {int(expected[ms])}); file corrupt",
                self.path,
            )

    def read_all(self, *, apply_t_offset: bool = False) -> EventStream:
        """Every event in the file (memory grows with the file: prefer :meth:`window`)."""
        offset = self.t_offset if apply_t_offset else 0
        return self.window(self.t_first_us + offset, self.t_last_us + 1 + offset, apply_t_offset=apply_t_offset)


class DsecEventWriter:
    """Write a DSEC-layout events.h5 from time-ordered chunks (memory bounded by one chunk).

    Events are Blosc-ZSTD compressed through hdf5plugin; ``ms_to_idx`` is built incrementally
    and written on close; the file appears atomically when the ``with`` block succeeds.
    """

    def __init__(self, path: str | Path, t_offset: int = 0, *, chunk_events: int = 1 << 16) -> None:
        self.path = Path(path)
        self.t_offset = int(t_offset)
        self._chunk = int(chunk_events)
        self._n = 0
        self._last_t = -1
        self._next_ms = 0
        self._table: list[np.ndarray] = []
        self._sensor_size: tuple[int, int] | None = None

    def __enter__(self) -> DsecEventWriter:
        self._tmp = _temp_sibling(self.path)
        hdf5plugin = _register_blosc()
        self._file = h5py.File(self._tmp, "w")
        compression = hdf5plugin.Blosc(cname="zstd", clevel=1, shuffle=hdf5plugin.Blosc.SHUFFLE)
        self._ds = {
            name: self._file.create_dataset(
                f"events/{name}", shape=(0,), maxshape=(None,), dtype=dtype, chunks=(self._chunk,), **compression
            )
            for name, dtype in (("p", np.uint8), ("t", np.uint32), ("x", np.uint16), ("y", np.uint16))
        }
        return self

    def append(self, stream: EventStream) -> None:
        """Append events later than (or equal to) everything written so far; t must fit uint32."""
        if len(stream) == 0:
            return
        if self._sensor_size is not None and stream.sensor_size != self._sensor_size:
            raise InputError(f"sensor size changed from {self._sensor_size} to {stream.sensor_size}", self.path)
        self._sensor_size = stream.sensor_size
        t = stream.t.astype(np.int64)
        if int(t[0]) < self._last_t:
            raise InputError(
                f"chunk starts at t={int(t[0])}, before the previous chunk's end {self._last_t}", self.path
            )
        if int(t[0]) < 0 or int(t[-1]) > _UINT32_MAX:
            raise InputError(
                f"t spans [{int(t[0])}, {int(t[-1])}] us; DSEC stores uint32 file-clock t -- move the rest to t_offset",
                self.path,
            )
        ms = np.arange(self._next_ms, int(t[-1]) // 1000 + 1, dtype=np.int64)
        self._table.append(self._n + np.searchsorted(t, ms * 1000, side="left"))
        self._next_ms = int(ms[-1]) + 1 if ms.size else self._next_ms
        n0, self._n = self._n, self._n + len(stream)
        for name, data in (("p", stream.p), ("t", t), ("x", stream.x), ("y", stream.y)):
            ds = self._ds[name]
            ds.resize((self._n,))
            ds[n0 : self._n] = data
        self._last_t = int(t[-1])

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        try:
            if exc_type is None:
                if self._n == 0:
                    raise InputError("refusing to write an empty event stream", self.path)
                table = np.concatenate([*self._table, [self._n]]).astype(np.uint64)
                self._file.create_dataset("ms_to_idx", data=table)
                self._file.create_dataset("t_offset", data=np.int64(self.t_offset))
                self._file.close()
                _commit(self._tmp, self.path)
        finally:
            self._file.close()
            self._tmp.unlink(missing_ok=True)


def write_dsec_h5(stream: EventStream, path: str | Path, t_offset: int = 0) -> None:
    """Write ``stream`` (file-clock t, uint32 range) in DSEC's events.h5 layout."""
    _require_events(stream, path, "write")
    with DsecEventWriter(path, t_offset) as writer:
        writer.append(stream)


# ----------------------------------------------------------------------------- dispatch


def read_events(
    path: str | Path,
    *,
    t0_us: int | None = None,
    t1_us: int | None = None,
    sensor_size: tuple[int, int] | None = None,
    apply_t_offset: bool = False,
    rectify_map: str | Path | None = None,
) -> EventStream:
    """Read any supported event file, optionally only the window [t0_us, t1_us).

    Dispatches on the suffix: ``.npy`` (EventGPT pickled dict or structured array, told apart
    by the header), ``.npz``, ``.h5``/``.hdf5`` (DSEC), and camera recordings ``.aedat4``,
    ``.raw`` (Prophesee EVT 2/3), ``.dat`` (:mod:`evspec.data.cameras`, the ``cameras`` extra).
    ``apply_t_offset`` and ``rectify_map``
    apply to DSEC files only. An explicitly requested window with no events is an error (most
    often a clock mix-up), reported with the file's time span.
    """
    path = _require_file(path)
    suffix = path.suffix.lower()
    if suffix in (".h5", ".hdf5"):
        with DsecEventFile(path, rectify_map, sensor_size=sensor_size or DEFAULT_SENSOR_SIZE) as f:
            offset = f.t_offset if apply_t_offset else 0
            lo = f.t_first_us + offset if t0_us is None else t0_us
            hi = f.t_last_us + 1 + offset if t1_us is None else t1_us
            stream = f.window(lo, hi, apply_t_offset=apply_t_offset)
            span = (f.t_first_us + offset, f.t_last_us + offset)
    else:
        if apply_t_offset or rectify_map is not None:
            raise ConfigError(f"{path}: apply_t_offset and rectify_map apply to DSEC .h5 files only")
        if suffix == ".npy":
            with open(path, "rb") as fh:
                _, dtype = _read_npy_header(fh, path)
            reader = read_eventgpt_npy if dtype == np.dtype(object) else read_structured_npy
            stream = reader(path, sensor_size)
        elif suffix == ".npz":
            stream = read_npz(path, sensor_size)
        elif suffix in (".aedat4", ".raw", ".dat"):
            from evspec.data.cameras import read_camera_file  # optional extra: faery

            stream = read_camera_file(path, sensor_size)
        else:
            raise InputError(
                f"unknown event file type {path.suffix!r}; expected .npy, .npz, .h5, .hdf5, .aedat4, .raw or .dat", path
            )
        if len(stream) == 0:
            raise InputError("the file holds no events", path)
        span = (int(stream.t[0]), int(stream.t[-1]))
        if t0_us is not None or t1_us is not None:
            lo = span[0] if t0_us is None else t0_us
            hi = span[1] + 1 if t1_us is None else t1_us
            stream = stream.slice_time(lo, hi)
    if len(stream) == 0:
        raise InputError(f"no events in [{t0_us}, {t1_us}) us; the file spans [{span[0]}, {span[1]}] us", path)
    return stream
