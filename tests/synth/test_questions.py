"""Question/answer templates: fluent truth, and honest event-visible answers."""

from __future__ import annotations

import numpy as np
import pytest

from evspec.data.synth.questions import QUESTION_TYPES, QUESTIONS, all_qa, make_qa
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
