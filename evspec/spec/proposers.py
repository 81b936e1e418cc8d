"""Proposers: who drafts the next tokens for the target to verify.

One small interface (transformers' candidate generators, vLLM's proposers):

    start(ctx)                 per sample, before drafting: the draft's own prefill. Separate so
                               the engine can run it concurrently with the target's prefill.
    propose(accepted, gamma)   up to ``gamma`` tokens (target vocabulary) continuing the ACCEPTED
                               output ``accepted``, with the draft distributions q [k, V_target]
                               when sampling (None: the acceptance rule's one-hot case applies).
    observe(target_hidden)     the target's final hidden states of the positions each verify pass
                               committed (row i belongs to the i-th committed token; the prefill
                               gives the prompt's last position). Model drafts ignore it.
    taps                       (property) the target layers and positions a feature-level drafter
                               (EAGLE-style) needs: a :class:`~evspec.runtime.decode.Taps`;
                               default none, and the engine then does no extra work.
    observe_features(features, start, buffer)
                               with taps: ``features[layer]`` [n, hidden] are the tapped hidden
                               states of sequence positions start .. start+n-1 -- at prefill every
                               prompt position (``Taps.prompt``; else the last), delivered after
                               ``start`` and before the first ``propose``; after each verify pass
                               the positions it committed (the last emitted token's and the
                               accepted drafts'). ``buffer`` (:class:`~evspec.runtime.decode.
                               FeatureBuffer`) holds every committed row so far, truncated with
                               the target's cache.

A model draft keeps the tokens it has fed its own cache. ``propose`` rolls that cache back to the
longest common prefix with the accepted tokens and feeds the rest before drafting, so rejected
drafts leave no trace and no caller has to remember to roll anything back.

Proposers here: :class:`DraftModelProposer` (any evspec VLM on its own modality, or a bare
language model), :class:`NgramProposer` (prompt lookup, model-free) and :class:`OracleProposer`
(synthetic acceptance ``alpha`` with a real draft's cost).
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from evspec.errors import ConfigError
from evspec.runtime.decode import (
    DecodeState,
    EagerState,
    FeatureBuffer,
    LanguageModel,
    SamplingConfig,
    StateFactory,
    Taps,
    probabilities,
    token_tensor,
)
from evspec.spec.vocab import TextBridge, TokenMap, common_prefix_length

if TYPE_CHECKING:
    from evspec.data.dataset import Sample
    from evspec.models.base import VisionLanguageModel


@dataclass
class Proposal:
    """Drafted tokens in the target's vocabulary; ``q`` [k, V_target] when sampling, else None."""

    token_ids: list[int] = field(default_factory=list)
    q: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.token_ids)

    def truncate(self, k: int) -> Proposal:
        k = max(k, 0)
        if k >= len(self.token_ids):
            return self
        return Proposal(self.token_ids[:k], None if self.q is None else self.q[:k])

    def drop_first(self) -> Proposal:
        return Proposal(self.token_ids[1:], None if self.q is None else self.q[1:])


@dataclass
class DraftContext:
    """What a proposer may know about the sample before drafting.

    ``target_prompt_ids``: the target's prompt ids without visual placeholders (n-gram lookup).
    ``reference_ids``: the target-only greedy output of this sample (the oracle's answer key).
    ``key``: a stable name of the sample (id), for per-sample seeding.
    ``target_visual``: when the target is a VLM, returns its visual tokens of this sample [N, D]
    (its ``encode`` output: the features its prefill encoded once that has run, else encoded on
    the call), for drafters conditioned on what the target sees (a ViSpec-like head).
    """

    sample: Sample | None
    target_prompt_ids: list[int]
    target_vocab_size: int
    sampling: SamplingConfig = SamplingConfig()
    max_new_tokens: int = 64
    reference_ids: list[int] | None = None
    eos_token_ids: tuple[int, ...] = ()
    key: str = ""
    target_visual: Callable[[], torch.Tensor] | None = None


