"""ESIM-style event simulation from frames (Rebecq et al. 2018, uzh-rpg/rpg_esim; v2e's knobs).

Per pixel, log intensity ``L = log(gray + eps)`` (gray on [0, 1]) is compared with a reference
level set at the first frame. Between two frames ``(t0, L0) -> (t1, L1)`` log intensity is taken
to change linearly; every level ``ref + k*C+`` (rising) or ``ref - k*C-`` (falling) it passes
emits one event at the linearly interpolated time, and the reference moves to the last level
crossed. A level counts as crossed when it is reached exactly.

Knobs: per-pixel thresholds drawn once from N(C, sigma) (clipped at ``min_threshold``), a
refractory period (an event closer than it to the previous *kept* event of the same pixel is
dropped; the reference still moves, as if the pixel fired but the read-out lost it), and shot
noise (Poisson events at uniformly random pixels and times, random polarity, not changing the
reference). Everything random comes from ``EsimConfig.seed``.

Work is vectorised over pixels; Python loops run over frame pairs and, in the refractory pass,
over the k-th event of a pixel.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from evspec.data.events import EventStream
from evspec.errors import ConfigError, InputError

# ITU-R BT.601 luma in OpenCV's 14-bit fixed point (cv2.cvtColor RGB2GRAY, which rpg_vid2e uses).
_LUMA_FIXED = (4899, 9617, 1868)

@dataclass(frozen=True)
class EsimConfig:
    """Simulator knobs. The defaults are v2e's "clean" preset: C = 0.2, sigma 0.02, no noise."""

    c_pos: float = 0.2
    c_neg: float = 0.2
    sigma: float = 0.02
    min_threshold: float = 0.01
    refractory_us: float = 0.0
    shot_noise_hz: float = 0.0  # noise events per pixel per second
    eps: float = 1e-5
    seed: int = 0

    def __post_init__(self) -> None:
        if self.c_pos <= 0 or self.c_neg <= 0:
            raise ConfigError(f"contrast thresholds must be > 0, got C+={self.c_pos}, C-={self.c_neg}")
        if self.sigma < 0 or self.refractory_us < 0 or self.shot_noise_hz < 0 or self.eps <= 0:
            raise ConfigError("sigma, refractory_us and shot_noise_hz must be >= 0 and eps > 0")
        if self.min_threshold <= 0:
            raise ConfigError(f"min_threshold must be > 0, got {self.min_threshold}")


def _gray_frames(frames: np.ndarray) -> np.ndarray:
    """Validate and pass through gray frames ``[T, H, W]``; RGB stays as is (converted per frame)."""
    frames = np.asarray(frames)
    if frames.ndim == 4 and frames.shape[-1] == 3 and frames.dtype == np.uint8:
        return frames
    if frames.ndim == 3 and frames.dtype == np.uint8:
        return frames
    if frames.ndim == 3 and frames.dtype.kind == "f":
        if frames.size and (frames.min() < 0 or frames.max() > 1):
            raise InputError("float gray frames must lie in [0, 1]")
        return frames
    raise InputError(f"frames must be uint8 [T, H, W, 3] RGB, or [T, H, W] gray as uint8 or float "
                     f"on [0, 1]; got {frames.dtype} {frames.shape}")


def log_intensity(frame: np.ndarray, eps: float) -> np.ndarray:
    """``log(gray + eps)`` of ONE frame as flat float64. uint8 RGB becomes uint8 gray first,
    exactly like OpenCV's RGB2GRAY, then goes through a 256-entry table; gray frames may be
    uint8 or float on [0, 1]."""
    if frame.ndim == 3:
        r, g, b = (frame[..., c].astype(np.uint32) * w for c, w in enumerate(_LUMA_FIXED))
        frame = ((r + g + b + (1 << 13)) >> 14).astype(np.uint8)
    flat = frame.reshape(-1)
    if flat.dtype == np.uint8:
        return _log_table(eps)[flat]
    return np.log(flat.astype(np.float64) + eps)


def _log_table(eps: float) -> np.ndarray:
    return np.log(np.arange(256) / 255.0 + eps)


def _thresholds(config: EsimConfig, shape: tuple[int, int], rng: np.random.Generator
                ) -> tuple[np.ndarray, np.ndarray]:
    if config.sigma == 0:
        return np.full(shape, config.c_pos), np.full(shape, config.c_neg)
    cp = rng.normal(config.c_pos, config.sigma, shape)
    cn = rng.normal(config.c_neg, config.sigma, shape)
    return np.maximum(cp, config.min_threshold), np.maximum(cn, config.min_threshold)


