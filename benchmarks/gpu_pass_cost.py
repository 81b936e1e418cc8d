"""What one target pass costs as its query length grows: the verify pass of speculative decoding.

Leviathan's formula assumes a pass over gamma+1 tokens costs what a one-token step costs. This
measures, on a Vicuna-7B-shaped LLaMA (random bf16 weights) after a prompt of --prompt tokens,
the time of one pass over k = 1, 2, 4, 8, 16 tokens through evspec's static KV cache:

  * ``eager``:    the static cache's forward, uncompiled (PyTorch's own kernels: cuBLAS GEMMs);
  * ``compiled``: the same forward compiled by inductor and replayed as a CUDA graph (what the
                  speculative engine runs);
  * ``unfused``:  compiled and graph-replayed, but with separate Q/K/V and gate/up matrices for
                  passes over several tokens (``fuse_projections_in_place=False``, the path before fusion);
  * ``cublas``:   compiled and graph-replayed, with the fused matrices but without the few-row
                  kernels (``few_row_kernels=False``): inductor's norms and pointwise kernels
                  around cuBLAS GEMMs, the path before ``evspec.runtime.few_rows``;
  * ``autotuned`` (--autotune K,...): compiled with ``mode="max-autotune-no-cudagraphs"`` (inductor
                  benchmarks Triton GEMM templates against cuBLAS for these shapes), graph-replayed.

``--attention`` / ``--step-attention`` (written-out, split-kv, flex) time other attentions in
passes over several tokens / in the one-token step, with the largest logit gap to evspec's; and the top GPU kernels of one compiled pass at k=1 and k=8 (torch.profiler), to show where a
longer pass spends its extra time. The one-token step's time moves between runs; two options
look at why. ``--recompile N`` compiles the step N more times from scratch (dynamo reset,
inductor caches off), with SDPA and with written-out attention: its reductions' configs are picked
by timing, so each compilation may pick others. ``--recompile-cached N`` builds it N more times
from inductor's caches, i.e. with the same kernels: what moves then is not the compilation.
Each time is the median of --repeats CUDA-event-timed passes
after warm-up; the cache is rolled back after every pass, so every pass sees the same length.

    python benchmarks/gpu_pass_cost.py --out $OUT/pass_cost.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from typing import Any

import torch
import torch.nn.functional as F
import transformers
from transformers import LlamaConfig, LlamaForCausalLM

from evspec.models.tiny import VICUNA_7B as VICUNA_7B_BODY
from evspec.models.tiny import VOCAB_7B
from evspec.runtime.decode import LanguageModel, prefill
from evspec.runtime.attention import split_kv_attention
from evspec.runtime.static import StaticDecoder, _apply_rotary

VICUNA_7B = {**VICUNA_7B_BODY, "vocab_size": VOCAB_7B}  # the shape evspec's random-7b-* models use


def build(device: torch.device, seed: int) -> LanguageModel:
    torch.manual_seed(seed)
    with torch.device(device):
        model = LlamaForCausalLM(LlamaConfig(**VICUNA_7B)).to(torch.bfloat16).eval()
    return LanguageModel.from_causal_lm(model)


def pass_ms(decoder: StaticDecoder, embeds: torch.Tensor, k: int, repeats: int) -> float:
    """Median CUDA-event time of one extend over k tokens at the prompt's end."""
    state = prefill(decoder.lm, embeds, decoder).state
    base = state.length
    ids = list(range(5, 5 + k))
    times = []
    for i in range(repeats + 3):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        state.extend(token_ids=ids)
        end.record()
        end.synchronize()
        if i >= 3:
            times.append(start.elapsed_time(end))
        state.rollback(base)
    return statistics.median(times)


