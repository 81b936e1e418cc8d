"""Questions and ground-truth answers, written from a scene's parameters.

Each question has two answers:

* ``answer``: the full truth, what the video shows.
* ``event_visible_answer``: what an event camera can recover. It sees no colour, and with a fixed
  camera an object that stands still produces no events, so it is invisible. With a panning
  camera everything moves on the sensor and every object is visible (still without colour).

The gap between the two is what later measurements of event-drafted answers look at.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

from evspec.data.synth.scenes import SHAPES, ObjectSpec, SceneSpec
from evspec.errors import ConfigError

QUESTION_TYPES = ("objects", "motion", "count_moving", "describe")

QUESTIONS = {
    "objects": "What objects are in the scene?",
    "motion": "Which way does each object move?",
    "count_moving": "How many objects are moving?",
    "describe": "Describe what happens in the scene.",
}

_DIRECTION_WORDS = {
    "right": "to the right",
    "up-right": "up and to the right",
    "up": "upward",
    "up-left": "up and to the left",
    "left": "to the left",
    "down-left": "down and to the left",
    "down": "downward",
    "down-right": "down and to the right",
}
_NUMBERS = ("no", "one", "two", "three", "four", "five", "six")

# Speeds as a fraction of the frame width per second.
SLOW_BELOW = 0.12
FAST_ABOVE = 0.25


@dataclass(frozen=True)
class QA:
    qtype: str
    question: str
    answer: str
    event_visible_answer: str


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _noun(obj: ObjectSpec, colour: bool) -> str:
    return f"{obj.colour} {obj.shape}" if colour else obj.shape


def _motion(obj: ObjectSpec, width: int) -> str:
    if obj.direction is None:
        return "stands still"
    rel = obj.speed / width
    adverb = "slowly " if rel < SLOW_BELOW else "quickly " if rel > FAST_ABOVE else ""
    return f"moves {adverb}{_DIRECTION_WORDS[obj.direction]}"


def _join(parts: list[str]) -> str:
    if len(parts) <= 1:
        return "".join(parts)
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def _sentence(text: str) -> str:
    return text[0].upper() + text[1:] + "."


def _count(n: int) -> str:
    word = _NUMBERS[n] if n < len(_NUMBERS) else str(n)
    return ("no object is moving" if n == 0 else "one object is moving" if n == 1
            else f"{word} objects are moving")


def _in_shape_order(objects: tuple[ObjectSpec, ...] | list[ObjectSpec]) -> list[ObjectSpec]:
    """Answers name objects in the fixed order of ``SHAPES`` (shapes are distinct within a
    scene): the order then follows from what the clip shows, not from how the scene was drawn."""
    return sorted(objects, key=lambda o: SHAPES.index(o.shape))


def _visible(spec: SceneSpec) -> list[ObjectSpec]:
    panning = spec.camera.direction is not None
    return [o for o in _in_shape_order(spec.objects) if panning or o.direction is not None]


def _camera(spec: SceneSpec) -> str:
    d = spec.camera.direction
    return f" The camera pans {_DIRECTION_WORDS[d]}." if d else ""


def _answers(spec: SceneSpec, qtype: str, colour: bool, objects: list[ObjectSpec]) -> str:
    width = spec.size[0]
    if qtype == "objects":
        if not objects:
            return "No object is visible."
        return _sentence("the scene shows " + _join([f"{_article(n)} {n}" for n in
                                                     (_noun(o, colour) for o in objects)]))
    if qtype == "motion":
        if not objects:
            return "No motion is visible."
        return _sentence(_join([f"the {_noun(o, colour)} {_motion(o, width)}" for o in objects]))
    if qtype == "count_moving":
        return _sentence(_count(sum(o.direction is not None for o in objects)))
    if qtype == "describe":
        if not objects:
            return "Nothing moves, so no object is visible."
        parts = []
        for o in objects:
            noun = _noun(o, colour)
            parts.append(f"{_article(noun)} {noun} {_motion(o, width)}")
        return _sentence(_join(parts)) + _camera(spec)
    raise AssertionError(qtype)  # make_qa checked it


def make_qa(spec: SceneSpec, qtype: str) -> QA:
    """The question of type ``qtype`` with both answers."""
    if qtype not in QUESTION_TYPES:
        raise ConfigError(f"unknown question type {qtype!r}; known: {', '.join(QUESTION_TYPES)}")
    truth = _answers(spec, qtype, colour=True, objects=_in_shape_order(spec.objects))
    seen = _answers(spec, qtype, colour=False, objects=_visible(spec))
    return QA(qtype, QUESTIONS[qtype], truth, seen)


_MIRRORED_WORDS = {"left": "right", "right": "left"}


def mirrored_answer(text: str) -> str:
    """The answer for the same clip mirrored left to right. The templates above name horizontal
    direction only through the words "left" and "right", and order objects by shape, never by
    position; so swapping those two words is the whole mirror (tested against a mirrored scene)."""
    return re.sub(r"\b(left|right)\b", lambda m: _MIRRORED_WORDS[m.group(1)], text)


_REVERSED_WORDS = {"left": "right", "right": "left", "up": "down", "down": "up", "upward": "downward",
                   "downward": "upward"}


def reversed_answer(text: str) -> str:
    """The answer for the same clip played backwards: every object (and the camera) moves the
    opposite way at the same speed, and still objects stay still. The templates name a direction
    only through the words swapped here (tested against a scene with every motion reversed)."""
    return re.sub(r"\b(left|right|upward|downward|up|down)\b", lambda m: _REVERSED_WORDS[m.group(1)], text)


def all_qa(spec: SceneSpec) -> dict[str, dict[str, str]]:
    """Every question type for a scene, as plain dicts (kept in the dataset's scene dict)."""
    return {q: {k: v for k, v in asdict(make_qa(spec, q)).items() if k != "qtype"}
            for q in QUESTION_TYPES}
