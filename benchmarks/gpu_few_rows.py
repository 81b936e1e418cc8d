"""A verify pass's four projections over a few rows: evspec's fused kernel against inductor + cuBLAS.

For each fused product of a Vicuna-7B layer (bf16, --rows token rows):

  * ``qkv``:     RMSNorm, then the fused Q/K/V weight [12288, 4096];
  * ``o``:       the O projection [4096, 4096] plus the residual;
  * ``gate_up``: RMSNorm, the fused gate/up weight [22016, 4096], SiLU(gate) x up;
  * ``down``:    the down projection [4096, 11008] plus the residual;

times (``triton.testing.do_bench``: median, L2 flushed before every call, as inside a pass where
each weight is read once) the unfused operations compiled by inductor (its norm / pointwise
kernels around a cuBLAS GEMM: the path ``StaticDecoder(few_row_kernels=False)`` runs), the cuBLAS
GEMM alone, and ``evspec.runtime.few_rows`` with ``tiling_for``'s tiling and with every tiling of
a grid. Each is also given as weight bytes read per second, next to a device copy. The fused
kernel's output is checked against the unfused bf16 operations first.

    python benchmarks/gpu_few_rows.py --out $OUT/few_rows.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
import triton
from transformers.models.llama.modeling_llama import LlamaRMSNorm

from evspec.models.tiny import VICUNA_7B
from evspec.runtime.few_rows import Tiling, few_rows_linear, tiling_for

HIDDEN, INTER = VICUNA_7B["hidden_size"], VICUNA_7B["intermediate_size"]
GRID = [Tiling(block_n=n, block_k=k, warps=w, stages=s)
        for n, k, w, s in itertools.product((16, 32, 64), (128, 256), (4, 8), (3, 4, 6))]


def bench_ms(fn: Callable[[], Any]) -> float:
    return float(triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median"))


def grid_ms(fn: Callable[[Tiling], Any], tiling: Tiling) -> float | None:
    """The tiling's time, or None where its pipeline does not fit in shared memory."""
    try:
        return bench_ms(lambda: fn(tiling))
    except triton.runtime.errors.OutOfResources:
        return None


def copy_tbps(device: torch.device) -> float:
    a = torch.empty(1 << 30, dtype=torch.uint8, device=device)
    b = torch.empty_like(a)
    ms = bench_ms(lambda: b.copy_(a))
    return 2 * a.numel() / ms / 1e9


def cases(rows: int, device: torch.device) -> dict[str, dict[str, Any]]:
    """Each product's inputs, its unfused operations and the fused call with a given tiling."""
    torch.manual_seed(0)
    dtype = torch.bfloat16
    x = torch.randn(rows, HIDDEN, device=device, dtype=dtype)
    act = torch.randn(rows, INTER, device=device, dtype=dtype) * 0.1
    residual = torch.randn(rows, HIDDEN, device=device, dtype=dtype)
    norm = LlamaRMSNorm(HIDDEN, eps=1e-5).to(device, dtype)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    qkv = torch.randn(3 * HIDDEN, HIDDEN, device=device, dtype=dtype) / HIDDEN ** 0.5
    o = torch.randn(HIDDEN, HIDDEN, device=device, dtype=dtype) / HIDDEN ** 0.5
    gate_up = torch.randn(2 * INTER, HIDDEN, device=device, dtype=dtype) / HIDDEN ** 0.5
    down = torch.randn(HIDDEN, INTER, device=device, dtype=dtype) / INTER ** 0.5
    eps = norm.variance_epsilon

    def gated(h: torch.Tensor) -> torch.Tensor:
        gate, up = F.linear(norm(h), gate_up).chunk(2, dim=-1)
        return F.silu(gate) * up

    return {
        "qkv": {"weight": qkv, "gemm": (x, qkv), "unfused": lambda: F.linear(norm(x), qkv),
                "fused": lambda t: few_rows_linear(x, qkv, norm_weight=norm.weight, eps=eps, tiling=t)},
        "o": {"weight": o, "gemm": (x, o), "unfused": lambda: residual + F.linear(x, o),
              "fused": lambda t: few_rows_linear(x, o, residual=residual, tiling=t)},
        "gate_up": {"weight": gate_up, "gemm": (x, gate_up), "unfused": lambda: gated(x),
                    "fused": lambda t: few_rows_linear(x, gate_up, norm_weight=norm.weight, eps=eps, gated=True,
                                                       tiling=t)},
        "down": {"weight": down, "gemm": (act, down), "unfused": lambda: residual + F.linear(act, down),
                 "fused": lambda t: few_rows_linear(act, down, residual=residual, tiling=t)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="8", help="token rows, e.g. 2,4,8,16")
    parser.add_argument("--grid", action="store_true", help="also time every tiling of the grid (slow: compiles each)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_few_rows.py needs a CUDA device")
    device = torch.device("cuda")
    results: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device), "dtype": "bfloat16", "copy_TBps": copy_tbps(device),
        "versions": {"torch": torch.__version__, "triton": triton.__version__, "cuda": torch.version.cuda,
                     "python": platform.python_version()},
        "timing": "triton.testing.do_bench median, L2 flushed before each call", "products": {},
    }
    print(f"{results['device']}  copy {results['copy_TBps']:.2f} TB/s  torch {torch.__version__}  "
          f"triton {triton.__version__}", flush=True)
    with torch.inference_mode():
        for rows in (int(r) for r in args.rows.split(",")):
            for name, case in cases(rows, device).items():
                weight_gb = case["weight"].numel() * case["weight"].element_size() / 1e9
                unfused = torch.compile(case["unfused"], dynamic=False)
                reference = unfused()
                default = tiling_for(case["weight"].shape[0] // (2 if name == "gate_up" else 1), device)
                out = case["fused"](default)
                gap = (out.float() - reference.float()).abs().max().item()
                scale = reference.float().abs().max().item()
                row: dict[str, Any] = {
                    "weight_GB": weight_gb, "max_abs_gap_to_unfused": gap, "max_abs_unfused": scale,
                    "unfused_ms": bench_ms(unfused), "cublas_gemm_ms": bench_ms(lambda: F.linear(*case["gemm"])),
                    "tiling_for": vars(default) | {"ms": bench_ms(lambda: case["fused"](default))},
                }
                if args.grid:
                    row["grid"] = [vars(t) | {"ms": grid_ms(case["fused"], t)} for t in GRID]
                    row["best"] = min((r for r in row["grid"] if r["ms"] is not None), key=lambda r: r["ms"])
                results["products"][f"{name}/{rows}"] = row
                best = row.get("best", row["tiling_for"])
                print(f"rows {rows:2d} {name:8s} unfused {row['unfused_ms'] * 1e3:6.1f} us "
                      f"(gemm alone {row['cublas_gemm_ms'] * 1e3:6.1f}, {weight_gb / row['cublas_gemm_ms']:.2f} TB/s)  "
                      f"fused {row['tiling_for']['ms'] * 1e3:6.1f} us ({weight_gb / row['tiling_for']['ms']:.2f} TB/s)  "
                      f"best {best['ms'] * 1e3:6.1f} us {best}  |gap| {gap:.3g} of {scale:.3g}", flush=True)
                if args.out:
                    with open(args.out, "w") as handle:
                        json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
