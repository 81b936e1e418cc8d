"""A verify pass's four projections over a few rows: evspec's fused kernel against inductor + cuBLAS.

For each fused product of a Vicuna-7B layer (bf16, --rows token rows):

  * ``qkv``:     RMSNorm, then the fused Q/K/V weight [12288, 4096];
  * ``o``:       the O projection [4096, 4096] plus the residual;
  * ``gate_up``: RMSNorm, the fused gate/up weight [22016, 4096], SiLU(gate) x up;
  * ``down``:    the down projection [4096, 11008] plus the residual;
  * ``qkv_cache``: RMSNorm, QKV, the keys' rotary embedding and both cache writes
                 (``qkv_into_cache``: one program per head; its grid varies K step, warps, stages);

times, as a pass runs them, one call per layer over --layers distinct weights (so each weight
comes cold from memory, as in a pass), captured as one CUDA graph (no launch overhead but the
graph's own gaps), the median of --repeats replays divided by --layers:

  * ``unfused``: the unfused operations compiled by inductor (its norm / pointwise kernels around
                 a cuBLAS GEMM: what ``StaticDecoder(few_row_kernels=False)`` runs);
  * ``gemm``:    the cuBLAS GEMM alone;
  * ``fused``:   ``evspec.runtime.few_rows`` with ``tiling_for``'s tiling, and (--grid) every
                 tiling of a grid.

Each is also given as weight bytes read per second, next to a device copy. The fused kernel's
output is checked against the unfused bf16 operations first.

    python benchmarks/gpu_few_rows.py --grid --out $OUT/few_rows.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import statistics
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
import triton
from transformers.models.llama.modeling_llama import LlamaRMSNorm

from evspec.models.tiny import VICUNA_7B
from evspec.runtime.few_rows import Tiling, few_rows_linear, qkv_into_cache, tiling_for
from evspec.runtime.static import _apply_rotary

HIDDEN, INTER = VICUNA_7B["hidden_size"], VICUNA_7B["intermediate_size"]
HEADS = VICUNA_7B["num_attention_heads"]
HEAD_DIM = HIDDEN // HEADS
GRID = [Tiling(block_n=n, block_k=k, warps=w, stages=s)
        for n, k, w, s in itertools.product((32, 64, 128), (64, 128, 256), (4, 8), (3, 4, 6))]


def layers_ms(call: Callable[[int], Any], layers: int, repeats: int) -> float:
    """Median time of one call per layer, captured as one CUDA graph, per layer."""
    for i in range(layers):  # compile and warm up outside the capture
        call(i)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(layers):
            call(i)
    times = []
    for _ in range(repeats + 2):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / layers)
    return statistics.median(times[2:])


def copy_tbps(device: torch.device) -> float:
    a = torch.empty(1 << 30, dtype=torch.uint8, device=device)
    b = torch.empty_like(a)
    return 2 * a.numel() / layers_ms(lambda i: b.copy_(a), 4, 10) / 1e9


def products(rows: int, layers: int, device: torch.device) -> dict[str, dict[str, Any]]:
    """Each product's per-layer weights, its unfused operations and the fused call for a tiling."""
    torch.manual_seed(0)
    dtype = torch.bfloat16
    x = torch.randn(rows, HIDDEN, device=device, dtype=dtype)
    act = torch.randn(rows, INTER, device=device, dtype=dtype) * 0.1
    residual = torch.randn(rows, HIDDEN, device=device, dtype=dtype)
    norm = LlamaRMSNorm(HIDDEN, eps=1e-5).to(device, dtype)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    eps = norm.variance_epsilon

    def weights(n: int, k: int) -> list[torch.Tensor]:
        return [torch.randn(n, k, device=device, dtype=dtype) / k ** 0.5 for _ in range(layers)]

    qkv, o, gate_up, down = weights(3 * HIDDEN, HIDDEN), weights(HIDDEN, HIDDEN), weights(2 * INTER, HIDDEN), \
        weights(HIDDEN, INTER)

    k_cache, v_cache = (torch.zeros(1, HEADS, 2304, HEAD_DIM, device=device, dtype=dtype) for _ in range(2))
    positions = torch.arange(2096, 2096 + rows, device=device)
    angles = positions[:, None].float() * torch.rand(HEAD_DIM // 2, device=device)[None]
    cos, sin = torch.cat([angles, angles], -1).cos().to(dtype), torch.cat([angles, angles], -1).sin().to(dtype)

    def qkv_then_writes(w: torch.Tensor) -> torch.Tensor:
        q, key, value = (t.view(1, rows, HEADS, HEAD_DIM).transpose(1, 2) for t in F.linear(norm(x), w).chunk(3, -1))
        k_cache.index_copy_(2, positions, _apply_rotary(key, cos[None, None], sin[None, None]))
        v_cache.index_copy_(2, positions, value)
        return q

    def gated(h: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        gate, up = F.linear(norm(h), w).chunk(2, dim=-1)
        return F.silu(gate) * up

    return {
        "qkv": {"weights": qkv, "input": x, "unfused": lambda w: F.linear(norm(x), w),
                "fused": lambda w, t: few_rows_linear(x, w, norm_weight=norm.weight, eps=eps, tiling=t)},
        "qkv_cache": {"weights": qkv, "input": x, "unfused": qkv_then_writes,
                      "fused": lambda w, t: qkv_into_cache(x[None], w, norm.weight, eps, cos, sin, positions, k_cache,
                                                           v_cache, block_k=t.block_k, warps=t.warps,
                                                           stages=t.stages)},
        "o": {"weights": o, "input": x, "unfused": lambda w: residual + F.linear(x, w),
              "fused": lambda w, t: few_rows_linear(x, w, residual=residual, tiling=t)},
        "gate_up": {"weights": gate_up, "input": x, "unfused": lambda w: gated(x, w),
                    "fused": lambda w, t: few_rows_linear(x, w, norm_weight=norm.weight, eps=eps, gated=True,
                                                          tiling=t)},
        "down": {"weights": down, "input": act, "unfused": lambda w: residual + F.linear(act, w),
                 "fused": lambda w, t: few_rows_linear(act, w, residual=residual, tiling=t)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="8", help="token rows, e.g. 2,4,8,16")
    parser.add_argument("--layers", type=int, default=32, help="distinct weights per product (Vicuna-7B: 32)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--grid", action="store_true", help="also time every tiling of the grid (compiles each)")
    parser.add_argument("--products", default="qkv,qkv_cache,o,gate_up,down")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_few_rows.py needs a CUDA device")
    device = torch.device("cuda")
    results: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device), "dtype": "bfloat16", "copy_TBps": copy_tbps(device),
        "layers": args.layers, "repeats": args.repeats,
        "versions": {"torch": torch.__version__, "triton": triton.__version__, "cuda": torch.version.cuda,
                     "python": platform.python_version()},
        "timing": "one call per layer over distinct weights, one CUDA graph, median replay / layers", "products": {},
    }
    print(f"{results['device']}  copy {results['copy_TBps']:.2f} TB/s  torch {torch.__version__}  "
          f"triton {triton.__version__}  {args.layers} layers, median of {args.repeats}", flush=True)
    with torch.inference_mode():
        for rows in (int(r) for r in args.rows.split(",")):
            for name, case in products(rows, args.layers, device).items():
                if name not in args.products.split(","):
                    continue
                ws, fused = case["weights"], case["fused"]
                gb = ws[0].numel() * ws[0].element_size() / 1e9
                unfused = torch.compile(case["unfused"], dynamic=False)
                default = (Tiling(block_n=HEAD_DIM // 2, block_k=256, warps=4, stages=3) if name == "qkv_cache"
                           else tiling_for(ws[0].shape[0] // (2 if name == "gate_up" else 1), device,
                                           norm=name in ("qkv", "gate_up"), gated=name == "gate_up"))
                reference = unfused(ws[0]).float()
                gap = (fused(ws[0], default).float() - reference).abs().max().item()
                row: dict[str, Any] = {
                    "weight_GB": gb, "max_abs_gap_to_unfused": gap, "max_abs_unfused": reference.abs().max().item(),
                    "unfused_ms": layers_ms(lambda i: unfused(ws[i]), args.layers, args.repeats),
                    "gemm_ms": layers_ms(lambda i: F.linear(case["input"], ws[i]), args.layers, args.repeats),
                    "tiling_for": vars(default) | {"ms": layers_ms(lambda i: fused(ws[i], default), args.layers,
                                                                   args.repeats)},
                }
                if args.grid:
                    row["grid"] = []
                    # qkv_into_cache's column block is half a head: only the K step, warps and stages vary
                    for t in (t for t in GRID if name != "qkv_cache" or t.block_n == HEAD_DIM // 2):
                        try:
                            ms = layers_ms(lambda i: fused(ws[i], t), args.layers, args.repeats)
                        except triton.runtime.errors.OutOfResources:
                            ms = None  # the pipeline does not fit in shared memory
                        row["grid"].append(vars(t) | {"ms": ms})
                    row["best"] = min((r for r in row["grid"] if r["ms"] is not None), key=lambda r: r["ms"])
                results["products"][f"{name}/{rows}"] = row
                best = row.get("best", row["tiling_for"])
                print(f"rows {rows:2d} {name:8s} unfused {row['unfused_ms'] * 1e3:6.1f} us  "
                      f"gemm alone {row['gemm_ms'] * 1e3:6.1f} us ({gb / row['gemm_ms']:.2f} TB/s)  "
                      f"fused {row['tiling_for']['ms'] * 1e3:6.1f} us ({gb / row['tiling_for']['ms']:.2f} TB/s)  "
                      f"best {best['ms'] * 1e3:6.1f} us {best}  |gap| {gap:.3g} of {row['max_abs_unfused']:.3g}",
                      flush=True)
                if args.out:
                    with open(args.out, "w") as handle:
                        json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
