"""Experiment: a few-row matrix product written as a reduction for inductor, against cuBLAS.

A verify pass multiplies 4-8 rows by each 7B weight matrix. cuBLAS reads the weights at ~2.5 TB/s
on an H100 for 8 rows, while inductor's matrix-vector reductions of the one-token step read them
at up to ~3 TB/s (benchmarks/results/h100_skinny_mm_experiment.json). This times, for each 7B
weight shape, ``F.linear`` (cuBLAS) against ``(W[:, None, :] * h[None]).sum(-1).t()`` compiled
by inductor with coordinate-descent tuning: one reduction kernel whose neighbouring outputs share
a weight row, so each row is read from memory once for all M inputs.

Each time is the median of --repeats replays of a CUDA graph holding 20 calls, divided by 20.

    python benchmarks/gpu_rows_as_reduction.py --rows 8 --out $OUT/rows.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

SHAPES = {"qkv": (12288, 4096), "o": (4096, 4096), "gate_up": (22016, 4096), "down": (4096, 11008), "lm_head": (32064, 4096)}
CALLS = 20


def rows_as_reduction(h: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return (weight.unsqueeze(1) * h.unsqueeze(0)).sum(-1).t()


def graph_us(fn: Callable[[], Any], repeats: int) -> float:
    """Median microseconds of one call, from CUDA-graph replays of CALLS calls."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(CALLS):
            fn()
    times = []
    for i in range(repeats + 3):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        if i >= 3:
            times.append(start.elapsed_time(end) * 1e3 / CALLS)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="8")
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    results: dict[str, Any] = {"device": torch.cuda.get_device_name(), "dtype": "bfloat16", "seed": 0,
                               "versions": {"torch": torch.__version__, "cuda": torch.version.cuda,
                                            "python": platform.python_version()}, "us": {}}
    reduction = torch.compile(rows_as_reduction, fullgraph=True, dynamic=False)
    for rows in [int(r) for r in args.rows.split(",")]:
        for name, (n, k) in SHAPES.items():
            weight = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02
            h = torch.randn(rows, k, device="cuda", dtype=torch.bfloat16)
            with torch._inductor.config.patch(coordinate_descent_tuning=True):
                got = reduction(h, weight)
            want = F.linear(h, weight)
            error = ((got.float() - want.float()).abs().max() / want.float().abs().max()).item()
            row = {"cublas": graph_us(lambda: F.linear(h, weight), args.repeats),
                   "reduction": graph_us(lambda: reduction(h, weight), args.repeats), "max_rel_error": error}
            gb = n * k * 2 / 1e9
            results["us"][f"{name}/{rows}"] = row
            print(f"{name:8s} rows {rows}: cuBLAS {row['cublas']:7.1f} us ({gb / row['cublas'] * 1e3:.2f} TB/s)  "
                  f"reduction {row['reduction']:7.1f} us ({gb / row['reduction'] * 1e3:.2f} TB/s)  rel err {error:.1e}", flush=True)
            if args.out:
                with open(args.out, "w") as handle:
                    json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
