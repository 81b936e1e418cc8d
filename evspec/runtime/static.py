"""The fast path: a static KV cache and compiled steps replayed as CUDA graphs, over a LLaMA body's weights.

gpt-fast's recipe (pytorch-labs/gpt-fast ``generate.py``): preallocate K/V for the whole sequence,
write new positions in place, attend over the filled part with a position mask, and compile the
fixed-shape step. We reuse the transformers LLaMA modules (norms, projections, MLP, rotary table)
and own only the attention and the cache, because transformers' cache internals differ between
5.x releases and roll-back (rejected drafts) must be a length change, not a copy. QKV and gate/up
are fused (gpt-fast fuses them) only for passes over several tokens: measured on an H100, fused
weights made inductor's compiled one-token step 2x slower, and made an 8-token pass 1.09x a step
instead of 1.18x (docs/BENCHMARKS.md). Both read the same storage (``_fuse_rows``).

CUDA graphs are captured here, one per (query length, attended length), vLLM-style, rather than by
``torch.compile(mode="reduce-overhead")``: its CUDA-graph trees assume one call order per
iteration, and speculative decoding interleaves a draft's and a target's steps in an order that
changes with every rejection. On an H100 a 4-layer draft's synchronized step took 0.59 ms
through the trees and 0.42 ms as a plain graph replay (docs/BENCHMARKS.md, c = 0.089 vs 0.053).

Numerics differ from transformers' eager path in the last bits (another attention call), so
speculative decoding with ``StaticDecoder`` is lossless relative to ``StaticDecoder`` target-only
decoding; ``EagerState`` stays the reference for equality with ``generate()``.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from evspec.errors import ConfigError
from evspec.runtime.attention import programs_wanted, split_kv_attention, split_kv_supported
from evspec.runtime.few_rows import Tiling, few_rows_linear, few_rows_supported, qkv_into_cache, tiling_for
from evspec.runtime.decode import LanguageModel, StepOutput, extend_inputs, resolve_taps

# The attended cache length is rounded up to a multiple of this: one compiled graph per bucket.
# Coarse on purpose: each bucket costs a compilation (tens of seconds at 7B), and up to 1023 extra
# slots cost a 7B step ~5% more reads (its K/V: 0.5 MB per slot, against 13.5 GB of weights).
KV_BUCKET = 1024
# Cache slots come in multiples of this, so every attended length is aligned. Why: with the
# cache sized to an arbitrary max_length (2237 slots) a 7B verify pass took 8.6 ms instead of
# 6.9 ms on an H100 (odd-length GEMMs), and the one-token step 6.3 ms instead of 6.0.
SLOT_ALIGN = 64
# dynamo's recompile limit inside a decoder's compiled calls: one graph per (query length, length
# bucket, taps) is more than its default of 8.
RECOMPILE_LIMIT = 256
_COMPILER_LOCK = threading.RLock()


@contextmanager
def _compiler_settings() -> Iterator[None]:
    """dynamo's recompile limit raised for the duration of one of our compiled calls (it is read
    when a call misses the compiled cache), then put back: the caller's process keeps its own
    settings. A lock, because ``config.patch`` restores what it saw on entry: two threads
    compiling at once (parallel prefill) could otherwise leave the raised value behind."""
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"  # renamed in torch 2.6
    with _COMPILER_LOCK, config.patch(**{name: max(getattr(config, name), RECOMPILE_LIMIT)}):
        yield


def _pad_to_power_of_two(ids: torch.Tensor, room: int) -> torch.Tensor:
    """Token ids [1, k] padded (with id 0) to the next power of two that fits in ``room``.

    A compiled step records one CUDA graph per query length: verify passes (drafts + 1) and the
    draft's catch-up passes vary in length, padding keeps them to a handful. The padding sits
    after the real positions, which the causal mask keeps from seeing it; its K/V land past the
    sequence's length and are overwritten by the next extend."""
    k = ids.shape[1]
    size = 1 << (k - 1).bit_length()
    if size == k or size > room:
        return ids
    return torch.cat([ids, ids.new_zeros(1, size - k)], dim=1)


def _plain_linear(layer: torch.nn.Module) -> bool:
    """A bias-free ``nn.Linear`` whose weight evspec may use directly (a quantized or biased layer
    keeps its own forward)."""
    return type(layer) is torch.nn.Linear and layer.bias is None


