"""Speculative decoding on a Vicuna-7B-shaped target (random bf16 weights, built from config, no download).

Three measurements, each next to the target decoding alone in the same run with the same state factory:

  1. the seeds' configuration: a 7B-shaped EventGPT-like draft (its own prompt: 582 event tokens + text)
     for a Video-LLaVA-shaped target prompt (2056 video tokens + text), parallel prefill off and on.
     Random weights: the two models agree on ~nothing, so acceptance is ~0 -- the point is what the
     pairing costs and gains: the prefill overlap, and the draft/verify/prefill split that explains
     the speed (a draft step costs about a target pass: c ~ 1).
  2. a small draft (~0.2B LLaMA) under oracle(alpha), alpha in 0.3/0.5/0.7/0.8/0.9 and gamma 3/5/8:
     realized speedup (decode phase and end to end) next to Leviathan's formula
     (1 - a^(g+1)) / ((1 - a)(g c + 1)) with c MEASURED here, in the loop: the draft's time per drafted
     token / the target's time per verify pass, both as the decoder paid them (synchronized at part
     boundaries). c of one draft step and one target pass timed in isolation is reported next to it.
     Oracle runs are synthetic: acceptance is set by alpha, the draft's passes are real.
  3. parallel prefill overlap: hidden fraction = (draft prefill + target prefill - wall of both) /
     draft prefill, sequential vs concurrent on one GPU (two CUDA streams) and with the draft on a
     second GPU when there is one.

The target's weights are random, then made decisive: the input embeddings are scaled up, every
layer's writes into the residual stream (attention o_proj, MLP down_proj) are scaled down, and the
LM head is tied to a one-row-shifted copy of the embeddings, so greedy decoding walks t -> t+1 with
a logit margin of ~70 (vs ~1 between the top two of 32k random logits). Why: with purely random
weights the top logits nearly tie, and bf16's verify pass (k+1 rows) and single-token decoding
(1 row) run different GEMM kernels, so ties flip and the speculative output leaves the target-alone
output after a few tokens (seen on an H100 with the first version of this script: at token 2, every
configuration) -- which would also void the oracle's answer key. Scaling weights changes no shape
and no kernel, so every pass costs what it costs with real weights. Each part reports whether the
speculative tokens equal the target-alone tokens, and where they first differ.

Fixed-length outputs (EOS off, --max-new-tokens each) so every run does the same work; every figure
is the median of --repeats runs after a discarded warm-up run. --state static uses evspec's static
KV cache with the step compiled (CUDA graphs; plain static on CPU), eager uses transformers' modules
with DynamicCache. --quick runs tiny shapes on CPU to smoke-test the script.

    python benchmarks/gpu_spec.py --state static --out $OUT/spec.json
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import time
import traceback
from collections.abc import Callable
from typing import Any

import torch
import transformers
from transformers import LlamaConfig, LlamaForCausalLM

from evspec.models import tiny
from evspec.runtime.decode import EagerState, LanguageModel
from evspec.spec.engine import speculative_generate, target_only
from evspec.spec.metrics import expected_speedup, expected_tokens_per_pass
from evspec.spec.proposers import DraftModelProposer, OracleProposer
from evspec.spec.vocab import identity_map

# The shapes and the decisive weights are evspec's own (evspec.models.tiny), the ones `evspec spec`
# loads as random-7b-* and random-0.2b-eventgpt: the command line and this script measure one thing.
SHAPE_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads")
VOCAB = tiny.VOCAB_7B
VICUNA_7B = {k: tiny.VICUNA_7B[k] for k in SHAPE_KEYS}
DRAFT_200M = {k: tiny.SMALL_DRAFT_LLAMA[k] for k in SHAPE_KEYS}
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4)
TINY_DRAFT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=4)
# Prompt sizes: Video-LLaVA 8 frames x 257 tokens; EventGPT 5 frames -> 582 tokens.
FULL_PROMPTS = {"target_visual": 2056, "target_text": 40, "draft_visual": 582, "draft_text": 60}
QUICK_PROMPTS = {"target_visual": 48, "target_text": 8, "draft_visual": 16, "draft_text": 8}
EOS: list[int] = []  # fixed-length runs


def sync(*devices: torch.device) -> None:
    for device in devices:
        if device.type == "cuda":
            torch.cuda.synchronize(device)


def build_lm(shape: dict, vocab: int, context: int, device: torch.device, dtype: torch.dtype, seed: int) -> LanguageModel:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab, max_position_embeddings=context, rms_norm_eps=1e-5, **shape)
    with torch.device(device):
        previous = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            model = LlamaForCausalLM(config).eval()
        finally:
            torch.set_default_dtype(previous)
    return LanguageModel.from_causal_lm(model)


def make_decisive(lm: LanguageModel) -> LanguageModel:
    """Wide greedy margins at the same cost (module docstring): t -> t+1 dominates every step;
    random-7b-videollava's transformation, the same function."""
    return tiny.make_decisive(lm, tiny.DECISIVE_SHIFT["random-7b-videollava"])


