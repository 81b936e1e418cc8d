"""Which attributes a model gets wrong: shapes, colours, directions, speeds, counts, the camera.

Exact match says an answer is wrong, not why. This reads an ``evspec eval --all-questions`` run
(its ``records.jsonl``) on a synthetic dataset and holds each answer against the scene that made
it (the dataset row's ``scene``), attribute by attribute:

- shape: each object the reference names is named in the ``objects`` answer (recall), and shapes
  named that the scene does not hold (false);
- colour (``answer`` only: the event camera sees none): the colour named with a recalled shape
  (given the shape, as are direction and speed);
- motion: for each object the reference names, the phrase the ``motion`` answer gives its shape
  ("stands still" or "moves [slowly |quickly ]DIRECTION"), where that answer names the shape:
  direction (still counts as one) and speed word separately;
- count: the ``count_moving`` answer's number; camera: the pan the ``describe`` answer names, or none;
- direction errors by angle: where an object moves and the answer says it moves, the angle between
  the two directions (0, 45, 90, 135 or 180 degrees): near misses or a reversed time order.

    evspec eval --model demo-videollava --dataset data/heldout --all-questions --out runs/eval-target
    python benchmarks/answer_attributes.py --run runs/eval-target --dataset data/heldout --reference answer
"""

from __future__ import annotations

import argparse
import json
import math
import re
from collections import Counter
from pathlib import Path
from typing import Any

from evspec.data.dataset import load_dataset
from evspec.data.synth.questions import _DIRECTION_WORDS, _motion, _visible
from evspec.data.synth.scenes import COLOURS, DIRECTIONS, SHAPES, SceneSpec

_SHAPE = "|".join(SHAPES)
_COLOUR = "|".join(COLOURS)
_DIRECTION = "|".join(sorted(map(re.escape, _DIRECTION_WORDS.values()), key=len, reverse=True))
_NUMBERS = {"no": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6}
ATTRIBUTES = ("shape", "false_shape", "colour", "direction", "speed", "count", "camera")
ANGLES = (0, 45, 90, 135, 180)
_DIRECTION_OF = {words: name for name, words in _DIRECTION_WORDS.items()}


def angle_between(a: str, b: str) -> int:
    """Degrees between two named directions (a multiple of 45)."""
    (ax, ay), (bx, by) = DIRECTIONS[a], DIRECTIONS[b]
    return round(math.degrees(math.acos(max(-1.0, min(1.0, ax * bx + ay * by)))))


def named_objects(text: str) -> dict[str, str | None]:
    """Shape -> the colour named with it (None: no colour word) in an answer."""
    return {m.group(2): m.group(1) for m in re.finditer(rf"\b(?:({_COLOUR}) )?({_SHAPE})\b", text)}


def motions(text: str) -> dict[str, str]:
    """Shape -> its motion phrase in a motion or describe answer."""
    pattern = rf"\b({_SHAPE}) (stands still|moves (?:slowly |quickly )?(?:{_DIRECTION}))"
    return {m.group(1): m.group(2) for m in re.finditer(pattern, text)}


def _direction(phrase: str) -> str:
    return phrase.replace("slowly ", "").replace("quickly ", "")


def _speed(phrase: str) -> str:
    return "slowly" if "slowly" in phrase else "quickly" if "quickly" in phrase else "still" if "still" in phrase else "plain"


def _count(text: str) -> int | None:
    m = re.search(r"\b(no|one|two|three|four|five|six)\b object", text.lower())
    return _NUMBERS[m.group(1)] if m else None


def _camera(text: str) -> str | None:
    m = re.search(rf"camera pans ({_DIRECTION})", text)
    return m.group(1) if m else None


def judge_clip(scene: SceneSpec, predictions: dict[str, str], reference: str) -> Counter:
    """Counts ``<attribute>_n`` (chances) and ``<attribute>_ok`` (right) for one clip's answers."""
    colour = reference == "answer"
    objects = list(scene.objects) if colour else _visible(scene)
    out: Counter = Counter()
    if "objects" in predictions:
        named = named_objects(predictions["objects"])
        truth = {o.shape: o for o in objects}
        for shape, obj in truth.items():
            out["shape_n"] += 1
            out["shape_ok"] += shape in named
            if colour and shape in named:
                out["colour_n"] += 1
                out["colour_ok"] += named[shape] == obj.colour
        out["false_shape_n"] += len(named)
        out["false_shape_ok"] += sum(s not in truth for s in named)
    if "motion" in predictions:
        said = motions(predictions["motion"])
        for obj in objects:
            if obj.shape in said:  # given the shape: a wrong shape is the shape's error, not the motion's
                truth = _motion(obj, scene.size[0])
                out["direction_n"] += 1
                out["speed_n"] += 1
                out["direction_ok"] += _direction(said[obj.shape]) == _direction(truth)
                out["speed_ok"] += _speed(said[obj.shape]) == _speed(truth)
                said_words = _direction(said[obj.shape]).removeprefix("moves ")
                if obj.direction is not None and said_words in _DIRECTION_OF:
                    out[f"angle_{angle_between(obj.direction, _DIRECTION_OF[said_words])}"] += 1
    if "count_moving" in predictions:
        out["count_n"] += 1
        out["count_ok"] += _count(predictions["count_moving"]) == sum(o.direction is not None for o in objects)
    if "describe" in predictions:
        pan = scene.camera.direction
        out["camera_n"] += 1
        out["camera_ok"] += _camera(predictions["describe"]) == (_DIRECTION_WORDS[pan] if pan else None)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="an evspec eval run folder (records.jsonl), made with --all-questions")
    parser.add_argument("--dataset", required=True, help="the synthetic dataset it answered")
    parser.add_argument("--reference", default="answer", choices=("answer", "event_visible_answer"))
    parser.add_argument("--out", default=None, help="write the counts and rates as JSON here")
    args = parser.parse_args(argv)
    scenes = {s.id: SceneSpec.from_dict(s.scene) for s in load_dataset(args.dataset) if s.scene}
    totals: Counter = Counter()
    clips = 0
    for line in (Path(args.run) / "records.jsonl").read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if record.get("error") or record["id"] not in scenes:
            continue
        predictions = {q["qtype"]: q["prediction"] for q in record["questions"]}
        totals += judge_clip(scenes[record["id"]], predictions, args.reference)
        clips += 1
    rates = {a: totals[f"{a}_ok"] / totals[f"{a}_n"] for a in ATTRIBUTES if totals[f"{a}_n"]}
    print(f"{args.run}: {clips} clips, against {args.reference}")
    print(f"{'attribute':<12} {'right':>6} {'of':>6} {'rate':>6}")
    for a in ATTRIBUTES:
        if totals[f"{a}_n"]:
            print(f"{a:<12} {totals[f'{a}_ok']:>6} {totals[f'{a}_n']:>6} {rates[a]:>6.3f}")
    print("(false_shape: the share of named shapes the scene does not hold, lower is better; the others: right / chances)")
    angles = {a: totals[f"angle_{a}"] for a in ANGLES}
    print("moving objects said to move, by the angle between the true and the said direction: "
          + ", ".join(f"{a} deg {n}" for a, n in angles.items()))
    result = {"run": args.run, "dataset": args.dataset, "reference": args.reference, "clips": clips,
              "counts": dict(totals), "rates": rates, "direction_angles": angles}
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return result


if __name__ == "__main__":
    main()