# Fused weights already made, by their first layer: a second decoder over one model reuses them.
_FUSED: weakref.WeakKeyDictionary[torch.nn.Module, torch.Tensor] = weakref.WeakKeyDictionary()


def _fuse_rows(linears: Sequence[torch.nn.Module]) -> torch.Tensor | None:
    """One [sum of N, K] weight whose row blocks become these layers' weights (views: no memory
    added, values unchanged), so a pass over several tokens runs one wide GEMM while a one-token
    step keeps its separate matrix-vector products. None for layers that are not plain bias-free
    ``nn.Linear`` (a quantized layer keeps its own forward).

    In place, on the caller's model: each ``weight`` stays the same ``Parameter`` object (an
    optimizer or a tied reference still holds it) with the same values and ``requires_grad``, but
    its ``.data`` now lives in the fused matrix; the old storage is released."""
    if not all(_plain_linear(layer) for layer in linears):
        return None
    fused = _FUSED.get(linears[0])
    if fused is not None and all(layer.weight.untyped_storage().data_ptr() == fused.untyped_storage().data_ptr()
                                 for layer in linears):
        return fused
    with torch.inference_mode(False), torch.no_grad():  # ordinary tensors, even when built under inference mode
        fused = torch.cat([layer.weight for layer in linears])
        start = 0
        for layer in linears:
            rows = layer.weight.shape[0]
            layer.weight.data = fused[start:start + rows]
            start += rows
    _FUSED[linears[0]] = fused
    return fused


@dataclass(frozen=True)
class _FewRowLayer:
    """What the fused few-row kernels need of one LLaMA layer (``evspec.runtime.few_rows``)."""

    qkv: torch.Tensor
    gate_up: torch.Tensor
    input_norm: torch.Tensor
    input_eps: float
    post_norm: torch.Tensor
    post_eps: float
    o_proj: torch.Tensor
    down_proj: torch.Tensor
    tilings: tuple[Tiling, Tiling, Tiling]  # o, gate/up, down


def _few_row_layer(layer: torch.nn.Module, qkv: torch.Tensor | None, gate_up: torch.Tensor | None) -> _FewRowLayer | None:
    """The layer's weights for the fused kernels, or None where the layer is not plain LLaMA
    (another norm or activation, a bias, a quantized projection, a head size the QKV kernel does
    not take): it keeps the unfused path."""
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    attn, mlp = layer.self_attn, layer.mlp
    norms = (layer.input_layernorm, layer.post_attention_layernorm)
    if (qkv is None or gate_up is None or not all(type(n) is LlamaRMSNorm for n in norms)
            or getattr(getattr(mlp, "config", None), "hidden_act", None) != "silu"
            or not (_plain_linear(attn.o_proj) and _plain_linear(mlp.down_proj))
            or attn.head_dim < 32 or attn.head_dim & (attn.head_dim - 1)):
        return None
    device = qkv.device
    return _FewRowLayer(
        qkv=qkv, gate_up=gate_up, input_norm=norms[0].weight, input_eps=float(norms[0].variance_epsilon),
        post_norm=norms[1].weight, post_eps=float(norms[1].variance_epsilon),
        o_proj=attn.o_proj.weight, down_proj=mlp.down_proj.weight,
        tilings=(tiling_for(attn.o_proj.out_features, device),
                 tiling_for(gate_up.shape[0] // 2, device, norm=True, gated=True),
                 tiling_for(mlp.down_proj.out_features, device)),
    )


_Outputs = tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...]]
"""A pass's final hidden states, float32 logits and tapped hidden states."""


def _apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


