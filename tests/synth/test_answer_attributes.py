"""benchmarks/answer_attributes.py: answers held against their scene, attribute by attribute."""

from __future__ import annotations

import pytest

from evspec.data.synth.questions import make_qa
from evspec.data.synth.scenes import BackgroundSpec, CameraSpec, ObjectSpec, SceneSpec
from tests.benchmark_scripts import load_benchmark

SCENE = SceneSpec((640, 480), (ObjectSpec("triangle", "red", 40, 300, 200, "left", 100.0),
                               ObjectSpec("circle", "blue", 40, 100, 100, None, 0.0)),
                  BackgroundSpec(seed=0), CameraSpec())


@pytest.fixture(scope="module")
def script():
    return load_benchmark("answer_attributes")


def test_the_references_own_answers_score_every_attribute(script) -> None:
    for reference in ("answer", "event_visible_answer"):
        truth = {q: getattr(make_qa(SCENE, q), reference) for q in ("objects", "motion", "count_moving", "describe")}
        counts = script.judge_clip(SCENE, truth, reference)
        for attribute in script.ATTRIBUTES:
            if attribute != "false_shape" and counts[f"{attribute}_n"]:
                assert counts[f"{attribute}_ok"] == counts[f"{attribute}_n"], (reference, attribute)
        assert counts["false_shape_ok"] == 0
    assert script.judge_clip(SCENE, truth, "event_visible_answer")["shape_n"] == 1  # the still circle is invisible


def test_each_wrong_attribute_is_counted_where_it_is_wrong(script) -> None:
    answers = {"objects": "The scene shows a green circle, a red triangle and a blue star.",
               "motion": "The red triangle moves quickly to the left and the blue circle moves upward.",
               "count_moving": "Two objects are moving.",
               "describe": "A red triangle moves to the left. The camera pans upward."}
    c = script.judge_clip(SCENE, answers, "answer")
    assert (c["shape_ok"], c["shape_n"], c["false_shape_ok"], c["false_shape_n"]) == (2, 2, 1, 3)
    assert (c["colour_ok"], c["colour_n"]) == (1, 2)  # the circle is blue, not green
    assert (c["direction_ok"], c["direction_n"]) == (1, 2)  # the circle stands still
    assert (c["speed_ok"], c["speed_n"]) == (0, 2)  # "quickly" at 100 px/s of 640 is plain; "moves" is not "still"
    assert (c["count_ok"], c["camera_ok"]) == (0, 0)


@pytest.mark.parametrize("said, angle", [("to the left", 0), ("up and to the left", 45), ("downward", 90),
                                         ("down and to the right", 135), ("to the right", 180)])
def test_a_direction_error_is_counted_by_its_angle(script, said: str, angle: int) -> None:
    """The triangle moves left: what the answer says instead lands in the bucket of its angle; the
    still circle, said to move, counts in none."""
    motion = f"The red triangle moves {said} and the blue circle moves upward."
    c = script.judge_clip(SCENE, {"motion": motion}, "answer")
    assert {a: c[f"angle_{a}"] for a in script.ANGLES} == {a: int(a == angle) for a in script.ANGLES}