def first_divergence(a: list[int], b: list[int]) -> int | None:
    """Index of the first differing token (None: identical)."""
    if a == b:
        return None
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def n_params(lm: LanguageModel) -> int:
    return sum(p.numel() for p in lm.body.parameters()) + lm.lm_head.weight.numel()


def prompt_embeds(lm: LanguageModel, n_visual: int, n_text: int, seed: int) -> torch.Tensor:
    """Text embeddings of random ids around a block of random 'visual' features of the same scale."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    ids = torch.randint(3, lm.vocab_size, (1, n_text), generator=gen).to(lm.device)
    with torch.inference_mode():
        text = lm.embed_tokens(ids)
    visual = torch.randn(1, n_visual, lm.hidden_size, generator=gen).to(lm.device, lm.dtype) * float(text.float().std())
    half = n_text // 2
    return torch.cat([text[:, :half], visual, text[:, half:]], dim=1)


class Factories:
    """One state factory per language model (a static cache is built once and reused)."""

    def __init__(self, state: str, device: torch.device) -> None:
        self.state = state
        self.compile = device.type == "cuda"
        self._made: dict[int, Any] = {}

    def __call__(self, lm: LanguageModel, max_length: int) -> Any:
        """``max_length`` is the model's context: the decoder is the one `evspec spec --cache` builds."""
        if self.state == "eager":
            return EagerState
        from evspec.run.shared import state_factory_for

        assert max_length == lm.context_length, (max_length, lm.context_length)
        made = self._made.get(id(lm))
        if made is None or made[0] is not lm:  # an id can be reused after a model is freed
            made = self._made[id(lm)] = (lm, state_factory_for("compiled" if self.compile else "static", lm))
        return made[1]

    def graph_count(self) -> int:
        """CUDA graphs captured so far by all static decoders (a new one means a compilation)."""
        return sum(len(decoder._graphs) for _, decoder in self._made.values())

    def forget(self, lm: LanguageModel) -> None:
        """Drop a freed model's static cache (its memory)."""
        self._made.pop(id(lm), None)


def median(values: list[float]) -> float:
    return statistics.median(values)


def repeat(fn: Callable[[], Any], repeats: int, warm_up: bool = True) -> list[Any]:
    if warm_up:
        fn()  # compilation, allocator, lazy init; discarded
    return [fn() for _ in range(repeats)]


def step_times(lm: LanguageModel, factory: Any, embeds: torch.Tensor, k: int, n: int = 20) -> float:
    """Median seconds of one pass over k tokens at the end of the prompt (prefilled once)."""
    from evspec.runtime.decode import prefill

    device = lm.device
    times = []
    with torch.inference_mode():
        state = prefill(lm, embeds, factory).state
        base = state.length
        ids = list(range(5, 5 + k))
        for i in range(n + 3):
            sync(device)
            start = time.perf_counter()
            state.extend(token_ids=ids)
            sync(device)
            if i >= 3:
                times.append(time.perf_counter() - start)
            state.rollback(base)
    return median(times)


def split_summary(outs: list[Any]) -> dict[str, float]:
    keys = ("target_prefill_s", "draft_prefill_s", "prefill_wall_s", "draft_s", "verify_s", "other_s", "total_s")
    return {k: median([o.timings.as_dict()[k] for o in outs]) for k in keys}


