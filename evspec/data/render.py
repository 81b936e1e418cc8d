"""Event representations: EventGPT event images, polarity histograms, voxel grids.

Everything is vectorised over events (no Python loop over events); loops run only over the
handful of frames or bins.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from evspec.data.events import EventStream, atomic_path
from evspec.memory import require_memory
from evspec.errors import ConfigError, InputError

Color = tuple[int, int, int]

# EventGPT: p=1 red, p=0 blue, on white. DSEC's own viewer uses the reverse (positive blue,
# negative red); the colouring is always an explicit argument so the two never get mixed up.
POLARITY_COLORS_EVENTGPT: dict[int, Color] = {1: (255, 0, 0), 0: (0, 0, 255)}
POLARITY_COLORS_DSEC: dict[int, Color] = {1: (0, 0, 255), 0: (255, 0, 0)}


def _require_stream(stream: EventStream, what: str) -> None:
    if not isinstance(stream, EventStream):
        raise InputError(f"{what} needs an EventStream, got {type(stream).__name__}")
    if len(stream) == 0:
        raise InputError(f"{what}: the event stream is empty; nothing to render")


def _palette(colors: dict[int, Color]) -> np.ndarray:
    """(3, 3) uint8 palette: row 0 white background, row 1 colour of p=0, row 2 colour of p=1."""
    try:
        table = np.array([(255, 255, 255), colors[0], colors[1]], dtype=np.int64)
    except (KeyError, TypeError, ValueError):
        raise InputError(f"colors must map polarities 0 and 1 to (r, g, b) tuples, got {colors!r}") from None
    if table.shape != (3, 3) or table.min() < 0 or table.max() > 255:
        raise InputError(f"colors must be (r, g, b) with values in 0..255, got {colors!r}")
    return table.astype(np.uint8)


def _frame_shape(stream: EventStream, size: str | tuple[int, int]) -> tuple[int, int]:
    """(height, width) of the rendered images."""
    if size == "sensor":
        return stream.height, stream.width
    if size in ("data", "chunk"):  # upstream EventGPT: depends on where events happen to fall
        return int(stream.y.max()) + 1, int(stream.x.max()) + 1
    try:
        width, height = (int(v) for v in size)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise InputError(f"size must be 'chunk', 'sensor', 'data' or (width, height), got {size!r}") from None
    if width < 1 or height < 1:
        raise InputError(f"size must be positive, got {size!r}")
    x_max, y_max = int(stream.x.max()), int(stream.y.max())
    if x_max >= width or y_max >= height:
        raise InputError(f"size {width}x{height} is too small for events reaching x={x_max}, y={y_max}")
    return height, width


def _render_last_wins(
    x: np.ndarray, y: np.ndarray, p: np.ndarray, shape: tuple[int, int], palette: np.ndarray
) -> np.ndarray:
    """One image where each touched pixel takes the colour of its LAST event, others white.

    Fancy assignment ``img[y, x] = ...`` does not promise which of several writes to the same
    pixel wins, so the last event index per pixel is computed explicitly with np.maximum.at
    (unbuffered, defined for repeated indices). Colours are then one gather through a palette.
    """
    height, width = shape
    # the last-event index per pixel (intp), the palette codes and the RGB image
    require_memory(height * width * (np.dtype(np.intp).itemsize + 1 + 3), f"a {width}x{height} event image")
    pixel = y.astype(np.intp) * width + x
    last = np.full(height * width, -1, dtype=np.intp)
    np.maximum.at(last, pixel, np.arange(pixel.size, dtype=np.intp))
    # palette row per event (p + 1), with a leading 0 so last == -1 (untouched) maps to white
    row = np.empty(pixel.size + 1, dtype=np.uint8)
    row[0] = 0
    np.add(p, 1, out=row[1:], casting="unsafe")
    code = row[last + 1]
    return np.take(palette, code, axis=0).reshape(height, width, 3)


def render_eventgpt_frames(
    stream: EventStream,
    n_frames: int = 5,
    *,
    size: str | tuple[int, int] = "chunk",
    remainder: Literal["last", "spread"] = "last",
    colors: dict[int, Color] = POLARITY_COLORS_EVENTGPT,
) -> list[np.ndarray]:
    """EventGPT's event images: ``n_frames`` chunks of equal EVENT COUNT, one HxWx3 uint8 each.

    White background; each pixel hit shows the polarity colour of its last event in the chunk.
    The defaults are upstream EventGPT's code (XduSyL/EventGPT): the first ``n_frames - 1``
    chunks hold ``len // n_frames`` events and the last the rest (``remainder="last"``;
    ``"spread"`` is np.array_split's), and each chunk is drawn on its own canvas of that chunk's
    ``(y.max()+1, x.max()+1)`` (``size="chunk"``), so the frames of one clip can differ in size.
    Other sizes: "sensor" (sensor height x width), "data" (the whole stream's
    ``(y.max()+1, x.max()+1)``, so all frames match) or (w, h).
    """
    _require_stream(stream, "render_eventgpt_frames")
    if not 1 <= n_frames <= len(stream):
        raise InputError(f"n_frames must be in 1..{len(stream)} (number of events), got {n_frames}")
    palette = _palette(colors)
    # every frame is kept: the whole list must fit (a chunk's canvas is at most the stream's extent)
    height, width = _frame_shape(stream, "data" if size == "chunk" else size)
    require_memory(n_frames * height * width * 3, f"{n_frames} event images of up to {width}x{height}")
    chunks = stream.split_count(n_frames, remainder=remainder)
    if size == "chunk":
        return [_render_last_wins(c.x, c.y, c.p, _frame_shape(c, size), palette) for c in chunks]
    shape = _frame_shape(stream, size)
    return [_render_last_wins(c.x, c.y, c.p, shape, palette) for c in chunks]


EventCanvas = Literal["upstream", "sensor"]
EVENT_CANVASES: dict[str, str] = {"upstream": "chunk", "sensor": "sensor"}
"""``--event-canvas`` -> ``render_eventgpt_frames(size=...)``: upstream's per-chunk canvas, or the
sensor-sized one (every frame the same size; what evspec drew before it followed upstream)."""


def check_event_canvas(canvas: str) -> EventCanvas:
    """``canvas`` if it names an event canvas, else a ConfigError naming the choices."""
    if canvas not in EVENT_CANVASES:
        raise ConfigError(f"unknown event canvas {canvas!r}: use {' or '.join(EVENT_CANVASES)}")
    return canvas  # type: ignore[return-value]


def render_eventgpt_input(stream: EventStream, n_frames: int = 5, canvas: EventCanvas = "upstream") -> list[np.ndarray]:
    """The frames an EventGPT checkpoint is fed: upstream's chunking, on the chosen canvas."""
    return render_eventgpt_frames(stream, n_frames, size=EVENT_CANVASES[check_event_canvas(canvas)])


