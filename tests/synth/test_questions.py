"""Question/answer templates: fluent truth, and honest event-visible answers."""

from __future__ import annotations

import numpy as np
import pytest

from evspec.data.synth.questions import QUESTION_TYPES, QUESTIONS, all_qa, make_qa, mirrored_answer, reversed_answer
from evspec.data.synth.scenes import (
    COLOURS,
    BackgroundSpec,
    CameraSpec,
    ObjectSpec,
    SceneSpec,
    sample_scene,
)
from evspec.errors import ConfigError

BG = BackgroundSpec(seed=0)


def scene(*objects: ObjectSpec, camera: CameraSpec | None = None) -> SceneSpec:
    return SceneSpec((640, 480), objects, BG, camera or CameraSpec())


TRIANGLE = ObjectSpec("triangle", "red", 40, 300, 200, "left", 100.0)
CIRCLE = ObjectSpec("circle", "blue", 40, 100, 100, None, 0.0)
STAR = ObjectSpec("star", "orange", 40, 500, 300, "up-right", 200.0)


def test_describe_two_objects() -> None:
    qa = make_qa(scene(TRIANGLE, CIRCLE), "describe")
    assert qa.question == QUESTIONS["describe"]
    assert qa.answer == "A blue circle stands still and a red triangle moves to the left."
    assert qa.event_visible_answer == "A triangle moves to the left."


def test_objects_are_named_in_shape_order_whatever_the_scene_order() -> None:
    """The answer must follow from the clip: the order the scene was drawn in is not visible."""
    for qtype in QUESTION_TYPES:
        assert make_qa(scene(TRIANGLE, STAR, CIRCLE), qtype) == make_qa(scene(STAR, CIRCLE, TRIANGLE), qtype)
    assert make_qa(scene(STAR, TRIANGLE), "objects").answer == "The scene shows a red triangle and an orange star."


def test_three_objects_articles_and_speed_words() -> None:
    qa = make_qa(scene(TRIANGLE, CIRCLE, STAR), "describe")
    assert qa.answer == ("A blue circle stands still, a red triangle moves to the left and "
                         "an orange star moves quickly up and to the right.")
    slow = ObjectSpec("square", "green", 40, 300, 200, "down", 30.0)
    assert make_qa(scene(slow), "motion").answer == "The green square moves slowly downward."


def test_objects_and_motion_questions() -> None:
    s = scene(TRIANGLE, CIRCLE)
    assert make_qa(s, "objects").answer == "The scene shows a blue circle and a red triangle."
    assert make_qa(s, "objects").event_visible_answer == "The scene shows a triangle."
    assert make_qa(s, "motion").answer == ("The blue circle stands still and the red "
                                           "triangle moves to the left.")
    assert make_qa(s, "motion").event_visible_answer == "The triangle moves to the left."


@pytest.mark.parametrize(("objects", "text"), [
    ((CIRCLE,), "No object is moving."),
    ((TRIANGLE, CIRCLE), "One object is moving."),
    ((TRIANGLE, CIRCLE, STAR), "Two objects are moving."),
])
def test_count_moving(objects: tuple[ObjectSpec, ...], text: str) -> None:
    assert make_qa(scene(*objects), "count_moving").answer == text


def test_nothing_visible_without_motion() -> None:
    qa = all_qa(scene(CIRCLE))
    assert qa["objects"]["event_visible_answer"] == "No object is visible."
    assert qa["describe"]["event_visible_answer"] == "Nothing moves, so no object is visible."
    assert qa["count_moving"]["event_visible_answer"] == "No object is moving."


def test_camera_pan_makes_still_objects_visible() -> None:
    qa = make_qa(scene(TRIANGLE, CIRCLE, camera=CameraSpec("up", 30.0)), "describe")
    assert qa.event_visible_answer == ("A circle stands still and a triangle moves to the left. "
                                       "The camera pans upward.")
    assert qa.answer.endswith("The camera pans upward.")


