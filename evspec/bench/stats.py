"""The per-model summary of a benchmark run. Its latency records (optimum-benchmark's: count,
total, mean, percentiles, stdev, min, max) and timing warnings are :mod:`evspec.run.stats`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from evspec.bench.records import Record
from evspec.run.stats import LOADED_SHARE, NOISY_SPREAD, STEADY_FIELDS, LatencyStats, latency_stats, timing_warnings
from evspec.runtime.timing import STAGES

SUMMARY_FIELDS: tuple[str, ...] = (*(f"{s}_s" for s in STAGES), "total_s", "ttft_s", "tpot_s")
"""Per-record latency fields summarised for every model."""


def _ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator > 0 else None


def _numeric_metrics(records: Sequence[Record]) -> dict[str, LatencyStats]:
    """Stats of every scalar number a decode strategy put in ``Record.metrics`` (e.g. acceptance rate)."""
    names = sorted({k for r in records for k, v in r.metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
    return {n: latency_stats(r.metrics.get(n) for r in records) for n in names}


def summarize_model(records: Sequence[Record]) -> dict[str, Any]:
    """One model's block of ``summary.json``, over its successful records.

    Throughputs (documented here because they are easy to define differently):
    ``samples_per_s`` = successful samples / sum of their total_s;
    ``tokens_per_s`` = generated tokens / sum of total_s (end to end);
    ``decode_tokens_per_s`` = generated tokens / sum of decode_s (the decode loop alone).
    """
    ok = [r for r in records if r.error is None]
    total = float(sum(r.total_s for r in ok))
    decode = float(sum(r.decode_s for r in ok))
    tokens = int(sum(r.n_new_tokens for r in ok))
    stages = {name: latency_stats(getattr(r, name) for r in ok).to_dict() for name in SUMMARY_FIELDS}
    extra_names = sorted({k for r in ok for k in r.extra_stages_s})
    extra = {n: latency_stats(r.extra_stages_s.get(n) for r in ok).to_dict() for n in extra_names}
    per_token = [x for r in ok for x in r.token_latencies_s[1:]]
    peaks: dict[str, int | None] = {}
    for r in ok:
        for stage, value in r.peak_memory_bytes.items():
            if value is not None:
                peaks[stage] = max(value, peaks.get(stage) or 0)
            else:
                peaks.setdefault(stage, None)
    return {
        "n_records": len(records),
        "n_ok": len(ok),
        "n_errors": len(records) - len(ok),
        "latency_s": stages,
        "extra_stages_s": extra,
        "per_token_latency_s": latency_stats(per_token).to_dict(),
        "first_token_latency_s": latency_stats(r.token_latencies_s[0] for r in ok if r.token_latencies_s).to_dict(),
        "n_new_tokens": latency_stats(r.n_new_tokens for r in ok).to_dict(),
        "n_prompt_tokens": latency_stats(r.n_prompt_tokens for r in ok).to_dict(),
        "n_visual_tokens": latency_stats(r.n_visual_tokens for r in ok).to_dict(),
        "samples_per_s": _ratio(len(ok), total),
        "tokens_per_s": _ratio(tokens, total),
        "decode_tokens_per_s": _ratio(tokens, decode),
        "peak_memory_bytes": peaks,
        "metrics": {k: v.to_dict() for k, v in _numeric_metrics(ok).items()},
        "errors": [{"id": r.id, "error": r.error} for r in records if r.error is not None],
    }


def summarize(records: Sequence[Record], models: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per model (in the order given), the block from :func:`summarize_model`."""
    return {m: summarize_model([r for r in records if r.model == m]) for m in models}


def build_summary(
    records: Sequence[Record], *, meta: dict[str, Any], models: Sequence[str],
    model_load_s: dict[str, float | None] | None = None, machine: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """``summary.json``: the run's config, identity, environment (versions, device), per-model
    statistics, and each model's load-from-disk time in this invocation (None when it was not
    loaded, e.g. every sample was already recorded)."""
    per_model = summarize(records, models)
    for name, block in per_model.items():
        block["model_load_s"] = (model_load_s or {}).get(name)
    return {
        "config": meta.get("config"),
        "identity": meta.get("identity"),
        "environment": meta.get("environment"),
        "device": (meta.get("identity") or {}).get("device"),
        "dtype": (meta.get("identity") or {}).get("dtype"),
        "seed": (meta.get("config") or {}).get("seed"),
        "command": meta.get("command"),
        "started": meta.get("started"),
        "definitions": DEFINITIONS,
        "models": per_model,
        "machine": machine,
        "timing_warnings": timing_warnings(per_model, machine),
    }


DEFINITIONS: dict[str, str] = {
    "read_s": "reading the sample's files (events, event images, video) into frames: model.load(sample)",
    "model_load_s": "loading the model (weights from disk onto the device), once per model in the invocation "
    "that ran its samples; not part of any sample's total_s; null when it was not loaded (all samples done)",
    "stage times": "seconds from entering to leaving the stage (CUDA: events on the current stream, one "
    "synchronize per sample when read); total_s = sum of stages, gaps between stages excluded",
    "ttft_s": "read + preprocess + encode + prefill (+ any decode-strategy stage before decode) + the first token's choice",
    "tpot_s": "(decode_s - first token latency) / (n_new_tokens - 1)",
    "per_token_latency_s": "time between consecutive token marks inside decode (first token excluded)",
    "samples_per_s": "successful samples / sum of their total_s",
    "tokens_per_s": "generated tokens / sum of total_s",
    "decode_tokens_per_s": "generated tokens / sum of decode_s",
    "peak_memory_bytes": "torch.cuda.max_memory_allocated after the stage, peak stats reset before it (so it "
    "includes weights and caches already allocated); max over samples; null on CPU",
    "garbage collection": "Python's cyclic GC is paused while a sample runs and the model's objects are frozen "
    "(gc.freeze), so no full collection lands inside a timed stage",
    "warm-up": "the first --warmup samples run through every stage per model and are discarded",
    "timing_warnings": f"a steady stage ({', '.join(STEADY_FIELDS)}) whose stdev over samples exceeds "
    f"{NOISY_SPREAD:g} x its mean, or a 1-minute load average above {LOADED_SHARE:g} x the CPU count before the "
    "run (or after it, less the one core the run used)",
    "percentiles": "numpy.percentile, linear interpolation; stdev is the population standard deviation",
}
