"""Adapters and draft heads: small modules that turn what is known at a position (the draft's
hidden state or token distribution, the target's previous feature, the token there, visual
features) into the target's feature and next-token logits there (issue 14, section 2).

Positions follow the store's (EAGLE's) convention: position ``t`` holds the token ``x_t``
(``input_ids[:, t]``) and the target's final hidden state ``f_t`` (after its final norm, what its
LM head reads to predict ``x_{t+1}``). Every head, at position ``t``, estimates ``f_t`` and the
target's next-token logits ``lm_head(f_t)`` from what is known when ``x_t`` has been chosen:

==============  =====================================================  ===========================
name            reads at position t                                    trained by
==============  =====================================================  ===========================
TokenAdapter    the draft's logits at t (its next-token distribution)   cross-entropy to the
                                                                       target's distribution
L1 / L2 / L3    the draft's hidden ``d_t`` (bottleneck blocks)          smooth L1 to ``f_t`` +
L4              ``d_<=t`` (causal self-attention + FFN)                 w x cross-entropy
L5              ``d_<=t`` and ``x_<=t`` (EAGLE head on the draft)       (both, every head below)
B1              ``f_<t`` and ``x_<=t`` (EAGLE head on the target alone)
L5F             ``f_<t``, ``d_<=t`` and ``x_<=t`` (fused)
EC              B1 + cross-attention to the event model's features
VS              B1 + the target's visual tokens as a compressed prefix (ViSpec-like)
==============  =====================================================  ===========================

The token term is EAGLE's cross-entropy against the target's own distribution
``softmax(lm_head(f_t))`` (soft labels), reported as KL (that cross-entropy less the target's
entropy: the same gradient, 0 when the head matches the target), counted where ``loss_mask[:, t]`` is set (and ``t >= 1`` for heads that read
``f_{t-1}``, which position 0 lacks). Every head reuses the target's token embedding and LM
head, passed in as modules and used through their weights detached: they get no gradient, are
not registered as submodules, and so are neither in ``state_dict`` nor in a saved head.

Drafting (EAGLE's autoregression, open to trees): ``start`` encodes a sample's visual features
once and returns an empty :class:`HeadCache`; ``extend`` appends known positions (the committed
prefix, with the target's real features); ``draft_step`` appends ONE position from its parent:
the token drafted there and the parent's feature (the head's own estimate, ``features[:, -1]``
of the parent's output). Caches are values: ``extend``/``draft_step`` return a new cache and
leave the one passed in untouched, so two children of one parent (a tree) each call
``draft_step`` with the parent's cache; ``HeadCache.truncate`` drops rejected positions. The one
attention layer keeps its keys and values (a small KV cache; each step copies it, O(length),
which for a head of one layer is far below the target's cost).

A chain, live: with the committed tokens ``x_0..x_n`` and the target's features ``f_0..f_{n-1}``
(``x_n`` is the target's own latest token), ``out, cache = head.extend(head.start(visual),
HeadInputs(x[:, :n+1], previous_features=[0, f_0..f_{n-1}], draft_hidden=d[:, :n+1]))`` gives
the estimate ``e_n`` of ``f_n`` (``out.features[:, -1]``) and the first draft ``y_1 = argmax out.logits[:, -1]``; then
``out, cache = head.draft_step(cache, y_1, previous_feature=e_n, draft_hidden=d(y_1))`` gives
``y_2``, and so on. After the verify pass, ``cache.truncate(n + 1)`` and ``extend`` with the
committed positions and the target's real features.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, fields, replace
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from evspec.errors import ConfigError, ModelError

if TYPE_CHECKING:
    from evspec.align.store import AlignRow

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
HEAD_FORMAT = "evspec-head"
HEAD_FORMAT_VERSION = 1
DRAFT_READS = frozenset({"draft_hidden", "draft_logits"})  # the HeadInputs fields that come from the draft model


# ----------------------------------------------------------------------------- config and data


@dataclass(frozen=True)
class HeadConfig:
    """Sizes of every adapter and head (one config for all; each reads the fields it needs).

    ``hidden_size`` and ``vocab_size`` must be the target's (its embedding width and LM head rows).
    """

    hidden_size: int  # H: the target's hidden size
    vocab_size: int  # V: the target's vocabulary (rows of its LM head and embedding)
    draft_hidden_size: int = 0  # Hd: the draft's hidden size (L1-L5, L5F)
    draft_vocab_size: int = 0  # Vd: the draft's vocabulary (TokenAdapter)
    visual_size: int = 0  # Hv: width of the event features (EC) or the target's visual tokens (VS)
    bottleneck: int = 256  # L1 and L2's bottleneck width
    wide_bottleneck: int = 1024  # L3's bottleneck width
    stacked_blocks: int = 3  # L2's number of bottleneck blocks
    token_rank: int = 256  # TokenAdapter: width of its soft-token embedding
    num_heads: int = 8  # attention heads (L4, the EAGLE heads, the visual compressor)
    ffn_size: int = 0  # FFN width of the attention layers; 0: 4 x hidden_size
    visual_queries: int = 4  # EC / VS: learned queries the visual features are compressed into
    rope_theta: float = 10000.0
    feature_loss_weight: float = 1.0  # smooth L1 on features (EAGLE: 1.0)
    token_loss_weight: float = 0.1  # KL / cross-entropy through the LM head (EAGLE: 0.1)

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type == "int" and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise ConfigError(f"{f.name} must be an integer >= 0, got {value!r}", parameters=(f.name,))
            if f.type == "float" and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not math.isfinite(value) or value < 0):
                raise ConfigError(f"{f.name} must be a finite number >= 0, got {value!r}", parameters=(f.name,))
        for name in ("hidden_size", "vocab_size", "bottleneck", "wide_bottleneck", "stacked_blocks", "token_rank",
                     "num_heads", "visual_queries"):
            self._require_positive(name, "every head")
        if self.hidden_size % self.num_heads or (self.hidden_size // self.num_heads) % 2:
            raise ConfigError(f"num_heads={self.num_heads} must divide hidden_size={self.hidden_size} into an even "
                              "head width (rotary embeddings rotate pairs)", parameters=("num_heads",))
        if not self.rope_theta > 0:
            raise ConfigError(f"rope_theta must be > 0, got {self.rope_theta}", parameters=("rope_theta",))

    @property
    def ffn_width(self) -> int:
        return self.ffn_size or 4 * self.hidden_size

    def _require_positive(self, name: str, who: str) -> None:
        if getattr(self, name) <= 0:
            raise ConfigError(f"{name} must be > 0 for {who}, got {getattr(self, name)}", parameters=(name,))


@dataclass
class HeadBatch:
    """A training batch (rows right-padded to T; padding is excluded by ``loss_mask``).

    Position t holds token ``input_ids[:, t]`` and the hidden states there (which predict the
    token at t + 1). Fields a head does not read may be None (``Head.reads`` names them).
    """

    input_ids: torch.Tensor  # [B, T] int64: the target's tokens
    loss_mask: torch.Tensor  # [B, T] bool: position t counts (it has a next token; not padding)
    target_hidden: torch.Tensor  # [B, T, H]: the target's last layer after its final norm (labels; B1/L5F/EC/VS read f_{t-1})
    draft_hidden: torch.Tensor | None = None  # [B, T, Hd]: the draft's last hidden state, teacher-forced on the same tokens
    draft_logits: torch.Tensor | None = None  # [B, T, Vd]: the draft's next-token logits (its LM head on draft_hidden)
    visual: torch.Tensor | None = None  # [B, N, Hv]: event features (EC) or the target's visual tokens (VS)
    visual_mask: torch.Tensor | None = None  # [B, N] bool: real (not padding) visual rows; None: all real

    def inputs(self) -> HeadInputs:
        """The per-position inputs: the target's features shifted one position right (zeros at 0)."""
        previous = torch.cat([torch.zeros_like(self.target_hidden[:, :1]), self.target_hidden[:, :-1]], dim=1)
        return HeadInputs(self.input_ids, previous, self.draft_hidden, self.draft_logits)


