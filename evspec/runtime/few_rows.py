"""Linear layers over a few rows with their neighbours fused in: the projections of a verify pass.

A verify pass multiplies 2-16 token rows by every weight matrix. Like a one-token step it is bound
by reading the weights, and Leviathan's formula assumes it costs what a step costs. Through cuBLAS
it did not (docs/BENCHMARKS.md): the GEMMs read the weights about as fast as the step's reductions,
but around them the pass ran 130-160 more kernels than the step (norms, SiLU x up, split-K
reductions), whose launch gaps and memory traffic inductor's one-token step avoids by fusing them
into its matrix-vector reductions. Inductor fuses nothing into a cuBLAS call, and its own GEMM
templates (max-autotune) were slower than cuBLAS for these shapes, so evspec carries this kernel:

  * RMSNorm as a prologue, in one pass: ``norm(x) W^T = (x * g) W^T / rms(x)`` row by row, so each
    program multiplies ``x * g`` (rounded to the dtype) and sums the squares of ``x`` as it streams
    K, and divides by the rms at the end, instead of a first pass over ``x`` before its first
    weight load. The result differs from the unfused norm in the last bits of the dtype, as any
    reordering of the sum would;
  * SiLU(gate) x up as an epilogue: a program reads the gate rows and the up rows of the same
    output columns from the fused gate/up weight;
  * the residual addition as an epilogue.

``qkv_into_cache`` also applies the keys' rotary embedding and writes keys and values into the
caches. So a LLaMA layer's projections are four kernels: norm + QKV + rotary + cache writes,
O + residual, norm + gate/up + SiLU x up, down + residual. Each program owns whole output
columns (no split-K), so the epilogues see final sums; ``tiling_for`` picks the blocks.

The kernel runs where Triton does (CUDA; or anywhere under ``TRITON_INTERPRET=1``, which the tests
use); ``StaticDecoder`` keeps the cuBLAS path everywhere else.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from evspec.runtime.triton_support import multiprocessors, tl, triton, triton_runs_on

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
    return x.numel() // x.shape[-1] <= MAX_ROWS and triton_runs_on(x)


def tiling_for(columns: int, device: torch.device, *, norm: bool = False, gated: bool = False) -> Tiling:
    """The tiling of a product with ``columns`` output columns (a gated product's: the gate half's).

    Picked from ``benchmarks/gpu_few_rows.py --grid`` on an H100 (docs/BENCHMARKS.md), for 8 rows
    and a 7B layer's weights. A product with a norm prologue does per-row work on ``x`` at every K
    step, which wide column blocks share: 128 columns (96 programs for QKV; 32 columns ran it ~1.8x
    slower). Without one, 64 columns and long K steps. Narrower blocks where a small model's
    product would leave fewer than half the SMs a program."""
    if gated:
        tiling = Tiling(block_n=128, block_k=64, warps=4, stages=4)  # two weight tiles per step
    elif norm:
        tiling = Tiling(block_n=128, block_k=256, warps=4, stages=3)
    else:
        tiling = Tiling(block_n=64, block_k=256, warps=4, stages=4)
    block_n = tiling.block_n
    while block_n > 32 and 2 * -(-columns // block_n) < multiprocessors(device):
        block_n //= 2
    return Tiling(block_n, tiling.block_k, tiling.warps, tiling.stages)


def few_rows_linear(
    x: torch.Tensor, weight: torch.Tensor, *, norm_weight: torch.Tensor | None = None, eps: float = 0.0,
    gated: bool = False, residual: torch.Tensor | None = None, tiling: Tiling | None = None,
) -> torch.Tensor:
    """``x @ weight.T`` for ``x`` ``[..., K]`` of at most ``MAX_ROWS`` rows, in ``x``'s dtype, with:

    * ``norm_weight``: LLaMA's RMSNorm of ``x`` first (``norm_weight * x / rms(x)``, rounded
      differently: see the module's docstring);
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
    t = tiling or tiling_for(n, x.device, norm=norm_weight is not None, gated=gated)
    grid = (triton.cdiv(n, t.block_n),)
    _few_rows_linear[grid](
        x2, weight, out, x2 if norm_weight is None else norm_weight, res,
        rows, n, k, x2.stride(0), weight.stride(0), out.stride(0), res.stride(0), n * weight.stride(0), eps,
        ROWS=MAX_ROWS, BLOCK_N=t.block_n, BLOCK_K=t.block_k, EVEN_K=k % t.block_k == 0,
        NORM=norm_weight is not None, GATED=gated, RESIDUAL=residual is not None, IEEE=x.dtype == torch.float32,
        num_warps=t.warps, num_stages=t.stages,
    )
    return out.reshape(*lead, n)


