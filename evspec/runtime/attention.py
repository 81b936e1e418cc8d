"""Attention of a few queries over a long KV cache, split along the keys (flash-decoding).

A verify pass asks 2-16 queries to attend over a ~2100-slot cache. On an H100 the usual kernels
leave most of the GPU idle or take many launches for this shape (docs/BENCHMARKS.md):
  * SDPA's fused kernel runs one thread block per head: 32 blocks on 132 SMs, 1.62 ms over a 7B
    model's 32 layers for 8 queries, 3x its one-query time;
  * written out (two batched GEMMs, a softmax and a layout copy: five kernels a layer), ~0.8 ms;
  * FlexAttention's decoding kernel (torch 2.11) took 2.8 ms with the position mask as a score_mod.
FlashAttention's ``flash_attn_with_kvcache`` does what this module does but is a separate CUDA
build that PyTorch does not ship, so evspec carries this small Triton kernel instead.

Each program takes one K/V head and one slice of the keys, and computes a partial softmax for all
the query rows that share that head (query heads of a GQA group x queries, padded to 16 rows for
``tl.dot``); a second kernel merges the slices' partials and writes the output already laid out
as ``[1, queries, heads * head_dim]``, the input of ``o_proj``. Keys past the last query's
position are skipped, so a cache bucket longer than the sequence costs nothing.
"""

from __future__ import annotations

import torch

from evspec.runtime.triton_support import multiprocessors, tl, triton, triton_runs_on

BLOCK_KEYS = 64  # keys per inner step
MIN_ROWS = 16  # tl.dot needs >= 16 rows


def split_kv_supported(q: torch.Tensor) -> bool:
    """Whether :func:`split_kv_attention` can run these queries ``[1, heads, k, head_dim]``:
    Triton present, a CUDA tensor (or Triton's CPU interpreter), head_dim a power of two >= 16."""
    head_dim = q.shape[-1]
    return head_dim >= 16 and not head_dim & (head_dim - 1) and triton_runs_on(q)


def programs_wanted(device: torch.device) -> int:
    """Two programs per SM keep every SM busy while one waits on memory."""
    return 2 * multiprocessors(device)


def split_kv_attention(
    q: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
    positions: torch.Tensor, kv_len: int, scale: float, programs: int,
) -> torch.Tensor:
    """softmax(rope(q) K^T * scale) V over cache slots ``[0, kv_len)``, query i seeing keys <= positions[i].

    ``q``: ``[1, heads, k, head_dim]``, before its rotary embedding, which the kernel applies with
    ``cos``/``sin`` (``[k, head_dim]``, LLaMA's rotate-half layout): one kernel launch less per layer.
    Caches: ``[1, kv_heads, slots, head_dim]``, keys already rotated; ``positions``: ``[k]``
    ascending. Returns ``[1, k, heads * head_dim]`` in ``q``'s dtype. ``programs``: how many thread
    blocks to aim for (:func:`programs_wanted`); fixed per call so a compiled graph keeps one launch
    shape."""
    assert triton is not None
    _, heads, queries, head_dim = q.shape
    kv_heads = k_cache.shape[1]
    group = heads // kv_heads
    rows = max(MIN_ROWS, triton.next_power_of_2(group * queries))
    splits = max(1, min(triton.cdiv(kv_len, BLOCK_KEYS), triton.cdiv(programs, kv_heads)))
    keys_per_split = triton.cdiv(triton.cdiv(kv_len, splits), BLOCK_KEYS) * BLOCK_KEYS
    splits = triton.cdiv(kv_len, keys_per_split)
    # q is usually a strided view of the fused QKV output: the kernel takes its strides, so no
    # copy (a copy was a kernel launch per layer); only its last dimension must be dense.
    q = q if q.stride(-1) == 1 else q.contiguous()
    cos, sin = cos.contiguous(), sin.contiguous()
    partial = torch.empty(kv_heads * splits * rows, head_dim, device=q.device, dtype=torch.float32)
    row_max = torch.empty(kv_heads * splits * rows, device=q.device, dtype=torch.float32)
    row_sum = torch.empty_like(row_max)
    _partial_attention[(kv_heads, splits)](
        q, cos, sin, k_cache, v_cache, positions, partial, row_max, row_sum,
        kv_len, keys_per_split,
        q.stride(1), q.stride(2), k_cache.stride(1), k_cache.stride(2), v_cache.stride(1), v_cache.stride(2),
        GROUP=group, QUERIES=queries, ROWS=rows, HEAD_DIM=head_dim, BLOCK_N=BLOCK_KEYS, SCALE=scale,
        IEEE=q.dtype == torch.float32, num_warps=4, num_stages=2,
    )
    out = torch.empty(1, queries, heads * head_dim, device=q.device, dtype=q.dtype)
    _merge_splits[(kv_heads, group * queries)](
        partial, row_max, row_sum, out, splits,
        GROUP=group, QUERIES=queries, ROWS=rows, HEAD_DIM=head_dim, SPLITS=triton.next_power_of_2(splits),
        num_warps=4,
    )
    return out


