"""Products of a few rows with a 7B model's weight matrices: cuBLAS, inductor, and evspec's kernel.

For each weight shape of a Vicuna-7B layer and its LM head, and each row count M, times (bf16,
CUDA-graph replays through ``triton.testing.do_bench_cudagraph``, so no launch overhead):

  * ``cublas``:   ``F.linear`` (PyTorch's GEMM dispatch);
  * ``inductor``: ``torch.compile(F.linear)`` with coordinate-descent tuning, which for M=1 is the
                  matrix-vector reduction a compiled decode step runs;
  * ``skinny``:   ``evspec.runtime.skinny`` with the tiling ``tiling_for`` picks;
  * ``best``:     the best tiling of a grid (--search), to check ``tiling_for``'s choice.

and reports each as weight-read bandwidth (weight bytes / time), next to a measured device copy.
Outputs are checked against an fp32 product first.

    python benchmarks/gpu_skinny_mm.py --out $OUT/skinny.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
from typing import Any

import torch
import torch.nn.functional as F

from evspec.models.tiny import VICUNA_7B, VOCAB_7B
from evspec.runtime.skinny import Tiling, skinny_matmul, tiling_for

SHAPES = {  # name: (N, K) of the weight
    "qkvo": (VICUNA_7B["hidden_size"], VICUNA_7B["hidden_size"]),
    "gate_up": (VICUNA_7B["intermediate_size"], VICUNA_7B["hidden_size"]),
    "down": (VICUNA_7B["hidden_size"], VICUNA_7B["intermediate_size"]),
    "lm_head": (VOCAB_7B, VICUNA_7B["hidden_size"]),
}


def bench_ms(fn) -> float:
    import triton.testing

    return float(triton.testing.do_bench_cudagraph(fn, rep=20, return_mode="median"))


def copy_bandwidth(device: torch.device) -> float:
    """bytes/s of a 1 GiB device-to-device copy (read + write)."""
    src = torch.empty(1 << 29, dtype=torch.bfloat16, device=device)
    dst = torch.empty_like(src)
    ms = bench_ms(lambda: dst.copy_(src))
    return 2 * src.numel() * 2 / (ms / 1e3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="1,2,4,8,16")
    parser.add_argument("--search", default="8", help="row counts to search tilings at")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_skinny_mm.py needs a CUDA device")
    import triton

    device = torch.device("cuda")
    torch.manual_seed(args.seed)
    rows = [int(m) for m in args.rows.split(",")]
    search = [int(m) for m in args.search.split(",") if m]
    copy = copy_bandwidth(device)
    results: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device), "dtype": "bfloat16", "seed": args.seed,
        "copy_TBps": copy / 1e12, "shapes": SHAPES, "rows": rows,
        "versions": {"torch": torch.__version__, "triton": triton.__version__, "cuda": torch.version.cuda,
                     "python": platform.python_version()},
        "ms": {}, "best": {},
    }
    print(f"{results['device']}  copy {copy / 1e12:.2f} TB/s  torch {torch.__version__}  triton {triton.__version__}")
    grid = [Tiling(block_n=bn, block_k=bk, splits=s, warps=w, stages=st)
            for bn, bk, s, w, st in itertools.product((32, 64, 128), (64, 128, 256), (1, 2, 4, 8, 16), (4, 8), (3, 5))]
    for name, (n, k) in SHAPES.items():
        weight = torch.randn(n, k, device=device, dtype=torch.bfloat16) * 0.02
        gbytes = n * k * 2 / 1e9
        for m in rows:
            x = torch.randn(m, k, device=device, dtype=torch.bfloat16)
            reference = x.float() @ weight.float().T
            error = ((skinny_matmul(x, weight).float() - reference).abs().max() / reference.abs().max()).item()
            assert error < 1e-2, f"skinny_matmul is wrong for {name} M={m}: relative error {error:.2e}"
            torch._dynamo.reset()  # a fresh compilation per shape, not dynamo's recompile limit
            with torch._inductor.config.patch(coordinate_descent_tuning=True):
                compiled = torch.compile(lambda a, b: F.linear(a, b), fullgraph=True, dynamic=False)
                compiled(x, weight)
            row = {
                "cublas": bench_ms(lambda: F.linear(x, weight)),
                "inductor": bench_ms(lambda: compiled(x, weight)),
                "skinny": bench_ms(lambda: skinny_matmul(x, weight)),
                "max_rel_error": error,
            }
            if m in search:
                timed = []
                for tiling in grid:
                    try:
                        timed.append((bench_ms(lambda t=tiling: skinny_matmul(x, weight, t)), tiling))
                    except Exception as failure:  # a tiling that exceeds shared memory: not a candidate
                        print(f"  skip {tiling}: {type(failure).__name__}")
                timed.sort(key=lambda pair: pair[0])
                row["best"] = timed[0][0]
                results["best"][f"{name}/{m}"] = [{"ms": ms, **vars(t)} for ms, t in timed[:5]]
            results["ms"][f"{name}/{m}"] = row
            print(f"{name:8s} [{n:5d}x{k:5d}] M={m:2d}  " + "  ".join(
                f"{key} {row[key]:.3f} ms ({gbytes / row[key]:.2f} TB/s)" for key in ("cublas", "inductor", "skinny", "best")
                if key in row) + f"  tiling {tiling_for(n, k)}", flush=True)
            if args.out:
                with open(args.out, "w") as handle:
                    json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