def top_kernels(decoder: StaticDecoder, embeds: torch.Tensor, k: int, n: int = 16) -> list[dict[str, Any]]:
    """GPU time by kernel of the compiled forward (called directly: graph replays hide kernels)."""
    from torch.profiler import ProfilerActivity, profile

    state = prefill(decoder.lm, embeds, decoder).state
    length = state.length
    ids = torch.arange(5, 5 + k, device=embeds.device).reshape(1, k)
    positions = torch.arange(length, length + k, device=embeds.device)
    kv_len = decoder.slots
    assert decoder._compiled is not None
    decoder._compiled(ids, positions, kv_len)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            decoder._compiled(ids, positions, kv_len)
        torch.cuda.synchronize()
    events = [e for e in prof.key_averages() if e.device_time_total > 0]
    rows = sorted(events, key=lambda e: e.device_time_total, reverse=True)[:n]
    # the last row sums every kernel: the pass's time minus it is launch gaps
    return [{"kernel": e.key[:90], "calls_per_pass": e.count / 5, "us_per_pass": e.device_time_total / 5} for e in rows] + [
        {"kernel": "(all kernels)", "calls_per_pass": sum(e.count for e in events) / 5,
         "us_per_pass": sum(e.device_time_total for e in events) / 5}]


class VariantDecoder(StaticDecoder):
    """An attention other than evspec's choice, for passes over several tokens and, with
    ``one_token``, for the one-token step too (evspec: SDPA for one token, split-KV for several):

    * ``written-out``: two batched products and a softmax (evspec before the split-KV kernel, and
      its CPU path);
    * ``split-kv``: evspec's Triton kernel (``evspec.runtime.attention``);
    * ``flex``: FlexAttention, which inductor lowers to its flex-decoding kernel below 128 queries,
      with the position mask as a score_mod."""

    def __init__(self, *args: Any, attention: str, one_token: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.attention, self.one_token = attention, one_token

    def _forward_ids(self, ids: torch.Tensor, positions: torch.Tensor, kv_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self._forward(self.lm.embed_tokens(ids), positions, kv_len, few_queries=ids.shape[1] > 1 or self.one_token)

    def _attend_few(
        self, q: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
        positions: torch.Tensor, kv_len: int,
    ) -> torch.Tensor:
        if self.attention == "split-kv":
            return split_kv_attention(q, cos[0, 0], sin[0, 0], k_cache, v_cache, positions, kv_len, self.scaling,
                                      self._programs)
        q = _apply_rotary(q, cos, sin)
        rows = self.causal[positions, :kv_len]
        keys, values = k_cache[:, :, :kv_len], v_cache[:, :, :kv_len]
        if self.attention == "written-out":
            out = self._attend(q, keys, values, rows.unsqueeze(0).unsqueeze(0))
        else:
            from torch.nn.attention.flex_attention import flex_attention

            def causal(score: torch.Tensor, b: Any, h: Any, q_idx: Any, kv_idx: Any) -> torch.Tensor:
                return torch.where(rows[q_idx, kv_idx], score, -float("inf"))

            out = flex_attention(q, keys, values, score_mod=causal, scale=self.scaling,
                                 enable_gqa=q.shape[1] != keys.shape[1])
        return out.transpose(1, 2).reshape(1, q.shape[2], -1)


def check_split_kv(device: torch.device) -> float:
    """Largest error of the split-KV kernel against fp64 attention, on bf16 inputs (GQA and MHA)."""
    worst = 0.0
    for heads, kv_heads, k, slots, length in ((32, 32, 8, 2240, 2100), (32, 8, 6, 1024, 700), (16, 16, 1, 704, 640)):
        q = torch.randn(1, heads, k, 128, device=device, dtype=torch.bfloat16)
        keys, values = (torch.randn(1, kv_heads, slots, 128, device=device, dtype=torch.bfloat16) for _ in range(2))
        positions = torch.arange(length, length + k, device=device)
        no_rotation = torch.ones(k, 128, device=device, dtype=q.dtype), torch.zeros(k, 128, device=device, dtype=q.dtype)
        out = split_kv_attention(q, *no_rotation, keys, values, positions, slots, 128 ** -0.5, 264)
        group = heads // kv_heads
        mask = torch.arange(slots, device=device)[None] <= positions[:, None]
        reference = F.scaled_dot_product_attention(
            q.double(), keys.double().repeat_interleave(group, 1), values.double().repeat_interleave(group, 1),
            attn_mask=mask, scale=128 ** -0.5).transpose(1, 2).reshape(1, k, -1)
        worst = max(worst, float((out.double() - reference).abs().max()))
    return worst


def logits_gap(a: StaticDecoder, b: StaticDecoder, embeds: torch.Tensor, k: int) -> float:
    """Largest |logit difference| between two decoders' passes over the same k tokens."""
    ids = list(range(5, 5 + k))
    outs = []
    for decoder in (a, b):
        state = prefill(decoder.lm, embeds, decoder).state
        outs.append(state.extend(token_ids=ids).logits.float())
    return float((outs[0] - outs[1]).abs().max())


def recompiled_step(
    lm: LanguageModel, embeds: torch.Tensor, max_length: int, explicit: bool, repeats: int, cached: bool = False,
) -> dict[str, Any]:
    """The one-token step compiled again: from nothing, or (``cached``) from inductor's caches,
    i.e. the same kernels and configs as before in a new decoder: its time, compile time, top kernels."""
    torch._dynamo.reset()
    with torch._inductor.config.patch(force_disable_caches=not cached):
        decoder = (VariantDecoder(lm, max_length, compile=True, attention="written-out", one_token=True) if explicit
                   else StaticDecoder(lm, max_length, compile=True))
        start = time.perf_counter()
        pass_ms(decoder, embeds, 1, 1)  # compiles and captures
        compile_s = time.perf_counter() - start
        ms = pass_ms(decoder, embeds, 1, repeats)
        kernels = top_kernels(decoder, embeds, 1, n=10)
    return {"attention": "explicit" if explicit else "sdpa", "cached": cached, "ms": ms, "compile_s": compile_s, "kernels": kernels}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompt", type=int, default=2096, help="tokens before the pass (Video-LLaVA: 2056 + text)")
    parser.add_argument("--lengths", default="1,2,4,8,16")
    parser.add_argument("--autotune", default="", help="lengths to also time with max-autotune, e.g. 8")
    parser.add_argument("--recompile", type=int, default=0,
                        help="compile the one-token step this many more times, with SDPA and with written-out attention")
    parser.add_argument("--recompile-cached", type=int, default=0,
                        help="build the step's decoder this many more times from inductor's caches (same kernels)")
    parser.add_argument("--paths", default="eager,compiled,unfused", help="which of eager,compiled,unfused,cublas to time")
    parser.add_argument("--attention", default="",
                        help="also time passes over several tokens with these attentions (written-out,split-kv,flex)")
    parser.add_argument("--step-attention", default="",
                        help="also time the one-token step with these attentions (written-out,split-kv,flex)")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_pass_cost.py needs a CUDA device")
    device = torch.device("cuda")
    lengths = [int(k) for k in args.lengths.split(",")]
    autotune = [int(k) for k in args.autotune.split(",") if k]
    split_kv_error = check_split_kv(device)
    print(f"split-KV kernel: largest error against fp64 attention {split_kv_error:.2e} (bf16 inputs)", flush=True)
    lm = build(device, args.seed)
    embeds = torch.randn(1, args.prompt, lm.hidden_size, device=device, dtype=lm.dtype) * 0.02
    max_length = args.prompt + max(lengths + autotune) + 8
    results: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device), "dtype": "bfloat16", "shape": VICUNA_7B, "prompt": args.prompt,
        "repeats": args.repeats, "seed": args.seed,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "cuda": torch.version.cuda,
                     "python": platform.python_version()},
        "eager_ms": {}, "compiled_ms": {}, "unfused_ms": {}, "cublas_ms": {}, "cublas_logits_gap": {},
        "cublas_kernels": {}, "autotuned_ms": {}, "kernels": {}, "recompiled_step": [],
        "attention_ms": {}, "attention_kernels": {}, "attention_logits_gap": {}, "split_kv_error": split_kv_error,
    }
    paths = set(args.paths.split(","))

    def save() -> None:
        if args.out:
            with open(args.out, "w") as handle:
                json.dump(results, handle, indent=2)

    with torch.inference_mode():
        eager = StaticDecoder(lm, max_length)
        compiled = StaticDecoder(lm, max_length, compile=True)
        unfused = StaticDecoder(lm, max_length, compile=True, fuse_projections_in_place=False)
        cublas = StaticDecoder(lm, max_length, compile=True, few_row_kernels=False)
        for k in lengths:
            if "eager" in paths:
                results["eager_ms"][k] = pass_ms(eager, embeds, k, args.repeats)
            results["compiled_ms"][k] = pass_ms(compiled, embeds, k, args.repeats)
            if k in (1, 8):
                results["kernels"][k] = top_kernels(compiled, embeds, k)
            # fusion only changes passes over several tokens: one token runs the same graph either way
            if "unfused" in paths:
                results["unfused_ms"][k] = results["compiled_ms"][k] if k == 1 else pass_ms(unfused, embeds, k, args.repeats)
            if "cublas" in paths and k > 1:
                results["cublas_ms"][k] = pass_ms(cublas, embeds, k, args.repeats)
                results["cublas_logits_gap"][k] = logits_gap(compiled, cublas, embeds, k)
                if k == 8:
                    results["cublas_kernels"][k] = top_kernels(cublas, embeds, k)
                print(f"k={k:3d}  without the few-row kernels {results['cublas_ms'][k]:6.2f} ms  max |logit gap| "
                      f"{results['cublas_logits_gap'][k]:.3g}", flush=True)
            print(f"k={k:3d}  eager {results['eager_ms'].get(k, float('nan')):6.2f} ms  "
                  f"compiled+graph {results['compiled_ms'][k]:6.2f} ms "
                  f"({results['compiled_ms'][k] / results['compiled_ms'][lengths[0]]:.2f}x of k={lengths[0]})  "
                  f"unfused {results['unfused_ms'].get(k, float('nan')):6.2f} ms", flush=True)
            save()
        variants = [(a, False) for a in args.attention.split(",") if a] + [(a, True) for a in args.step_attention.split(",") if a]
        for attention, one_token in variants:
            decoder = VariantDecoder(lm, max_length, compile=True, attention=attention, one_token=one_token)
            for k in (k for k in lengths if (k == 1) == one_token):
                key = f"{attention}/{k}"
                results["attention_ms"][key] = pass_ms(decoder, embeds, k, args.repeats)
                results["attention_logits_gap"][key] = logits_gap(compiled, decoder, embeds, k)
                print(f"k={k:3d}  attention {attention:11s} {results['attention_ms'][key]:6.2f} ms "
                      f"(evspec's: {results['compiled_ms'][k]:6.2f} ms)  max |logit gap| "
                      f"{results['attention_logits_gap'][key]:.3g}", flush=True)
                if k in (1, 8):
                    results["attention_kernels"][key] = top_kernels(decoder, embeds, k, n=8)
                save()
        if autotune:
            tuned = StaticDecoder(lm, max_length, compile=True)
            tuned._compiled = torch.compile(tuned._forward_ids, fullgraph=True, dynamic=False,
                                            mode="max-autotune-no-cudagraphs")
            for k in autotune:
                results["autotuned_ms"][k] = pass_ms(tuned, embeds, k, args.repeats)
                print(f"k={k:3d}  max-autotune+graph {results['autotuned_ms'][k]:6.2f} ms", flush=True)
                save()
        for i in range(args.recompile_cached):
            row = recompiled_step(lm, embeds, max_length, False, args.repeats, cached=True)
            results["recompiled_step"].append(row)
            print(f"rebuild {i} from caches: k=1 {row['ms']:6.2f} ms (in {row['compile_s']:.0f} s)", flush=True)
            save()
        for i in range(args.recompile):
            for explicit in (False, True):
                row = recompiled_step(lm, embeds, max_length, explicit, args.repeats)
                results["recompiled_step"].append(row)
                print(f"recompile {i}: k=1 attention {row['attention']:8s} {row['ms']:6.2f} ms "
                      f"(compiled in {row['compile_s']:.0f} s)", flush=True)
                save()
    print(f"device {results['device']}  torch {torch.__version__}  prompt {args.prompt}  repeats {args.repeats} (medians)")


if __name__ == "__main__":
    main()