def _crossings(ref: np.ndarray, l0: np.ndarray, l1: np.ndarray, cp: np.ndarray, cn: np.ndarray,
               t0: float, t1: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Events between two frames, all flattened: (pixel index, time s, polarity). Updates ``ref``."""
    # Between crossings ref - C- < L < ref + C+ holds, so a pixel whose L did not change
    # cannot cross: look only at the changed ones.
    pix = np.flatnonzero(l1 != l0)
    rising = l1[pix] > ref[pix]
    step = np.where(rising, cp[pix], -cn[pix])
    n = np.floor((l1[pix] - ref[pix]) / step).astype(np.int64)
    hit = n > 0
    pix, rising, step, n = pix[hit], rising[hit], step[hit], n[hit]
    # k-th crossing of each pixel, k = 1..n, without a Python loop over pixels.
    which = np.repeat(np.arange(pix.size), n)
    k = np.arange(which.size) - np.repeat(np.cumsum(n) - n, n) + 1
    level = ref[pix][which] + k * step[which]
    a, b = l0[pix][which], l1[pix][which]
    span = b - a
    frac = np.divide(level - a, span, out=np.ones_like(span), where=span != 0)
    times = t0 + frac * (t1 - t0)
    ref[pix] += n * step
    return pix[which], np.clip(times, t0, t1), rising[which].astype(np.uint8)


def _refractory(pixel: np.ndarray, times: np.ndarray, period: int) -> np.ndarray:
    """Mask of events kept when each pixel ignores events closer than ``period`` to its last kept
    event (times and period in the same unit). Loops over the rank of an event within its pixel,
    vectorised over pixels."""
    order = np.lexsort((times, pixel))
    px, ts = pixel[order], times[order]
    starts = np.flatnonzero(np.r_[True, px[1:] != px[:-1]])
    lengths = np.diff(np.r_[starts, px.size])
    keep = np.zeros(px.size, bool)
    keep[starts] = True
    last = ts[starts].copy()
    for rank in range(1, int(lengths.max(initial=1))):
        groups = np.flatnonzero(lengths > rank)
        idx = starts[groups] + rank
        ok = ts[idx] - last[groups] >= period
        keep[idx] = ok
        last[groups] = np.where(ok, ts[idx], last[groups])
    mask = np.empty_like(keep)
    mask[order] = keep
    return mask


def simulate_events(
    frames: np.ndarray,
    *,
    fps: float | None = None,
    times_us: np.ndarray | None = None,
    config: EsimConfig | None = None,
) -> EventStream:
    """Events from frames ``[T, H, W, 3]`` (uint8 RGB) or ``[T, H, W]`` gray, as a time-sorted
    EventStream with ``sensor_size = (W, H)``. Frame times come from ``times_us`` or ``fps``
    (frame i at ``i / fps``); the first frame only sets the reference, so events have
    ``times_us[0] < t <= times_us[-1]``, rounded to whole microseconds."""
    config = config or EsimConfig()
    frames = _gray_frames(frames)
    n_frames, height, width = frames.shape[:3]
    if (fps is None) == (times_us is None):
        raise ConfigError("give exactly one of fps or times_us")
    times_s = (np.arange(n_frames) / fps if fps is not None
               else np.asarray(times_us, np.float64) / 1e6)
    if times_s.shape != (n_frames,) or np.any(np.diff(times_s) <= 0):
        raise InputError(f"need {n_frames} strictly increasing frame times, got {times_s.shape}")
    rng = np.random.default_rng(config.seed)
    cp, cn = (c.ravel() for c in _thresholds(config, (height, width), rng))
    prev = log_intensity(frames[0], config.eps)
    ref = prev.copy()
    chunks: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for i in range(1, n_frames):
        t0, t1 = float(times_s[i - 1]), float(times_s[i])
        cur = log_intensity(frames[i], config.eps)
        chunks.append(_crossings(ref, prev, cur, cp, cn, t0, t1))
        prev = cur
        if config.shot_noise_hz > 0:
            n_noise = int(rng.poisson(config.shot_noise_hz * (t1 - t0) * height * width))
            chunks.append((rng.integers(0, height * width, n_noise),
                           rng.uniform(t0, t1, n_noise),
                           rng.integers(0, 2, n_noise).astype(np.uint8)))
    pixel = np.concatenate([c[0] for c in chunks]) if chunks else np.empty(0, np.int64)
    t_s = np.concatenate([c[1] for c in chunks]) if chunks else np.empty(0)
    pol = np.concatenate([c[2] for c in chunks]) if chunks else np.empty(0, np.uint8)
    t_us = np.rint(t_s * 1e6).astype(np.int64)
    if config.refractory_us > 0 and pixel.size:
        keep = _refractory(pixel, t_us, int(np.ceil(config.refractory_us)))
        pixel, t_us, pol = pixel[keep], t_us[keep], pol[keep]
    order = np.argsort(t_us, kind="stable")
    y, x = np.divmod(pixel[order], width)
    return EventStream.from_arrays(x.astype(np.uint16), y.astype(np.uint16), t_us[order], pol[order],
                                   sensor_size=(width, height))
