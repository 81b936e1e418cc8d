"""Each alignment drafter's cost per drafted token at 7B shapes (random weights), against the
target's verify pass, and the speedup projected from it at the acceptance measured on the demo pair.

What a drafted token costs (issue 14, section 5):
  - the head's own step: ``Head.draft_step`` for one token after --context positions (the heads
    see the answer's positions), captured once in a CUDA graph and replayed: the static path, no
    Python and no launch per kernel. The eager step (one launch per kernel) is reported beside it.
  - drafters that read the event model (the event model itself, TokenAdapter, L1-L5, L5F) also
    step a 7B EventGPT language model once per drafted token: evspec's static compiled decoder
    (what ``evspec spec --cache compiled`` builds) for one token at the end of EventGPT's prompt
    (582 event tokens + 60 text tokens).
  - the target (Vicuna-7B shape) verifies gamma + 1 tokens in one pass of the same decoder at the
    end of Video-LLaVA's prompt (2056 video tokens + 40 text); one token costs its decode step.

Shapes: the target and the event model are LLaMA-7B (evspec.models.tiny.VICUNA_7B, vocabulary
32000, the heads reuse the target's embedding and LM head); the heads are 4096 wide with 32 heads
and a LLaMA-7B FFN (11008: EAGLE's head is one LLaMA layer); EC conditions on the event model's
582 projected features, VS on the target's 2056 visual tokens (both 4096 wide, compressed once at
prefill: ``start``, timed but paid once per answer, not per token).

c = (head step + event-model step where the drafter reads it) / the target's verify pass.
Projection (labelled so everywhere): speedup = MAL x T1 / (gamma x t_draft + T_verify), with MAL the
mean acceptance length (bonus token included) given by --mal, measured live on the demo pair, T1
the target's decode step, t_draft the drafter's cost per token and T_verify the verify pass.
Random weights: costs do not depend on them; acceptance here would be meaningless, so none is run.

    python benchmarks/gpu_head_cost.py --mal B1=3.75,VS=3.53 --out $OUT/heads.json
    python benchmarks/gpu_head_cost.py --costs heads.json --mal B1=3.9 --out heads-new.json   # re-project, no GPU
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
from pathlib import Path
from typing import Any

import torch
import transformers
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_spec import FULL_PROMPTS, QUICK_PROMPTS, TINY, VICUNA_7B, VOCAB, Factories, build_lm, prompt_embeds, step_times  # noqa: E402

from evspec.align.heads import ADAPTERS, HeadConfig, HeadInputs, build_adapter  # noqa: E402
from evspec.models import tiny  # noqa: E402

EVENT_VISUAL_TOKENS = 582
EVENT_MODEL = "event-model"  # the event model drafting its own tokens


def reads_event_model(name: str) -> bool:
    """Whether the drafter steps the event model's language model once per drafted token."""
    return name == EVENT_MODEL or bool({"draft_hidden", "draft_logits"} & ADAPTERS[name].reads)


def head_config(hidden: int, vocab: int, heads: int, ffn: int, visual: int) -> HeadConfig:
    return HeadConfig(hidden_size=hidden, vocab_size=vocab, draft_hidden_size=hidden, draft_vocab_size=vocab,
                      visual_size=visual, num_heads=heads, ffn_size=ffn)


def _inputs(head: nn.Module, k: int, hidden: int, vocab: int, device: torch.device, dtype: torch.dtype,
            gen: torch.Generator) -> HeadInputs:
    """Random inputs for k positions, with the fields this head reads."""
    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen).to(device, dtype)

    reads = head.reads
    return HeadInputs(
        torch.randint(3, vocab, (1, k), generator=gen).to(device),
        rand(1, k, hidden) if "previous_features" in reads else None,
        rand(1, k, hidden) if "draft_hidden" in reads else None,
        rand(1, k, vocab) if "draft_logits" in reads else None,
    )


def _cuda_ms(fn: Any, device: torch.device, inner: int, repeats: int) -> float:
    """Median over ``repeats`` of the mean time of ``inner`` back-to-back calls, by CUDA events."""
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(inner):
            fn()
        end.record()
        torch.cuda.synchronize(device)
        times.append(start.elapsed_time(end) / inner)
    return statistics.median(times)


