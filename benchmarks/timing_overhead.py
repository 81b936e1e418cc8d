"""What stage timing costs: decode with and without ``StageTimer`` (target: < 1% of decode time).

One random-weight LLaMA (no download), one prompt, a fixed output length (EOS masked). Three
variants run in rotating order so drift hits all of them; each figure is the median over
``--repeats`` runs (minima too: on a shared machine they are the steadier statistic):

    bare     prefill + decode, one synchronize at the end (no timer at all)
    stages   the same inside timer.stage("prefill") / timer.stage("decode") + timer.read()
    tokens   as ``stages`` plus ``on_token=timer.mark_token`` (one mark per token)

``tokens`` vs ``bare`` is the whole cost the benchmark pays; ``tokens`` vs ``stages`` is the per-token
marks' share. End-to-end differences below the run-to-run spread are noise, so the script also
times the marks alone (``--marks`` marks inside one stage, then ``read()``), per mark, against
the per-token decode time from ``bare`` ((N tokens - 1 token) / (N - 1), prefill cancels):
the in-loop mark is what lies on the decode path; ``read()`` runs after the sample.

    python benchmarks/timing_overhead.py --threads 1                      # CPU, tiny shape
    python benchmarks/timing_overhead.py --device cuda --dtype bfloat16 --shape 7b --cache compiled
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable

import numpy
import torch
import transformers
from transformers import LlamaConfig, LlamaForCausalLM

import evspec
from evspec.runtime.decode import LanguageModel, Prefilled, decode, prefill
from evspec.runtime.static import StaticDecoder
from evspec.runtime.timing import StageTimer

SHAPES = {
    "tiny": dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=1024),
    "small": dict(vocab_size=32064, hidden_size=512, intermediate_size=1408, num_hidden_layers=4,
                  num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=1024),
    "7b": dict(vocab_size=32064, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
               num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096, rms_norm_eps=1e-5),
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
VARIANTS = ("bare", "stages", "tokens")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=list(DTYPES))
    parser.add_argument("--shape", default="tiny", choices=list(SHAPES))
    parser.add_argument("--cache", default="eager", choices=["eager", "static", "compiled"])
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--marks", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--out", default=None, help="also write the results (raw times included) as JSON here")
    return parser.parse_args()


def main() -> None:
    args = parse()
    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype, n = torch.device(args.device), DTYPES[args.dtype], args.new_tokens
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(LlamaConfig(**SHAPES[args.shape])).to(dtype).eval()
    lm = LanguageModel.from_causal_lm(model)
    ids = torch.randint(0, lm.vocab_size, (1, args.prompt_tokens), generator=torch.Generator().manual_seed(0))
    embeds = lm.embed_tokens(ids.to(device))
    static = None
    if args.cache != "eager":
        static = StaticDecoder(lm, args.prompt_tokens + n, compile=args.cache == "compiled")
    timer = StageTimer(device)

    def pre() -> Prefilled:
        return prefill(lm, embeds) if static is None else prefill(lm, embeds, static)

    def bare(tokens: int = n) -> None:
        decode(pre(), max_new_tokens=tokens, min_new_tokens=tokens)
        sync(device)

    def stages() -> None:
        with timer.stage("prefill"):
            p = pre()
        with timer.stage("decode"):
            decode(p, max_new_tokens=n, min_new_tokens=n)
        timer.read()

    def tokens() -> None:
        with timer.stage("prefill"):
            p = pre()
        with timer.stage("decode"):
            decode(p, max_new_tokens=n, min_new_tokens=n, on_token=timer.mark_token)
        if timer.read().n_tokens != n:
            raise RuntimeError("the timer missed tokens")

    runs: dict[str, Callable[[], None]] = {"bare": bare, "stages": stages, "tokens": tokens}
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    one_token: list[float] = []

    def clock(fn: Callable[[], None]) -> float:
        sync(device)
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    with torch.inference_mode():
        for _ in range(args.warmup):
            for fn in runs.values():
                fn()
        for i in range(args.repeats):
            order = VARIANTS[i % 3:] + VARIANTS[: i % 3]  # rotate: each variant goes first equally often
            for v in order:
                times[v].append(clock(runs[v]))
            one_token.append(clock(lambda: bare(1)))
        per_token = (statistics.median(times["bare"]) - statistics.median(one_token)) / (n - 1)
        in_loop, reading = [], []
        for _ in range(7):
            with timer.stage("decode"):
                start = time.perf_counter()
                for j in range(args.marks):
                    timer.mark_token(j)
                in_loop.append((time.perf_counter() - start) / args.marks)
            start = time.perf_counter()
            timer.read()
            reading.append((time.perf_counter() - start) / args.marks)

    med = {v: statistics.median(t) for v, t in times.items()}
    low = {v: min(t) for v, t in times.items()}
    mark_s, read_s = statistics.median(in_loop), statistics.median(reading)
    result = {
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "dtype": args.dtype, "shape": args.shape, "cache": args.cache, "model": SHAPES[args.shape],
        "prompt_tokens": args.prompt_tokens, "new_tokens": n, "repeats": args.repeats,
        "versions": {"evspec": evspec.__version__, "python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__, "numpy": numpy.__version__, "cuda": torch.version.cuda},
        "median_s": med, "min_s": low,
        "overhead_median": {v: med[v] / med["bare"] - 1 for v in VARIANTS[1:]},
        "overhead_min": {v: low[v] / low["bare"] - 1 for v in VARIANTS[1:]},
        "per_token_decode_s": per_token,
        "mark_in_loop_s": mark_s,
        "read_per_mark_s": read_s,
        "mark_fraction_of_token": mark_s / per_token,
        "raw_s": times, "one_token_s": one_token,
    }
    if args.out:
        with open(args.out, "w", encoding="utf-8") as handle:
            json.dump(result, handle, indent=1)
    where = result["gpu"] or f"{result['cpu']} x{os.cpu_count()} ({torch.get_num_threads()} torch threads)"
    print(
        f"{args.shape} LLaMA on {where}, {device}, {args.dtype}, cache {args.cache}; {args.prompt_tokens} prompt + "
        f"{n} new tokens; median (min) of {args.repeats}; torch {torch.__version__}, transformers "
        f"{transformers.__version__}, numpy {numpy.__version__}, Python {platform.python_version()}\n"
        + "".join(
            f"  {v:<7} {med[v] * 1e3:9.2f} ms ({low[v] * 1e3:9.2f})"
            + ("" if v == "bare" else f"  {result['overhead_median'][v] * 100:+6.2f}% ({result['overhead_min'][v] * 100:+6.2f}%)")
            + "\n"
            for v in VARIANTS
        )
        + f"  one mark in the loop {mark_s * 1e6:.2f} us (+ {read_s * 1e6:.2f} us to read it after the sample) "
        f"vs {per_token * 1e3:.3f} ms per decoded token -> {mark_s / per_token * 100:.3f}% per token"
    )


if __name__ == "__main__":
    main()
