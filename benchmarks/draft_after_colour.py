"""Does the event model continue the target's text after a colour word it cannot see?

In speculative decoding the draft continues the target's answer, colour words included, though an
event camera sees no colour. This teacher-forces a draft on each clip's full ``answer`` (what the
target says) and on its ``event_visible_answer`` (what the draft learnt to say), and counts how
often the draft's greedy guess is right at one kind of position in each:

- ``after colour, visible``: the shape word right after a colour word, for an object the event
  camera sees (it moves, or the camera pans): the draft knows the shape, and the question is
  whether the colour word before it throws the draft off;
- ``after colour, still``: the same for an object that stands still under a fixed camera (the
  draft cannot know it; a floor, not a target);
- ``own answer, after article``: a shape word after an article in the event-visible answer (the
  same shapes, in the draft's own kind of text).

    python benchmarks/draft_after_colour.py --draft demo-eventgpt --dataset data/heldout2

Offline and exact: float32 on the CPU, one teacher-forced pass per answer, no timing.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import torch

from evspec.align.extract import _visual, teacher_forced
from evspec.data.dataset import load_dataset
from evspec.models.registry import load_model
from evspec.run.rundir import environment

ARTICLES = ("a", "A", "an", "An", "the", "The")


def count(draft_name: str, dataset: Path) -> Counter[tuple[str, bool]]:
    draft = load_model(draft_name, device="cpu", dtype="float32")
    tokenizer = draft.tokenizer
    counts: Counter[tuple[str, bool]] = Counter()
    with torch.inference_mode():
        for sample in load_dataset(dataset):
            _, _, prompt = _visual(draft, sample)
            n_prompt = prompt.shape[1]
            objects = sample.scene["objects"]
            pans = sample.scene["camera"]["speed"] > 0
            by_colour = {o["colour"]: o for o in objects}
            shapes = {o["shape"] for o in objects}
            for field in ("answer", "event_visible_answer"):
                ids = tokenizer(getattr(sample, field), add_special_tokens=False).input_ids
                logits = draft.language_model.lm_head(teacher_forced(draft, prompt, ids)[-1][0])
                guesses = logits[n_prompt - 1: n_prompt - 1 + len(ids)].argmax(-1).tolist()  # guesses[i] is ids[i]'s
                words = [tokenizer.decode([t]).strip() for t in ids]
                for i in range(1, len(ids)):
                    right = guesses[i] == ids[i]
                    if field == "answer" and words[i - 1] in by_colour:
                        seen = by_colour[words[i - 1]]["speed"] > 0 or pans
                        counts[("after colour, visible" if seen else "after colour, still", right)] += 1
                    elif field == "event_visible_answer" and words[i] in shapes and words[i - 1] in ARTICLES:
                        counts[("own answer, after article", right)] += 1
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--draft", default="demo-eventgpt", help="The event model (a registry name or eventgpt:PATH).")
    parser.add_argument("--dataset", type=Path, required=True, help="A synthetic evspec dataset (rows with a scene).")
    parser.add_argument("--json", action="store_true", help="Print the counts as JSON.")
    args = parser.parse_args()
    counts = count(args.draft, args.dataset)
    kinds = sorted({kind for kind, _ in counts})
    table = {kind: {"right": counts[(kind, True)], "n": counts[(kind, True)] + counts[(kind, False)]} for kind in kinds}
    if args.json:
        print(json.dumps({"draft": args.draft, "dataset": str(args.dataset), "counts": table}, indent=1))
        return
    env = environment("cpu")
    print(f"draft {args.draft} teacher-forced on {args.dataset}; CPU float32, torch {env['torch']}, "
          f"transformers {env['transformers']}")
    for kind, row in table.items():
        print(f"{kind:28s} right {row['right']:4d} / {row['n']:4d} = {row['right'] / max(row['n'], 1):.3f}")


if __name__ == "__main__":
    main()