# --------------------------------------------------------------------------- parts


def part_seeds(target, t_embeds, draft, d_embeds, args, factories, t_len, d_len) -> dict[str, Any]:
    """(1) a 7B-shaped EventGPT-like draft for the 7B target, parallel prefill off and on."""
    t_factory, d_factory = factories(target, t_len), factories(draft, d_len)
    base = repeat(lambda: target_only(target, prompt_embeds=t_embeds, eos_token_ids=EOS, max_new_tokens=args.max_new_tokens,
                                      min_new_tokens=args.max_new_tokens, state_factory=t_factory), args.repeats)
    result: dict[str, Any] = {
        "baseline_wall_s": median([b.wall_s for b in base]), "baseline_prefill_s": median([b.prefill_s for b in base]),
        "baseline_decode_s": median([b.decode_s for b in base]),
        "c_draft_step_over_target_pass": step_times(draft, d_factory, d_embeds, 1) / step_times(target, t_factory, t_embeds, args.gamma + 1),
    }
    bridge = identity_map(draft.vocab_size, target.vocab_size)
    for parallel in (False, True):
        proposer = DraftModelProposer(draft, bridge, state_factory=d_factory, prompt=lambda ctx: d_embeds, name="eventgpt-like-7b")
        outs = repeat(lambda proposer=proposer, parallel=parallel: speculative_generate(
            target, proposer, prompt_embeds=t_embeds, eos_token_ids=EOS, gamma=args.gamma, max_new_tokens=args.max_new_tokens,
            min_new_tokens=args.max_new_tokens, parallel_prefill=parallel, state_factory=t_factory), args.repeats)
        split = split_summary(outs)
        result["parallel" if parallel else "sequential"] = {
            "tokens_equal_target_alone": all(o.token_ids == base[0].token_ids for o in outs),
            "first_divergence": first_divergence(outs[-1].token_ids, base[0].token_ids),
            **split, "speedup": result["baseline_wall_s"] / split["total_s"],
            "acceptance_rate": outs[-1].counts.acceptance_rate, "mean_acceptance_length": outs[-1].counts.mean_acceptance_length,
            "prefill_overlap": median([o.timings.prefill_overlap or 0.0 for o in outs]),
        }
    return result


