"""Readers and writers: EventGPT .npy (safe unpickling), structured .npy, .npz, DSEC .h5."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import h5py
import numpy as np
import numpy.lib.format as npy_format
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from evspec.data.events import (
    EVENT_DTYPE,
    DsecEventFile,
    DsecEventWriter,
    EventStream,
    read_eventgpt_npy,
    read_events,
    read_npz,
    read_structured_npy,
    write_dsec_h5,
    write_eventgpt_npy,
    write_npz,
    write_rectify_map,
    write_structured_npy,
)
from evspec.errors import ConfigError, InputError, UnsafeFileError

SENSOR = (640, 480)


def random_stream(
    n: int, duration_us: int, seed: int = 0, t_start: int = 0, size: tuple[int, int] = SENSOR
) -> EventStream:
    rng = np.random.default_rng(seed)
    t = np.sort(rng.integers(t_start, t_start + duration_us, n))
    return EventStream.from_arrays(
        rng.integers(0, size[0], n), rng.integers(0, size[1], n), t, rng.integers(0, 2, n), size
    )


def npy_with_payload(path: Path, payload: bytes) -> Path:
    """A .npy whose header announces a 0-d object array, followed by ``payload`` (a pickle)."""
    with open(path, "wb") as f:
        npy_format.write_array_header_1_0(f, {"descr": "|O", "fortran_order": False, "shape": ()})
        f.write(payload)
    return path


def no_tmp_left(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


# ----------------------------------------------------------------------------- EventGPT .npy


def test_eventgpt_npy_round_trip_and_upstream_layout(tmp_path: Path) -> None:
    s = random_stream(500, 49_600, seed=1)
    path = tmp_path / "clip.npy"
    write_eventgpt_npy(s, path)
    back = read_eventgpt_npy(path)
    assert np.array_equal(back.events, s.events) and back.sensor_size == SENSOR
    # the file is what upstream loads with np.load(...).item(): a dict with these dtypes
    raw = np.load(path, allow_pickle=True).item()  # our own file: safe to unpickle here
    assert set(raw) == {"x", "y", "t", "p"}
    assert [raw[k].dtype for k in "xytp"] == [np.uint16, np.uint16, np.uint32, np.uint8]
    assert no_tmp_left(tmp_path)


def test_eventgpt_npy_relative_and_range(tmp_path: Path) -> None:
    s = random_stream(100, 10_000, t_start=2**33)
    with pytest.raises(InputError, match="outside uint32"):
        write_eventgpt_npy(s, tmp_path / "a.npy")
    assert not (tmp_path / "a.npy").exists() and no_tmp_left(tmp_path)
    write_eventgpt_npy(s, tmp_path / "a.npy", relative=True)
    back = read_eventgpt_npy(tmp_path / "a.npy")
    assert np.array_equal(back.t, s.t - s.t[0]) and np.array_equal(back.x, s.x)


def test_eventgpt_npy_protocol2_and_numpy1_spelling(tmp_path: Path) -> None:
    """Old NumPy wrote protocol-2 pickles (bytes via _codecs.encode) naming numpy.core."""
    s = random_stream(50, 1000)
    data = np.empty((), dtype=object)
    data[()] = {"x": s.x.astype(np.uint16), "y": s.y.astype(np.uint16), "t": s.t.astype(np.uint32), "p": s.p.copy()}
    payload = pickle.dumps(data, protocol=2).replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"numpy.core.multiarray" in payload and b"_codecs" in payload
    back = read_eventgpt_npy(npy_with_payload(tmp_path / "old.npy", payload))
    assert np.array_equal(back.events, s.events)


class _Malicious:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_executes_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = {
        "x": np.zeros(1, np.uint16),
        "y": np.zeros(1, np.uint16),
        "t": _Malicious(marker),
        "p": np.zeros(1, np.uint8),
    }
    path = tmp_path / "evil.npy"
    np.save(path, evil, allow_pickle=True)  # pickling does not run __reduce__'s callable
    assert b"system" in path.read_bytes()
    with pytest.raises(UnsafeFileError, match=r"evil\.npy.*(posix|os)\.system.*nothing was executed"):
        read_eventgpt_npy(path)
    assert not marker.exists()
    with pytest.raises(UnsafeFileError):  # also through the dispatcher
        read_events(path)
    assert not marker.exists()
    # a bare malicious pickle after a valid header is refused the same way
    with pytest.raises(UnsafeFileError):
        read_eventgpt_npy(npy_with_payload(tmp_path / "bare.npy", pickle.dumps(_Malicious(marker))))
    assert not marker.exists()


def test_numpy_globals_outside_allow_list_refused(tmp_path: Path) -> None:
    payload = b"\x80\x02cnumpy\nload\nq\x00X\x03\x00\x00\x00abcq\x01\x85q\x02Rq\x03."
    with pytest.raises(UnsafeFileError, match=r"numpy\.load"):
        read_eventgpt_npy(npy_with_payload(tmp_path / "np.npy", payload))


def test_codecs_encode_only_latin1(tmp_path: Path) -> None:
    payload = b"\x80\x02c_codecs\nencode\nq\x00X\x01\x00\x00\x00aX\x05\x00\x00\x00rot13\x86q\x01Rq\x02."
    with pytest.raises(InputError, match="latin1"):
        read_eventgpt_npy(npy_with_payload(tmp_path / "codec.npy", payload))


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ([1, 2, 3], "holds a list"),
        ({"x": np.zeros(2, np.uint16), "y": np.zeros(2, np.uint16), "t": np.zeros(2, np.uint32)}, "keys"),
        ({"x": np.zeros(2), "y": np.zeros(2), "t": np.zeros(2), "p": np.zeros(2), "q": np.zeros(2)}, "keys"),
        (
            {"x": [0, 1], "y": np.zeros(2, np.uint16), "t": np.zeros(2, np.uint32), "p": np.zeros(2, np.uint8)},
            "'x' holds a list",
        ),
        (
            {"x": np.zeros(2, np.uint16), "y": np.zeros(2, np.uint16), "t": np.zeros(2), "p": np.zeros(2, np.uint8)},
            "float64",
        ),
        (
            {
                "x": np.zeros(2, np.uint16),
                "y": np.zeros(3, np.uint16),
                "t": np.zeros(2, np.uint32),
                "p": np.zeros(2, np.uint8),
            },
            "equal lengths",
        ),
        (
            {
                "x": np.zeros(0, np.uint16),
                "y": np.zeros(0, np.uint16),
                "t": np.zeros(0, np.uint32),
                "p": np.zeros(0, np.uint8),
            },
            "no events",
        ),
    ],
)
def test_eventgpt_npy_bad_content(tmp_path: Path, content: object, match: str) -> None:
    path = tmp_path / "bad.npy"
    data = np.empty((), dtype=object)  # what np.save(dict) writes: a 0-d object array
    data[()] = content
    np.save(path, data, allow_pickle=True)
    with pytest.raises(InputError, match=match) as err:
        read_eventgpt_npy(path)
    assert "bad.npy" in str(err.value)


def test_eventgpt_npy_wrong_kind_of_npy(tmp_path: Path) -> None:
    np.save(tmp_path / "s.npy", np.zeros(3, EVENT_DTYPE))
    with pytest.raises(InputError, match="read_structured_npy"):
        read_eventgpt_npy(tmp_path / "s.npy")


def test_eventgpt_npy_out_of_sensor_needs_sensor_size(tmp_path: Path) -> None:
    s = random_stream(100, 1000, size=(1280, 720))
    write_eventgpt_npy(s, tmp_path / "hd.npy")
    with pytest.raises(InputError, match="sensor_size"):
        read_eventgpt_npy(tmp_path / "hd.npy")
    assert np.array_equal(read_eventgpt_npy(tmp_path / "hd.npy", (1280, 720)).events, s.events)


# ----------------------------------------------------------------------------- structured .npy / .npz


def test_structured_npy_round_trip_keeps_tonic_dtype(tmp_path: Path) -> None:
    tonic = np.zeros(20, dtype=[("x", "<i8"), ("y", "<i2"), ("t", "<i8"), ("p", "<i8")])
    tonic["x"], tonic["y"], tonic["t"], tonic["p"] = (
        np.arange(20),
        np.arange(20) % 7,
        np.arange(20) * 3,
        np.arange(20) % 2,
    )
    write_structured_npy(EventStream(tonic, SENSOR), tmp_path / "tonic.npy")
    back = read_structured_npy(tmp_path / "tonic.npy")
    assert back.events.dtype == tonic.dtype and np.array_equal(back.events, tonic)
    assert read_events(tmp_path / "tonic.npy").events.dtype == tonic.dtype


def test_structured_npy_refuses_plain_and_object_arrays(tmp_path: Path) -> None:
    np.save(tmp_path / "plain.npy", np.zeros((3, 4)))
    with pytest.raises(InputError, match="structured"):
        read_structured_npy(tmp_path / "plain.npy")
    np.save(tmp_path / "obj.npy", {"a": 1}, allow_pickle=True)
    with pytest.raises(InputError, match="read_eventgpt_npy"):
        read_structured_npy(tmp_path / "obj.npy")
    np.save(tmp_path / "empty.npy", np.zeros(0, EVENT_DTYPE))
    with pytest.raises(InputError, match="no events"):
        read_structured_npy(tmp_path / "empty.npy")


def test_npz_round_trip_keeps_sensor_size(tmp_path: Path) -> None:
    s = random_stream(300, 5000, size=(346, 260))
    write_npz(s, tmp_path / "e.npz")
    back = read_npz(tmp_path / "e.npz")
    assert back.sensor_size == (346, 260) and np.array_equal(back.events, s.events)
    write_npz(s, tmp_path / "u.npz", compressed=False)
    assert np.array_equal(read_events(tmp_path / "u.npz").events, s.events)


def test_npz_single_structured_array(tmp_path: Path) -> None:
    s = random_stream(30, 100)
    np.savez(tmp_path / "one.npz", events=s.events)
    assert np.array_equal(read_npz(tmp_path / "one.npz").events, s.events)


def test_npz_bad_content(tmp_path: Path) -> None:
    np.savez(tmp_path / "obj.npz", x=np.array([{"a": 1}], dtype=object))
    with pytest.raises(UnsafeFileError, match="pickled"):
        read_npz(tmp_path / "obj.npz")
    np.savez(tmp_path / "two.npz", a=np.zeros(3), b=np.zeros(3))
    with pytest.raises(InputError, match=r"expected arrays x, y, t, p"):
        read_npz(tmp_path / "two.npz")
    np.savez(tmp_path / "empty.npz", x=np.zeros(0, int), y=np.zeros(0, int), t=np.zeros(0, int), p=np.zeros(0, int))
    with pytest.raises(InputError, match="no events"):
        read_npz(tmp_path / "empty.npz")


def test_writers_refuse_empty_stream(tmp_path: Path) -> None:
    empty = EventStream(np.empty(0, EVENT_DTYPE), SENSOR)
    for write, name in [
        (write_eventgpt_npy, "a.npy"),
        (write_structured_npy, "b.npy"),
        (write_npz, "c.npz"),
        (write_dsec_h5, "d.h5"),
    ]:
        with pytest.raises(InputError, match="empty"):
            write(empty, tmp_path / name)  # type: ignore[operator]
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- corrupt files


@pytest.fixture(scope="module")
def sample_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("files")
    s = random_stream(2000, 100_000, seed=3)
    paths = {k: folder / f"good.{k}" for k in ("egpt.npy", "struct.npy", "npz", "h5")}
    write_eventgpt_npy(s, paths["egpt.npy"])
    write_structured_npy(s, paths["struct.npy"])
    write_npz(s, paths["npz"])
    write_dsec_h5(s, paths["h5"])
    return paths


@pytest.mark.parametrize("kind", ["egpt.npy", "struct.npy", "npz", "h5"])
@pytest.mark.parametrize("damage", ["half", "garbage", "empty"])
def test_corrupt_files_give_one_clear_input_error(
    tmp_path: Path, sample_files: dict[str, Path], kind: str, damage: str
) -> None:
    good = sample_files[kind].read_bytes()
    data = {"half": good[: len(good) // 2], "garbage": os.urandom(4096), "empty": b""}[damage]
    path = tmp_path / f"bad.{kind}"
    path.write_bytes(data)
    with pytest.raises(InputError) as err:
        read_events(path)
    assert not isinstance(err.value, UnsafeFileError)
    assert str(path) in str(err.value)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    for reader in (read_events, read_eventgpt_npy, read_structured_npy, read_npz, DsecEventFile):
        with pytest.raises(InputError, match="file not found"):
            reader(tmp_path / "nope.npy")  # type: ignore[operator]
    with pytest.raises(InputError, match="not a regular file"):
        read_events(tmp_path)


def test_unknown_suffix_and_dsec_only_options(tmp_path: Path, sample_files: dict[str, Path]) -> None:
    (tmp_path / "e.txt").write_text("1 2 3 0")
    with pytest.raises(InputError, match="unknown event file type"):
        read_events(tmp_path / "e.txt")
    with pytest.raises(ConfigError, match="DSEC"):
        read_events(sample_files["npz"], apply_t_offset=True)


# ----------------------------------------------------------------------------- DSEC .h5


@pytest.fixture(scope="module")
def dsec(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, EventStream, int]:
    """A DSEC file written in several chunks, with a t_offset and an idle gap."""
    folder = tmp_path_factory.mktemp("dsec")
    a = random_stream(3000, 150_000, seed=5, t_start=1_000)
    b = random_stream(2000, 100_000, seed=6, t_start=400_000)  # 250 ms gap with no events
    full = EventStream(np.concatenate([a.events, b.events]), SENSOR)
    t_offset = 47_000_000_123
    path = folder / "events.h5"
    with DsecEventWriter(path, t_offset, chunk_events=512) as writer:
        for part in full.split_count(7):
            writer.append(part)
    return path, full, t_offset


def test_dsec_layout(dsec: tuple[Path, EventStream, int]) -> None:
    path, full, t_offset = dsec
    with h5py.File(path, "r") as f:
        assert [f[f"events/{k}"].dtype for k in "ptxy"] == [np.uint8, np.uint32, np.uint16, np.uint16]
        assert f["ms_to_idx"].dtype == np.uint64 and f["t_offset"][()] == t_offset
        t, table = f["events/t"][:].astype(np.int64), f["ms_to_idx"][:].astype(np.int64)
    for ms in range(table.size):  # the DSEC promise, for every millisecond
        idx = table[ms]
        assert idx == len(t) or t[idx] >= ms * 1000
        assert idx == 0 or t[idx - 1] < ms * 1000
    with DsecEventFile(path) as f:
        assert len(f) == len(full) and f.t_offset == t_offset and f.sensor_size == SENSOR
        assert (f.t_first_us, f.t_last_us) == (int(full.t[0]), int(full.t[-1]))
        assert np.array_equal(f.read_all().events, full.events)


def test_dsec_single_write_equals_chunked(tmp_path: Path, dsec: tuple[Path, EventStream, int]) -> None:
    path, full, t_offset = dsec
    write_dsec_h5(full, tmp_path / "one.h5", t_offset=t_offset)
    with h5py.File(path, "r") as a, h5py.File(tmp_path / "one.h5", "r") as b:
        for key in ("events/p", "events/t", "events/x", "events/y", "ms_to_idx"):
            assert np.array_equal(a[key][:], b[key][:])


@settings(max_examples=80, deadline=None)
@given(st.integers(-5_000, 520_000), st.integers(0, 200_000), st.booleans())
def test_dsec_window_matches_brute_force(
    dsec: tuple[Path, EventStream, int], t0: int, width: int, offset: bool
) -> None:
    path, full, t_offset = dsec
    shift = t_offset if offset else 0
    with DsecEventFile(path) as f:
        got = f.window(t0 + shift, t0 + width + shift, apply_t_offset=offset)
    expected = full.events[(full.t >= t0) & (full.t < t0 + width)]
    assert np.array_equal(got.x, expected["x"]) and np.array_equal(got.p, expected["p"])
    assert np.array_equal(got.t, expected["t"] + shift)


class _CountingDataset:
    """Wraps an h5py dataset and records how many elements each read returns."""

    def __init__(self, ds: h5py.Dataset, log: list[int]) -> None:
        self.ds, self.log = ds, log

    def __getitem__(self, key: object) -> np.ndarray:
        out = self.ds[key]
        self.log.append(int(np.size(out)))
        return out


def test_dsec_window_reads_only_the_window(dsec: tuple[Path, EventStream, int]) -> None:
    path, full, _ = dsec
    log: list[int] = []
    with DsecEventFile(path) as f:
        f._t, f._x, f._y, f._p = (_CountingDataset(d, log) for d in (f._t, f._x, f._y, f._p))
        w = f.window(100_000, 105_000)
    in_coarse_range = int(np.sum((full.t >= 100_000) & (full.t < 105_000)))
    assert len(w) == in_coarse_range and len(log) == 4
    assert max(log) <= in_coarse_range + 2  # window (ms-aligned here) plus one margin event each side
    assert sum(log) < len(full) // 4


def test_dsec_rectification(tmp_path: Path, dsec: tuple[Path, EventStream, int]) -> None:
    path, full, _ = dsec
    rng = np.random.default_rng(9)
    rmap = np.stack(np.meshgrid(np.arange(640.0), np.arange(480.0)), axis=-1)  # identity, (480, 640, 2)
    rmap += rng.uniform(-30, 30, rmap.shape)  # shifts; some land off-sensor
    rmap[5, :, :] = np.nan
    write_rectify_map(tmp_path / "rectify_map.h5", rmap)
    with DsecEventFile(path, rectify_map=tmp_path / "rectify_map.h5") as f:
        got = f.window(0, 600_000)
    stored = rmap.astype(np.float32)  # the map is stored as float32
    expected = []
    for e in full.events:  # per-event reference
        xr, yr = stored[e["y"], e["x"]]
        if np.isfinite(xr) and np.isfinite(yr):
            xi, yi = int(np.rint(xr)), int(np.rint(yr))
            if 0 <= xi < 640 and 0 <= yi < 480:
                expected.append((xi, yi, e["t"], e["p"]))
    assert 0 < len(expected) < len(full)  # some events were dropped
    assert np.array_equal(got.events, np.array(expected, dtype=EVENT_DTYPE))
    rec = read_events(path, rectify_map=tmp_path / "rectify_map.h5")
    assert np.array_equal(rec.events, got.events)


def test_rectify_map_errors(tmp_path: Path, dsec: tuple[Path, EventStream, int]) -> None:
    path, _, _ = dsec
    write_rectify_map(tmp_path / "small.h5", np.zeros((10, 10, 2)))
    with pytest.raises(InputError, match=r"shape \(480, 640, 2\)"):
        DsecEventFile(path, rectify_map=tmp_path / "small.h5")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["something"] = np.zeros(3)
    with pytest.raises(InputError, match="no 'rectify_map'"):
        DsecEventFile(path, rectify_map=tmp_path / "other.h5")


def test_read_events_windows_on_h5(dsec: tuple[Path, EventStream, int]) -> None:
    path, full, t_offset = dsec
    got = read_events(path, t0_us=50_000, t1_us=100_000)
    assert np.array_equal(got.events, full.slice_time(50_000, 100_000).events)
    got = read_events(path, t0_us=t_offset + 50_000, t1_us=t_offset + 100_000, apply_t_offset=True)
    assert np.array_equal(got.t - t_offset, full.slice_time(50_000, 100_000).t)
    with pytest.raises(InputError, match=r"no events in \[50000, 100000\).*spans"):
        read_events(path, t0_us=50_000, t1_us=100_000, apply_t_offset=True)  # wrong clock
    with pytest.raises(InputError, match="before"):
        read_events(path, t0_us=10, t1_us=5)


def test_read_events_windows_on_npy(tmp_path: Path) -> None:
    s = random_stream(400, 10_000)
    write_eventgpt_npy(s, tmp_path / "c.npy")
    assert np.array_equal(
        read_events(tmp_path / "c.npy", t0_us=2000, t1_us=5000).events, s.slice_time(2000, 5000).events
    )
    assert np.array_equal(read_events(tmp_path / "c.npy", t0_us=2000).events, s.slice_time(2000, 10**9).events)


def test_dsec_corrupt_table_detected(tmp_path: Path) -> None:
    s = random_stream(3000, 50_000)
    path = tmp_path / "e.h5"
    write_dsec_h5(s, path)
    with h5py.File(path, "r+") as f:
        table = f["ms_to_idx"][:]
        table[20:] = np.minimum(table[20:] + 7, len(s))  # off by a few events, still monotonic
        del f["ms_to_idx"]
        f["ms_to_idx"] = table
    with DsecEventFile(path) as f, pytest.raises(InputError, match=r"ms_to_idx\[\d+\].*disagrees"):
        f.window(25_000, 30_000)


def test_dsec_missing_datasets_and_empty(tmp_path: Path) -> None:
    with h5py.File(tmp_path / "part.h5", "w") as f:
        f["events/t"] = np.zeros(3, np.uint32)
    with pytest.raises(InputError, match=r"missing dataset\(s\).*events/p.*ms_to_idx"):
        DsecEventFile(tmp_path / "part.h5")
    with h5py.File(tmp_path / "empty.h5", "w") as f:
        for k, dt in zip("ptxy", (np.uint8, np.uint32, np.uint16, np.uint16)):
            f[f"events/{k}"] = np.zeros(0, dt)
        f["ms_to_idx"] = np.zeros(1, np.uint64)
        f["t_offset"] = np.int64(0)
    with pytest.raises(InputError, match="no events"):
        read_events(tmp_path / "empty.h5")


def test_dsec_writer_errors(tmp_path: Path) -> None:
    a, b = random_stream(100, 1000, t_start=5000), random_stream(100, 1000, t_start=0)
    with pytest.raises(InputError, match="before the previous chunk"):
        with DsecEventWriter(tmp_path / "w.h5") as writer:
            writer.append(a)
            writer.append(b)
    with pytest.raises(InputError, match="uint32"):
        write_dsec_h5(random_stream(10, 100, t_start=2**32), tmp_path / "w.h5")
    with pytest.raises(InputError, match="empty"):
        with DsecEventWriter(tmp_path / "w.h5"):
            pass
    assert list(tmp_path.iterdir()) == []  # failed writes leave nothing behind


def test_atomic_write_keeps_old_file_on_failure(tmp_path: Path) -> None:
    s = random_stream(10, 100)
    path = tmp_path / "c.npy"
    write_eventgpt_npy(s, path)
    before = path.read_bytes()
    with pytest.raises(InputError):
        write_eventgpt_npy(random_stream(10, 100, t_start=2**33), path)
    assert path.read_bytes() == before and no_tmp_left(tmp_path)
    with pytest.raises(InputError, match="parent folder"):
        write_npz(s, tmp_path / "nope" / "c.npz")
