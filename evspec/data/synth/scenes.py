"""Synthetic scenes: 1-3 coloured shapes moving (or standing still) over a static textured
background, optionally filmed by a slowly panning camera.

Everything is in pixels of the scene's reference size (``SceneSpec.size``) and seconds. Objects are
anchored in the world: when the camera pans, every object (still ones included) and the
background shift on screen, so everything produces events; without a pan only moving objects do.
Positions are chosen so that each object stays entirely inside the frame for the sampled duration.

Colours are picked to be brighter than the dark background, so every object has a luminance edge
an event camera can see when it moves; the camera never sees the colour itself.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from evspec.errors import ConfigError

SHAPES = ("circle", "square", "triangle", "star", "ring", "diamond")

# name -> RGB. All have luma >= 0.38; the background texture stays below ~0.30 (0.27 x tint <= 1.1),
# so every object edge is at least one 0.2 log-contrast step.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "green": (60, 200, 70),
    "blue": (70, 120, 255),
    "yellow": (245, 225, 50),
    "orange": (250, 145, 30),
    "purple": (170, 90, 230),
    "white": (245, 245, 245),
    "cyan": (60, 215, 230),
    "pink": (250, 140, 190),
}

# name -> unit vector in image coordinates (x right, y down).
_D = 1 / math.sqrt(2)
DIRECTIONS: dict[str, tuple[float, float]] = {
    "right": (1.0, 0.0),
    "up-right": (_D, -_D),
    "up": (0.0, -1.0),
    "up-left": (-_D, -_D),
    "left": (-1.0, 0.0),
    "down-left": (-_D, _D),
    "down": (0.0, 1.0),
    "down-right": (_D, _D),
}


# Object speeds (fraction of the frame width per second): slow, plain and fast bands with gaps
# around the answers' thresholds (questions.SLOW_BELOW 0.12, FAST_ABOVE 0.25), so "slowly" and
# "quickly" name what a viewer can tell apart instead of a hair's breadth either side of a line.
SPEED_BANDS: tuple[tuple[float, float], ...] = ((0.06, 0.10), (0.15, 0.21), (0.29, 0.35))


def velocity(direction: str | None, speed: float) -> tuple[float, float]:
    """Pixels per second along x and y for a named direction (None: standing still)."""
    if direction is None:
        return (0.0, 0.0)
    dx, dy = DIRECTIONS[direction]
    return (dx * speed, dy * speed)


@dataclass(frozen=True)
class ObjectSpec:
    """One shape. ``direction`` is None (and ``speed`` 0) for an object standing still."""

    shape: str
    colour: str
    radius: float
    x: float  # centre at t = 0, reference pixels
    y: float
    direction: str | None
    speed: float  # pixels per second, in the world

    @property
    def velocity(self) -> tuple[float, float]:
        return velocity(self.direction, self.speed)


@dataclass(frozen=True)
class BackgroundSpec:
    """Smooth low-frequency noise plus a few soft sinusoidal stripes, dark and slightly tinted."""

    seed: int
    grid: int = 6  # noise control points along the short side
    stripe_angles: tuple[float, ...] = (0.5,)  # radians
    stripe_periods: tuple[float, ...] = (90.0,)  # reference pixels
    stripe_strength: float = 0.35
    tint: tuple[float, float, float] = (1.0, 1.0, 1.0)
    low: float = 0.07  # luma range of the texture, on [0, 1]
    high: float = 0.27


@dataclass(frozen=True)
class CameraSpec:
    """Camera motion; ``direction`` None means a fixed camera."""

    direction: str | None = None
    speed: float = 0.0  # pixels per second

    @property
    def velocity(self) -> tuple[float, float]:
        return velocity(self.direction, self.speed)


@dataclass(frozen=True)
class SceneSpec:
    size: tuple[int, int]  # (width, height) the positions refer to
    objects: tuple[ObjectSpec, ...]
    background: BackgroundSpec
    camera: CameraSpec = field(default_factory=CameraSpec)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (``dataclasses.asdict``); :meth:`from_dict` inverts it."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SceneSpec:
        """Rebuild a scene from :meth:`to_dict` output (e.g. a dataset row's ``scene``); extra
        keys such as ``qa`` are ignored."""
        bg = data["background"]
        return cls(
            size=(int(data["size"][0]), int(data["size"][1])),
            objects=tuple(ObjectSpec(**o) for o in data["objects"]),
            background=BackgroundSpec(**{**bg, "stripe_angles": tuple(bg["stripe_angles"]),
                                         "stripe_periods": tuple(bg["stripe_periods"]),
                                         "tint": tuple(bg["tint"])}),
            camera=CameraSpec(**data.get("camera", {})),
        )


def _uniform(rng: np.random.Generator, lo: float, hi: float, digits: int = 2) -> float:
    """A uniform draw, rounded so the scene reads well in JSON and re-renders exactly from it."""
    return round(float(rng.uniform(lo, hi)), digits)


def _place(rng: np.random.Generator, radius: float, screen_v: tuple[float, float],
           size: tuple[int, int], duration_s: float) -> tuple[float, float] | None:
    """A start centre keeping the whole object on screen for the duration, or None."""
    margin = radius + 2.0
    lo_hi = []
    for v, extent in zip(screen_v, size):
        travel = v * duration_s
        lo, hi = margin - min(travel, 0.0), extent - margin - max(travel, 0.0)
        if hi <= lo:
            return None
        lo_hi.append((lo, hi))
    return _uniform(rng, *lo_hi[0]), _uniform(rng, *lo_hi[1])


def sample_scene(
    rng: np.random.Generator,
    size: tuple[int, int] = (640, 480),
    duration_s: float = 1.0,
    *,
    n_objects: tuple[int, int] = (1, 3),
    still_probability: float = 0.25,
    pan_probability: float = 0.2,
    speed_bands: tuple[tuple[float, float], ...] = SPEED_BANDS,
    pan_speed_range: tuple[float, float] = (0.03, 0.08),
) -> SceneSpec:
    """Draw a scene. Shapes within a scene are distinct, so every object can be named by its
    shape alone (what the event camera can tell). Speeds are fractions of the frame width per
    second, drawn from one of ``speed_bands`` (chosen uniformly). Without a pan at least one
    object moves, so the clip always has events."""
    width, height = size
    short = min(width, height)
    count = int(rng.integers(n_objects[0], n_objects[1] + 1))
    shapes = rng.choice(len(SHAPES), size=count, replace=False)
    colours = rng.choice(len(COLOURS), size=count, replace=False)
    pan = rng.random() < pan_probability
    camera = CameraSpec()
    if pan:
        direction = list(DIRECTIONS)[int(rng.integers(len(DIRECTIONS)))]
        camera = CameraSpec(direction, round(_uniform(rng, *pan_speed_range, 4) * width, 2))
    still = rng.random(count) < still_probability
    if not pan and still.all():
        still[int(rng.integers(count))] = False
    objects: list[ObjectSpec] = []
    ends: list[tuple[float, float, float, float, float]] = []  # screen start/end centres, radius
    for i in range(count):
        radius = round(_uniform(rng, 0.07, 0.13, 4) * short, 2)
        for attempt in range(40):
            if still[i]:
                direction, speed = None, 0.0
            else:
                direction = list(DIRECTIONS)[int(rng.integers(len(DIRECTIONS)))]
                band = speed_bands[int(rng.integers(len(speed_bands)))]
                speed = round(_uniform(rng, *band, 4) * width * 0.97**attempt, 2)
            obj = ObjectSpec(SHAPES[shapes[i]], list(COLOURS)[colours[i]], radius, 0.0, 0.0,
                             direction, speed)
            svx, svy = obj.velocity[0] - camera.velocity[0], obj.velocity[1] - camera.velocity[1]
            start = _place(rng, radius, (svx, svy), size, duration_s)
            if start is None:
                continue
            end = (start[0] + svx * duration_s, start[1] + svy * duration_s)
            # Keep shapes apart at the first and last frame, so none starts or ends hidden.
            if all(math.dist(start, e[:2]) > radius + e[4] and math.dist(end, e[2:4]) > radius + e[4]
                   for e in ends) or attempt == 39:
                break
        else:
            raise ConfigError(f"cannot keep a moving object (radius {radius:.0f} px) inside a "
                              f"{width}x{height} frame for {duration_s} s; use shorter clips")
        ends.append((*start, *end, radius))
        objects.append(ObjectSpec(obj.shape, obj.colour, radius, start[0], start[1],
                                  obj.direction, obj.speed))
    n_stripes = int(rng.integers(1, 4))
    background = BackgroundSpec(
        seed=int(rng.integers(2**31)),
        stripe_angles=tuple(_uniform(rng, 0, math.pi, 4) for _ in range(n_stripes)),
        stripe_periods=tuple(round(_uniform(rng, 0.1, 0.3, 4) * width, 2) for _ in range(n_stripes)),
        stripe_strength=_uniform(rng, 0.2, 0.5, 3),
        tint=(_uniform(rng, 0.9, 1.1, 3), _uniform(rng, 0.9, 1.1, 3), _uniform(rng, 0.9, 1.1, 3)),
    )
    return SceneSpec((width, height), tuple(objects), background, camera)


# ---------------------------------------------------------------- rendering

def _sdf(shape: str, px: np.ndarray, py: np.ndarray, r: float) -> np.ndarray:
    """Signed distance (pixels, negative inside) to a shape of radius ``r`` centred at 0.
    ``py`` points down; triangle and star are drawn pointing up. Formulas: I. Quilez's 2D SDFs."""
    if shape == "circle":
        return np.hypot(px, py) - r
    if shape == "ring":
        return np.abs(np.hypot(px, py) - 0.72 * r) - 0.28 * r
    if shape == "square":
        h = 0.82 * r
        qx, qy = np.abs(px) - h, np.abs(py) - h
        outside = np.hypot(np.maximum(qx, 0), np.maximum(qy, 0))
        return outside + np.minimum(np.maximum(qx, qy), 0)
    if shape == "diamond":
        return (np.abs(px) + np.abs(py) - 1.1 * r) / math.sqrt(2)
    y_up = -py
    if shape == "triangle":
        k = math.sqrt(3.0)
        x = np.abs(px) - r
        y = y_up + r / k
        flip = x + k * y > 0
        x, y = np.where(flip, (x - k * y) / 2, x), np.where(flip, (-k * x - y) / 2, y)
        x = x - np.clip(x, -2 * r, 0)
        return -np.hypot(x, y) * np.sign(y)
    if shape == "star":
        k1x, k1y = 0.809016994375, -0.587785252292
        rf = 0.45
        x, y = np.abs(px), y_up
        d = np.maximum(k1x * x + k1y * y, 0)
        x, y = x - 2 * d * k1x, y - 2 * d * k1y
        d = np.maximum(-k1x * x + k1y * y, 0)
        x, y = x + 2 * d * k1x, y - 2 * d * k1y
        x, y = np.abs(x), y - r
        bax, bay = -rf * k1y * r, rf * k1x * r - r  # ba = rf*(-k1.y, k1.x) - (0, 1), scaled by r
        h = np.clip((x * bax + y * bay) / (bax * bax + bay * bay), 0, 1)
        return np.hypot(x - bax * h, y - bay * h) * np.sign(y * bax - x * bay)
    raise ValueError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")


def render_background(spec: BackgroundSpec, width: int, height: int, scale: float) -> np.ndarray:
    """Static texture ``[height, width, 3]`` float32 in [0, 1]."""
    rng = np.random.default_rng(spec.seed)
    gh = spec.grid
    gw = max(2, round(gh * width / max(height, 1)))
    coarse = rng.random((gh, gw)).astype(np.float32)
    noise = np.asarray(Image.fromarray(coarse, mode="F").resize((width, height), Image.BICUBIC))
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32) / scale
    stripes = np.zeros((height, width), np.float32)
    for angle, period in zip(spec.stripe_angles, spec.stripe_periods):
        phase = (xx * math.cos(angle) + yy * math.sin(angle)) * (2 * math.pi / period)
        stripes += np.sin(phase)
    stripes /= max(len(spec.stripe_angles), 1)
    tex = (1 - spec.stripe_strength) * noise + spec.stripe_strength * (0.5 + 0.5 * stripes)
    tex = np.clip(tex, 0, 1)
    luma = spec.low + (spec.high - spec.low) * tex
    return luma[..., None] * np.asarray(spec.tint, np.float32)