def qkv_into_cache(
    x: torch.Tensor, weight: torch.Tensor, norm_weight: torch.Tensor, eps: float, cos: torch.Tensor,
    sin: torch.Tensor, positions: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, *,
    block_k: int = 256, warps: int = 4, stages: int = 3,
) -> torch.Tensor:
    """A LLaMA layer's attention input in one kernel: RMSNorm, the fused Q/K/V product, the keys'
    rotary embedding, and the keys and values written into the caches at ``positions``.

    ``x``: ``[1, k, hidden]`` (k <= ``MAX_ROWS``); ``weight``: ``[(heads + 2 kv_heads) * head_dim,
    hidden]``, query rows then key rows then value rows; ``cos``/``sin``: ``[k, head_dim]``;
    caches: ``[1, kv_heads, slots, head_dim]``. Returns the queries, unrotated, as
    ``[1, heads, k, head_dim]`` (a view of a ``[k, heads * head_dim]`` buffer). One program per
    head, each streaming its head's two halves, so the rotation pairs columns in registers: two
    kernels a layer fewer than the product followed by the cache writes."""
    assert triton is not None
    _, k, hidden = x.shape
    kv_heads, head_dim = k_cache.shape[1], k_cache.shape[3]
    heads = weight.shape[0] // head_dim - 2 * kv_heads
    if k > MAX_ROWS or weight.shape[1] != hidden or heads < 1 or head_dim < 32 or head_dim & (head_dim - 1):
        raise ValueError(f"qkv_into_cache: {k} rows of width {hidden}, weight {tuple(weight.shape)}, "
                         f"head_dim {head_dim}: at most {MAX_ROWS} rows and a power-of-two head_dim >= 32")
    x2 = x.reshape(k, hidden)
    x2 = x2 if x2.stride(-1) == 1 else x2.contiguous()
    weight = weight if weight.stride(-1) == 1 else weight.contiguous()
    if k_cache.stride(-1) != 1 or v_cache.stride(-1) != 1:
        raise ValueError("qkv_into_cache writes caches whose last dimension is dense")
    q = torch.empty(k, heads * head_dim, device=x.device, dtype=x.dtype)
    cos, sin = cos.contiguous(), sin.contiguous()
    _qkv_into_cache[(heads + 2 * kv_heads,)](
        x2, weight, q, norm_weight, cos, sin, positions, k_cache, v_cache,
        k, hidden, x2.stride(0), weight.stride(0), q.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(1), v_cache.stride(2), eps,
        Q_HEADS=heads, KV_HEADS=kv_heads, HEAD_DIM=head_dim, ROWS=MAX_ROWS, BLOCK_K=block_k,
        EVEN_K=hidden % block_k == 0, IEEE=x.dtype == torch.float32, num_warps=warps, num_stages=stages,
    )
    return q.view(1, k, heads, head_dim).transpose(1, 2)