def render_histogram(stream: EventStream, *, normalize: bool = False) -> np.ndarray:
    """[2, H, W] float32 event counts per pixel; channel 0 = p0, channel 1 = p1.

    ``normalize=True`` divides by the largest count over both channels (values in [0, 1],
    polarity balance kept).
    """
    _require_stream(stream, "render_histogram")
    width, height = stream.sensor_size
    require_memory(2 * height * width * (8 + 4), f"a {width}x{height} histogram")  # int64 counts, float32 copy
    index = stream.p.astype(np.intp) * (height * width) + stream.y.astype(np.intp) * width + stream.x
    hist = np.bincount(index, minlength=2 * height * width).astype(np.float32).reshape(2, height, width)
    if normalize:
        hist /= hist.max()
    return hist


def render_voxel_grid(stream: EventStream, n_bins: int = 5) -> np.ndarray:
    """[B, H, W] float32 voxel grid, bilinear in time.

    t is normalised to [0, B-1] over the stream's span; each event adds its polarity (+1 for
    p=1, -1 for p=0) times (1 - |t_n - b|) to the two bins b around t_n. A zero-duration stream
    puts everything in bin 0. Each voxel's sum over bins equals its polarity sum.
    """
    _require_stream(stream, "render_voxel_grid")
    if n_bins < 1:
        raise InputError(f"n_bins must be >= 1, got {n_bins}")
    width, height = stream.sensor_size
    # two float64 bincounts and the float32 result, each n_bins x H x W
    require_memory(n_bins * height * width * (8 + 8 + 4), f"a {n_bins}x{height}x{width} voxel grid")
    t = stream.t.astype(np.float64)
    duration = t[-1] - t[0]
    t_norm = (t - t[0]) * ((n_bins - 1) / duration) if duration > 0 else np.zeros_like(t)
    lower = np.floor(t_norm).astype(np.intp)
    frac = t_norm - lower
    polarity = stream.p.astype(np.float64) * 2.0 - 1.0
    pixel = stream.y.astype(np.intp) * width + stream.x
    plane = height * width
    upper = np.minimum(lower + 1, n_bins - 1)  # at t_n == B-1 the upper weight is 0 anyway
    size = n_bins * plane
    grid = np.bincount(lower * plane + pixel, weights=polarity * (1.0 - frac), minlength=size)
    grid += np.bincount(upper * plane + pixel, weights=polarity * frac, minlength=size)
    return grid.astype(np.float32).reshape(n_bins, height, width)


def histogram_to_image(hist: np.ndarray) -> np.ndarray:
    """HxWx3 uint8 picture of a [2, H, W] histogram: p1 in red, p0 in blue, black = no events.

    Each channel is scaled by the larger channel maximum, so brightness is comparable.
    """
    hist = np.asarray(hist)
    if hist.ndim != 3 or hist.shape[0] != 2:
        raise InputError(f"histogram must have shape [2, H, W], got {hist.shape}")
    peak = float(hist.max())
    scaled = hist / peak if peak > 0 else np.zeros_like(hist, dtype=np.float64)
    image = np.zeros((*hist.shape[1:], 3), dtype=np.uint8)
    image[..., 0] = np.round(np.clip(scaled[1], 0, 1) * 255)
    image[..., 2] = np.round(np.clip(scaled[0], 0, 1) * 255)
    return image


def voxel_to_image(voxel: np.ndarray) -> np.ndarray:
    """Bins side by side as one Hx(B*W)x3 uint8 image: white = 0, red = positive, blue = negative.

    Scaled by the largest absolute value over the whole grid.
    """
    voxel = np.asarray(voxel)
    if voxel.ndim != 3:
        raise InputError(f"voxel grid must have shape [B, H, W], got {voxel.shape}")
    peak = float(np.abs(voxel).max())
    v = np.clip(voxel / peak, -1, 1) if peak > 0 else np.zeros(voxel.shape)
    strip = np.concatenate(list(v), axis=1)  # H x (B*W)
    fade = np.round(255 * (1 - np.abs(strip))).astype(np.uint8)
    image = np.full((*strip.shape, 3), 255, dtype=np.uint8)
    image[..., 1] = fade
    image[..., 2] = np.where(strip > 0, fade, 255)
    image[..., 0] = np.where(strip < 0, fade, 255)
    return image


def save_png(image: np.ndarray, path: str | Path) -> None:
    """Write an HxW (gray), HxWx3 (RGB) or HxWx4 (RGBA) uint8 image as PNG, atomically."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (3, 4))):
        raise InputError(f"save_png needs uint8 HxW, HxWx3 or HxWx4, got {image.dtype} {image.shape}", path)
    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")