def part_oracle(target, t_embeds, draft, d_embeds, args, factories, t_len, d_len) -> dict[str, Any]:
    """(2) a small draft under oracle(alpha): realized vs formula, c measured."""
    t_factory, d_factory = factories(target, t_len), factories(draft, d_len)
    base = repeat(lambda: target_only(target, prompt_embeds=t_embeds, eos_token_ids=EOS, max_new_tokens=args.max_new_tokens,
                                      min_new_tokens=args.max_new_tokens, state_factory=t_factory), args.repeats)
    reference = base[0].token_ids
    base_wall, base_decode = median([b.wall_s for b in base]), median([b.decode_s for b in base])
    base_step = base_decode / (args.max_new_tokens - 1)  # the target-alone loop's time per token step
    draft_step = step_times(draft, d_factory, d_embeds, 1)
    target_step = step_times(target, t_factory, t_embeds, 1)
    rows = []
    for gamma in args.gammas:
        target_pass = step_times(target, t_factory, t_embeds, gamma + 1)
        c_isolated = draft_step / target_pass
        for alpha in args.alphas:
            # One sample's oracle draws are one random sequence: at 128 tokens (~35 rounds) the
            # tokens per pass scatter by ~8% around their expectation, so the realized speedup is
            # averaged over --oracle-seeds independent draw sequences before meeting the formula.
            per_seed = []
            for seed in range(args.seed, args.seed + args.oracle_seeds):
                proposer = OracleProposer(draft, alpha, seed=seed, state_factory=d_factory, prompt=lambda ctx: d_embeds)
                run = lambda proposer=proposer, gamma=gamma: speculative_generate(  # noqa: E731
                    target, proposer, prompt_embeds=t_embeds, eos_token_ids=EOS, gamma=gamma,
                    max_new_tokens=args.max_new_tokens, min_new_tokens=args.max_new_tokens, state_factory=t_factory,
                    reference_ids=reference)
                # One warm-up a row; a draw sequence that meets a pass shape no earlier one did
                # (e.g. a rare full acceptance) compiles inside its run, and is measured again.
                graphs = factories.graph_count()
                outs = repeat(run, args.repeats, warm_up=seed == args.seed)
                if factories.graph_count() != graphs:
                    outs = repeat(run, args.repeats, warm_up=False)
                per_seed.append({
                    "seed": seed, "tokens_equal_target_alone": all(o.token_ids == reference for o in outs),
                    "first_divergence": first_divergence(outs[-1].token_ids, reference),
                    "acceptance_rate": outs[-1].counts.acceptance_rate,
                    "tokens_per_pass": outs[-1].counts.emitted_tokens / (outs[-1].counts.target_passes + 1),
                    "rounds": outs[-1].counts.target_passes,
                    # the first proposal belongs to the prefill phase; draft_s times the others
                    "loop_drafted_tokens": outs[-1].counts.drafted_tokens - min(gamma, args.max_new_tokens - 1),
                    "decode_speedup": base_decode / median([o.timings.decode_s for o in outs]),
                    "speedup": base_wall / median([o.timings.total_s for o in outs]),
                    **split_summary(outs),
                })
            mean = lambda key: statistics.fmean(p[key] for p in per_seed)  # noqa: E731
            total = lambda key: sum(p[key] for p in per_seed)  # noqa: E731
            # c as the loop paid it. A draft step timed alone pays a host sync per token that the
            # loop does not (seen: 0.36 against 0.24 ms), which would inflate c and flatter the ratio.
            c = (total("draft_s") / total("loop_drafted_tokens")) / (total("verify_s") / total("rounds"))
            rows.append({
                "gamma": gamma, "alpha": alpha, "synthetic": True, "c": c, "c_isolated": c_isolated,
                "oracle_seeds": len(per_seed),
                "tokens_equal_target_alone": all(p["tokens_equal_target_alone"] for p in per_seed),
                "target_pass_s": target_pass, "draft_step_s": draft_step,
                "realized_acceptance_rate": mean("acceptance_rate"),
                "tokens_per_pass": mean("tokens_per_pass"),
                "formula_tokens_per_pass": expected_tokens_per_pass(alpha, gamma),
                "decode_speedup": mean("decode_speedup"),
                "decode_speedup_range": [min(p["decode_speedup"] for p in per_seed), max(p["decode_speedup"] for p in per_seed)],
                "speedup": mean("speedup"),
                "formula_speedup": expected_speedup(alpha, gamma, c),
                "formula_speedup_isolated_c": expected_speedup(alpha, gamma, c_isolated),
                # decode / formula splits into what the draws gave and what a round cost:
                # tokens per round against the formula's, and 1 + gamma c against a round's time
                # (draft + verify + bookkeeping) in target-alone steps.
                "draw_efficiency": statistics.fmean((args.max_new_tokens - 1) / p["rounds"] for p in per_seed)
                / expected_tokens_per_pass(alpha, gamma),
                "cost_efficiency": (1 + gamma * c) / statistics.fmean(
                    (p["draft_s"] + p["verify_s"] + p["other_s"]) / p["rounds"] / base_step for p in per_seed),
                **{key: mean(key) for key in ("target_prefill_s", "draft_prefill_s", "prefill_wall_s", "draft_s",
                                              "verify_s", "other_s", "total_s")},
                "per_seed": per_seed,
            })
            r = rows[-1]
            print(f"  [oracle] gamma {gamma} alpha {alpha:.2f}: decode {r['decode_speedup']:.2f}x "
                  f"(seeds {r['decode_speedup_range'][0]:.2f}-{r['decode_speedup_range'][1]:.2f}), end to end "
                  f"{r['speedup']:.2f}x, formula {r['formula_speedup']:.2f}x (c {c:.3f} in the loop), decode/formula "
                  f"{r['decode_speedup'] / r['formula_speedup']:.3f}; with c {c_isolated:.3f} timed in isolation "
                  f"{r['decode_speedup'] / r['formula_speedup_isolated_c']:.3f}; same tokens "
                  f"{r['tokens_equal_target_alone']}", flush=True)
    return {"baseline_wall_s": base_wall, "baseline_decode_s": base_decode, "baseline_step_s": base_step, "target_step_s": target_step,
            "draft_step_s": draft_step, "rows": rows}


