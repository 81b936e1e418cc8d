"""Linear layers over a few rows (a verify pass's 2-16 tokens), reading the weights at full bandwidth.

Why a kernel of our own: a verify pass multiplies 2-16 token rows by every weight matrix, so like a
one-token step it is bound by reading the weights, and ideally costs what a step costs. It did not:
on an H100 cuBLAS's split-K kernels read a 7B model's weights for 8 rows markedly slower than
inductor's tuned reductions read them for 1 row (which inductor only generates for exactly one
row), and inductor's own GEMM templates (max-autotune) were no faster. That made a verify pass
1.16x a step, and Leviathan's speedup assumes 1x. This kernel is the split-K matrix-vector
product generalised to a block of 16 rows: each program streams one slab of the weight through the
tensor cores once, and the partial sums of the K splits are added by the caller, where inductor
fuses the addition into the next operation. Measured against both in ``benchmarks/gpu_skinny_mm.py``.

The kernel runs where Triton does (CUDA; or anywhere under ``TRITON_INTERPRET=1``, which the tests
use). ``linear`` falls back to ``F.linear`` everywhere else, so nothing here is needed on CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: this is a CUDA fast path
    triton = None

MAX_ROWS = 16  # tl.dot's smallest row block; more rows are a real GEMM, cuBLAS's ground


@dataclass(frozen=True)
class Tiling:
    """How one product is cut: output columns per program, K per loop step, and K splits."""

    block_n: int = 64
    block_k: int = 128
    splits: int = 4
    warps: int = 4
    stages: int = 4


def tiling_for(n: int, k: int) -> Tiling:
    """The tiling for an [n, k] weight. Enough programs to cover the SMs more than once, and
    each streaming long runs of K; picked from ``benchmarks/gpu_skinny_mm.py`` on an H100."""
    blocks = -(-n // 64)
    splits = max(1, min(8, 512 // blocks))
    return Tiling(block_n=64, block_k=128, splits=splits)


if triton is not None:

    @triton.jit
    def _partials_kernel(
        x_ptr, w_ptr, out_ptr, M, N, K, k_per_split,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    ):
        """out[split, m, n] = sum over this split's K of x[m, k] * w[n, k] (fp32)."""
        pid_n = tl.program_id(0)
        split = tl.program_id(1)
        rows = tl.arange(0, BLOCK_M)
        cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        ks = tl.arange(0, BLOCK_K)
        k_start = split * k_per_split
        k_end = tl.minimum(k_start + k_per_split, K)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(k_start, k_end, BLOCK_K):
            kk = k0 + ks
            x = tl.load(x_ptr + rows[:, None] * K + kk[None, :], mask=(rows[:, None] < M) & (kk[None, :] < k_end), other=0.0)
            w = tl.load(w_ptr + cols[None, :] * K + kk[:, None], mask=(cols[None, :] < N) & (kk[:, None] < k_end), other=0.0)
            acc += tl.dot(x, w, out_dtype=tl.float32)
        out = out_ptr + split * M * N + rows[:, None] * N + cols[None, :]
        tl.store(out, acc, mask=(rows[:, None] < M) & (cols[None, :] < N))

    @torch.library.triton_op("evspec::skinny_partials", mutates_args=())
    def skinny_partials(
        x: torch.Tensor, weight: torch.Tensor, block_n: int, block_k: int, splits: int, warps: int, stages: int,
    ) -> torch.Tensor:
        """[splits, M, N] fp32 partial products of x [M, K] and weight [N, K]; their sum is x @ weight.T."""
        m, k = x.shape
        n = weight.shape[0]
        k_per_split = -(-(-(-k // block_k)) // splits) * block_k  # whole K blocks per split
        out = torch.empty(splits, m, n, device=x.device, dtype=torch.float32)
        grid = (triton.cdiv(n, block_n), splits)
        torch.library.wrap_triton(_partials_kernel)[grid](
            x, weight, out, m, n, k, k_per_split,
            BLOCK_M=MAX_ROWS, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=warps, num_stages=stages,
        )
        return out


def available(device: torch.device) -> bool:
    """Whether the kernel can run on tensors of this device."""
    return triton is not None and device.type == "cuda"


def skinny_matmul(x: torch.Tensor, weight: torch.Tensor, tiling: Tiling | None = None) -> torch.Tensor:
    """x [M <= 16, K] @ weight[N, K].T in x's dtype, through the kernel."""
    if triton is None:
        raise RuntimeError("skinny_matmul needs Triton")
    m, k = x.shape
    if m > MAX_ROWS or weight.shape[1] != k:
        raise ValueError(f"skinny_matmul takes at most {MAX_ROWS} rows of width {weight.shape[1]}, got {tuple(x.shape)}")
    t = tiling or tiling_for(weight.shape[0], k)
    partials = skinny_partials(x.contiguous(), weight.contiguous(), t.block_n, t.block_k, t.splits, t.warps, t.stages)
    return partials.sum(0).to(x.dtype)


def linear(x: torch.Tensor, layer: torch.nn.Module) -> torch.Tensor:
    """``layer(x)`` for x [..., K]; through the kernel when x has 2-16 rows on a CUDA device and the
    layer is a plain bias-free ``nn.Linear`` (a quantized layer keeps its own forward)."""
    rows = x.numel() // x.shape[-1]
    plain = type(layer) is torch.nn.Linear and layer.bias is None
    if not plain or not 2 <= rows <= MAX_ROWS or not available(x.device):
        return layer(x)
    return skinny_matmul(x.reshape(rows, x.shape[-1]), layer.weight).reshape(*x.shape[:-1], layer.out_features)