def test_event_answers_never_name_colours() -> None:
    for seed in range(60):
        spec = sample_scene(np.random.default_rng(seed))
        for entry in all_qa(spec).values():
            assert not any(c in entry["event_visible_answer"].split() for c in COLOURS)
            assert entry["answer"][0].isupper() and entry["answer"].endswith(".")
    assert set(all_qa(spec)) == set(QUESTION_TYPES)


def test_unknown_question_type() -> None:
    with pytest.raises(ConfigError, match="unknown question type 'colour'"):
        make_qa(scene(TRIANGLE), "colour")


_MIRROR = {"right": "left", "up-right": "up-left", "up": "up", "up-left": "up-right", "left": "right",
           "down-left": "down-right", "down": "down", "down-right": "down-left", None: None}


def _mirrored_scene(spec: SceneSpec) -> SceneSpec:
    """The scene seen in a mirror: x -> width - x, horizontal motion reversed (shapes are
    symmetric about their vertical axis, so they look the same)."""
    import dataclasses

    width = spec.size[0]
    objects = tuple(dataclasses.replace(o, x=width - o.x, direction=_MIRROR[o.direction]) for o in spec.objects)
    camera = dataclasses.replace(spec.camera, direction=_MIRROR[spec.camera.direction])
    return dataclasses.replace(spec, objects=objects, camera=camera)


def test_mirrored_answer_swaps_whole_words_only() -> None:
    assert mirrored_answer("The red star moves up and to the left, the ring to the right.") == \
        "The red star moves up and to the right, the ring to the left."
    assert mirrored_answer("leftover rights") == "leftover rights"


_OPPOSITE = {"right": "left", "up-right": "down-left", "up": "down", "up-left": "down-right", "left": "right",
             "down-left": "up-right", "down": "up", "down-right": "up-left", None: None}


def _reversed_scene(spec: SceneSpec) -> SceneSpec:
    """The scene played backwards: each object starts where it ended and moves the opposite way at
    the same speed; the camera pans the opposite way."""
    import dataclasses

    def back(o):
        vx, vy = o.velocity
        return dataclasses.replace(o, x=o.x + vx, y=o.y + vy, direction=_OPPOSITE[o.direction])  # 1 s clips

    camera = dataclasses.replace(spec.camera, direction=_OPPOSITE[spec.camera.direction])
    return dataclasses.replace(spec, objects=tuple(back(o) for o in spec.objects), camera=camera)


def _mirrored_and_reversed_scene(spec: SceneSpec) -> SceneSpec:
    return _mirrored_scene(_reversed_scene(spec))


def _mirrored_and_reversed_answer(text: str) -> str:
    return mirrored_answer(reversed_answer(text))


@pytest.mark.parametrize("scene_view, answer_view", [
    (_mirrored_scene, mirrored_answer), (_reversed_scene, reversed_answer),
    (_mirrored_and_reversed_scene, _mirrored_and_reversed_answer)], ids=["mirror", "reverse", "both"])
def test_a_views_answer_is_what_the_templates_say_of_its_scene(scene_view, answer_view) -> None:
    """``evspec train --mirror`` and ``--reverse`` learn a flipped or backwards clip with
    ``mirrored_answer`` / ``reversed_answer`` of its answer: it must be exactly what the templates
    say of the mirrored or reversed scene, for every question and both answers."""
    rng = np.random.default_rng(5)
    changed = 0
    for _ in range(300):
        spec = sample_scene(rng, (160, 120), pan_probability=0.5)
        seen = scene_view(spec)
        for qtype in QUESTION_TYPES:
            qa, view_qa = make_qa(spec, qtype), make_qa(seen, qtype)
            assert answer_view(qa.answer) == view_qa.answer
            assert answer_view(qa.event_visible_answer) == view_qa.event_visible_answer
            changed += qa.answer != view_qa.answer
    assert changed > 200  # the view changed many answers: the check is not vacuous


def test_reversed_answer_swaps_whole_words_only() -> None:
    assert reversed_answer("The star moves up and to the left, the ring upward. The camera pans downward.") == \
        "The star moves down and to the right, the ring downward. The camera pans upward."
    assert reversed_answer("upwards downtown") == "upwards downtown"
