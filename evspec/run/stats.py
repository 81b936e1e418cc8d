"""Run statistics every run command reports: latency distributions (optimum-benchmark's record:
count, total, mean, p50, p90, p95, p99, stdev (population, ``ddof=0``, as NumPy's default), plus min
and max; percentiles are NumPy's default, so anyone can recompute them from ``records.jsonl`` with
``numpy.percentile``), the machine's load, and the warnings that timings may be noisy.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

PERCENTILES: tuple[int, ...] = (50, 90, 95, 99)


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