def part_overlap(target, t_embeds, draft, d_embeds, args, factories, t_len, d_len, label: str) -> dict[str, Any]:
    """(3) prefill phase only (prefill + the draft's first proposal): sequential vs concurrent."""
    t_factory, d_factory = factories(target, t_len), factories(draft, d_len)
    bridge = identity_map(draft.vocab_size, target.vocab_size)
    proposer = DraftModelProposer(draft, bridge, state_factory=d_factory, prompt=lambda ctx: d_embeds)
    result: dict[str, Any] = {"draft": label, "draft_device": str(draft.device)}
    for parallel in (False, True):
        outs = repeat(lambda parallel=parallel: speculative_generate(
            target, proposer, prompt_embeds=t_embeds, eos_token_ids=EOS, gamma=args.gamma, max_new_tokens=1,
            parallel_prefill=parallel, state_factory=t_factory), args.repeats)
        result["parallel" if parallel else "sequential"] = {
            "target_prefill_s": median([o.timings.target_prefill_s for o in outs]),
            "draft_prefill_s": median([o.timings.draft_prefill_s for o in outs]),
            "prefill_wall_s": median([o.timings.prefill_wall_s for o in outs]),
            "hidden_fraction": median([o.timings.prefill_overlap or 0.0 for o in outs]),
        }
    # What the user gets: wall time of the whole prefill phase saved by running both at once.
    result["wall_saved_s"] = result["sequential"]["prefill_wall_s"] - result["parallel"]["prefill_wall_s"]
    # The share of the draft's own (sequential, uncontended) prefill that parallel prefill hid.
    result["hidden_share_of_draft_prefill"] = result["wall_saved_s"] / result["sequential"]["draft_prefill_s"]
    return result


def guarded(name: str, results: dict[str, Any], fn: Callable[[], Any], out: str | None) -> None:
    """Run one part; a failure is recorded (with its traceback) and the other parts still run.
    The results so far are written after every part, so a run cut short keeps what it measured."""
    try:
        results[name] = fn()
    except Exception as exc:  # noqa: BLE001 - a benchmark part failing must not lose the others
        results[name] = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
        print(f"[{name}] FAILED: {type(exc).__name__}: {exc}")
    if out:
        with open(out, "w") as handle:
            json.dump(results, handle, indent=2)


