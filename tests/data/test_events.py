"""EventStream: construction, validation, slicing and splitting."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from evspec.data.events import DEFAULT_SENSOR_SIZE, EVENT_DTYPE, EventStream
from evspec.errors import InputError

SIZE = (8, 6)


@st.composite
def streams(draw: st.DrawFn, min_events: int = 0, max_events: int = 60) -> EventStream:
    """Small random streams with many repeated timestamps and pixels (the edge cases)."""
    n = draw(st.integers(min_events, max_events))
    gaps = draw(st.lists(st.integers(0, 5), min_size=n, max_size=n))
    t0 = draw(st.integers(-50, 1000))
    t = t0 + np.cumsum(np.asarray(gaps, dtype=np.int64))
    x = draw(st.lists(st.integers(0, SIZE[0] - 1), min_size=n, max_size=n))
    y = draw(st.lists(st.integers(0, SIZE[1] - 1), min_size=n, max_size=n))
    p = draw(st.lists(st.integers(0, 1), min_size=n, max_size=n))
    return EventStream.from_arrays(np.array(x, int), np.array(y, int), t, np.array(p, int), SIZE)


def concat(parts: list[EventStream]) -> np.ndarray:
    return np.concatenate([s.events for s in parts])


def tonic_array(n: int, xy_dtype: str = "<i8") -> np.ndarray:
    """The array tonic builds: fields x, y, t, p of int64 (or DSEC-style int16 x, y)."""
    dtype = np.dtype([("x", xy_dtype), ("y", xy_dtype), ("t", "<i8"), ("p", "<i8")])
    events = np.zeros(n, dtype=dtype)
    events["x"] = np.arange(n) % 640
    events["y"] = np.arange(n) % 480
    events["t"] = np.arange(n) * 10
    events["p"] = np.arange(n) % 2
    return events


# ----------------------------------------------------------------------------- construction


def test_from_arrays_packs_canonical_dtype() -> None:
    s = EventStream.from_arrays([1, 2], [3, 4], [10, 20], [0, 1], (640, 480))
    assert s.events.dtype == EVENT_DTYPE
    assert s.x.tolist() == [1, 2] and s.y.tolist() == [3, 4] and s.t.tolist() == [10, 20] and s.p.tolist() == [0, 1]
    assert len(s) == 2 and s.sensor_size == (640, 480) and (s.width, s.height) == (640, 480)
    assert s.duration_us == 10
    assert "n=2" in repr(s)


@pytest.mark.parametrize("xy_dtype", ["<i8", "<i2"])
def test_tonic_arrays_kept_unchanged(xy_dtype: str) -> None:
    events = tonic_array(100, xy_dtype)
    s = EventStream(events, DEFAULT_SENSOR_SIZE)
    assert s.events is events  # no copy
    assert s.events.dtype == events.dtype  # no conversion
    assert s.slice_count(10, 20).events.dtype == events.dtype
    assert np.shares_memory(s.slice_count(10, 20).events, events)


def test_bool_polarity_accepted() -> None:
    events = np.zeros(3, dtype=[("t", "<i8"), ("x", "<u2"), ("y", "<u2"), ("p", "?")])
    events["p"] = [True, False, True]
    s = EventStream(events, (4, 4))
    assert s.p.tolist() == [True, False, True]


def test_empty_stream_is_valid() -> None:
    s = EventStream(np.empty(0, EVENT_DTYPE), (4, 4))
    assert len(s) == 0 and s.duration_us == 0
    assert [len(c) for c in s.split_count(3)] == [0, 0, 0]
    assert [len(c) for c in s.split_time(2)] == [0, 0]
    assert len(s.slice_time(0, 100)) == 0


def test_from_arrays_uint64_time_and_large_values() -> None:
    t = np.array([2**40, 2**40 + 5], dtype=np.uint64)
    s = EventStream.from_arrays([0, 1], [0, 1], t, [1, 0], (2, 2))
    assert s.t.tolist() == [2**40, 2**40 + 5]


# ----------------------------------------------------------------------------- validation


def test_unsorted_time_reports_count_and_first_index() -> None:
    with pytest.raises(InputError, match=r"not sorted: 2 event\(s\).*first at index 2"):
        EventStream.from_arrays([0] * 5, [0] * 5, [0, 5, 3, 6, 1], [0] * 5, (4, 4))


def test_unsorted_unsigned_time_detected() -> None:
    """Unsigned t must be compared, not differenced (a diff would wrap around)."""
    with pytest.raises(InputError, match="not sorted"):
        EventStream.from_arrays([0, 0], [0, 0], np.array([5, 3], np.uint32), [0, 0], (4, 4))


@pytest.mark.parametrize(
    ("x", "y", "match"),
    [
        ([0, 4, 5], [0, 0, 0], r"2 event\(s\) have x outside 0..3.*first at index 1 \(x=4\)"),
        ([0, -1, 1], [0, 0, 0], r"1 event\(s\) have x outside.*first at index 1 \(x=-1\)"),
        ([0, 0, 0], [0, 0, 3], r"1 event\(s\) have y outside 0..2.*first at index 2"),
    ],
)
def test_out_of_sensor_coordinates(x: list[int], y: list[int], match: str) -> None:
    with pytest.raises(InputError, match=match):
        EventStream.from_arrays(np.array(x, np.int16), np.array(y, np.int16), [0, 1, 2], [0, 1, 0], (4, 3))


def test_out_of_range_not_wrapped_by_uint16_cast() -> None:
    """70000 would wrap to 4464 in uint16: it must be refused before the cast."""
    with pytest.raises(InputError, match="x outside"):
        EventStream.from_arrays([70000], [0], [0], [0], (65536, 4))


@pytest.mark.parametrize("p", [[0, 2, 1], [0, -1, 1]])
def test_bad_polarity(p: list[int]) -> None:
    with pytest.raises(InputError, match=r"1 event\(s\) have polarity outside \{0, 1\}, first at index 1"):
        EventStream.from_arrays([0, 0, 0], [0, 0, 0], [0, 1, 2], p, (4, 4))


def test_float_time_refused() -> None:
    with pytest.raises(InputError, match="t has dtype float64"):
        EventStream.from_arrays([0], [0], [0.5], [0], (4, 4))
    events = np.zeros(1, dtype=[("x", "<u2"), ("y", "<u2"), ("t", "<f8"), ("p", "u1")])
    with pytest.raises(InputError, match="integer microseconds"):
        EventStream(events, (4, 4))


def test_structure_errors() -> None:
    with pytest.raises(InputError, match="structured array"):
        EventStream(np.zeros((3, 4), np.int64), (4, 4))
    with pytest.raises(InputError, match=r"lacks field\(s\) \['p'\]"):
        EventStream(np.zeros(3, dtype=[("x", "<u2"), ("y", "<u2"), ("t", "<i8")]), (4, 4))
    with pytest.raises(InputError, match="equal lengths"):
        EventStream.from_arrays([0, 1], [0], [0, 1], [0, 1], (4, 4))
    with pytest.raises(InputError, match="1-D"):
        EventStream(np.zeros((2, 2), EVENT_DTYPE), (4, 4))


@pytest.mark.parametrize("size", [(0, 4), (4,), "big", (4, 70000)])
def test_bad_sensor_size(size: object) -> None:
    with pytest.raises(InputError, match="sensor_size"):
        EventStream(np.empty(0, EVENT_DTYPE), size)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- slicing


def test_slice_time_is_half_open() -> None:
    s = EventStream.from_arrays([0] * 5, [0] * 5, [10, 20, 20, 30, 40], [0] * 5, (4, 4))
    assert s.slice_time(20, 30).t.tolist() == [20, 20]
    assert s.slice_time(20, 31).t.tolist() == [20, 20, 30]
    assert len(s.slice_time(50, 60)) == 0 and len(s.slice_time(-100, 10)) == 0
    with pytest.raises(InputError, match="before"):
        s.slice_time(30, 20)


def test_slice_count_bounds() -> None:
    s = EventStream.from_arrays([0] * 5, [0] * 5, range(5), [0] * 5, (4, 4))
    assert s.slice_count(1, 3).t.tolist() == [1, 2]
    for start, stop in [(-1, 2), (3, 2), (0, 6)]:
        with pytest.raises(InputError, match="outside"):
            s.slice_count(start, stop)


def test_split_rejects_bad_n() -> None:
    s = EventStream.from_arrays([0], [0], [0], [0], (4, 4))
    for split in (s.split_count, s.split_time):
        with pytest.raises(InputError, match="n >= 1"):
            split(0)


@settings(max_examples=150, deadline=None)
@given(streams(), st.integers(-60, 1400), st.integers(0, 400))
def test_slice_time_matches_brute_force(s: EventStream, t0: int, width: int) -> None:
    t1 = t0 + width
    got = s.slice_time(t0, t1)
    expected = s.events[(s.t >= t0) & (s.t < t1)]
    assert np.array_equal(got.events, expected)


@settings(max_examples=150, deadline=None)
@given(streams(), st.lists(st.integers(-60, 1400), max_size=6))
def test_adjacent_time_slices_partition(s: EventStream, cuts: list[int]) -> None:
    edges = [-(10**9), *sorted(cuts), 10**9]
    parts = [s.slice_time(a, b) for a, b in zip(edges[:-1], edges[1:])]
    assert np.array_equal(concat(parts), s.events)
    for part, a, b in zip(parts, edges[:-1], edges[1:]):
        assert np.all((part.t >= a) & (part.t < b))


@settings(max_examples=150, deadline=None)
@given(streams(), st.lists(st.integers(0, 60), max_size=5))
def test_slice_count_partitions(s: EventStream, cuts: list[int]) -> None:
    edges = [0, *sorted(min(c, len(s)) for c in cuts), len(s)]
    parts = [s.slice_count(a, b) for a, b in zip(edges[:-1], edges[1:])]
    assert np.array_equal(concat(parts), s.events)
    assert [len(p) for p in parts] == [b - a for a, b in zip(edges[:-1], edges[1:])]


@settings(max_examples=150, deadline=None)
@given(streams(), st.integers(1, 12))
def test_split_count_follows_array_split(s: EventStream, n: int) -> None:
    parts = s.split_count(n)
    reference = np.array_split(s.events, n)
    assert len(parts) == n
    assert [len(p) for p in parts] == [len(r) for r in reference]
    assert max(len(p) for p in parts) - min(len(p) for p in parts) <= 1
    assert np.array_equal(concat(parts), s.events)


@settings(max_examples=150, deadline=None)
@given(streams(min_events=1), st.integers(1, 12))
def test_split_time_equal_windows(s: EventStream, n: int) -> None:
    parts = s.split_time(n)
    assert len(parts) == n
    assert np.array_equal(concat(parts), s.events)
    t_first, duration = int(s.t[0]), s.duration_us
    edges = [t_first + (duration * i) // n for i in range(n)] + [int(s.t[-1])]
    widths = np.diff(edges)
    assert widths.max() - widths.min() <= 1  # equal duration up to integer rounding
    for i, part in enumerate(parts):
        last = i == n - 1
        inside = (part.t >= edges[i]) & ((part.t <= edges[i + 1]) if last else (part.t < edges[i + 1]))
        assert np.all(inside)
    assert len(parts[-1]) >= 1  # the closed last window holds the last event