def _cpu_ms(fn: Any, inner: int, repeats: int) -> float:
    import time

    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(inner):
            fn()
        times.append((time.perf_counter() - start) * 1000 / inner)
    return statistics.median(times)


def head_step_cost(name: str, config: HeadConfig, embedding: nn.Embedding, lm_head: nn.Linear, context: int,
                   visual_tokens: int, device: torch.device, dtype: torch.dtype, seed: int, repeats: int
                   ) -> dict[str, Any]:
    """One drafted token's head step after ``context`` positions: eager and CUDA-graph replay (ms)."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    torch.manual_seed(seed)
    head = build_adapter(name, config, embedding, lm_head).to(device, dtype).eval()
    params = sum(p.numel() for p in head.parameters())
    result: dict[str, Any] = {"params": params}
    with torch.inference_mode():
        visual = torch.randn(1, visual_tokens, config.visual_size, generator=gen).to(device, dtype) if "visual" in head.reads else None
        start_fn = (lambda: head.start(visual)) if visual is not None else head.start
        cache = start_fn()
        if visual is not None:
            result["start_ms"] = (_cuda_ms(start_fn, device, 5, repeats) if device.type == "cuda"
                                  else _cpu_ms(start_fn, 2, repeats))
        cache = head.extend(cache, _inputs(head, context, config.hidden_size, config.vocab_size, device, dtype, gen))[1]
        one = _inputs(head, 1, config.hidden_size, config.vocab_size, device, dtype, gen)
        kwargs = {"previous_feature": None if one.previous_features is None else one.previous_features[:, 0],
                  "draft_hidden": None if one.draft_hidden is None else one.draft_hidden[:, 0],
                  "draft_logits": None if one.draft_logits is None else one.draft_logits[:, 0]}
        token = one.token_ids[:, 0]

        def step() -> torch.Tensor:  # what drafting one token asks of the head: its logits' argmax
            return head.draft_step(cache, token, **kwargs)[0].logits.argmax(-1)

        if device.type != "cuda":
            step()
            result["eager_ms"] = _cpu_ms(step, 5, repeats)
            return result
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(3):
                step()
        torch.cuda.current_stream(device).wait_stream(side)
        result["eager_ms"] = _cuda_ms(step, device, 20, repeats)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            step()
        result["graph_ms"] = _cuda_ms(graph.replay, device, 50, repeats)
        del graph
    return result


def parse_mal(text: str) -> dict[str, float]:
    out = {}
    for item in filter(None, text.split(",")):
        name, _, value = item.partition("=")
        out[name.strip()] = float(value)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny shapes on the CPU: a smoke test of this script")
    parser.add_argument("--gamma", type=int, default=5)
    parser.add_argument("--context", type=int, default=64, help="positions in the head's cache before the drafted token")
    parser.add_argument("--adapters", default=",".join(ADAPTERS))
    parser.add_argument("--mal", default="", help="NAME=MAL,... measured live on the demo pair (names: the adapters and "
                        "event-model): the projection's acceptance")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--costs", default=None, help="a JSON this script wrote: project from its measured costs at "
                        "--mal, measuring nothing (costs do not depend on acceptance)")
    parser.add_argument("--out", default=None, help="write every number as JSON here")
    args = parser.parse_args(argv)
    if args.costs:
        results = json.loads(Path(args.costs).read_text(encoding="utf-8"))
        print(f"costs measured on {results['device']} ({results['dtype']}, torch {results['versions']['torch']}, "
              f"gamma {results['gamma']}), read from {args.costs}")
        return _project(results, parse_mal(args.mal), args.out)
    device = torch.device("cpu" if args.quick or not torch.cuda.is_available() else "cuda")
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    shape, vocab, prompts = (TINY, 512, QUICK_PROMPTS) if args.quick else (VICUNA_7B, VOCAB, FULL_PROMPTS)
    hidden, n_heads = shape["hidden_size"], shape["num_attention_heads"]
    ffn = shape["intermediate_size"]
    mal = parse_mal(args.mal)
    context_len = tiny.VICUNA_7B["max_position_embeddings"]
    results: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "dtype": str(dtype), "gamma": args.gamma, "head_context": args.context, "seed": args.seed, "repeats": args.repeats,
        "shapes": {"lm": shape, "vocab": vocab, "head_ffn": ffn, "prompts": prompts},
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "cuda": torch.version.cuda,
                     "python": platform.python_version()},
    }
    print(f"device {results['device']}  dtype {dtype}  torch {torch.__version__}  transformers {transformers.__version__}  "
          f"gamma {args.gamma}  head context {args.context}  seed {args.seed}  medians of {args.repeats}")

    # The target's decode step and verify pass; the event model's step (same LLaMA-7B shape, its prompt).
    lm = build_lm(shape, vocab, context_len, device, dtype, args.seed)
    factory = Factories("static", device)(lm, context_len)
    t_embeds = prompt_embeds(lm, prompts["target_visual"], prompts["target_text"], args.seed)
    d_embeds = prompt_embeds(lm, prompts["draft_visual"], prompts["draft_text"], args.seed + 1)
    target_step = step_times(lm, factory, t_embeds, 1) * 1000
    verify = step_times(lm, factory, t_embeds, args.gamma + 1) * 1000
    event_step = step_times(lm, factory, d_embeds, 1) * 1000
    results.update(target_step_ms=target_step, verify_pass_ms=verify, event_model_step_ms=event_step,
                   static_path="evspec static KV cache, step compiled with CUDA graphs" if device.type == "cuda" else "static, eager (CPU)")
    print(f"target decode step {target_step:.3f} ms, verify pass ({args.gamma + 1} tokens) {verify:.3f} ms, "
          f"event-model step {event_step:.3f} ms (static compiled decoder)")
    embedding, lm_head = lm.embed_tokens, lm.lm_head
    del factory
    rows: dict[str, dict[str, Any]] = {EVENT_MODEL: {"params": None, "head_ms": 0.0}}
    results["drafters"] = rows
    config = head_config(hidden, vocab, n_heads, ffn, hidden)
    for name in filter(None, args.adapters.split(",")):
        cost = head_step_cost(name, config, embedding, lm_head, args.context,
                              EVENT_VISUAL_TOKENS if name == "EC" else prompts["target_visual"],
                              device, dtype, args.seed, args.repeats)
        cost["head_ms"] = cost.get("graph_ms", cost["eager_ms"])
        rows[name] = cost
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return _project(results, mal, args.out)


def _project(results: dict[str, Any], mal: dict[str, float], out: str | None) -> dict[str, Any]:
    """Each drafter's cost per token, c and (where ``mal`` names it) the projected speedup; printed,
    stored in ``results`` and written to ``out``."""
    rows, gamma = results["drafters"], results["gamma"]
    target_step, verify, event_step = results["target_step_ms"], results["verify_pass_ms"], results["event_model_step_ms"]
    print(f"\n{'drafter':<13} {'params':>9} {'head eager':>11} {'head graph':>11} {'+ event model':>14} {'c':>7} "
          f"{'MAL':>5} {'projected':>10}")
    for name, row in rows.items():
        per_token = row["head_ms"] + (event_step if reads_event_model(name) else 0.0)
        row["draft_ms_per_token"] = per_token
        row["c"] = per_token / verify
        row.pop("mal", None), row.pop("projected_speedup", None)  # a re-projection keeps no earlier acceptance
        if name in mal:
            row["mal"] = mal[name]
            row["projected_speedup"] = mal[name] * target_step / (gamma * per_token + verify)
        params = "-" if row["params"] is None else f"{row['params'] / 1e6:.1f}M"
        eager = f"{row['eager_ms']:.3f}" if "eager_ms" in row else "-"
        graph = f"{row['graph_ms']:.3f}" if "graph_ms" in row else "-"
        plus = f"{event_step:.3f}" if reads_event_model(name) else "-"
        projected = f"{row['projected_speedup']:.2f}x" if "projected_speedup" in row else "-"
        print(f"{name:<13} {params:>9} {eager:>11} {graph:>11} {plus:>14} {row['c']:>7.3f} "
              f"{row.get('mal', float('nan')):>5.2f} {projected:>10}")
    print("\nprojected = MAL x target step / (gamma x draft cost per token + verify pass): a projection from "
          "costs measured here and acceptance measured on the demo pair, not a measured speedup")
    if out:
        Path(out).write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    return results


if __name__ == "__main__":
    main()