def release() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny shapes (on CPU unless --device): a smoke test of this script")
    parser.add_argument("--device", default=None, help="default: cuda when present (cpu with --quick)")
    parser.add_argument("--dtype", choices=("bfloat16", "float16", "float32"), default=None,
                        help="default: bfloat16 on CUDA, float32 on CPU")
    parser.add_argument("--state", choices=("static", "eager"), default="static")
    parser.add_argument("--parts", default="1,2,3", help="which measurements, e.g. 2 or 1,3")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--gamma", type=int, default=5, help="gamma of parts 1 and 3")
    parser.add_argument("--gammas", default="3,5,8")
    parser.add_argument("--alphas", default="0.3,0.5,0.7,0.8,0.9")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--oracle-seeds", type=int, default=1,
                        help="oracle draw sequences per (gamma, alpha); part 2 averages the realized speedup over them")
    parser.add_argument("--draft-layers", type=int, default=12,
                        help="layers of the small draft (1024 wide): 12 ~ 0.21B, 4 ~ 0.12B with the 32k vocabulary")
    parser.add_argument("--out", default=None, help="write all numbers as JSON here")
    args = parser.parse_args()
    args.gammas = [int(g) for g in args.gammas.split(",")]
    args.alphas = [float(a) for a in args.alphas.split(",")]
    parts = {int(p) for p in args.parts.split(",")}

    if args.device is not None:
        device = torch.device(args.device)
    else:
        device = torch.device("cpu" if args.quick or not torch.cuda.is_available() else "cuda")
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.float32 if device.type == "cpu" else torch.bfloat16)
    target_shape, big_draft, small_draft = (
        (TINY, TINY, TINY_DRAFT) if args.quick else (VICUNA_7B, VICUNA_7B, {**DRAFT_200M, "num_hidden_layers": args.draft_layers})
    )
    vocab = 512 if args.quick else VOCAB
    sizes = QUICK_PROMPTS if args.quick else FULL_PROMPTS
    # Both models at the context `evspec spec` gives random-7b-* and random-0.2b-eventgpt: the same
    # static cache (4096 slots), so the same compiled graphs as the command line's.
    t_len = d_len = tiny.VICUNA_7B["max_position_embeddings"]
    if sizes["target_visual"] + sizes["target_text"] + args.max_new_tokens + max(args.gammas + [args.gamma]) + 8 > t_len:
        parser.error(f"--max-new-tokens leaves no room in the {t_len}-token context")
    two_gpus = device.type == "cuda" and torch.cuda.device_count() >= 2
    factories = Factories(args.state, device)

    results: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "gpus": torch.cuda.device_count() if device.type == "cuda" else 0,
        "dtype": str(dtype), "state": args.state, "compiled": args.state == "static" and device.type == "cuda",
        "seed": args.seed, "oracle_seeds": args.oracle_seeds, "repeats": args.repeats, "max_new_tokens": args.max_new_tokens, "prompts": sizes,
        "shapes": {"target": target_shape, "draft_7b": big_draft, "draft_small": small_draft, "vocab": vocab},
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "cuda": torch.version.cuda, "python": platform.python_version()},
    }
    print(f"device {results['device']} x{results['gpus']}  dtype {dtype}  state {args.state}  torch {torch.__version__}  "
          f"transformers {transformers.__version__}  seed {args.seed}  repeats {args.repeats} (medians)")
    target = make_decisive(build_lm(target_shape, vocab, t_len, device, dtype, args.seed))
    t_embeds = prompt_embeds(target, sizes["target_visual"], sizes["target_text"], args.seed)
    results["params"] = {"target": n_params(target)}
    print(f"target {n_params(target) / 1e9:.2f}B params, prompt {t_embeds.shape[1]} tokens; max_new_tokens {args.max_new_tokens}")

    if 1 in parts or 3 in parts:
        draft = build_lm(big_draft, vocab, d_len, device, dtype, args.seed + 1)
        d_embeds = prompt_embeds(draft, sizes["draft_visual"], sizes["draft_text"], args.seed + 1)
        results["params"]["draft_7b"] = n_params(draft)
        if 1 in parts:
            guarded("seeds_config", results, lambda: part_seeds(target, t_embeds, draft, d_embeds, args, factories, t_len, d_len), args.out)
        if 3 in parts:
            guarded("overlap_1gpu_7b_draft", results, lambda: part_overlap(
                target, t_embeds, draft, d_embeds, args, factories, t_len, d_len, "7B-shaped, same GPU"), args.out)
        factories.forget(draft)
        del draft, d_embeds
        release()
        if 3 in parts and two_gpus:
            draft = build_lm(big_draft, vocab, d_len, torch.device("cuda", 1), dtype, args.seed + 1)
            d_embeds = prompt_embeds(draft, sizes["draft_visual"], sizes["draft_text"], args.seed + 1)
            guarded("overlap_2gpu_7b_draft", results, lambda: part_overlap(
                target, t_embeds, draft, d_embeds, args, factories, t_len, d_len, "7B-shaped, second GPU"), args.out)
            factories.forget(draft)
            del draft, d_embeds
            release()
    if 2 in parts or 3 in parts:
        draft = build_lm(small_draft, vocab, d_len, device, dtype, args.seed + 2)
        d_embeds = prompt_embeds(draft, sizes["draft_visual"], sizes["draft_text"], args.seed + 2)
        results["params"]["draft_small"] = n_params(draft)
        if 2 in parts:
            guarded("oracle_grid", results, lambda: part_oracle(target, t_embeds, draft, d_embeds, args, factories, t_len, d_len), args.out)
        if 3 in parts:
            guarded("overlap_1gpu_small_draft", results, lambda: part_overlap(
                target, t_embeds, draft, d_embeds, args, factories, t_len, d_len, "small, same GPU"), args.out)

    report(results)