@dataclass(frozen=True)
class HeadInputs:
    """What a head reads at K new positions p (``extend``; ``draft_step`` is K = 1)."""

    token_ids: torch.Tensor  # [B, K] int64: x_p
    previous_features: torch.Tensor | None = None  # [B, K, H]: f_{p-1}, the target's or the head's own estimate
    draft_hidden: torch.Tensor | None = None  # [B, K, Hd]: d_p
    draft_logits: torch.Tensor | None = None  # [B, K, Vd]: the draft's logits at p


@dataclass(frozen=True)
class HeadOutput:
    """Per position: the head's estimate of the target's feature and its next-token logits."""

    features: torch.Tensor  # [B, K, H]
    logits: torch.Tensor  # [B, K, V] (the target's LM head applied to ``features``)


@dataclass(frozen=True)
class HeadCache:
    """What a head keeps between calls for one batch of sequences (a value: methods return new ones).

    ``length`` counts the sequence positions seen. ``keys``/``values`` [B, heads, prefix + length,
    head_dim] belong to the attention layer (L4 and the EAGLE heads); the first ``prefix`` entries
    are VS's compressed visual tokens. ``cross_keys``/``cross_values`` [B, heads, visual_queries,
    head_dim] are EC's event tokens and ``summary`` [B, H] VS's global visual vector: computed once
    by ``start``.
    """

    length: int = 0
    keys: torch.Tensor | None = None
    values: torch.Tensor | None = None
    prefix: int = 0
    cross_keys: torch.Tensor | None = None
    cross_values: torch.Tensor | None = None
    summary: torch.Tensor | None = None

    def truncate(self, length: int) -> HeadCache:
        """The cache after the first ``length`` sequence positions (rejected drafts dropped)."""
        if not 0 <= length <= self.length:
            raise ValueError(f"length must be within 0..{self.length}, got {length}")
        if self.keys is None:
            return replace(self, length=length)
        end = self.prefix + length
        return replace(self, length=length, keys=self.keys[:, :, :end], values=self.values[:, :, :end])


# ----------------------------------------------------------------------------- building blocks


