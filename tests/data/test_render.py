"""Event images, histograms, voxel grids and PNG output, against per-event reference loops."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from evspec.data.events import EVENT_DTYPE, EventStream
from evspec.data.render import (
    POLARITY_COLORS_DSEC,
    POLARITY_COLORS_EVENTGPT,
    histogram_to_image,
    render_eventgpt_frames,
    render_histogram,
    render_voxel_grid,
    save_png,
    voxel_to_image,
)
from evspec.errors import InputError

SIZE = (5, 4)  # tiny sensor: many events hit the same pixel


@st.composite
def streams(draw: st.DrawFn, min_events: int = 1, max_events: int = 80) -> EventStream:
    n = draw(st.integers(min_events, max_events))
    gaps = draw(st.lists(st.integers(0, 7), min_size=n, max_size=n))
    t = draw(st.integers(0, 10_000)) + np.cumsum(np.asarray(gaps, dtype=np.int64))
    x = draw(st.lists(st.integers(0, SIZE[0] - 1), min_size=n, max_size=n))
    y = draw(st.lists(st.integers(0, SIZE[1] - 1), min_size=n, max_size=n))
    p = draw(st.lists(st.integers(0, 1), min_size=n, max_size=n))
    return EventStream.from_arrays(np.array(x), np.array(y), t, np.array(p), SIZE)


def reference_frames(
    s: EventStream, n: int, colors: dict[int, tuple[int, int, int]], shape: tuple[int, int] | None = None
) -> list[np.ndarray]:
    """Upstream EventGPT's rule, written out: the first n-1 chunks hold len // n events, the last
    the rest; each chunk painted in order on white, on ``shape`` or (None) on its own canvas of
    (y.max()+1, x.max()+1)."""
    per = len(s) // n
    frames = []
    for k in range(n):
        chunk = np.arange(k * per, (k + 1) * per if k < n - 1 else len(s))
        canvas = shape or (int(s.y[chunk].max()) + 1, int(s.x[chunk].max()) + 1)
        img = np.full((*canvas, 3), 255, dtype=np.uint8)
        for i in chunk:
            img[s.y[i], s.x[i]] = colors[int(s.p[i])]
        frames.append(img)
    return frames


# ----------------------------------------------------------------------------- event images


@settings(max_examples=120, deadline=None)
@given(
    streams(),
    st.integers(1, 6),
    st.sampled_from([POLARITY_COLORS_EVENTGPT, POLARITY_COLORS_DSEC, {0: (1, 2, 3), 1: (250, 9, 7)}]),
)
def test_frames_follow_colour_and_overwrite_rules(
    s: EventStream, n: int, colors: dict[int, tuple[int, int, int]]
) -> None:
    n = min(n, len(s))
    got = render_eventgpt_frames(s, n, colors=colors)  # upstream's chunking and per-chunk canvas
    expected = reference_frames(s, n, colors)
    assert len(got) == n
    for g, e in zip(got, expected):
        assert g.dtype == np.uint8 and g.shape == e.shape
        assert np.array_equal(g, e)
    on_sensor = render_eventgpt_frames(s, n, size="sensor", colors=colors)
    for g, e in zip(on_sensor, reference_frames(s, n, colors, (SIZE[1], SIZE[0]))):
        assert g.shape == (SIZE[1], SIZE[0], 3) and np.array_equal(g, e)


def test_later_event_overwrites_earlier() -> None:
    s = EventStream.from_arrays([2, 2, 2, 0], [1, 1, 1, 0], [0, 1, 2, 3], [1, 0, 1, 0], (4, 3))
    (img,) = render_eventgpt_frames(s, 1, size="sensor")
    assert tuple(img[1, 2]) == (255, 0, 0)  # last event there has p=1 -> red
    assert tuple(img[0, 0]) == (0, 0, 255)  # p=0 -> blue
    assert tuple(img[2, 3]) == (255, 255, 255)  # untouched -> white
    (dsec,) = render_eventgpt_frames(s, 1, size="sensor", colors=POLARITY_COLORS_DSEC)
    assert tuple(dsec[1, 2]) == (0, 0, 255) and tuple(dsec[0, 0]) == (255, 0, 0)


def test_later_event_of_the_other_polarity_wins() -> None:
    """Two events at one pixel with differing polarities: the later one's colour, in both orders
    (pixel (1, 0): p=0 then p=1; pixel (3, 2): p=1 then p=0), whatever the colouring."""
    s = EventStream.from_arrays([1, 3, 1, 3], [0, 2, 0, 2], [0, 1, 2, 3], [0, 1, 1, 0], (4, 3))
    for colors in (POLARITY_COLORS_EVENTGPT, POLARITY_COLORS_DSEC):
        (img,) = render_eventgpt_frames(s, 1, size="sensor", colors=colors)
        assert tuple(img[0, 1]) == colors[1] and tuple(img[2, 3]) == colors[0]
        (chunk,) = render_eventgpt_frames(s, 1, colors=colors)  # upstream's per-chunk canvas
        assert tuple(chunk[0, 1]) == colors[1] and tuple(chunk[2, 3]) == colors[0]


def test_frames_split_by_event_count_not_time() -> None:
    # 4 events bunched at t=0 and 4 spread over a long time: count split puts the bunch in frame 0
    t = [0, 0, 0, 0, 1000, 2000, 3000, 4000]
    s = EventStream.from_arrays([0, 1, 2, 3, 0, 1, 2, 3], [0] * 4 + [1] * 4, t, [1] * 8, (4, 2))
    first, second = render_eventgpt_frames(s, 2, size="sensor")
    assert (first[0] != 255).any(axis=-1).all() and (first[1] == 255).all()
    assert (second[1] != 255).any(axis=-1).all() and (second[0] == 255).all()


def test_frame_sizes() -> None:
    s = EventStream.from_arrays([0, 3, 6], [0, 2, 1], [0, 1, 2], [0, 1, 1], (640, 480))
    assert render_eventgpt_frames(s, 1, size="sensor")[0].shape == (480, 640, 3)
    assert render_eventgpt_frames(s, 3, size="data")[0].shape == (3, 7, 3)  # the whole stream's maxima
    assert [f.shape for f in render_eventgpt_frames(s, 3)] == [(1, 1, 3), (3, 4, 3), (2, 7, 3)]  # each chunk's
    assert render_eventgpt_frames(s, 1, size=(10, 20))[0].shape == (20, 10, 3)
    with pytest.raises(InputError, match="too small"):
        render_eventgpt_frames(s, 1, size=(6, 20))
    with pytest.raises(InputError, match="'chunk', 'sensor', 'data' or"):
        render_eventgpt_frames(s, 1, size="big")


def test_frame_argument_errors() -> None:
    s = EventStream.from_arrays([0, 1], [0, 1], [0, 1], [0, 1], (4, 4))
    empty = EventStream(np.empty(0, EVENT_DTYPE), (4, 4))
    with pytest.raises(InputError, match="empty"):
        render_eventgpt_frames(empty)
    for n in (0, 3):
        with pytest.raises(InputError, match=r"n_frames must be in 1..2"):
            render_eventgpt_frames(s, n)
    with pytest.raises(InputError, match="colors"):
        render_eventgpt_frames(s, 1, colors={1: (255, 0, 0)})
    with pytest.raises(InputError, match=r"0\.\.255"):
        render_eventgpt_frames(s, 1, colors={0: (0, 0, 256), 1: (0, 0, 0)})


def test_tonic_stream_renders() -> None:
    events = np.zeros(6, dtype=[("x", "<i8"), ("y", "<i2"), ("t", "<i8"), ("p", "?")])
    events["x"], events["y"], events["t"], events["p"] = (
        [0, 1, 2, 3, 4, 0],
        [0, 0, 1, 1, 2, 0],
        range(6),
        [1, 0, 1, 0, 1, 0],
    )
    s = EventStream(events, SIZE)
    frames = render_eventgpt_frames(s, 2, size="sensor")
    assert np.array_equal(frames[0], reference_frames(s, 2, POLARITY_COLORS_EVENTGPT, (4, 5))[0])


# ----------------------------------------------------------------------------- histogram and voxel grid


@settings(max_examples=100, deadline=None)
@given(streams())
def test_histogram_counts(s: EventStream) -> None:
    hist = render_histogram(s)
    expected = np.zeros((2, SIZE[1], SIZE[0]), np.float32)
    for x, y, p in zip(s.x, s.y, s.p):
        expected[p, y, x] += 1
    assert hist.dtype == np.float32 and np.array_equal(hist, expected)
    norm = render_histogram(s, normalize=True)
    assert norm.max() == 1.0 and np.allclose(norm * hist.max(), hist)


def reference_voxel(s: EventStream, n_bins: int) -> np.ndarray:
    grid = np.zeros((n_bins, SIZE[1], SIZE[0]))
    t0, dt = int(s.t[0]), s.duration_us
    for x, y, t, p in zip(s.x, s.y, s.t, s.p):
        tn = (int(t) - t0) * (n_bins - 1) / dt if dt else 0.0
        pol = 1.0 if p else -1.0
        for b in range(n_bins):
            grid[b, y, x] += pol * max(0.0, 1.0 - abs(tn - b))
    return grid


@settings(max_examples=100, deadline=None)
@given(streams(), st.integers(1, 7))
def test_voxel_grid_matches_reference_and_sums_to_polarity(s: EventStream, n_bins: int) -> None:
    grid = render_voxel_grid(s, n_bins)
    assert grid.dtype == np.float32 and grid.shape == (n_bins, SIZE[1], SIZE[0])
    np.testing.assert_allclose(grid, reference_voxel(s, n_bins), atol=1e-5)
    polarity_sum = np.zeros((SIZE[1], SIZE[0]))
    np.add.at(polarity_sum, (s.y, s.x), s.p.astype(float) * 2 - 1)
    np.testing.assert_allclose(grid.sum(axis=0), polarity_sum, atol=1e-5)


def test_voxel_grid_edge_cases() -> None:
    same_time = EventStream.from_arrays([0, 1], [0, 0], [7, 7], [1, 0], SIZE)
    grid = render_voxel_grid(same_time, 3)
    assert grid[0, 0, 0] == 1 and grid[0, 0, 1] == -1 and not grid[1:].any()
    ends = EventStream.from_arrays([0, 0], [0, 0], [0, 100], [1, 1], SIZE)
    grid = render_voxel_grid(ends, 5)
    assert grid[0, 0, 0] == 1 and grid[4, 0, 0] == 1 and grid[1:4].sum() == 0
    with pytest.raises(InputError, match="n_bins"):
        render_voxel_grid(ends, 0)
    with pytest.raises(InputError, match="empty"):
        render_histogram(EventStream(np.empty(0, EVENT_DTYPE), SIZE))


# ----------------------------------------------------------------------------- images and PNG


def test_histogram_and_voxel_images() -> None:
    s = EventStream.from_arrays([0, 0, 1, 2], [0, 0, 0, 1], [0, 1, 2, 3], [1, 1, 0, 1], SIZE)
    img = histogram_to_image(render_histogram(s))
    assert img.shape == (4, 5, 3) and img.dtype == np.uint8
    assert tuple(img[0, 0]) == (255, 0, 0)  # 2 positive events: the peak, pure red
    assert tuple(img[0, 1]) == (0, 0, 128)  # 1 negative event: half blue
    assert tuple(img[3, 4]) == (0, 0, 0)
    vox = voxel_to_image(render_voxel_grid(s, 2))
    assert vox.shape == (4, 10, 3) and vox.dtype == np.uint8
    assert (vox[3, 4] == 255).all()  # zero -> white
    with pytest.raises(InputError, match=r"\[2, H, W\]"):
        histogram_to_image(np.zeros((3, 4, 5)))
    with pytest.raises(InputError, match=r"\[B, H, W\]"):
        voxel_to_image(np.zeros((4, 5)))


def test_save_png_round_trip(tmp_path: Path) -> None:
    s = EventStream.from_arrays([0, 3], [1, 2], [0, 1], [1, 0], SIZE)
    (frame,) = render_eventgpt_frames(s, 1)
    save_png(frame, tmp_path / "f.png")
    assert np.array_equal(np.asarray(Image.open(tmp_path / "f.png")), frame)
    assert [p.name for p in tmp_path.iterdir()] == ["f.png"]  # no temporary file left
    with pytest.raises(InputError, match="uint8"):
        save_png(frame.astype(np.float32), tmp_path / "g.png")
    with pytest.raises(InputError, match="parent folder"):
        save_png(frame, tmp_path / "missing" / "f.png")