if triton is not None:

    @triton.jit
    def _partial_attention(
        q_ptr, cos_ptr, sin_ptr, k_ptr, v_ptr, positions_ptr, partial_ptr, max_ptr, sum_ptr,
        kv_len, keys_per_split,
        q_stride_head, q_stride_query, k_stride_head, k_stride_slot, v_stride_head, v_stride_slot,
        GROUP: tl.constexpr, QUERIES: tl.constexpr, ROWS: tl.constexpr, HEAD_DIM: tl.constexpr,
        BLOCK_N: tl.constexpr, SCALE: tl.constexpr, IEEE: tl.constexpr,
    ):
        kv_head = tl.program_id(0)
        split = tl.program_id(1)
        rows = tl.arange(0, ROWS)  # row = (head within the group) * QUERIES + query
        real = rows < GROUP * QUERIES
        query = rows % QUERIES
        head = kv_head * GROUP + rows // QUERIES
        dims = tl.arange(0, HEAD_DIM)
        # rope: q * cos + rotate_half(q) * sin, rotate_half(q)[d] = -q[d + D/2] (d < D/2), q[d - D/2]
        partner = (dims + HEAD_DIM // 2) % HEAD_DIM
        sign = tl.where(dims < HEAD_DIM // 2, -1.0, 1.0)
        q_row = q_ptr + head[:, None] * q_stride_head + query[:, None] * q_stride_query
        q = tl.load(q_row + dims[None, :], mask=real[:, None], other=0.0)
        q_partner = tl.load(q_row + partner[None, :], mask=real[:, None], other=0.0).to(tl.float32)
        cos = tl.load(cos_ptr + query[:, None] * HEAD_DIM + dims[None, :], mask=real[:, None], other=0.0)
        sin = tl.load(sin_ptr + query[:, None] * HEAD_DIM + dims[None, :], mask=real[:, None], other=0.0)
        q = (q.to(tl.float32) * cos.to(tl.float32) + sign[None, :] * q_partner * sin.to(tl.float32)).to(q.dtype)
        position = tl.load(positions_ptr + query, mask=real, other=0)
        last = tl.load(positions_ptr + QUERIES - 1)  # positions ascend: no query sees past it
        start = split * keys_per_split
        end = tl.minimum(tl.minimum(start + keys_per_split, kv_len), last + 1)
        row_max = tl.full([ROWS], float("-inf"), tl.float32)
        row_sum = tl.zeros([ROWS], tl.float32)
        acc = tl.zeros([ROWS, HEAD_DIM], tl.float32)
        for first in range(start, end, BLOCK_N):
            keys = first + tl.arange(0, BLOCK_N)
            present = keys < end
            k = tl.load(k_ptr + kv_head * k_stride_head + keys[:, None] * k_stride_slot + dims[None, :],
                        mask=present[:, None], other=0.0)
            if IEEE:
                scores = tl.dot(q, tl.trans(k), input_precision="ieee")
            else:
                scores = tl.dot(q, tl.trans(k))
            visible = present[None, :] & (keys[None, :] <= position[:, None])
            scores = tl.where(visible, scores * SCALE, float("-inf"))
            new_max = tl.maximum(row_max, tl.max(scores, 1))
            shift = tl.where(new_max == float("-inf"), 0.0, new_max)  # a row that has seen nothing yet
            p = tl.exp(scores - shift[:, None])
            rescale = tl.exp(row_max - shift)
            row_sum = row_sum * rescale + tl.sum(p, 1)
            v = tl.load(v_ptr + kv_head * v_stride_head + keys[:, None] * v_stride_slot + dims[None, :],
                        mask=present[:, None], other=0.0)
            if IEEE:
                acc = acc * rescale[:, None] + tl.dot(p.to(v.dtype), v, input_precision="ieee")
            else:
                acc = acc * rescale[:, None] + tl.dot(p.to(v.dtype), v)
            row_max = new_max
        slot = (kv_head * tl.num_programs(1) + split) * ROWS + rows
        tl.store(partial_ptr + slot[:, None] * HEAD_DIM + dims[None, :], acc)
        tl.store(max_ptr + slot, row_max)
        tl.store(sum_ptr + slot, row_sum)

    @triton.jit
    def _merge_splits(
        partial_ptr, max_ptr, sum_ptr, out_ptr, splits,
        GROUP: tl.constexpr, QUERIES: tl.constexpr, ROWS: tl.constexpr, HEAD_DIM: tl.constexpr,
        SPLITS: tl.constexpr,
    ):
        kv_head = tl.program_id(0)
        row = tl.program_id(1)
        split = tl.arange(0, SPLITS)
        present = split < splits
        slot = (kv_head * splits + split) * ROWS + row
        row_max = tl.load(max_ptr + slot, mask=present, other=float("-inf"))
        row_sum = tl.load(sum_ptr + slot, mask=present, other=0.0)
        # The first split holds key 0, which every query sees: the maximum is finite.
        weight = tl.exp(row_max - tl.max(row_max, 0))
        dims = tl.arange(0, HEAD_DIM)
        acc = tl.load(partial_ptr + slot[:, None] * HEAD_DIM + dims[None, :], mask=present[:, None], other=0.0)
        merged = tl.sum(acc * weight[:, None], 0) / tl.sum(row_sum * weight, 0)
        head = kv_head * GROUP + row // QUERIES
        query = row % QUERIES
        out = out_ptr + query * (GROUP * tl.num_programs(0) * HEAD_DIM) + head * HEAD_DIM + dims
        tl.store(out, merged.to(out_ptr.dtype.element_ty))