class Proposer(ABC):
    """Base class: see the module docstring for the protocol."""

    name: str = "proposer"
    synthetic: bool = False
    target_hidden: torch.Tensor | None = None
    target_features: dict[int, torch.Tensor] | None = None

    @abstractmethod
    def start(self, ctx: DraftContext) -> None:
        """Prepare for one sample (draft prefill)."""

    @abstractmethod
    def propose(self, accepted: Sequence[int], gamma: int) -> Proposal:
        """Up to ``gamma`` drafts after the accepted output tokens ``accepted`` (target vocabulary)."""

    def observe(self, target_hidden: torch.Tensor) -> None:
        """The target's hidden states of newly committed positions [n, D] (kept for feature drafters)."""
        self.target_hidden = target_hidden

    @property
    def taps(self) -> Taps:
        """The target's hidden states this proposer needs beyond ``observe``'s: none by default."""
        return Taps()

    def observe_features(self, features: dict[int, torch.Tensor], start: int, buffer: FeatureBuffer) -> None:
        """The tapped layers' rows of newly committed positions ``start ..`` (module docstring).
        ``features`` are the proposer's to keep; ``buffer``'s views change with the next pass."""
        self.target_features = features

    @property
    def device(self) -> torch.device | None:
        """Where the proposer computes (None: host only); the engine picks streams from it."""
        return None

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "synthetic": self.synthetic}


# --------------------------------------------------------------------------- n-gram


class NgramProposer(Proposer):
    """Prompt lookup: find the latest earlier occurrence of the last n tokens (n = max_n .. min_n)
    in prompt + output and propose what followed it. No model, no distributions (one-hot rule)."""

    def __init__(self, max_n: int = 3, min_n: int = 1) -> None:
        if not 1 <= min_n <= max_n:
            raise ConfigError(f"n-gram sizes need 1 <= min_n <= max_n, got min_n={min_n}, max_n={max_n}")
        self.max_n, self.min_n = max_n, min_n
        self.name = "ngram"
        self._prompt = np.zeros(0, dtype=np.int64)

    def start(self, ctx: DraftContext) -> None:
        self._prompt = np.asarray(ctx.target_prompt_ids, dtype=np.int64)

    def propose(self, accepted: Sequence[int], gamma: int) -> Proposal:
        history = np.concatenate([self._prompt, np.asarray(list(accepted), dtype=np.int64)])
        return Proposal(lookup(history, gamma, self.max_n, self.min_n))

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "max_n": self.max_n, "min_n": self.min_n}


def lookup(history: np.ndarray, gamma: int, max_n: int, min_n: int) -> list[int]:
    """The continuation (up to ``gamma`` tokens) of the latest earlier match of history's last n tokens."""
    size = len(history)
    if gamma < 1:
        return []
    for n in range(min(max_n, size - 1), min_n - 1, -1):
        suffix = history[size - n:]
        # windows starting at 0 .. size-n-1: each leaves at least one token to propose
        windows = np.lib.stride_tricks.sliding_window_view(history[: size - 1], n)
        hits = np.flatnonzero((windows == suffix).all(axis=1))
        if hits.size:
            start = int(hits[-1]) + n
            return history[start: start + gamma].tolist()
    return []


# --------------------------------------------------------------------------- draft model


PromptBuilder = Callable[[DraftContext], torch.Tensor]
"""Returns the draft's prompt embeddings [1, L, D] on the draft's device for a sample."""