def report(results: dict[str, Any]) -> None:
    seeds = results.get("seeds_config")
    if seeds and "error" not in seeds:
        print(f"\n(1) seeds' configuration: 7B-shaped draft, gamma from --gamma; target alone {seeds['baseline_wall_s'] * 1e3:.1f} ms "
              f"(prefill {seeds['baseline_prefill_s'] * 1e3:.1f}, decode {seeds['baseline_decode_s'] * 1e3:.1f}); "
              f"c = {seeds['c_draft_step_over_target_pass']:.2f}")
        for mode in ("sequential", "parallel"):
            s = seeds[mode]
            print(f"  {mode:10s} wall {s['total_s'] * 1e3:8.1f} ms  speedup {s['speedup']:.2f}x  acceptance {s['acceptance_rate']:.3f}  "
                  f"prefill target {s['target_prefill_s'] * 1e3:.1f} / draft {s['draft_prefill_s'] * 1e3:.1f} / wall "
                  f"{s['prefill_wall_s'] * 1e3:.1f} ms (hidden {s['prefill_overlap']:.2f})  draft {s['draft_s'] * 1e3:.1f}  "
                  f"verify {s['verify_s'] * 1e3:.1f} ms  tokens == target alone: {s['tokens_equal_target_alone']}")
    grid = results.get("oracle_grid")
    if grid and "error" not in grid:
        print(f"\n(2) oracle(alpha) [synthetic], small draft: target step {grid['target_step_s'] * 1e3:.2f} ms, "
              f"draft step {grid['draft_step_s'] * 1e3:.2f} ms; target alone {grid['baseline_wall_s'] * 1e3:.1f} ms")
        print(f"  {'gamma':>5s} {'alpha':>5s} {'acc':>5s} {'c':>5s} {'c iso':>5s} {'tok/pass':>8s} {'formula':>7s} "
              f"{'decode x':>8s} {'e2e x':>6s} {'formula x':>9s} {'draws':>5s} {'cost':>5s} {'same tokens':>11s}")
        for r in grid["rows"]:
            acc = r["realized_acceptance_rate"]
            print(f"  {r['gamma']:5d} {r['alpha']:5.2f} {acc if acc is not None else float('nan'):5.2f} {r['c']:5.3f} "
                  f"{r['c_isolated']:5.3f} "
                  f"{r['tokens_per_pass']:8.2f} {r['formula_tokens_per_pass']:7.2f} {r['decode_speedup']:8.2f} "
                  f"{r['speedup']:6.2f} {r['formula_speedup']:9.2f} {r['draw_efficiency']:5.2f} {r['cost_efficiency']:5.2f} "
                  f"{r['tokens_equal_target_alone']!s:>11s}")
        print("  c: draft time per drafted token / verify time per pass, in the loop (c iso: one draft step / one\n"
              "  target pass, each timed alone). draws: decode tokens per round / the formula's tokens per pass;\n"
              "  cost: (1 + gamma c) / a round's time in target-alone steps. Their product is about decode x / formula x.")
    for key in ("overlap_1gpu_7b_draft", "overlap_2gpu_7b_draft", "overlap_1gpu_small_draft"):
        o = results.get(key)
        if o and "error" not in o:
            print(f"\n(3) prefill overlap, {o['draft']} ({o['draft_device']})")
            for mode in ("sequential", "parallel"):
                s = o[mode]
                print(f"  {mode:10s} target {s['target_prefill_s'] * 1e3:7.1f} ms  draft {s['draft_prefill_s'] * 1e3:7.1f} ms  "
                      f"wall {s['prefill_wall_s'] * 1e3:7.1f} ms  hidden fraction {s['hidden_fraction']:.2f}")
            print(f"  wall saved by running them together: {o['wall_saved_s'] * 1e3:.1f} ms = "
                  f"{o['hidden_share_of_draft_prefill']:.0%} of the draft's own prefill")
    for key, value in results.items():
        if isinstance(value, dict) and "error" in value:
            print(f"\n[{key}] failed: {value['error']}")


if __name__ == "__main__":
    main()
