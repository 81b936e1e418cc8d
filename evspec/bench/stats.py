"""Latency statistics and the per-model summary of a benchmark run.

A latency record follows optimum-benchmark's: count, total, mean, p50, p90, p95, p99, stdev
(population, ``ddof=0``, as NumPy's default), plus min and max. Percentiles are NumPy's default
(linear interpolation between order statistics), so anyone can recompute them from
``records.jsonl`` with ``numpy.percentile``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from evspec.bench.records import Record
from evspec.runtime.timing import STAGES

PERCENTILES: tuple[int, ...] = (50, 90, 95, 99)
SUMMARY_FIELDS: tuple[str, ...] = (*(f"{s}_s" for s in STAGES), "total_s", "ttft_s", "tpot_s")
"""Per-record latency fields summarised for every model."""


@dataclass(frozen=True)
class LatencyStats:
    """Distribution of one latency (seconds) over samples; all None when there are no values."""

    count: int
    total: float | None
    mean: float | None
    p50: float | None
    p90: float | None
    p95: float | None
    p99: float | None
    stdev: float | None
    min: float | None
    max: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def latency_stats(values: Iterable[float | None]) -> LatencyStats:
    """Statistics of the non-None values (None marks 'not defined for this sample', e.g. TPOT of a
    one-token answer)."""
    array = np.asarray([v for v in values if v is not None], dtype=np.float64)
    if array.size == 0:
        return LatencyStats(0, None, None, None, None, None, None, None, None, None)
    p50, p90, p95, p99 = (float(x) for x in np.percentile(array, PERCENTILES))
    return LatencyStats(
        count=int(array.size), total=float(array.sum()), mean=float(array.mean()),
        p50=p50, p90=p90, p95=p95, p99=p99, stdev=float(array.std()),
        min=float(array.min()), max=float(array.max()),
    )


def _ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator > 0 else None


def _numeric_metrics(records: Sequence[Record]) -> dict[str, LatencyStats]:
    """Stats of every scalar number a decoder put in ``Record.metrics`` (e.g. acceptance rate)."""
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


NOISY_SPREAD = 0.5
"""A stage whose standard deviation over samples exceeds this share of its mean is flagged."""
STEADY_FIELDS: tuple[str, ...] = ("read_s", "preprocess_s", "encode_s", "prefill_s", "tpot_s")
"""Per-sample times whose work barely changes between samples of a dataset (decode and total
grow with the answer's length, so their spread says nothing about noise)."""
LOADED_SHARE = 0.8
"""The machine counts as loaded when its 1-minute load average exceeds this share of its CPUs."""


def machine_load() -> dict[str, Any]:
    """The CPU count and the 1-minute load average now (None where the OS has none)."""
    try:
        load: float | None = os.getloadavg()[0]
    except (AttributeError, OSError):
        load = None
    return {"cpu_count": os.cpu_count(), "loadavg_1m": load}


def timing_warnings(per_model: dict[str, dict[str, Any]], machine: dict[str, Any] | None = None) -> list[str]:
    """Why these timings may be noisy: a steady stage that varies a lot over samples, or a machine
    that was busy with other work (before the run, or after it beyond the one core the run used)."""
    warnings = []
    for model, block in per_model.items():
        for name in STEADY_FIELDS:
            stats = block["latency_s"].get(name) or {}
            mean, stdev = stats.get("mean"), stats.get("stdev")
            if stats.get("count", 0) >= 3 and mean and stdev is not None and stdev > NOISY_SPREAD * mean:
                warnings.append(
                    f"{model}: {name.removesuffix('_s')} varies a lot over samples (mean {mean * 1e3:.2f} ms, "
                    f"stdev {stdev * 1e3:.2f} ms, p50 {stats['p50'] * 1e3:.2f} ms, max {stats['max'] * 1e3:.2f} ms): "
                    f"timings may be noisy"
                )
    cpus = (machine or {}).get("cpu_count")
    for when, own in (("before", 0.0), ("after", 1.0)):
        load = ((machine or {}).get(when) or {}).get("loadavg_1m")
        if cpus and load is not None and load - own > LOADED_SHARE * cpus:
            warnings.append(
                f"the machine was loaded {when} the run (1-minute load average {load:.2f} on {cpus} CPUs"
                f"{', one of them this run' if own else ''}): other work competed with the timed stages"
            )
    return warnings


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
    "ttft_s": "read + preprocess + encode + prefill (+ any decoder stage before decode) + the first token's choice",
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
