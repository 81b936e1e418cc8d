"""How many operations one ``evspec train`` step dispatches, at two batch sizes: the fixed part and
the part per question. On a GPU each operation costs host time whether or not the arithmetic is
small, so a step whose fixed part is large is bound by dispatch, not by the model.

Counts every ``aten::`` call torch.profiler records in one training step (forward, backward, clip,
AdamW) after one warm-up step, on the CPU in float32 (no autocast: a CUDA step adds its casts).

    evspec data synth data/ops --clips 24 --seed 5 --size 160x120
    python benchmarks/train_step_ops.py --dataset data/ops --family videollava --size demo-target --batches 16,48
"""

from __future__ import annotations

import argparse
import platform
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

from evspec.training.loop import LoopConfig, _optimizer, batch_indices
from evspec.training.vlm import VLMTrainConfig, prepare_task


def aten_calls(task: Any, optimizer: torch.optim.Optimizer, batch: int, step: int) -> int:
    """``aten::`` calls in one training step of ``batch`` questions."""
    module = task.module()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        loss, _ = task.loss(batch_indices(task.n_examples(), batch, 0, step))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        optimizer.step()
    return sum(e.count for e in prof.key_averages() if e.key.startswith("aten::"))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True, help="an evspec clip dataset with answers")
    parser.add_argument("--family", default="videollava", choices=("videollava", "eventgpt", "llava"))
    parser.add_argument("--size", default="demo-target")
    parser.add_argument("--batches", default="16,48", help="two batch sizes, comma-separated")
    parser.add_argument("--mirror", action="store_true")
    parser.add_argument("--reverse", action="store_true")
    args = parser.parse_args(argv)
    small, large = (int(b) for b in args.batches.split(","))
    config = VLMTrainConfig(family=args.family, dataset=str(Path(args.dataset).resolve()), size=args.size,
                            eval_questions=0, mirror=args.mirror, reverse=args.reverse,
                            event_canvas="sensor",
                            loop=LoopConfig(steps=10, batch_size=small))
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "training").mkdir()
        task = prepare_task(config, Path(tmp), torch.device("cpu"))
        task.module().train()
        optimizer = _optimizer(task.module(), config.loop)
        aten_calls(task, optimizer, small, 0)  # warm-up
        counts = {b: aten_calls(task, optimizer, b, i + 1) for i, b in enumerate((small, large))}
    per_question = (counts[large] - counts[small]) / (large - small)
    fixed = counts[small] - per_question * small
    print(f"{args.family} at {args.size}, CPU float32, torch {torch.__version__}, {platform.processor() or 'cpu'}")
    for b, n in counts.items():
        print(f"batch {b}: {n} aten calls in one training step")
    print(f"fixed: about {fixed:.0f} a step; per question: about {per_question:.1f}")
    return {"counts": counts, "fixed": fixed, "per_question": per_question}


if __name__ == "__main__":
    main()