def _crop(canvas: Image.Image, ox: float, oy: float, width: int, height: int) -> np.ndarray:
    """Window of the background at a sub-pixel offset (bilinear, in PIL's C code), so slow pans
    move smoothly and cheaply."""
    if ox == int(ox) and oy == int(oy):
        ix, iy = int(ox), int(oy)
        return np.array(canvas.crop((ix, iy, ix + width, iy + height)))
    moved = canvas.resize((width, height), Image.BILINEAR, box=(ox, oy, ox + width, oy + height))
    return np.array(moved)


def frame_times(fps: float, duration_s: float) -> np.ndarray:
    """Timestamps (s) of the frames of a clip: ``round(fps * duration_s)`` frames from 0."""
    n = max(1, round(fps * duration_s))
    return np.arange(n) / fps


def render_frames(spec: SceneSpec, fps: float, duration_s: float,
                  size: tuple[int, int] = (640, 480)) -> np.ndarray:
    """Render the ``round(fps * duration_s)`` frames of a clip, ``[T, H, W, 3]`` uint8, at
    ``size`` (the scene is scaled from its reference size). Edges are anti-aliased."""
    return render_at(spec, frame_times(fps, duration_s), size)


def render_at(spec: SceneSpec, times: np.ndarray, size: tuple[int, int] = (640, 480)) -> np.ndarray:
    """Render frames at arbitrary times (seconds), e.g. finer than the video's frame rate for
    the event simulator."""
    width, height = size
    sx, sy = width / spec.size[0], height / spec.size[1]
    scale = min(sx, sy)
    times = np.asarray(times, np.float64)
    cvx, cvy = spec.camera.velocity
    pan_x = cvx * sx * times
    pan_y = cvy * sy * times
    pad_x0 = int(math.ceil(max(0.0, -pan_x.min()))) + 1
    pad_y0 = int(math.ceil(max(0.0, -pan_y.min()))) + 1
    pad_x1 = int(math.ceil(max(0.0, pan_x.max()))) + 2
    pad_y1 = int(math.ceil(max(0.0, pan_y.max()))) + 2
    background = render_background(spec.background, width + pad_x0 + pad_x1,
                                   height + pad_y0 + pad_y1, scale)
    canvas = Image.fromarray(np.clip(background * 255 + 0.5, 0, 255).astype(np.uint8))
    colours = [np.asarray(COLOURS[o.colour], np.float32) for o in spec.objects]
    out = np.empty((len(times), height, width, 3), np.uint8)
    for i, t in enumerate(times):
        frame = out[i]
        frame[:] = _crop(canvas, pad_x0 + pan_x[i], pad_y0 + pan_y[i], width, height)
        for obj, colour in zip(spec.objects, colours):
            vx, vy = obj.velocity
            cx = (obj.x + vx * t) * sx - pan_x[i]
            cy = (obj.y + vy * t) * sy - pan_y[i]
            r = obj.radius * scale
            x0, x1 = max(0, int(cx - r - 2)), min(width, int(cx + r + 3))
            y0, y1 = max(0, int(cy - r - 2)), min(height, int(cy + r + 3))
            if x0 >= x1 or y0 >= y1:
                continue
            px = np.arange(x0, x1, dtype=np.float32) + 0.5 - cx
            py = np.arange(y0, y1, dtype=np.float32)[:, None] + 0.5 - cy
            cover = np.clip(0.5 - _sdf(obj.shape, px[None, :], py, r), 0, 1)[..., None]
            region = frame[y0:y1, x0:x1].astype(np.float32)
            region += cover * (colour - region)
            frame[y0:y1, x0:x1] = (region + 0.5).astype(np.uint8)
    return out