def _rotate(x: torch.Tensor, start: int, theta: float) -> torch.Tensor:
    """Rotary position embedding of ``x`` [B, heads, K, d] at positions start..start+K-1."""
    d = x.shape[-1]
    inverse = theta ** (-torch.arange(0, d, 2, device=x.device, dtype=torch.float32) / d)
    angles = torch.arange(start, start + x.shape[2], device=x.device, dtype=torch.float32)[:, None] * inverse
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    first, second = x[..., : d // 2], x[..., d // 2 :]
    return torch.cat([first * cos - second * sin, first * sin + second * cos], dim=-1)


class _SelfAttention(nn.Module):
    """Causal multi-head self-attention with rotary positions and an explicit key/value cache."""

    def __init__(self, width: int, num_heads: int, theta: float) -> None:
        super().__init__()
        self.num_heads, self.theta = num_heads, theta
        self.qkv = nn.Linear(width, 3 * width, bias=False)
        self.out = nn.Linear(width, width, bias=False)

    def _split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, k, width = x.shape
        q, key, value = self.qkv(x).view(b, k, 3, self.num_heads, width // self.num_heads).permute(2, 0, 3, 1, 4)
        return q, key, value

    def keys_values(self, x: torch.Tensor, start: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys (rotated) and values of ``x`` [B, K, W] at positions start.. (VS's prefix)."""
        _, key, value = self._split(x)
        return _rotate(key, start, self.theta), value

    def forward(self, x: torch.Tensor, start: int, past: tuple[torch.Tensor, torch.Tensor] | None
                ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """``x`` [B, K, W] at positions start..; each attends to ``past`` and to itself up to its position."""
        b, k, width = x.shape
        q, key, value = self._split(x)
        q, key = _rotate(q, start, self.theta), _rotate(key, start, self.theta)
        if past is not None:
            key, value = torch.cat([past[0], key], dim=2), torch.cat([past[1], value], dim=2)
        seen = key.shape[2]
        allowed = torch.ones(k, seen, dtype=torch.bool, device=x.device).tril(diagonal=seen - k)
        mixed = F.scaled_dot_product_attention(q, key, value, attn_mask=allowed)
        return self.out(mixed.transpose(1, 2).reshape(b, k, width)), (key, value)


class _CrossAttention(nn.Module):
    """Multi-head attention from queries to a memory whose keys/values are projected once."""

    def __init__(self, width: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.query = nn.Linear(width, width, bias=False)
        self.key_value = nn.Linear(width, 2 * width, bias=False)
        self.out = nn.Linear(width, width, bias=False)

    def project_memory(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, M, W] -> keys, values [B, heads, M, W / heads]."""
        b, m, width = memory.shape
        key, value = self.key_value(memory).view(b, m, 2, self.num_heads, width // self.num_heads).permute(2, 0, 3, 1, 4)
        return key, value

    def forward(self, x: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                memory_mask: torch.Tensor | None = None) -> torch.Tensor:
        b, k, width = x.shape
        q = self.query(x).view(b, k, self.num_heads, width // self.num_heads).transpose(1, 2)
        mask = None if memory_mask is None else memory_mask[:, None, None, :].to(torch.bool)
        mixed = F.scaled_dot_product_attention(q, key, value, attn_mask=mask)
        return self.out(mixed.transpose(1, 2).reshape(b, k, width))


class VisualCompressor(nn.Module):
    """[B, N, Hv] visual features -> [B, M, H]: M learned queries cross-attend over them
    (ViSpec's image adaptor). Run once per sample, so N costs nothing per drafted token."""

    def __init__(self, visual_size: int, width: int, queries: int, num_heads: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(visual_size)
        self.memory = nn.Linear(visual_size, width)
        self.queries = nn.Parameter(torch.randn(queries, width) * 0.02)
        self.attention = _CrossAttention(width, num_heads)

    def forward(self, visual: torch.Tensor, visual_mask: torch.Tensor | None = None) -> torch.Tensor:
        key, value = self.attention.project_memory(self.memory(self.norm(visual)))
        queries = self.queries.expand(visual.shape[0], -1, -1)
        return queries + self.attention(queries, key, value, visual_mask)


class _Block(nn.Module):
    """One pre-norm decoder layer: causal self-attention, optional cross-attention, FFN."""

    def __init__(self, width: int, num_heads: int, ffn_width: int, theta: float, cross: bool = False) -> None:
        super().__init__()
        self.attention_norm = nn.LayerNorm(width)
        self.attention = _SelfAttention(width, num_heads, theta)
        self.cross_norm = nn.LayerNorm(width) if cross else None
        self.cross = _CrossAttention(width, num_heads) if cross else None
        self.ffn_norm = nn.LayerNorm(width)
        self.ffn = nn.Sequential(nn.Linear(width, ffn_width), nn.GELU(), nn.Linear(ffn_width, width))

    def forward(self, x: torch.Tensor, cache: HeadCache) -> tuple[torch.Tensor, HeadCache]:
        past = None if cache.keys is None else (cache.keys, cache.values)
        mixed, (keys, values) = self.attention(self.attention_norm(x), cache.prefix + cache.length, past)
        x = x + mixed
        if self.cross is not None:
            x = x + self.cross(self.cross_norm(x), cache.cross_keys, cache.cross_values)
        x = x + self.ffn(self.ffn_norm(x))
        return x, replace(cache, length=cache.length + x.shape[1], keys=keys, values=values)


class _Bottleneck(nn.Module):
    """LayerNorm, down to ``width``, GELU, up, residual. Up starts at zero: the block starts as identity."""

    def __init__(self, hidden: int, width: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.down = nn.Linear(hidden, width)
        self.up = nn.Linear(width, hidden)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.up(F.gelu(self.down(self.norm(x))))


def _draft_projection(config: HeadConfig) -> nn.Module:
    """Draft width -> target width (identity when they agree)."""
    if config.draft_hidden_size == config.hidden_size:
        return nn.Identity()
    return nn.Linear(config.draft_hidden_size, config.hidden_size)


# ----------------------------------------------------------------------------- the heads


@dataclass(frozen=True)
class _Target:
    """The target's frozen modules; a plain attribute, so not registered in the head's state."""

    embedding: nn.Embedding
    lm_head: nn.Linear


class Head(nn.Module):
    """The interface every adapter and head shares (see the module docstring for positions).

    ``reads``: the :class:`HeadInputs` fields (besides ``token_ids``) the head needs, and
    ``"visual"`` when ``start`` needs visual features. The target's modules stay where the target
    put them: ``.to()`` moves and casts only the head's own weights.
    """

    name: ClassVar[str]
    reads: ClassVar[frozenset[str]]
    needs: ClassVar[tuple[str, ...]] = ()  # HeadConfig fields that must be > 0
    visual_field: ClassVar[str | None] = None  # the AlignRow field its visual features come from
    regresses_features: ClassVar[bool] = True

    @classmethod
    def reads_draft_model(cls) -> bool:
        """Whether the head reads a model besides the target: the draft's states, or EC's events."""
        return bool(DRAFT_READS & cls.reads) or cls.visual_field == "draft_visual"

    def __init__(self, config: HeadConfig, target_embedding: nn.Embedding, target_lm_head: nn.Linear) -> None:
        super().__init__()
        check_fits(config, target_embedding, target_lm_head)
        for name in self.needs:
            config._require_positive(name, self.name)
        self.config = config
        self.target = _Target(target_embedding, target_lm_head)

    # -- the target's frozen modules, weights detached: no gradient reaches them
    def embed(self, token_ids: torch.Tensor) -> torch.Tensor:
        embedding = self.target.embedding
        return F.embedding(token_ids, embedding.weight.detach(), embedding.padding_idx)

    def target_logits(self, features: torch.Tensor) -> torch.Tensor:
        lm_head = self.target.lm_head
        bias = None if lm_head.bias is None else lm_head.bias.detach()
        return F.linear(features.to(lm_head.weight.dtype), lm_head.weight.detach(), bias)

    # -- drafting
    def start(self, visual: torch.Tensor | None = None, visual_mask: torch.Tensor | None = None) -> HeadCache:
        """An empty cache for a batch of sequences; conditioned heads encode ``visual`` here, once."""
        return HeadCache()

    def extend(self, cache: HeadCache, inputs: HeadInputs) -> tuple[HeadOutput, HeadCache]:
        """Append K positions (the module docstring says what each reads)."""
        widths = {"previous_features": ("hidden_size", self.config.hidden_size),
                  "draft_hidden": ("draft_hidden_size", self.config.draft_hidden_size),
                  "draft_logits": ("draft_vocab_size", self.config.draft_vocab_size)}
        for name in sorted(self.reads - {"visual"}):
            given = getattr(inputs, name)
            if given is None:
                raise ConfigError(f"{self.name} reads {name}, which the inputs lack", parameters=(name,))
            size_name, size = widths[name]
            if given.shape[-1] != size:
                raise ConfigError(f"{name} is {given.shape[-1]} wide; this {self.name} was built for {size_name}={size}",
                                  parameters=(name,))
        features, cache = self._features(cache, inputs)
        return HeadOutput(features, self.target_logits(features)), cache

    def draft_step(self, cache: HeadCache, token: torch.Tensor, *, previous_feature: torch.Tensor | None = None,
                   draft_hidden: torch.Tensor | None = None, draft_logits: torch.Tensor | None = None
                   ) -> tuple[HeadOutput, HeadCache]:
        """One new position after ``cache``: ``token`` [B] the token drafted there, ``previous_feature``
        [B, H] its parent's feature (the head's own estimate when the parent was drafted),
        ``draft_hidden`` [B, Hd] / ``draft_logits`` [B, Vd] the draft's at it (heads that read them).
        Returns features [B, 1, H], logits [B, 1, V] and a new cache; ``cache`` is left as it was."""

        def one(x: torch.Tensor | None) -> torch.Tensor | None:
            return None if x is None else x[:, None]

        return self.extend(cache, HeadInputs(token[:, None], one(previous_feature), one(draft_hidden), one(draft_logits)))

    def _features(self, cache: HeadCache, inputs: HeadInputs) -> tuple[torch.Tensor, HeadCache]:
        raise NotImplementedError

    def _own(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` in the head's own dtype (inputs may come in the target's or the store's)."""
        return x.to(next(self.parameters()).dtype)

    # -- training
    def forward(self, batch: HeadBatch) -> HeadOutput:
        if "visual" in self.reads and batch.visual is None:
            raise ConfigError(f"{self.name} is conditioned on visual features, which the batch lacks", parameters=("visual",))
        cache = self.start(batch.visual, batch.visual_mask) if "visual" in self.reads else HeadCache()
        return self.extend(cache, batch.inputs())[0]

    def counted(self, batch: HeadBatch) -> torch.Tensor:
        """[B, T] bool: the positions the loss counts."""
        mask = batch.loss_mask.to(torch.bool).clone()
        if "previous_features" in self.reads:
            mask[:, 0] = False  # f_{-1} is not known
        return mask

    def loss(self, batch: HeadBatch, output: HeadOutput) -> tuple[torch.Tensor, dict[str, float]]:
        """Mean loss over the counted positions, and sums to log: ``positions``, ``top1_agree`` (the
        head's argmax equals the target's), ``feature_loss_sum``, ``token_loss_sum``, ``cosine_sum``."""
        mask = self.counted(batch)
        features, logits = output.features[mask], output.logits[mask]  # [n, H], [n, V]: counted rows only
        target = batch.target_hidden[mask]
        n = features.new_tensor(features.shape[0], dtype=torch.float32)
        with torch.no_grad():
            target_log_p = F.log_softmax(self.target_logits(target).float(), dim=-1)
        log_q = F.log_softmax(logits.float(), dim=-1)
        # KL(target || head): cross-entropy to the target's distribution less its entropy (same
        # gradient as EAGLE's cross-entropy; 0 when the head's distribution is the target's)
        token = (target_log_p.exp() * (target_log_p - log_q)).sum(-1)
        feature = F.smooth_l1_loss(features, target.to(features.dtype), reduction="none").mean(-1).float()
        token_loss, feature_loss = token.sum() / n.clamp(min=1), feature.sum() / n.clamp(min=1)
        if self.regresses_features:
            loss = self.config.feature_loss_weight * feature_loss + self.config.token_loss_weight * token_loss
        else:
            loss = token_loss
        with torch.no_grad():
            agree = (log_q.argmax(-1) == target_log_p.argmax(-1)).sum().float()
            cosine = F.cosine_similarity(features.float(), target.float(), dim=-1).sum()
            sums = torch.stack([n, agree, feature.sum(), token.sum(), cosine])
        names = ("positions", "top1_agree", "feature_loss_sum", "token_loss_sum", "cosine_sum")
        return loss, dict(zip(names, sums.tolist()))  # one host sync


class TokenAdapter(Head):
    """The draft's next-token distribution -> the target's: the draft's probabilities weight a
    learned soft-token table (Vd x token_rank), an MLP lifts the result to H, and the target's LM
    head gives the logits. Trained by cross-entropy to the target's next-token distribution."""

    name = "TokenAdapter"
    reads = frozenset({"draft_logits"})
    needs = ("draft_vocab_size",)
    regresses_features = False

    def __init__(self, config: HeadConfig, target_embedding: nn.Embedding, target_lm_head: nn.Linear) -> None:
        super().__init__(config, target_embedding, target_lm_head)
        self.table = nn.Parameter(torch.randn(config.draft_vocab_size, config.token_rank) * 0.02)
        self.lift = nn.Sequential(nn.LayerNorm(config.token_rank), nn.Linear(config.token_rank, config.hidden_size),
                                  nn.GELU(), nn.Linear(config.hidden_size, config.hidden_size))

    def _features(self, cache: HeadCache, inputs: HeadInputs) -> tuple[torch.Tensor, HeadCache]:
        probabilities = self._own(F.softmax(inputs.draft_logits.float(), dim=-1))
        features = self.lift(probabilities @ self.table)
        return features, replace(cache, length=cache.length + features.shape[1])


class BottleneckAdapter(Head):
    """Draft hidden states -> target hidden states, position by position: a projection to H
    (identity when the widths agree), then residual bottleneck blocks (LayerNorm, down, GELU,
    up). Drafted tokens come from the target's LM head. Smooth L1 to the target's feature +
    weighted cross-entropy. L1: one block 256 wide; L2: three; L3: one block 1024 wide."""

    reads = frozenset({"draft_hidden"})
    needs = ("draft_hidden_size",)

    def __init__(self, config: HeadConfig, target_embedding: nn.Embedding, target_lm_head: nn.Linear,
                 *, blocks: int, width: int) -> None:
        super().__init__(config, target_embedding, target_lm_head)
        self.project = _draft_projection(config)
        self.blocks = nn.Sequential(*(_Bottleneck(config.hidden_size, width) for _ in range(blocks)))

    def _features(self, cache: HeadCache, inputs: HeadInputs) -> tuple[torch.Tensor, HeadCache]:
        features = self.blocks(self.project(self._own(inputs.draft_hidden)))
        return features, replace(cache, length=cache.length + features.shape[1])


class L1Adapter(BottleneckAdapter):
    """L1: one bottleneck block ``bottleneck`` (256) wide."""

    name = "L1"

    def __init__(self, config: HeadConfig, target_embedding: nn.Embedding, target_lm_head: nn.Linear) -> None:
        super().__init__(config, target_embedding, target_lm_head, blocks=1, width=config.bottleneck)


class L2Adapter(BottleneckAdapter):
    """L2: ``stacked_blocks`` (3) L1 blocks stacked."""

    name = "L2"

    def __init__(self, config: HeadConfig, target_embedding: nn.Embedding, target_lm_head: nn.Linear) -> None:
        super().__init__(config, target_embedding, target_lm_head, blocks=config.stacked_blocks, width=config.bottleneck)


class L3Adapter(BottleneckAdapter):
    """L3: one bottleneck block ``wide_bottleneck`` (1024) wide."""

    name = "L3"

    def __init__(self, config: HeadConfig, target_embedding: nn.Embedding, target_lm_head: nn.Linear) -> None:
        super().__init__(config, target_embedding, target_lm_head, blocks=1, width=config.wide_bottleneck)


class L4Adapter(Head):
    """L4: draft hidden states -> target hidden states by a projection to H and one causal
    decoder layer (self-attention + FFN) over the draft's sequence; same losses as L1."""

    name = "L4"
    reads = frozenset({"draft_hidden"})
    needs = ("draft_hidden_size",)

    def __init__(self, config: HeadConfig, target_embedding: nn.Embedding, target_lm_head: nn.Linear) -> None:
        super().__init__(config, target_embedding, target_lm_head)
        self.project = _draft_projection(config)
        self.block = _Block(config.hidden_size, config.num_heads, config.ffn_width, config.rope_theta)

    def _features(self, cache: HeadCache, inputs: HeadInputs) -> tuple[torch.Tensor, HeadCache]:
        return self.block(self.project(self._own(inputs.draft_hidden)), cache)


class EagleHead(Head):
    """EAGLE's head: ``fc(concat[feature inputs, embedding of x_t])`` to H, then one causal decoder
    layer; its output is the estimate of ``f_t``. Losses: smooth L1 to ``f_t`` + weighted
    cross-entropy through the target's LM head. Subclasses choose the feature inputs and the
    conditioning; ``fc_inputs`` lists the concatenated parts in order."""

    fc_inputs: ClassVar[tuple[str, ...]]  # among previous_features, draft_hidden, embedding, summary
    cross_conditioned: ClassVar[bool] = False

    def __init__(self, config: HeadConfig, target_embedding: nn.Embedding, target_lm_head: nn.Linear) -> None:
        super().__init__(config, target_embedding, target_lm_head)
        widths = {"previous_features": config.hidden_size, "draft_hidden": config.draft_hidden_size,
                  "embedding": config.hidden_size, "summary": config.hidden_size}
        self.fc = nn.Linear(sum(widths[part] for part in self.fc_inputs), config.hidden_size)
        self.block = _Block(config.hidden_size, config.num_heads, config.ffn_width, config.rope_theta,
                            cross=self.cross_conditioned)
        self.compressor = (VisualCompressor(config.visual_size, config.hidden_size, config.visual_queries, config.num_heads)
                           if "visual" in self.reads else None)

    def _part(self, name: str, cache: HeadCache, inputs: HeadInputs) -> torch.Tensor:
        if name == "embedding":
            return self._own(self.embed(inputs.token_ids))
        if name == "summary":
            return cache.summary[:, None].expand(-1, inputs.token_ids.shape[1], -1)
        return self._own(getattr(inputs, name))

    def _features(self, cache: HeadCache, inputs: HeadInputs) -> tuple[torch.Tensor, HeadCache]:
        if "visual" in self.reads and cache.cross_keys is None and cache.summary is None:
            raise ConfigError(f"{self.name} is conditioned on visual features: extend a cache from start(visual)",
                              parameters=("visual",))
        x = self.fc(torch.cat([self._part(name, cache, inputs) for name in self.fc_inputs], dim=-1))
        return self.block(x, cache)

    def _visual_tokens(self, visual: torch.Tensor | None, visual_mask: torch.Tensor | None) -> torch.Tensor:
        if visual is None:
            raise ConfigError(f"{self.name} is conditioned on visual features: pass visual", parameters=("visual",))
        if visual.shape[-1] != self.config.visual_size:
            raise ConfigError(f"visual is {visual.shape[-1]} wide, {self.name} was built for "
                              f"visual_size={self.config.visual_size}", parameters=("visual",))
        return self.compressor(self._own(visual), visual_mask)  # store or model features may be 16-bit


class L5Head(EagleHead):
    """L5: the EAGLE head on the draft: reads the draft's hidden ``d_t`` and the embedding of ``x_t``
    (the draft steps along drafted tokens, so ``d_t`` is known at every position)."""

    name = "L5"
    reads = frozenset({"draft_hidden"})
    needs = ("draft_hidden_size",)
    fc_inputs = ("draft_hidden", "embedding")


class B1Head(EagleHead):
    """B1: the EAGLE head on the target's own features alone, ``f_{t-1}`` and ``x_t``: the baseline
    every cross-modal head must beat."""

    name = "B1"
    reads = frozenset({"previous_features"})
    fc_inputs = ("previous_features", "embedding")


class L5FHead(EagleHead):
    """L5F: fused: the target's ``f_{t-1}``, the draft's ``d_t`` and the embedding of ``x_t``."""

    name = "L5F"
    reads = frozenset({"previous_features", "draft_hidden"})
    needs = ("draft_hidden_size",)
    fc_inputs = ("previous_features", "draft_hidden", "embedding")


class ECHead(EagleHead):
    """EC: B1 conditioned on the event model's visual features [B, N, Hv]: ``start`` compresses
    them into ``visual_queries`` tokens and projects their keys/values once; each position then
    cross-attends to those few cached keys (N costs nothing per drafted token)."""

    name = "EC"
    reads = frozenset({"previous_features", "visual"})
    visual_field = "draft_visual"
    needs = ("visual_size",)
    fc_inputs = ("previous_features", "embedding")
    cross_conditioned = True

    def start(self, visual: torch.Tensor | None = None, visual_mask: torch.Tensor | None = None) -> HeadCache:
        keys, values = self.block.cross.project_memory(self._visual_tokens(visual, visual_mask))
        return HeadCache(cross_keys=keys, cross_values=values)


class VSHead(EagleHead):
    """VS (ViSpec-like): B1 conditioned on the target's own visual tokens [B, N, Hv], compressed
    once by ``start`` into ``visual_queries`` tokens that sit before the sequence as a prefix the
    self-attention sees, their mean concatenated to every position's fc input (ViSpec's global
    image vector)."""

    name = "VS"
    reads = frozenset({"previous_features", "visual"})
    visual_field = "target_visual"
    needs = ("visual_size",)
    fc_inputs = ("previous_features", "embedding", "summary")

    def start(self, visual: torch.Tensor | None = None, visual_mask: torch.Tensor | None = None) -> HeadCache:
        tokens = self._visual_tokens(visual, visual_mask)
        keys, values = self.block.attention.keys_values(self.block.attention_norm(tokens), 0)
        return HeadCache(keys=keys, values=values, prefix=tokens.shape[1], summary=tokens.mean(dim=1))


# ----------------------------------------------------------------------------- registry, batches, sizes, files


ADAPTERS: dict[str, type[Head]] = {cls.name: cls for cls in (
    TokenAdapter, L1Adapter, L2Adapter, L3Adapter, L4Adapter, L5Head, B1Head, L5FHead, ECHead, VSHead)}


def check_fits(config: HeadConfig, target_embedding: nn.Module, target_lm_head: nn.Module) -> None:
    """A ConfigError naming what does not fit unless the config's sizes are the target's."""
    if not isinstance(target_embedding, nn.Embedding):
        raise ConfigError(f"target_embedding must be an nn.Embedding, got {type(target_embedding).__name__}",
                          parameters=("target_embedding",))
    if not isinstance(target_lm_head, nn.Linear):
        raise ConfigError(f"target_lm_head must be an nn.Linear, got {type(target_lm_head).__name__}",
                          parameters=("target_lm_head",))
    sizes = {"hidden_size": (config.hidden_size, {"the target embedding's width": target_embedding.embedding_dim,
                                                  "the target LM head's input": target_lm_head.in_features}),
             "vocab_size": (config.vocab_size, {"the target embedding's rows": target_embedding.num_embeddings,
                                                "the target LM head's rows": target_lm_head.out_features})}
    for name, (value, actual) in sizes.items():
        for what, size in actual.items():
            if size != value:
                raise ConfigError(f"{name}={value} does not fit the target: {what} is {size}", parameters=(name,))


def build_adapter(adapter: str, config: HeadConfig, target_embedding: nn.Embedding, target_lm_head: nn.Linear) -> Head:
    """The adapter or head named ``adapter`` (a key of :data:`ADAPTERS`), sized by ``config``, over the
    target's frozen embedding and LM head."""
    if adapter not in ADAPTERS:
        raise ConfigError(f"adapter {adapter!r} is unknown: use one of {', '.join(ADAPTERS)}", parameters=("adapter",))
    return ADAPTERS[adapter](config, target_embedding, target_lm_head)


def _padded(tensors: Sequence[torch.Tensor], length: int) -> torch.Tensor:
    """[len(tensors), length, ...]: each tensor's rows, then zeros."""
    out = tensors[0].new_zeros((len(tensors), length, *tensors[0].shape[1:]))
    for i, tensor in enumerate(tensors):
        out[i, : tensor.shape[0]] = tensor
    return out


def collate_rows(rows: Sequence[AlignRow], head: Head, *, draft_lm_head: nn.Linear | None = None) -> HeadBatch:
    """Store rows (:class:`~evspec.align.store.AlignRow`) -> one right-padded :class:`HeadBatch`
    with what ``head`` reads: the draft's hidden states (and their logits through ``draft_lm_head``
    for the TokenAdapter), the visual features of ``head.visual_field``. Padding is masked out.
    Heads that read the draft need its positions to be the target's (a shared vocabulary)."""
    if not rows:
        raise ConfigError("rows is empty: a batch needs at least one row", parameters=("rows",))
    if "draft_logits" in head.reads and draft_lm_head is None:
        raise ConfigError(f"{head.name} reads the draft's logits: pass draft_lm_head", parameters=("draft_lm_head",))
    reads_draft = bool({"draft_hidden", "draft_logits"} & head.reads)
    for row in rows:
        if reads_draft and row.draft_hidden.shape[0] != row.target_ids.shape[0]:
            raise ConfigError(f"row {row.sample_id!r}: the draft has {row.draft_hidden.shape[0]} positions, the target "
                              f"{row.target_ids.shape[0]}; {head.name} needs draft and target on one vocabulary",
                              parameters=("rows",))
        if head.visual_field is not None and getattr(row, head.visual_field) is None:
            raise ConfigError(f"row {row.sample_id!r} has no {head.visual_field}, which {head.name} is conditioned on",
                              parameters=("rows",))
    length = max(row.target_ids.shape[0] for row in rows)
    draft_hidden = _padded([row.draft_hidden for row in rows], length) if reads_draft else None
    draft_logits = None
    if "draft_logits" in head.reads:
        with torch.no_grad():
            bias = None if draft_lm_head.bias is None else draft_lm_head.bias.detach()
            draft_logits = F.linear(draft_hidden.to(draft_lm_head.weight.dtype), draft_lm_head.weight.detach(), bias)
    visual = visual_mask = None
    if head.visual_field is not None:
        visuals = [getattr(row, head.visual_field) for row in rows]
        visual = _padded(visuals, max(v.shape[0] for v in visuals))
        visual_mask = _padded([torch.ones(v.shape[0], dtype=torch.bool, device=v.device) for v in visuals], visual.shape[1])
    return HeadBatch(input_ids=_padded([row.target_ids for row in rows], length),
                     loss_mask=_padded([row.loss_mask.to(torch.bool) for row in rows], length),
                     target_hidden=_padded([row.target_hidden for row in rows], length),
                     draft_hidden=draft_hidden if "draft_hidden" in head.reads else None, draft_logits=draft_logits,
                     visual=visual, visual_mask=visual_mask)


def weights_sha256(*modules: nn.Module | None, rounded_to: torch.dtype | None = None) -> str:
    """sha256 of the modules' weights, in float32: which target (its embedding and LM head) and which
    draft (its whole trainable module, for a head that reads it) an alignment run used, and which
    models made a store's rows. ``rounded_to``: first round to that dtype, so that float32 weights
    hash as the same checkpoint loaded in 16-bit does."""
    digest = hashlib.sha256()
    for module in modules:
        if module is None:
            continue
        for name, tensor in sorted(module.state_dict().items()):
            value = tensor.detach().to("cpu")
            if rounded_to is not None and value.is_floating_point():
                value = value.to(rounded_to)
            digest.update(name.encode())
            digest.update(value.to(torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()


def trainable_parameters(module: nn.Module) -> int:
    """Parameters the module trains (the target's embedding and LM head, never registered, excluded)."""
    frozen = set()
    if isinstance(module, Head):
        frozen = {id(p) for p in (*module.target.embedding.parameters(), *module.target.lm_head.parameters())}
    return sum(p.numel() for p in module.parameters() if p.requires_grad and id(p) not in frozen)


def save_head(module: Head, folder: str | Path, weights: dict[str, torch.Tensor] | None = None) -> Path:
    """Write ``model.safetensors`` (the head's own weights only: ``module.state_dict()``, or
    ``weights`` where a sharded training gathered them) and ``config.json`` (name, sizes, parameter
    count) into ``folder``, each atomically; config.json last, so its presence marks a complete head."""
    from safetensors.torch import save_file

    from evspec.data.events import atomic_path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = module.state_dict() if weights is None else weights
    tensors = {key: value.detach().contiguous().cpu() for key, value in state.items()}
    with atomic_path(folder / WEIGHTS_NAME) as tmp:
        save_file(tensors, str(tmp), metadata={"format": HEAD_FORMAT, "adapter": module.name})
    document = {"format": HEAD_FORMAT, "format_version": HEAD_FORMAT_VERSION, "adapter": module.name,
                "config": asdict(module.config), "trainable_parameters": trainable_parameters(module)}
    with atomic_path(folder / CONFIG_NAME) as tmp:
        tmp.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    return folder


def load_head(folder: str | Path, target_embedding: nn.Embedding, target_lm_head: nn.Linear) -> Head:
    """The head ``save_head`` wrote into ``folder``, over the target's embedding and LM head.

    Reads only ``config.json`` and ``model.safetensors`` (no code runs). A ModelError naming the
    file when the folder is not a head, names an unknown adapter, holds sizes that do not fit the
    target, or weights that do not match the head's layout."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from evspec.models.loading import check_state_dict_keys, read_config_dict

    folder = Path(folder)
    if not folder.is_dir():
        raise ModelError(f"{folder}: no such head folder")
    if not (folder / CONFIG_NAME).is_file():
        raise ModelError(f"{folder}: no {CONFIG_NAME}: not a head folder")
    config_path = folder / CONFIG_NAME
    document = read_config_dict(folder)
    if document.get("format") != HEAD_FORMAT or document.get("format_version") != HEAD_FORMAT_VERSION:
        raise ModelError(f"{config_path}: not an evspec head (format {document.get('format')!r}, "
                         f"version {document.get('format_version')!r}; expected {HEAD_FORMAT!r}, {HEAD_FORMAT_VERSION})")
    adapter = document.get("adapter")
    if not isinstance(adapter, str) or adapter not in ADAPTERS:
        raise ModelError(f"{config_path}: adapter {str(adapter)[:80]!r} is not one of {', '.join(ADAPTERS)}")
    sizes = document.get("config")
    known = {f.name for f in fields(HeadConfig)}
    if not isinstance(sizes, dict) or not set(sizes) <= known:
        extra = sorted(set(sizes) - known)[:5] if isinstance(sizes, dict) else []
        raise ModelError(f"{config_path}: 'config' must be an object of HeadConfig fields"
                         + (f" (unknown: {', '.join(map(str, extra))})" if extra else ""))
    try:
        head = build_adapter(adapter, HeadConfig(**sizes), target_embedding, target_lm_head)
    except (ConfigError, TypeError) as error:
        raise ModelError(f"{config_path}: {error}") from None
    weights_path = folder / WEIGHTS_NAME
    try:
        state = load_file(str(weights_path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise ModelError(f"{weights_path}: unreadable safetensors file ({error})") from None
    expected = head.state_dict()
    check_state_dict_keys(set(expected), set(state), folder)
    mismatched = [f"{key} {tuple(state[key].shape)} != {tuple(value.shape)}" for key, value in expected.items()
                  if state[key].shape != value.shape]
    if mismatched:
        raise ModelError(f"{weights_path}: weights do not match the {adapter} layout of config.json: {'; '.join(mismatched[:3])}")
    head.load_state_dict(state)
    return head
