"""Decode and prefill speed of a Vicuna-7B-shaped LLaMA (random weights, no download).

Measures, in one run on one device:
  * device copy bandwidth (a large device-to-device copy, bytes read + written) and the bf16 matmul rate;
  * decode latency per token for (a) transformers ``generate()`` as users call it, (b) evspec's eager
    loop (``EagerState``: transformers modules + DynamicCache), (c) evspec's static KV cache with the step
    compiled by ``torch.compile`` and replayed as CUDA graphs; next to the memory-bandwidth
    bound (weight bytes / measured copy bandwidth);
  * Video-LLaVA-shaped prefill (2056 visual + prompt tokens) against the bf16 matmul roofline.

Per-token latency is (time for N tokens - time for 1 token) / (N - 1), so prefill cancels out; each
figure is the median of ``--repeats`` runs after warm-up. ``--quick`` runs tiny shapes on CPU to
smoke-test the script.

    python benchmarks/gpu_decode.py --out $OUT/decode.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable

import torch
import transformers
from transformers import LlamaConfig, LlamaForCausalLM

from evspec.runtime.decode import LanguageModel, decode, prefill
from evspec.runtime.static import StaticDecoder

VICUNA_7B = dict(
    vocab_size=32064, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
    num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096, rms_norm_eps=1e-5,
)
TINY = dict(
    vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=4096,
)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int = 1) -> float:
    """Median wall time (s) of ``fn`` after warm-up, synchronising the device around each run."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def copy_bandwidth(device: torch.device, n_bytes: int) -> float:
    src = torch.empty(n_bytes // 2, dtype=torch.bfloat16, device=device).normal_()
    dst = torch.empty_like(src)
    seconds = timed(lambda: dst.copy_(src), device, repeats=20, warmup=3)
    return 2 * n_bytes / seconds  # bytes read + written


def matmul_rate(device: torch.device, dtype: torch.dtype, n: int) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    seconds = timed(lambda: a @ b, device, repeats=10, warmup=3)
    return 2 * n**3 / seconds


def build_model(shape: dict, device: torch.device, dtype: torch.dtype, seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(**shape)
    with torch.device(device):
        previous = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            model = LlamaForCausalLM(config)
        finally:
            torch.set_default_dtype(previous)
    return model.eval()


def per_token(run: Callable[[int], object], n_tokens: int, device: torch.device, repeats: int) -> float:
    one = timed(lambda: run(1), device, repeats)
    many = timed(lambda: run(n_tokens), device, repeats)
    return (many - one) / (n_tokens - 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny shapes on CPU: a smoke test of this script")
    parser.add_argument("--tokens", type=int, default=128, help="new tokens per decode run")
    parser.add_argument("--prompt", type=int, default=64, help="text prompt tokens for the decode runs")
    parser.add_argument("--visual", type=int, default=2056, help="visual tokens for the prefill run (Video-LLaVA: 8x257)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="write all numbers as JSON here")
    args = parser.parse_args()

    device = torch.device("cpu" if args.quick or not torch.cuda.is_available() else "cuda")
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    shape = TINY if args.quick else VICUNA_7B
    model = build_model(shape, device, dtype, args.seed)
    lm = LanguageModel.from_causal_lm(model)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    # The embedding table is read one row per token, not whole: leave it out of the bound.
    streamed_bytes = weight_bytes - model.get_input_embeddings().weight.numel() * model.get_input_embeddings().weight.element_size()
    results: dict = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "dtype": str(dtype), "shape": shape, "seed": args.seed, "repeats": args.repeats,
        "prompt_tokens": args.prompt, "new_tokens": args.tokens,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "cuda": torch.version.cuda, "python": platform.python_version()},
        "weight_bytes": weight_bytes, "streamed_weight_bytes": streamed_bytes,
    }
    results["copy_bandwidth_Bps"] = copy_bandwidth(device, 2**32 if device.type == "cuda" else 2**26)
    results["matmul_flops"] = matmul_rate(device, dtype, 8192 if device.type == "cuda" else 512)
    results["bound_ms_per_token"] = 1e3 * streamed_bytes / results["copy_bandwidth_Bps"]

    ids = torch.randint(0, shape["vocab_size"], (1, args.prompt), device=device,
                        generator=torch.Generator(device).manual_seed(args.seed))
    embeds = model.get_input_embeddings()(ids)

    def hf_generate(n: int) -> None:
        model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)

    def eager_loop(n: int) -> None:
        decode(prefill(lm, embeds), max_new_tokens=n)

    static = StaticDecoder(lm, max_length=args.prompt + max(args.tokens, 32) + 8, compile=device.type == "cuda")

    def static_loop(n: int) -> None:
        decode(prefill(lm, embeds, static), max_new_tokens=n)

    with torch.inference_mode():
        static_loop(8)  # compile + record the graph outside the timed runs
        paths = {"transformers_generate": hf_generate, "evspec_eager": eager_loop, "evspec_static_compiled": static_loop}
        for name, run in paths.items():
            seconds = per_token(run, args.tokens, device, args.repeats)
            results[name] = {"ms_per_token": 1e3 * seconds, "tokens_per_s": 1 / seconds}
        # Same tokens from all three paths (greedy): a speed figure for a wrong answer is no figure.
        reference = model.generate(ids, max_new_tokens=32, do_sample=False, pad_token_id=0)[0, args.prompt:].tolist()
        results["eager_equals_generate"] = decode(prefill(lm, embeds), max_new_tokens=32).token_ids == reference
        static_tokens = decode(prefill(lm, embeds, static), max_new_tokens=32).token_ids
        results["static_tokens_match_generate"] = sum(a == b for a, b in zip(static_tokens, reference))

        # Video-LLaVA-shaped prefill: visual + prompt tokens through all 32 layers at once.
        n_prefill = args.visual + args.prompt
        visual = torch.randn(1, n_prefill, shape["hidden_size"], device=device, dtype=dtype) * 0.02
        prefill_s = timed(lambda: prefill(lm, visual), device, args.repeats)
        linear_params = streamed_bytes / torch.finfo(dtype).bits * 8
        layers, hidden = shape["num_hidden_layers"], shape["hidden_size"]
        # GEMMs over every token + causal attention (QK^T and AV, half the square).
        flops = 2 * linear_params * n_prefill + 2 * layers * n_prefill**2 * hidden
        results["prefill"] = {
            "tokens": n_prefill, "ms": 1e3 * prefill_s, "flops": flops,
            "roofline_ms": 1e3 * flops / results["matmul_flops"],
            "ratio_to_roofline": prefill_s * results["matmul_flops"] / flops,
        }

    compiled = results["evspec_static_compiled"]["tokens_per_s"]
    print(f"device {results['device']}  dtype {dtype}  torch {torch.__version__}  transformers {transformers.__version__}")
    print(f"shape {shape['num_hidden_layers']}L x {shape['hidden_size']}  weights {weight_bytes / 1e9:.2f} GB  seed {args.seed}")
    print(f"copy bandwidth {results['copy_bandwidth_Bps'] / 1e12:.2f} TB/s   matmul {results['matmul_flops'] / 1e12:.0f} TFLOP/s")
    print(f"{'path':28s} {'ms/token':>9s} {'tokens/s':>9s}")
    for name in ("transformers_generate", "evspec_eager", "evspec_static_compiled"):
        print(f"{name:28s} {results[name]['ms_per_token']:9.2f} {results[name]['tokens_per_s']:9.1f}")
    print(f"{'bandwidth bound':28s} {results['bound_ms_per_token']:9.2f} {1e3 / results['bound_ms_per_token']:9.1f}")
    print(f"compiled / generate(): {compiled / results['transformers_generate']['tokens_per_s']:.2f}x")
    print(f"eager loop == generate(): {results['eager_equals_generate']}; static matches "
          f"{results['static_tokens_match_generate']}/32 greedy tokens")
    p = results["prefill"]
    print(f"prefill {p['tokens']} tokens: {p['ms']:.1f} ms, roofline {p['roofline_ms']:.1f} ms, ratio {p['ratio_to_roofline']:.2f}")
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
