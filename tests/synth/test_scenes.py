"""Scene sampling and rendering: determinism, constraints, and that pixels move as specified."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from evspec.data.synth.scenes import (
    SPEED_BANDS,
    COLOURS,
    DIRECTIONS,
    SHAPES,
    BackgroundSpec,
    CameraSpec,
    ObjectSpec,
    SceneSpec,
    render_at,
    render_frames,
    sample_scene,
)

SIZE = (96, 64)


def test_palette_and_shapes_are_rich_enough() -> None:
    assert len(COLOURS) >= 6 and len(SHAPES) >= 5 and len(DIRECTIONS) == 8


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), duration=st.sampled_from([0.25, 0.5, 1.0]))
def test_sampled_scenes_respect_constraints(seed: int, duration: float) -> None:
    spec = sample_scene(np.random.default_rng(seed), (640, 480), duration)
    assert spec == sample_scene(np.random.default_rng(seed), (640, 480), duration)
    assert 1 <= len(spec.objects) <= 3
    assert len({o.shape for o in spec.objects}) == len(spec.objects)
    assert spec.camera.direction is not None or any(o.direction for o in spec.objects)
    cvx, cvy = spec.camera.velocity
    for o in spec.objects:
        assert o.shape in SHAPES and o.colour in COLOURS
        assert (o.direction is None) == (o.speed == 0)
        assert o.direction is None or o.direction in DIRECTIONS
        for t in (0.0, duration):  # on screen, the whole shape stays in the frame
            x = o.x + (o.velocity[0] - cvx) * t
            y = o.y + (o.velocity[1] - cvy) * t
            assert o.radius <= x <= 640 - o.radius and o.radius <= y <= 480 - o.radius
    assert SceneSpec.from_dict(spec.to_dict()) == spec


def test_different_seeds_differ() -> None:
    specs = {sample_scene(np.random.default_rng(s)) for s in range(10)}
    assert len(specs) == 10


def one_object(direction: str | None, shape: str = "circle", speed: float = 40.0,
               camera: CameraSpec | None = None) -> SceneSpec:
    return SceneSpec(SIZE, (ObjectSpec(shape, "white", 10.0, 48.0, 32.0, direction,
                                       speed if direction else 0.0),),
                     BackgroundSpec(seed=1), camera or CameraSpec())


def centroid(frame: np.ndarray, background: np.ndarray) -> np.ndarray:
    mask = np.abs(frame.astype(int) - background.astype(int)).sum(-1) > 60
    ys, xs = np.nonzero(mask)
    return np.array([xs.mean(), ys.mean()])


@pytest.mark.parametrize("direction", list(DIRECTIONS))
def test_object_moves_in_its_named_direction(direction: str) -> None:
    spec = one_object(direction)
    frames = render_frames(spec, fps=10, duration_s=0.5, size=SIZE)
    assert frames.shape == (5, 64, 96, 3) and frames.dtype == np.uint8
    bg = render_frames(SceneSpec(SIZE, (), spec.background), fps=10, duration_s=0.1, size=SIZE)[0]
    shift = centroid(frames[-1], bg) - centroid(frames[0], bg)
    want = np.array(DIRECTIONS[direction]) * 40.0 * 0.4
    assert np.allclose(shift, want, atol=1.0), (shift, want)


def test_still_object_without_pan_gives_identical_frames() -> None:
    frames = render_frames(one_object(None), fps=20, duration_s=0.2, size=SIZE)
    assert all(np.array_equal(frames[0], f) for f in frames[1:])


def test_camera_pan_moves_everything() -> None:
    spec = one_object(None, camera=CameraSpec("right", 20.0))
    frames = render_frames(spec, fps=10, duration_s=0.5, size=SIZE)
    empty = SceneSpec(SIZE, (), spec.background, spec.camera)
    bg = render_frames(empty, fps=10, duration_s=0.5, size=SIZE)
    assert not np.array_equal(bg[0], bg[-1])  # background shifts
    shift = centroid(frames[-1], bg[-1]) - centroid(frames[0], bg[0])
    assert np.allclose(shift, [-20.0 * 0.4, 0.0], atol=1.0)  # the still object slides left


@pytest.mark.parametrize("shape", SHAPES)
def test_every_shape_renders_a_solid_blob(shape: str) -> None:
    spec = one_object(None, shape=shape)
    frame = render_frames(spec, fps=10, duration_s=0.1, size=SIZE)[0]
    bg = render_frames(SceneSpec(SIZE, (), spec.background), fps=10, duration_s=0.1, size=SIZE)[0]
    area = (np.abs(frame.astype(int) - bg.astype(int)).sum(-1) > 60).sum()
    circle = np.pi * 10.0**2
    assert 0.25 * circle < area < 1.2 * circle, area
    assert np.allclose(centroid(frame, bg), [48, 32], atol=2.5)


def test_render_scales_to_another_size() -> None:
    spec = one_object(None)
    small = render_frames(spec, fps=10, duration_s=0.1, size=SIZE)[0]
    big = render_frames(spec, fps=10, duration_s=0.1, size=(192, 128))[0]
    bg_small = render_at(SceneSpec(SIZE, (), spec.background), np.zeros(1), SIZE)[0]
    bg_big = render_at(SceneSpec(SIZE, (), spec.background), np.zeros(1), (192, 128))[0]
    assert np.allclose(centroid(big, bg_big), 2 * centroid(small, bg_small), atol=1.5)


def test_background_is_dark_and_objects_bright() -> None:
    """Every palette colour must stand out in luma from the background (event-visible edges)."""
    frames = render_frames(SceneSpec((640, 480), (), BackgroundSpec(seed=3)), 20, 0.05, (640, 480))
    luma = frames[0].astype(float) @ [0.299, 0.587, 0.114] / 255
    darkest_colour = min(np.dot(rgb, [0.299, 0.587, 0.114]) / 255 for rgb in COLOURS.values())
    assert np.log(darkest_colour / luma.max()) > 0.2  # above one contrast threshold


def test_speeds_keep_clear_of_the_answer_thresholds() -> None:
    """Speeds come from separated bands, so "slowly" / "quickly" are visible distinctions. Only an
    object that needed several placement attempts (each shrinks its speed by 3%) may leave its band."""
    from evspec.data.synth.questions import FAST_ABOVE, SLOW_BELOW

    rel = [o.speed / 640 for seed in range(300)
           for o in sample_scene(np.random.default_rng(seed), (640, 480)).objects if o.direction]
    assert len(rel) > 300
    in_bands = [any(lo * 0.9 <= r <= hi for lo, hi in SPEED_BANDS) for r in rel]
    assert np.mean(in_bands) > 0.97
    near = [abs(r - SLOW_BELOW) < 0.01 or abs(r - FAST_ABOVE) < 0.01 for r in rel]
    assert np.mean(near) < 0.02
    # all three bands are used
    assert min(rel) < SLOW_BELOW and max(rel) > FAST_ABOVE and any(SLOW_BELOW < r < FAST_ABOVE for r in rel)
