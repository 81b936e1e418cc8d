"""ESIM simulator against the model's definition: exact crossings, time order, knobs, seeding."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from evspec.data.synth.esim import EsimConfig, simulate_events
from evspec.errors import ConfigError, InputError

C = 0.2
EPS = 1e-5
CLEAN = EsimConfig(sigma=0.0)  # exact thresholds, no noise, no refractory


def gray_for_log(level: float) -> float:
    return math.exp(level) - EPS


def reference_events(gray: np.ndarray, times_s: np.ndarray, c: float = C
                     ) -> list[tuple[int, float, int]]:
    """The model written out with a per-pixel while loop: (pixel, t, polarity) in emission order."""
    log = np.log(gray.reshape(len(gray), -1).astype(np.float64) + EPS)
    ref = log[0].copy()
    out = []
    for i in range(1, len(gray)):
        for px in range(log.shape[1]):
            a, b = log[i - 1, px], log[i, px]
            while b >= ref[px] + c or b <= ref[px] - c:
                pol = 1 if b > ref[px] else -1
                ref[px] += pol * c
                t = times_s[i - 1] + (ref[px] - a) / (b - a) * (times_s[i] - times_s[i - 1])
                out.append((px, t, int(pol > 0)))
    return out


@settings(max_examples=60, deadline=None)
@given(k=st.integers(0, 7), rising=st.booleans(), frac=st.floats(0.1, 0.9))
def test_k_crossings_give_k_events(k: int, rising: bool, frac: float) -> None:
    """Log intensity moving by (k + frac) * C crosses exactly k levels: k events, one polarity,
    at the linearly interpolated times j / (k + frac) of the interval."""
    start = math.log(0.004) if rising else math.log(0.95)
    end = start + (1 if rising else -1) * (k + frac) * C
    frames = np.array([gray_for_log(start), gray_for_log(end)]).reshape(2, 1, 1)
    stream = simulate_events(frames, times_us=np.array([0, 100_000]), config=CLEAN)
    assert len(stream) == k
    assert np.all(stream.p == int(rising))
    assert np.all(np.diff(stream.t) >= 0)
    expected = [round(1e5 * j / (k + frac)) for j in range(1, k + 1)]
    assert np.abs(stream.t - expected).max(initial=0) <= 1


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), n_frames=st.integers(2, 6))
def test_matches_per_pixel_reference(seed: int, n_frames: int) -> None:
    """Random gray sequences on a 3x4 sensor: same events (pixel, polarity, time) as the loop."""
    rng = np.random.default_rng(seed)
    gray = rng.uniform(0.02, 1.0, (n_frames, 3, 4))
    times_s = np.cumsum(rng.uniform(0.01, 0.05, n_frames))
    stream = simulate_events(gray, times_us=np.rint(times_s * 1e6), config=CLEAN)
    want = reference_events(gray, np.rint(times_s * 1e6) / 1e6)
    assert len(stream) == len(want)
    assert np.all(np.diff(stream.t) >= 0)
    got = sorted(zip((stream.y * 4 + stream.x).tolist(), stream.t.tolist(), stream.p.tolist()))
    ref = sorted((px, round(t * 1e6), p) for px, t, p in want)
    for (gp, gt, gpol), (rp, rt, rpol) in zip(got, ref):
        assert (gp, gpol) == (rp, rpol) and abs(gt - rt) <= 1


def test_reference_level_carries_over_between_frames() -> None:
    """0.15 C, then another 0.15 C: the second step crosses the level the first one missed."""
    levels = [math.log(0.1), math.log(0.1) + 0.15, math.log(0.1) + 0.30]
    frames = np.array([gray_for_log(v) for v in levels]).reshape(3, 1, 1)
    stream = simulate_events(frames, fps=10, config=CLEAN)
    assert len(stream) == 1 and stream.p[0] == 1
    # crossing at +0.2: a third of the way through the second interval (0.1 s .. 0.2 s)
    assert abs(int(stream.t[0]) - round(1e5 + 1e5 * (0.05 / 0.15))) <= 1


def test_rgb_frames_and_sensor_size() -> None:
    frames = np.zeros((3, 6, 8, 3), np.uint8)
    frames[0] = 40
    frames[1:, 2:4, 3:5] = 200  # a bright patch appears
    frames[1:, :2, :] = 40
    frames[1:, 4:, :] = 40
    frames[1:, 2:4, :3] = 40
    frames[1:, 2:4, 5:] = 40
    stream = simulate_events(frames, fps=20, config=CLEAN)
    assert stream.sensor_size == (8, 6)
    assert set(zip(stream.x.tolist(), stream.y.tolist())) == {(3, 2), (4, 2), (3, 3), (4, 3)}
    assert np.all(stream.p == 1)
    n_levels = math.floor(math.log((200 / 255 + EPS) / (40 / 255 + EPS)) / C)
    assert len(stream) == 4 * n_levels
    assert stream.t.min() > 0 and stream.t.max() <= 50_000


def test_seeded_knobs_are_deterministic() -> None:
    rng = np.random.default_rng(0)
    frames = rng.uniform(0.05, 1, (4, 10, 12))
    cfg = EsimConfig(sigma=0.05, shot_noise_hz=50.0, refractory_us=500, seed=3)
    a = simulate_events(frames, fps=30, config=cfg)
    b = simulate_events(frames, fps=30, config=cfg)
    c = simulate_events(frames, fps=30, config=EsimConfig(sigma=0.05, shot_noise_hz=50.0,
                                                          refractory_us=500, seed=4))
    assert np.array_equal(a.events, b.events)
    assert not np.array_equal(a.events, c.events)


def test_threshold_sigma_varies_per_pixel() -> None:
    """A common ramp on every pixel: equal counts with sigma 0, spread counts with sigma > 0."""
    ramp = np.linspace(0.01, 1.0, 2).reshape(2, 1, 1) * np.ones((2, 16, 16))
    flat = simulate_events(ramp, fps=10, config=CLEAN)
    noisy = simulate_events(ramp, fps=10, config=EsimConfig(sigma=0.04, seed=1))
    per_pixel = lambda s: np.bincount(s.y.astype(int) * 16 + s.x, minlength=256)  # noqa: E731
    assert np.ptp(per_pixel(flat)) == 0
    assert np.ptp(per_pixel(noisy)) >= 2


def test_refractory_drops_close_events() -> None:
    """Five crossings at 10, 20, ..., 50 ms; 20 ms refractory keeps 10, 30 and 50 ms."""
    start = math.log(0.01)
    frames = np.array([gray_for_log(start), gray_for_log(start + 5 * C + 1e-9)]).reshape(2, 1, 1)
    times = np.array([0, 50_000])
    assert simulate_events(frames, times_us=times, config=CLEAN).t.tolist() == [
        10_000, 20_000, 30_000, 40_000, 50_000]
    kept = simulate_events(frames, times_us=times, config=EsimConfig(sigma=0, refractory_us=20_000))
    assert kept.t.tolist() == [10_000, 30_000, 50_000]


def test_refractory_holds_per_pixel_on_a_busy_clip() -> None:
    rng = np.random.default_rng(5)
    frames = rng.uniform(0.01, 1, (6, 8, 8))
    period = 7_000
    stream = simulate_events(frames, fps=50, config=EsimConfig(sigma=0.0, refractory_us=period,
                                                              shot_noise_hz=100.0))
    free = simulate_events(frames, fps=50, config=EsimConfig(sigma=0.0, shot_noise_hz=100.0))
    assert 0 < len(stream) < len(free)
    pixel = stream.y.astype(int) * 8 + stream.x
    order = np.lexsort((stream.t, pixel))
    same = pixel[order][1:] == pixel[order][:-1]
    assert np.all(np.diff(stream.t[order])[same] >= period)


def test_shot_noise_rate_on_a_static_scene() -> None:
    frames = np.full((11, 20, 30), 0.5)  # nothing changes: every event is noise
    assert len(simulate_events(frames, fps=10, config=CLEAN)) == 0
    rate = 20.0
    stream = simulate_events(frames, fps=10, config=EsimConfig(sigma=0.0, shot_noise_hz=rate))
    mean = rate * 20 * 30 * 1.0  # Hz * pixels * seconds
    assert abs(len(stream) - mean) < 5 * math.sqrt(mean)
    assert 0.4 < stream.p.mean() < 0.6
    assert np.all(np.diff(stream.t) >= 0) and stream.t.max() <= 1_000_000


def test_bad_inputs() -> None:
    frames = np.zeros((2, 4, 4), np.uint8)
    with pytest.raises(ConfigError, match="exactly one"):
        simulate_events(frames)
    with pytest.raises(ConfigError, match="exactly one"):
        simulate_events(frames, fps=10, times_us=np.array([0, 1]))
    with pytest.raises(InputError, match="increasing"):
        simulate_events(frames, times_us=np.array([5, 5]))
    with pytest.raises(InputError, match=r"\[T, H, W, 3\]"):
        simulate_events(np.zeros((2, 4, 4, 4), np.uint8), fps=10)
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        simulate_events(np.full((2, 4, 4), 2.0), fps=10)
    with pytest.raises(ConfigError):
        EsimConfig(c_pos=0)
    with pytest.raises(ConfigError):
        EsimConfig(shot_noise_hz=-1)
