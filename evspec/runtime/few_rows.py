"""Linear layers over a few rows with their neighbours fused in: the projections of a verify pass.

A verify pass multiplies 2-16 token rows by every weight matrix. Like a one-token step it is bound
by reading the weights, and Leviathan's formula assumes it costs what a step costs. Through cuBLAS
it did not (docs/BENCHMARKS.md): the GEMMs read the weights about as fast as the step's reductions,
but around them the pass ran ~160 more kernels than the step (norms, SiLU x up, split-K
reductions), whose launch gaps and memory traffic inductor's one-token step avoids by fusing them
into its matrix-vector reductions. Inductor fuses nothing into a cuBLAS call, and its own GEMM
templates (max-autotune) were slower than cuBLAS for these shapes, so evspec carries this kernel:

  * RMSNorm as a prologue: each program first sums the squares of its rows (a few KB, from L2),
    then normalises each K block as it loads it, rounding where LLaMA's ``RMSNorm`` rounds;
  * SiLU(gate) x up as an epilogue: a program reads the gate rows and the up rows of the same
    output columns from the fused gate/up weight;
  * the residual addition as an epilogue.

So a LLaMA layer's projections are four kernels: norm + QKV, O + residual, norm + gate/up + SiLU x up,
down + residual. Each program owns whole output columns (no split-K), so the epilogues see final
sums; ``tiling_for`` picks column blocks small enough to give every SM work.

The kernel runs where Triton does (CUDA; or anywhere under ``TRITON_INTERPRET=1``, which the tests
use); ``StaticDecoder`` keeps the cuBLAS path everywhere else.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import torch

try:  # Triton ships with CUDA builds of PyTorch; CPU builds keep cuBLAS/ATen products.
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the install
    triton = None

MAX_ROWS = 16  # tl.dot's smallest row block; more rows are a real GEMM, cuBLAS's ground


@dataclass(frozen=True)
class Tiling:
    """How one product is cut: output columns per program, K per loop step, warps, pipeline stages."""

    block_n: int = 32
    block_k: int = 128
    warps: int = 4
    stages: int = 4


def few_rows_supported(x: torch.Tensor) -> bool:
    """Whether :func:`few_rows_linear` runs on ``x`` ``[..., K]``: Triton present, at most
    ``MAX_ROWS`` rows, on CUDA (or under Triton's CPU interpreter)."""
    if triton is None or x.numel() // x.shape[-1] > MAX_ROWS:
        return False
    return x.is_cuda or os.environ.get("TRITON_INTERPRET") == "1"


@functools.lru_cache(maxsize=None)
def _multiprocessors(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4


def tiling_for(columns: int, device: torch.device) -> Tiling:
    """The tiling for ``columns`` output columns (per weight tile: a gated product's gate half).

    Column blocks as wide as still give every SM at least two programs: a program reads its
    columns' weight rows once, so narrow blocks cost nothing in re-reads and wide ones leave SMs
    idle (a 4096-column product in 64-wide blocks is 64 programs on 132 SMs)."""
    wanted = 2 * _multiprocessors(device)
    block_n = 64
    while block_n > 16 and -(-columns // block_n) < wanted:
        block_n //= 2
    return Tiling(block_n=block_n)


def few_rows_linear(
    x: torch.Tensor, weight: torch.Tensor, *, norm_weight: torch.Tensor | None = None, eps: float = 0.0,
    gated: bool = False, residual: torch.Tensor | None = None, tiling: Tiling | None = None,
) -> torch.Tensor:
    """``x @ weight.T`` for ``x`` ``[..., K]`` of at most ``MAX_ROWS`` rows, in ``x``'s dtype, with:

    * ``norm_weight``: LLaMA's RMSNorm of ``x`` first (``norm_weight * (x / rms(x)).to(dtype)``);
    * ``gated``: ``weight`` is ``[gate; up]`` (``[2 I, K]``) and the result is ``silu(gate) * up``
      (``[..., I]``), each rounded to the dtype as the separate operations round;
    * ``residual``: added to the product (same shape as the result).
    """
    assert triton is not None
    *lead, k = x.shape
    rows = x.numel() // k
    n = weight.shape[0] // 2 if gated else weight.shape[0]
    if rows > MAX_ROWS or weight.shape[1] != k or (gated and weight.shape[0] % 2):
        raise ValueError(f"few_rows_linear takes <= {MAX_ROWS} rows of width {weight.shape[1]}, got {tuple(x.shape)}")
    x2 = x.reshape(rows, k)
    x2 = x2 if x2.stride(-1) == 1 else x2.contiguous()
    weight = weight if weight.stride(-1) == 1 else weight.contiguous()
    out = torch.empty(rows, n, device=x.device, dtype=x.dtype)
    res = out if residual is None else residual.reshape(rows, n)
    res = res if res.stride(-1) == 1 else res.contiguous()
    t = tiling or tiling_for(n, x.device)
    grid = (triton.cdiv(n, t.block_n),)
    _few_rows_linear[grid](
        x2, weight, out, x2 if norm_weight is None else norm_weight, res,
        rows, n, k, x2.stride(0), weight.stride(0), out.stride(0), res.stride(0), n * weight.stride(0), eps,
        ROWS=MAX_ROWS, BLOCK_N=t.block_n, BLOCK_K=t.block_k, EVEN_K=k % t.block_k == 0,
        NORM=norm_weight is not None, GATED=gated, RESIDUAL=residual is not None, IEEE=x.dtype == torch.float32,
        num_warps=t.warps, num_stages=t.stages,
    )
    return out.reshape(*lead, n)


if triton is not None:

    @triton.jit
    def _few_rows_linear(
        x_ptr, w_ptr, out_ptr, norm_ptr, res_ptr,
        rows, N, K, x_stride, w_stride, out_stride, res_stride, up_offset, eps,
        ROWS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, EVEN_K: tl.constexpr,
        NORM: tl.constexpr, GATED: tl.constexpr, RESIDUAL: tl.constexpr, IEEE: tl.constexpr,
    ):
        dtype = out_ptr.dtype.element_ty
        r = tl.arange(0, ROWS)
        real = r < rows
        cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        cols_in = cols < N
        ks = tl.arange(0, BLOCK_K)
        x_rows = x_ptr + r[:, None] * x_stride
        w_cols = w_ptr + cols[None, :] * w_stride  # the weight is loaded as [BLOCK_K, BLOCK_N] tiles
        if NORM:
            squares = tl.zeros([ROWS], tl.float32)
            for k0 in range(0, K, BLOCK_K):
                kk = k0 + ks
                xs = tl.load(x_rows + kk[None, :], mask=real[:, None] & (kk[None, :] < K), other=0.0).to(tl.float32)
                squares += tl.sum(xs * xs, 1)
            inv_rms = 1.0 / tl.sqrt(squares / K + eps)
        acc = tl.zeros([ROWS, BLOCK_N], tl.float32)
        acc_up = tl.zeros([ROWS, BLOCK_N], tl.float32)
        for k0 in range(0, K, BLOCK_K):
            kk = k0 + ks
            if EVEN_K:
                xs = tl.load(x_rows + kk[None, :], mask=real[:, None], other=0.0)
                w = tl.load(w_cols + kk[:, None], mask=cols_in[None, :], other=0.0)
            else:
                xs = tl.load(x_rows + kk[None, :], mask=real[:, None] & (kk[None, :] < K), other=0.0)
                w = tl.load(w_cols + kk[:, None], mask=cols_in[None, :] & (kk[:, None] < K), other=0.0)
            if NORM:  # LlamaRMSNorm: weight * (x * rsqrt(mean(x^2) + eps)).to(dtype), product rounded
                g = tl.load(norm_ptr + kk, mask=kk < K, other=0.0).to(tl.float32)
                normed = (xs.to(tl.float32) * inv_rms[:, None]).to(dtype).to(tl.float32)
                xs = (normed * g[None, :]).to(dtype)
            if IEEE:
                acc = tl.dot(xs, w, acc, input_precision="ieee")
            else:
                acc = tl.dot(xs, w, acc)
            if GATED:
                if EVEN_K:
                    w_up = tl.load(w_cols + up_offset + kk[:, None], mask=cols_in[None, :], other=0.0)
                else:
                    w_up = tl.load(w_cols + up_offset + kk[:, None], mask=cols_in[None, :] & (kk[:, None] < K),
                                   other=0.0)
                if IEEE:
                    acc_up = tl.dot(xs, w_up, acc_up, input_precision="ieee")
                else:
                    acc_up = tl.dot(xs, w_up, acc_up)
        if GATED:  # silu(gate) * up, rounded after each operation as the unfused MLP rounds
            gate = acc.to(dtype).to(tl.float32)
            act = (gate / (1.0 + tl.exp(-gate))).to(dtype).to(tl.float32)
            y = (act * acc_up.to(dtype).to(tl.float32)).to(dtype)
        else:
            y = acc.to(dtype)
        inside = real[:, None] & cols_in[None, :]
        if RESIDUAL:
            res = tl.load(res_ptr + r[:, None] * res_stride + cols[None, :], mask=inside, other=0.0)
            y = (y.to(tl.float32) + res.to(tl.float32)).to(dtype)
        tl.store(out_ptr + r[:, None] * out_stride + cols[None, :], y, mask=inside)