class DraftModelProposer(Proposer):
    """A draft language model with its own KV cache (and, for a VLM, its own modality input).

    ``model``: an evspec ``VisionLanguageModel`` -- ``start`` runs its load, preprocess, encode,
    splice and prefill on the sample (an EventGPT-style draft reads the event frames while the
    Video-LLaVA target reads the video) -- or a bare :class:`LanguageModel`, prompted with the
    target's text prompt carried over by the bridge, or by ``prompt(ctx)`` when given.
    ``bridge``: a :class:`~evspec.spec.vocab.TokenMap` (same tokenizer: drafts carry q when
    sampling) or a :class:`~evspec.spec.vocab.TextBridge` (different tokenizers).
    """

    def __init__(
        self,
        model: VisionLanguageModel | LanguageModel,
        bridge: TokenMap | TextBridge,
        *,
        state_factory: StateFactory = EagerState,
        prompt: PromptBuilder | None = None,
        name: str | None = None,
        confidence: float = 0.0,
    ) -> None:
        if not 0.0 <= confidence < 1.0:
            raise ConfigError(f"draft confidence must be in [0, 1), got {confidence}", parameters=["draft_confidence"])
        self.model = model
        self.confidence = confidence
        self.lm: LanguageModel = model if isinstance(model, LanguageModel) else model.language_model
        self.bridge = bridge
        self.state_factory = state_factory
        self.prompt = prompt
        self.name = name or f"draft:{getattr(model, 'name', 'lm')}"
        self.state: DecodeState | None = None
        self.draft_hidden: torch.Tensor | None = None
        self._fed: list[int] = []
        self._prompt_len = 0
        self._prefill_logits: torch.Tensor | None = None
        self._last_logits: torch.Tensor | None = None
        self._allowed: torch.Tensor | None = None
        if isinstance(bridge, TokenMap):
            if bridge.draft_vocab_size != self.lm.vocab_size:
                raise ConfigError(
                    f"the vocabulary map is for a draft of {bridge.draft_vocab_size} tokens, the draft has {self.lm.vocab_size}"
                )
            self._allowed = bridge.allowed.to(self.lm.device)

    @classmethod
    def paired(
        cls, draft: VisionLanguageModel, target: VisionLanguageModel, *, bridge: str = "auto",
        state_factory: StateFactory = EagerState, name: str | None = None, confidence: float = 0.0,
    ) -> DraftModelProposer:
        """A draft model's proposer for ``target``, with the vocabulary bridge the pair needs
        (``auto``: token ids when they share a tokenizer, text re-encoding otherwise)."""
        from evspec.spec.vocab import bridge_vocabularies

        mapping = bridge_vocabularies(
            draft.tokenizer, target.tokenizer, draft_vocab_size=draft.language_model.vocab_size,
            target_vocab_size=target.language_model.vocab_size, draft_eos=draft.eos_token_ids,
            target_eos=target.eos_token_ids, mode=bridge,  # type: ignore[arg-type]
        )
        return cls(draft, mapping, state_factory=state_factory, name=name, confidence=confidence)

    @property
    def device(self) -> torch.device:
        return self.lm.device

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "bridge": self.bridge.kind, "confidence": self.confidence}

    # ---- prefill
    def _prompt_embeds(self, ctx: DraftContext) -> torch.Tensor:
        if self.prompt is not None:
            return self.prompt(ctx)
        if not isinstance(self.model, LanguageModel):
            if ctx.sample is None:
                raise ConfigError(f"the draft model {self.name} needs the sample itself (its own modality input)")
            model = self.model
            prepared = model.preprocess(model.load(ctx.sample), ctx.sample.query)
            return model.splice(prepared, model.encode(prepared))
        ids = self._to_draft(ctx.target_prompt_ids)
        if not ids:
            raise ConfigError(f"the draft {self.name} got an empty prompt")
        return self.lm.embed_tokens(torch.tensor([ids], dtype=torch.long, device=self.lm.device))

    @torch.inference_mode()
    def start(self, ctx: DraftContext) -> None:
        self._sampling = ctx.sampling
        self._eos = set(ctx.eos_token_ids)
        self._generator = torch.Generator().manual_seed(ctx.sampling.seed + 1)
        embeds = self._prompt_embeds(ctx)
        if embeds.shape[-2] >= self.lm.context_length:
            raise ConfigError(f"the draft's prompt of {embeds.shape[-2]} tokens fills its context of {self.lm.context_length}")
        self.state = self.state_factory(self.lm)
        step = self.state.extend(embeds=embeds, last_only=True)
        self._prompt_len = self.state.length
        self._fed = []
        self._prefill_logits = self._last_logits = step.logits[-1]
        self.draft_hidden = step.hidden[-1:]

    # ---- cache bookkeeping
    def _to_draft(self, target_ids: Sequence[int]) -> list[int]:
        return self.bridge.to_draft(target_ids)

    def _feed(self, draft_ids: Sequence[int] | torch.Tensor) -> torch.Tensor:
        """Append tokens to the draft's cache. A device tensor of ids is fed without a host sync;
        the caller records those ids in ``_fed`` once it reads them back."""
        assert self.state is not None
        step = self.state.extend(token_ids=draft_ids)
        if not isinstance(draft_ids, torch.Tensor):
            self._fed.extend(draft_ids)
        self._last_logits = step.logits[-1]
        self.draft_hidden = step.hidden
        return self._last_logits

    def _sync(self, draft_seq: list[int]) -> torch.Tensor | None:
        """Make the cache hold prompt + ``draft_seq``; the logits after it (None: no room)."""
        state = self.state
        if state is None:
            raise RuntimeError(f"{self.name}: propose() before start()")
        if self._prompt_len + len(draft_seq) > state.capacity:
            return None
        n = common_prefix_length(self._fed, draft_seq)
        if n == len(draft_seq) == len(self._fed):
            return self._last_logits
        if n == len(draft_seq):
            n -= 1  # the cache runs past the target; re-feed its last token for fresh logits
        if n < 0:
            state.rollback(self._prompt_len)
            self._fed = []
            self._last_logits = self._prefill_logits
            return self._last_logits
        state.rollback(self._prompt_len + n)
        del self._fed[n:]
        return self._feed(draft_seq[n:])

    # ---- drafting
    def _masked(self, logits: torch.Tensor) -> torch.Tensor:
        """Draft logits with tokens the target vocabulary cannot express ruled out."""
        return logits if self._allowed is None else logits.masked_fill(~self._allowed, float("-inf"))

    def _sample(self, logits: torch.Tensor) -> tuple[int, torch.Tensor]:
        """One sampled draft token (draft vocabulary) and its distribution over the draft vocabulary."""
        probs = probabilities(self._masked(logits), self._sampling)
        token = int(torch.multinomial(probs.cpu(), 1, generator=self._generator))
        return token, probs

    def _is_eos(self, draft_token: int) -> bool:
        """Drafting stops after an end-of-answer token: nothing after it can be accepted."""
        if isinstance(self.bridge, TokenMap):
            return int(self.bridge.draft_to_target[draft_token]) in self._eos
        return draft_token in self.bridge.draft_eos

    @torch.inference_mode()
    def propose(self, accepted: Sequence[int], gamma: int) -> Proposal:
        if gamma < 1:
            return Proposal()
        draft_seq = self._to_draft(accepted)
        logits = self._sync(draft_seq)
        if logits is None:
            return Proposal()
        assert self.state is not None
        gamma = min(gamma, self.state.capacity - self.state.length + 1)  # the last draft needs no slot
        if self._sampling.greedy:
            drafted, rows = self._draft_greedy(logits, gamma), []
        else:
            drafted, rows = self._draft_sampled(logits, gamma)
        return self._to_proposal(accepted, draft_seq, drafted, rows, gamma)

    def _draft_greedy(self, logits: torch.Tensor, gamma: int) -> list[int]:
        if self.confidence > 0:
            return self._draft_greedy_while_confident(logits, gamma)
        return self._draft_greedy_on_device(logits, gamma)

    def _draft_greedy_while_confident(self, logits: torch.Tensor, gamma: int) -> list[int]:
        """Up to gamma argmax steps, stopping after the first draft the draft itself gives less
        than ``confidence`` (that one is still proposed): transformers' assistant confidence
        threshold. Each further position a verify pass checks costs the target time (on a CPU, a
        5-token pass costs about 1.4 one-token passes), so unlikely drafts are not worth drafting
        past. One host read per drafted token."""
        drafted: list[int] = []
        for j in range(gamma):
            p, token = torch.softmax(self._masked(logits).float(), -1).max(-1)
            drafted.append(int(token))
            if self._is_eos(drafted[-1]) or float(p) < self.confidence or j == gamma - 1:
                return drafted
            logits = self._feed(drafted[-1:])
        return drafted

    def _draft_greedy_on_device(self, logits: torch.Tensor, gamma: int) -> list[int]:
        """gamma argmax steps with the tokens kept on the device: one host sync per round, not per
        token (gpt-fast's loop), so the host queues step j+1 while the device runs step j.
        Drafts after an end-of-answer token are cut afterwards (a wasted step only then)."""
        tokens = [self._masked(logits).argmax(-1, keepdim=True)]
        for _ in range(gamma - 1):
            tokens.append(self._masked(self._feed(tokens[-1])).argmax(-1, keepdim=True))
        drafted = torch.cat(tokens).tolist()
        self._fed.extend(drafted[:-1])  # every draft but the last went into the cache
        for j, token in enumerate(drafted):
            if self._is_eos(token):
                return drafted[: j + 1]
        return drafted

    def _draft_sampled(self, logits: torch.Tensor, gamma: int) -> tuple[list[int], list[torch.Tensor]]:
        """gamma sampled steps (fewer: as greedy drafting, after a draft whose probability is below
        ``confidence``); the tokens come from a host generator (repeatable across devices)."""
        drafted: list[int] = []
        rows: list[torch.Tensor] = []
        for j in range(gamma):
            token, probs = self._sample(logits)
            drafted.append(token)
            rows.append(probs)
            if self._is_eos(token) or j == gamma - 1 or float(probs[token]) < self.confidence:
                break
            logits = self._feed([token])
        return drafted, rows

    def _to_proposal(
        self, accepted: Sequence[int], draft_seq: list[int], drafted: list[int], rows: list[torch.Tensor], gamma: int,
    ) -> Proposal:
        if isinstance(self.bridge, TextBridge):
            return Proposal(self.bridge.to_target(accepted, draft_seq, drafted)[:gamma])
        ids = self.bridge.to_target(drafted)
        q = self.bridge.project(torch.stack(rows)) if rows else None
        return Proposal(ids, q)

    def standalone(self, ctx: DraftContext, max_new_tokens: int, eos_token_ids: Sequence[int]) -> list[int]:
        """The draft generating ALONE (greedy), in target ids: for the labelled position match."""
        self.start(ctx)
        out: list[int] = []
        eos = set(eos_token_ids)
        while len(out) < max_new_tokens:
            new = self.propose(out, min(8, max_new_tokens - len(out))).token_ids
            if not new:
                break
            for token in new:
                out.append(token)
                if token in eos or len(out) >= max_new_tokens:
                    return out
        return out


