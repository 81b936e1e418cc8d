"""One ``evspec train`` step, eager against ``--compile`` (each LLaMA and CLIP block compiled), as the
loop runs it: bf16 autocast and fused AdamW on CUDA, float32 on the CPU. Prints the median step
time of each and their ratio, measured in the same process, after warm-up (the compiled model's
first steps include compiling them; their time is printed apart).

    evspec data synth data/steps --clips 200 --seed 5 --size 160x120
    python benchmarks/train_step_compile.py --dataset data/steps --device cuda --batch-size 384 --mirror --reverse

Each timed step ends with ``torch.cuda.synchronize()`` on CUDA. Same seed, same batches for both.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from evspec.training.loop import LoopConfig, _autocast, _optimizer, batch_indices
from evspec.training.vlm import VLMTrainConfig, compile_blocks, prepare_task


def time_steps(config: VLMTrainConfig, device: torch.device, *, compiled: bool, steps: int, warmup: int,
               workers: int) -> dict[str, Any]:
    """Median seconds of training steps ``warmup .. steps - 1``; the warm-up's total apart."""
    batch = config.loop.batch_size
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "training").mkdir()
        torch.manual_seed(config.loop.seed)
        task = prepare_task(config, Path(tmp), device, workers=workers)
        module = task.module()
        module.train()
        blocks = compile_blocks(module) if compiled else 0
        optimizer = _optimizer(module, config.loop, fused=device.type == "cuda")
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        seconds, losses = [], []
        for step in range(steps):
            sync()
            began = time.perf_counter()
            with _autocast(device):
                loss, _ = task.loss(batch_indices(task.n_examples(), batch, config.loop.seed, step))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
            optimizer.step()
            sync()
            seconds.append(time.perf_counter() - began)
            losses.append(loss.item())
    return {"compiled_blocks": blocks, "step_s": statistics.median(seconds[warmup:]),
            "warmup_s": sum(seconds[:warmup]), "losses": [losses[0], losses[-1]]}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True, help="an evspec clip dataset with answers")
    parser.add_argument("--families", default="videollava:demo-target,eventgpt:demo-draft",
                        help="family:size pairs, comma-separated")
    parser.add_argument("--batch-size", type=int, default=384)
    parser.add_argument("--steps", type=int, default=18)
    parser.add_argument("--warmup", type=int, default=6)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--workers", type=int, default=1, help="processes that read the clips")
    parser.add_argument("--mirror", action="store_true")
    parser.add_argument("--reverse", action="store_true")
    args = parser.parse_args(argv)
    if args.warmup >= args.steps:
        parser.error("--warmup must be below --steps")
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    import transformers

    print(f"{name}; torch {torch.__version__}, transformers {transformers.__version__}; "
          f"{'bf16 autocast' if device.type == 'cuda' else 'float32'}; batch {args.batch_size}; "
          f"median of steps {args.warmup}-{args.steps - 1}; seed 0")
    results: dict[str, Any] = {}
    for pair in args.families.split(","):
        family, size = pair.split(":")
        config = VLMTrainConfig(family=family, dataset=str(Path(args.dataset).resolve()), size=size,
                                eval_questions=0, mirror=args.mirror, reverse=args.reverse, event_canvas="sensor",
                                pixel_cache_dtype="float16" if device.type == "cuda" else "float32",
                                loop=LoopConfig(steps=args.steps, batch_size=args.batch_size))
        eager = time_steps(config, device, compiled=False, steps=args.steps, warmup=args.warmup, workers=args.workers)
        compiled = time_steps(config, device, compiled=True, steps=args.steps, warmup=args.warmup, workers=args.workers)
        results[pair] = {"eager": eager, "compiled": compiled, "speedup": eager["step_s"] / compiled["step_s"]}
        print(f"{family} {size}: eager {eager['step_s'] * 1e3:.1f} ms a step, compiled ({compiled['compiled_blocks']} "
              f"blocks) {compiled['step_s'] * 1e3:.1f} ms: {results[pair]['speedup']:.2f}x; warm-up "
              f"{eager['warmup_s']:.1f} s against {compiled['warmup_s']:.1f} s (compiling); loss first/last "
              f"{eager['losses'][0]:.3f}/{eager['losses'][1]:.3f} against "
              f"{compiled['losses'][0]:.3f}/{compiled['losses'][1]:.3f}")
    return results


if __name__ == "__main__":
    main()