class StaticDecoder:
    """Owns one preallocated KV cache and the compiled step; hands out one ``StaticState`` at a time.

    Use it as the ``state_factory`` of ``prefill``/the speculative engine: ``prefill(lm, embeds, decoder)``.
    ``compile=True`` compiles the step for each query length it sees (1 for decoding, gamma+1 for
    verification, padded to powers of two) and, on CUDA, captures each as a CUDA graph on first
    use; prefill runs eagerly because its length varies per sample.

    ``fuse_projections_in_place`` (default on) CHANGES THE CALLER'S MODEL: each layer's Q/K/V and
    gate/up weights are re-stored as row blocks of one matrix (no memory added), so that passes
    over several tokens run one GEMM for each group. The Parameters stay the same objects with the
    same values (``state_dict`` is unchanged in values), but their storage is now shared: build the
    decoder once the weights are final (safetensors' ``save_file`` of the state_dict still works;
    its ``save_model`` refuses modules whose tensors share storage). Off, the model is left
    untouched and passes over several tokens run the separate projections.

    ``few_row_kernels`` runs the projections of passes over 2-16 tokens through
    ``evspec.runtime.few_rows`` (norms, SiLU x up and residual additions fused into them) where
    Triton runs and the layers are plain LLaMA; it needs ``fuse_projections_in_place``.

    Compiler settings are scoped: dynamo's recompile limit is raised only around this decoder's
    compiled calls (``_compiler_settings``), never for the whole process.

    Taps (``StaticState.extend(taps=...)``): the hidden states of other layers come out of the same
    pass as extra outputs (of the compiled step and its CUDA graph: one graph per tap set); a
    pass that asks for none compiles and replays exactly the graph it would without taps.

    ``tune_one_token_step`` runs inductor's coordinate-descent tuning on the one-token step's
    matrix-vector reductions. On an H100 a 7B step graph then compiled in ~90 s instead of ~50 s,
    and ran in ~6.0-6.4 ms instead of 7.1 ms (untuned, inductor leaves the products to cuBLAS).
    """

    def __init__(
        self, lm: LanguageModel, max_length: int, *, compile: bool = False, fuse_projections_in_place: bool = True,
        tune_one_token_step: bool = True, few_row_kernels: bool = True,
    ) -> None:
        if max_length > lm.context_length:
            raise ConfigError(f"max_length {max_length} exceeds the model's context of {lm.context_length}")
        self.lm = lm
        self.max_length = max_length
        body = lm.body
        self.layers = list(body.layers)
        attn = self.layers[0].self_attn
        self.head_dim = int(attn.head_dim)
        self.scaling = float(attn.scaling)
        n_kv = attn.k_proj.out_features // self.head_dim
        # Slots past max_length are never written; they round every attended length up to SLOT_ALIGN.
        self.slots = -(-max_length // SLOT_ALIGN) * SLOT_ALIGN
        shape = (1, n_kv, self.slots, self.head_dim)
        device, dtype = lm.device, lm.dtype
        self.k_cache = [torch.zeros(shape, device=device, dtype=dtype) for _ in self.layers]
        self.v_cache = [torch.zeros(shape, device=device, dtype=dtype) for _ in self.layers]
        self.qkv_sizes = [attn.q_proj.out_features, attn.k_proj.out_features, attn.v_proj.out_features]
        self.qkv: list[torch.Tensor | None] = [None] * len(self.layers)
        self.gate_up: list[torch.Tensor | None] = [None] * len(self.layers)
        if fuse_projections_in_place:
            for i, layer in enumerate(self.layers):
                a, m = layer.self_attn, layer.mlp
                self.qkv[i] = _fuse_rows([a.q_proj, a.k_proj, a.v_proj])
                self.gate_up[i] = _fuse_rows([m.gate_proj, m.up_proj])
        # All layers or none: a model is either plain LLaMA throughout or keeps the unfused path.
        self.few_row_layers: list[_FewRowLayer] | None = None
        if few_row_kernels:
            layers = [_few_row_layer(layer, self.qkv[i], self.gate_up[i]) for i, layer in enumerate(self.layers)]
            if all(layer is not None for layer in layers):
                self.few_row_layers = layers  # type: ignore[assignment]
        # mask[i, j]: query at position i may attend key j (j <= i); rows are picked per step.
        self.causal = torch.ones(self.slots, self.slots, device=device, dtype=torch.bool).tril()
        self._compiled: Callable[..., _Outputs] | None = None
        self._graphs: dict[tuple[int, int, tuple[int, ...]], _CapturedStep] = {}
        self._pool = None
        if compile:
            # dynamic=False: one specialised kernel set per shape (the batch-1 GEMVs need M fixed).
            self._compiled = torch.compile(self._forward_ids, fullgraph=True, dynamic=False)
            if device.type == "cuda":
                self._pool = torch.cuda.graph_pool_handle()  # this decoder's graphs share one pool
        self.tune_one_token_step = tune_one_token_step
        self._programs = programs_wanted(device)
        self._active: StaticState | None = None

    def __call__(self, lm: LanguageModel) -> StaticState:
        if lm is not self.lm:
            raise ValueError("this StaticDecoder was built for another language model")
        self._active = StaticState(self)
        return self._active

    def _forward_ids(self, ids: torch.Tensor, positions: torch.Tensor, kv_len: int, taps: tuple[int, ...] = ()) -> _Outputs:
        # One query: SDPA's fused kernel (one block per head is enough work); several: split along the keys.
        return self._forward(self.lm.embed_tokens(ids), positions, kv_len, few_queries=ids.shape[1] > 1, taps=taps)

    def _step(self, ids: torch.Tensor, positions: torch.Tensor, kv_len: int, taps: tuple[int, ...] = ()) -> _Outputs:
        """One token pass: eager, compiled (CPU), or the replay of a captured CUDA graph. Graph
        outputs are overwritten by the next replay of the same graph: callers copy what they keep.
        ``taps`` (resolved indices) is a constant of the compiled function: no taps, no argument,
        so a tap-free pass runs the very graph it ran before taps existed."""
        if self._compiled is None:
            return self._forward_ids(ids, positions, kv_len, taps)
        if self._pool is None:
            with _compiler_settings():
                return self._compiled(ids, positions, kv_len, *((taps,) if taps else ()))
        key = (ids.shape[1], kv_len, taps)
        captured = self._graphs.get(key)
        if captured is None:
            captured = self._graphs[key] = self._capture(ids, positions, kv_len, taps)
        return captured.replay(ids, positions)

    def _capture(self, ids: torch.Tensor, positions: torch.Tensor, kv_len: int, taps: tuple[int, ...]) -> _CapturedStep:
        """Compile for this shape, then record one graph of it (PyTorch's CUDA-graph recipe).

        The warm-up passes really run: they write this call's K/V at this call's positions, which
        the replay that follows writes again with the same values, so capturing mid-sequence is safe.
        ``thread_local``: parallel prefill may run the target on another thread while the draft
        captures."""
        assert self._compiled is not None
        device = ids.device
        static_ids, static_positions = ids.clone(), positions.clone()
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        # Coordinate-descent tuning pays for the 1-token step's matrix-vector reductions; longer
        # passes run cuBLAS GEMMs, where it only lengthens compilation (~a minute per 7B graph).
        tune = self.tune_one_token_step and ids.shape[1] == 1
        extra = (taps,) if taps else ()
        with _compiler_settings():
            with torch.cuda.stream(side), torch._inductor.config.patch(coordinate_descent_tuning=tune):
                for _ in range(2):  # compile, autotune and allocate outside the capture
                    self._compiled(static_ids, static_positions, kv_len, *extra)
            torch.cuda.current_stream(device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"):
                hidden, logits, tapped = self._compiled(static_ids, static_positions, kv_len, *extra)
        return _CapturedStep(graph, static_ids, static_positions, hidden, logits, tapped)

    def _attend(self, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """softmax(q K^T) V written out, for passes over a few tokens (verify, catch-up) over a long cache.

        Why not SDPA: for 8 queries over 2100 keys cuDNN's fused kernel runs one block per head
        (32 blocks on 132 SMs) and cost 3x its 1-query time on an H100 (gpu_pass_cost.py), which
        made a verify pass 1.37x a decode step. Written out, the two products are batched
        GEMMs that read the cache once at full width; for one query SDPA was the faster, so the
        one-token step keeps it. The query heads that share a K/V head are stacked as extra rows,
        so K/V are never copied per head."""
        _, n_heads, k, d = q.shape
        n_kv = keys.shape[1]
        group = n_heads // n_kv
        q = q.reshape(1, n_kv, group * k, d)  # rows: (head within group, query)
        scores = torch.matmul(q, keys.transpose(-1, -2))
        scores = scores.to(torch.promote_types(scores.dtype, torch.float32)) * self.scaling  # softmax in >= fp32
        scores = scores.masked_fill(~mask.repeat(1, 1, group, 1), float("-inf"))
        out = torch.matmul(torch.softmax(scores, dim=-1).to(values.dtype), values)
        return out.reshape(1, n_heads, k, d)

    def _attend_few(
        self, q: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
        positions: torch.Tensor, kv_len: int,
    ) -> torch.Tensor:
        """Attention of a pass over a few tokens, ``[1, k, heads * head_dim]``, from queries before
        their rotary embedding: the split-KV Triton kernel where it runs (CUDA), else the
        written-out products."""
        if split_kv_supported(q):
            return split_kv_attention(q, cos[0, 0], sin[0, 0], k_cache, v_cache, positions, kv_len,
                                      self.scaling, self._programs)
        mask = self.causal[positions, :kv_len].unsqueeze(0).unsqueeze(0)
        out = self._attend(_apply_rotary(q, cos, sin), k_cache[:, :, :kv_len], v_cache[:, :, :kv_len], mask)
        return out.transpose(1, 2).reshape(1, q.shape[2], -1)

    def _forward(
        self, embeds: torch.Tensor, positions: torch.Tensor, kv_len: int, few_queries: bool = False,
        taps: tuple[int, ...] = (), last_only: bool = False,
    ) -> _Outputs:
        """(final hidden states [k, D], float32 logits, the ``taps``' hidden states [k, D] each).

        ``taps``: resolved indices 0..L (``evspec.runtime.decode``): collected here, as the pass
        goes, and returned as outputs of the same graph; none asked, nothing traced differently.
        ``last_only``: logits of the last row only (prefill: a 2,100-token prompt's fp32 logits
        over a 32k vocabulary were 270 MB, of which decoding reads one row).

        Attend over the first ``kv_len`` cache slots only: a batch-1 attention kernel reads every
        slot it is given, and a 4096-slot cache holding a 2100-token prompt would double its reads.
        Prefill (many queries) and one-token steps use SDPA's fused kernels; passes over a few
        tokens (verify, catch-up) use :meth:`_attend_few`.

        Passes over several tokens use the fused Q/K/V and gate/up weights: measured on an H100, a
        7B pass over 8 tokens ran cuBLAS's split-K kernels (plus a reduction kernel) on each
        4096-row matrix, and the fused ones avoid that. Where Triton runs, passes over 2-16 tokens
        go through ``evspec.runtime.few_rows`` instead: the same fused weights, with the norms,
        rotary, cache writes, SiLU x up and residual additions inside the products (an 8-token
        pass: 208 kernels instead of 430, 6.42 against 6.91 ms). One-token steps keep separate
        matrices: inductor turns those products into reductions fused with their neighbours, and
        fused weights made that step 2x slower (docs/BENCHMARKS.md)."""
        body, k = self.lm.body, embeds.shape[1]
        cos, sin = body.rotary_emb(embeds, positions.unsqueeze(0))
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        mask = self.causal[positions, :kv_len].unsqueeze(0).unsqueeze(0)
        x = embeds
        n_layers = len(self.layers)
        tapped: dict[int, torch.Tensor] = {0: embeds[0]} if 0 in taps else {}
        few_rows = self.few_row_layers if few_queries and few_rows_supported(x) else None
        for i, (layer, k_cache, v_cache) in enumerate(zip(self.layers, self.k_cache, self.v_cache)):
            attn, mlp = layer.self_attn, layer.mlp
            fused = few_rows[i] if few_rows else None
            if fused is not None:  # norm, QKV, rotary and the cache writes: one kernel
                q = qkv_into_cache(x, fused.qkv, fused.input_norm, fused.input_eps, cos[0, 0], sin[0, 0], positions,
                                   k_cache, v_cache)
            else:
                if k > 1 and self.qkv[i] is not None:
                    q, key, value = F.linear(layer.input_layernorm(x), self.qkv[i]).split(self.qkv_sizes, dim=-1)
                else:
                    h = layer.input_layernorm(x)
                    q, key, value = attn.q_proj(h), attn.k_proj(h), attn.v_proj(h)
                q = q.view(1, k, -1, self.head_dim).transpose(1, 2)
                key = key.view(1, k, -1, self.head_dim).transpose(1, 2)
                value = value.view(1, k, -1, self.head_dim).transpose(1, 2)
                k_cache.index_copy_(2, positions, _apply_rotary(key, cos, sin))
                v_cache.index_copy_(2, positions, value)
            if few_queries:
                out = self._attend_few(q, cos, sin, k_cache, v_cache, positions, kv_len)
            else:
                keys, values = k_cache[:, :, :kv_len], v_cache[:, :, :kv_len]
                out = F.scaled_dot_product_attention(_apply_rotary(q, cos, sin), keys, values, attn_mask=mask,
                                                     scale=self.scaling, enable_gqa=True)
                out = out.transpose(1, 2).reshape(1, k, -1)
            if fused is not None:
                x = few_rows_linear(out, fused.o_proj, residual=x, tiling=fused.tilings[0])
                act = few_rows_linear(x, fused.gate_up, norm_weight=fused.post_norm, eps=fused.post_eps, gated=True,
                                      tiling=fused.tilings[1])
                x = few_rows_linear(act, fused.down_proj, residual=x, tiling=fused.tilings[2])
            else:
                x = x + attn.o_proj(out)
                h = layer.post_attention_layernorm(x)
                if k > 1 and self.gate_up[i] is not None:
                    gate, up = F.linear(h, self.gate_up[i]).chunk(2, dim=-1)
                    x = x + mlp.down_proj(mlp.act_fn(gate) * up)
                else:
                    x = x + mlp(h)
            if i + 1 < n_layers and i + 1 in taps:  # the last layer's tap is after the final norm
                tapped[i + 1] = x[0]
        hidden = body.norm(x)[0]
        if n_layers in taps:
            tapped[n_layers] = hidden
        logits = self.lm.lm_head(hidden[-1:] if last_only else hidden).float()
        return hidden, logits, tuple(tapped[i] for i in taps)


@dataclass
class _CapturedStep:
    """One recorded CUDA graph and its fixed input and output buffers."""

    graph: torch.cuda.CUDAGraph
    ids: torch.Tensor
    positions: torch.Tensor
    hidden: torch.Tensor
    logits: torch.Tensor
    taps: tuple[torch.Tensor, ...]

    def replay(self, ids: torch.Tensor, positions: torch.Tensor) -> _Outputs:
        self.ids.copy_(ids, non_blocking=True)
        self.positions.copy_(positions, non_blocking=True)
        self.graph.replay()
        return self.hidden, self.logits, self.taps


class StaticState:
    """One sequence in a ``StaticDecoder``'s cache. Rolling back only moves the length."""

    def __init__(self, decoder: StaticDecoder) -> None:
        self.decoder = decoder
        self.lm = decoder.lm
        self._length = 0

    @property
    def length(self) -> int:
        return self._length

    @property
    def capacity(self) -> int:
        return self.decoder.max_length

    @torch.inference_mode()
    def extend(
        self, *, embeds: torch.Tensor | None = None, token_ids: Sequence[int] | torch.Tensor | None = None,
        last_only: bool = False, taps: Sequence[int] = (),
    ) -> StepOutput:
        decoder = self.decoder
        if decoder._active is not self:
            raise RuntimeError("this StaticState's cache was handed to a newer sequence")
        inputs, is_ids = extend_inputs(self, embeds, token_ids)
        resolved = resolve_taps(taps, len(decoder.layers)) if taps else ()
        k, device = inputs.shape[1], self.lm.device
        if is_ids:
            inputs = _pad_to_power_of_two(inputs, room=decoder.max_length - self._length)
        end = self._length + inputs.shape[1]
        positions = torch.arange(self._length, end, device=device)
        if is_ids:
            # Compiled steps see few distinct lengths (one graph per bucket).
            kv_len = min(decoder.slots, -(-end // KV_BUCKET) * KV_BUCKET)
            hidden, logits, tapped = decoder._step(inputs, positions, kv_len, resolved)
            # Graph outputs live in memory the next replay overwrites: keep copies (of the real rows).
            hidden, logits = hidden[:k].clone(), logits[:k].clone()
            tapped = tuple(t[:k].clone() for t in tapped)
            if last_only:
                hidden, logits = hidden[-1:], logits[-1:]
        else:
            # prefill (embeddings) runs eagerly: its length varies per prompt, not worth a graph
            # each; its outputs are its own (no copies), its logits only the rows asked for
            hidden, logits, tapped = decoder._forward(inputs, positions, end, taps=resolved, last_only=last_only)
            if last_only:
                hidden = hidden[-1:].clone()  # not a view that keeps every prompt row alive
        self._length += k
        return StepOutput(logits=logits, hidden=hidden, taps=dict(zip(taps, tapped)))

    def rollback(self, length: int) -> None:
        if not 0 <= length <= self._length:
            raise ValueError(f"cannot roll back to {length}: cache holds {self._length}")
        # Stale K/V past `length` are masked by position and overwritten by the next extend.
        self._length = length