# --------------------------------------------------------------------------- oracle


class _ModuloBridge:
    """The oracle feeds its draft target ids modulo the draft vocabulary: the passes are for cost."""

    kind = "modulo"

    def __init__(self, draft_vocab_size: int) -> None:
        self.draft_vocab_size = draft_vocab_size

    def to_draft(self, target_ids: Sequence[int]) -> list[int]:
        return [int(t) % self.draft_vocab_size for t in target_ids]


class OracleProposer(DraftModelProposer):
    """Synthetic acceptance: propose the target's true next token (from the target-only greedy
    run of the same sample) with probability ``alpha``, a uniformly drawn wrong token otherwise,
    while a real draft model runs the same forward passes a draft would (so the cost is real).

    Greedy only. Outputs carry ``synthetic: true``. Per-position draws are i.i.d., so the realized
    acceptance follows, in expectation, the i.i.d. formula of Leviathan et al. 2023: position k is
    accepted with probability alpha^k, and a pass yields (1 - alpha^(gamma+1)) / (1 - alpha) tokens.
    """

    synthetic = True

    def __init__(
        self,
        model: VisionLanguageModel | LanguageModel,
        alpha: float,
        *,
        seed: int = 0,
        state_factory: StateFactory = EagerState,
        prompt: PromptBuilder | None = None,
    ) -> None:
        if not 0.0 <= alpha <= 1.0:
            raise ConfigError(f"oracle alpha must be in [0, 1], got {alpha}")
        lm = model if isinstance(model, LanguageModel) else model.language_model
        super().__init__(model, _ModuloBridge(lm.vocab_size), state_factory=state_factory, prompt=prompt,  # type: ignore[arg-type]
                         name=f"oracle:{alpha:g}")
        self.alpha = alpha
        self.seed = seed
        self._reference: list[int] = []
        self._target_vocab = 0

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "synthetic": True, "alpha": self.alpha, "seed": self.seed,
                "draft": getattr(self.model, "name", "lm")}

    def start(self, ctx: DraftContext) -> None:
        if not ctx.sampling.greedy:
            raise ConfigError("the oracle proposer is greedy only: use temperature=0 with oracle:ALPHA",
                              parameters=["temperature"])
        if ctx.reference_ids is None:
            raise ConfigError("the oracle proposer needs the target-only greedy tokens of the sample (reference_ids)")
        if ctx.target_vocab_size < 2:
            raise ConfigError("the oracle proposer needs a target vocabulary of at least 2 tokens")
        self._reference = list(ctx.reference_ids)
        self._target_vocab = ctx.target_vocab_size
        self._rng = random.Random(f"{self.seed}|{ctx.key}")
        super().start(ctx)

    @torch.inference_mode()
    def propose(self, accepted: Sequence[int], gamma: int) -> Proposal:
        gamma = min(gamma, len(self._reference) - len(accepted))
        if gamma < 1:
            return Proposal()
        logits = self._sync(self._to_draft(accepted))
        if logits is None:
            return Proposal()
        assert self.state is not None
        gamma = min(gamma, self.state.capacity - self.state.length + 1)
        proposed = [self._draw(self._reference[len(accepted) + j]) for j in range(gamma)]
        # The draft's passes, as a greedy draft runs them (argmax on the device, no per-token
        # host sync), fed the oracle's tokens: one host-to-device copy per round.
        fed = self._to_draft(proposed[:-1])
        ids = token_tensor(fed, self.lm.device)
        self._masked(logits).argmax(-1)
        for j in range(len(fed)):
            self._masked(self._feed(ids[j: j + 1])).argmax(-1)
        self._fed.extend(fed)
        return Proposal(proposed)

    def _draw(self, truth: int) -> int:
        """The true token with probability alpha, else a uniformly drawn wrong one."""
        if self._rng.random() < self.alpha:
            return truth
        token = self._rng.randrange(self._target_vocab - 1)
        return token + (token >= truth)