if triton is not None:

    @triton.jit
    def _stream_k(
        x_rows, real, w_cols, cols_in, second_offset, norm_ptr, K, eps,
        ROWS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, EVEN_K: tl.constexpr,
        NORM: tl.constexpr, TWO: tl.constexpr, IEEE: tl.constexpr, dtype: tl.constexpr,
    ):
        """fp32 ``x W^T`` for one [ROWS, BLOCK_N] block of columns, streaming K once; with ``TWO``,
        also for the columns ``second_offset`` further into the weight (up after gate, a head's
        second half after its first). With ``NORM``, of RMSNorm(x) (see the module's docstring)."""
        ks = tl.arange(0, BLOCK_K)
        squares = tl.zeros([ROWS, BLOCK_K], tl.float32)  # summed across K once, after the loop
        acc = tl.zeros([ROWS, BLOCK_N], tl.float32)
        acc2 = tl.zeros([ROWS, BLOCK_N], tl.float32)
        for k0 in range(0, K, BLOCK_K):
            kk = k0 + ks
            if EVEN_K:
                xs = tl.load(x_rows + kk[None, :], mask=real[:, None], other=0.0)
                w = tl.load(w_cols + kk[:, None], mask=cols_in[None, :], other=0.0)
            else:
                xs = tl.load(x_rows + kk[None, :], mask=real[:, None] & (kk[None, :] < K), other=0.0)
                w = tl.load(w_cols + kk[:, None], mask=cols_in[None, :] & (kk[:, None] < K), other=0.0)
            if NORM:  # sum the squares on the way; the 1/rms factor is per row, applied to the sums below
                xf = xs.to(tl.float32)
                squares += xf * xf
                g = tl.load(norm_ptr + kk, mask=kk < K, other=0.0).to(tl.float32)
                xs = (xf * g[None, :]).to(dtype)
            if IEEE:
                acc = tl.dot(xs, w, acc, input_precision="ieee")
            else:
                acc = tl.dot(xs, w, acc)
            if TWO:
                if EVEN_K:
                    w2 = tl.load(w_cols + second_offset + kk[:, None], mask=cols_in[None, :], other=0.0)
                else:
                    w2 = tl.load(w_cols + second_offset + kk[:, None], mask=cols_in[None, :] & (kk[:, None] < K),
                                 other=0.0)
                if IEEE:
                    acc2 = tl.dot(xs, w2, acc2, input_precision="ieee")
                else:
                    acc2 = tl.dot(xs, w2, acc2)
        if NORM:
            inv_rms = 1.0 / tl.sqrt(tl.sum(squares, 1) / K + eps)
            acc = acc * inv_rms[:, None]
            acc2 = acc2 * inv_rms[:, None]
        return acc, acc2

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
        x_rows = x_ptr + r[:, None] * x_stride
        w_cols = w_ptr + cols[None, :] * w_stride  # the weight is loaded as [BLOCK_K, BLOCK_N] tiles
        acc, acc_up = _stream_k(x_rows, real, w_cols, cols_in, up_offset, norm_ptr, K, eps,
                                ROWS, BLOCK_N, BLOCK_K, EVEN_K, NORM, GATED, IEEE, dtype)
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

    @triton.jit
    def _qkv_into_cache(
        x_ptr, w_ptr, q_ptr, norm_ptr, cos_ptr, sin_ptr, positions_ptr, k_cache_ptr, v_cache_ptr,
        rows, K, x_stride, w_stride, q_stride, k_stride_head, k_stride_slot, v_stride_head, v_stride_slot, eps,
        Q_HEADS: tl.constexpr, KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, ROWS: tl.constexpr,
        BLOCK_K: tl.constexpr, EVEN_K: tl.constexpr, IEEE: tl.constexpr,
    ):
        dtype = q_ptr.dtype.element_ty
        HALF: tl.constexpr = HEAD_DIM // 2
        head = tl.program_id(0)  # the fused weight's row blocks: query heads, key heads, value heads
        r = tl.arange(0, ROWS)
        real = r < rows
        d = tl.arange(0, HALF)
        x_rows = x_ptr + r[:, None] * x_stride
        w_cols = w_ptr + (head * HEAD_DIM + d)[None, :] * w_stride
        # Each head as its two halves, so the rotation pairs column d with column d + HALF in registers.
        lo, hi = _stream_k(x_rows, real, w_cols, d < HALF, HALF * w_stride, norm_ptr, K, eps,
                           ROWS, HALF, BLOCK_K, EVEN_K, True, True, IEEE, dtype)
        lo = lo.to(dtype)  # the projection's output, rounded as the unfused GEMM rounds it
        hi = hi.to(dtype)
        if head < Q_HEADS:  # queries leave unrotated: the attention kernel rotates them
            q_out = q_ptr + r[:, None] * q_stride + head * HEAD_DIM + d[None, :]
            tl.store(q_out, lo, mask=real[:, None])
            tl.store(q_out + HALF, hi, mask=real[:, None])
        else:
            slot = tl.load(positions_ptr + r, mask=real, other=0)
            if head < Q_HEADS + KV_HEADS:  # keys: rotate (rotate-half layout), then into the cache
                table = r[:, None] * HEAD_DIM + d[None, :]
                cos_lo = tl.load(cos_ptr + table, mask=real[:, None], other=0.0).to(tl.float32)
                cos_hi = tl.load(cos_ptr + table + HALF, mask=real[:, None], other=0.0).to(tl.float32)
                sin_lo = tl.load(sin_ptr + table, mask=real[:, None], other=0.0).to(tl.float32)
                sin_hi = tl.load(sin_ptr + table + HALF, mask=real[:, None], other=0.0).to(tl.float32)
                lo32, hi32 = lo.to(tl.float32), hi.to(tl.float32)
                k_out = k_cache_ptr + (head - Q_HEADS) * k_stride_head + slot[:, None] * k_stride_slot + d[None, :]
                tl.store(k_out, (lo32 * cos_lo - hi32 * sin_lo).to(dtype), mask=real[:, None])
                tl.store(k_out + HALF, (hi32 * cos_hi + lo32 * sin_hi).to(dtype), mask=real[:, None])
            else:
                v_out = v_cache_ptr + (head - Q_HEADS - KV_HEADS) * v_stride_head + slot[:, None] * v_stride_slot
                tl.store(v_out + d[None, :], lo, mask=real[:, None])
                tl.store(v_out + HALF + d[None, :], hi, mask=real[:, None])
