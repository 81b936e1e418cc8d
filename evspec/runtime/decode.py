"""Prefill, the decode loop and sampling, over a language model's KV cache.

One seam serves plain generation, the benchmark and speculative decoding: a ``DecodeState``
holds one sequence's KV cache; ``extend`` appends embeddings or token ids and returns logits and
final hidden states for the appended positions (and, when asked, the hidden states of other
layers: ``taps``); ``rollback`` drops positions (rejected drafts).

Layer indices (``taps``, :class:`Taps`) follow transformers' ``output_hidden_states`` tuple of a
model with L decoder layers: 0 is the embeddings (the first layer's input), i in 1..L-1 the output
of decoder layer i (counting from 1), and L -- or -1, :data:`FINAL` -- the output of the final
norm, what the LM head sees (transformers ties its last entry to ``last_hidden_state``; the last
layer's output before the norm is not a tap). Negative indices count from the end, as in Python.

``EagerState`` runs transformers' own modules with their ``DynamicCache``, so greedy output is
bit-identical to the family's own ``generate()``: the same kernels see the same shapes.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Protocol

import torch
from torch import nn

from evspec.errors import ConfigError


@cache
def cache_keyword(body_class: type) -> str:
    """The name under which ``body_class.forward`` takes the KV cache: ``cache`` since transformers
    renamed it (5.2x; ``past_key_values`` then warns and goes in 5.40), ``past_key_values`` before."""
    return "cache" if "cache" in inspect.signature(body_class.forward).parameters else "past_key_values"


@dataclass
class LanguageModel:
    """The text half of a VLM: decoder body (a ``LlamaModel``), input embeddings and LM head.

    ``body`` must accept ``inputs_embeds``/``input_ids``, a cache (:func:`cache_keyword`), ``cache_position``,
    ``position_ids`` and ``attention_mask`` and return ``last_hidden_state`` (after the final norm).
    """

    body: nn.Module
    embed_tokens: nn.Embedding
    lm_head: nn.Module
    context_length: int

    @classmethod
    def from_causal_lm(cls, model: nn.Module, context_length: int | None = None) -> LanguageModel:
        """Take the parts from any transformers causal LM or VLM (``get_decoder`` et al.)."""
        config = model.config.get_text_config(decoder=True)
        length = context_length or getattr(config, "max_position_embeddings", None) or 2048
        return cls(model.get_decoder(), model.get_input_embeddings(), model.get_output_embeddings(), int(length))

    @property
    def device(self) -> torch.device:
        return self.lm_head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.lm_head.weight.dtype

    @property
    def vocab_size(self) -> int:
        return int(self.lm_head.weight.shape[0])

    @property
    def hidden_size(self) -> int:
        return int(self.lm_head.weight.shape[1])

    @property
    def num_layers(self) -> int:
        return len(self.body.layers)


FINAL = -1
"""The tap index of the final norm's output (what the LM head sees): ``StepOutput.hidden``."""


@dataclass(frozen=True)
class Taps:
    """Which hidden states of the target a consumer (a proposer) needs besides the final one.

    ``layers``: indices as in the module docstring (0 embeddings, i after decoder layer i, -1 /
    :data:`FINAL` after the final norm). ``prompt``: every prompt position at prefill (an
    EAGLE-style head's first input); without it, only the prompt's last position. Each verify
    pass then gives the rows of the positions it committed. ``Taps()`` taps nothing: today's
    work, the final hidden state of committed positions only.
    """

    layers: tuple[int, ...] = ()
    prompt: bool = False

    def __post_init__(self) -> None:
        if not all(isinstance(i, int) and not isinstance(i, bool) for i in self.layers):
            raise ConfigError(f"tap layers must be integers, got {self.layers!r}")
        if len(set(self.layers)) != len(self.layers):
            raise ConfigError(f"tap layers must not repeat, got {self.layers!r}")
        if self.prompt and not self.layers:
            raise ConfigError("Taps(prompt=True) needs layers to tap (FINAL for the final hidden state)")

    def __bool__(self) -> bool:
        return bool(self.layers)


def resolve_taps(taps: Sequence[int], num_layers: int) -> tuple[int, ...]:
    """Tap indices as 0..num_layers (negative ones counted from the end); out of range: an error."""
    count = num_layers + 1  # the embeddings, then one per layer (the last after the final norm)
    bad = [i for i in taps if not -count <= i < count]
    if bad:
        raise ConfigError(f"tap layers {bad} are out of range for a model of {num_layers} layers "
                          f"(0..{num_layers}, or -{count}..-1)")
    return tuple(i % count for i in taps)


@dataclass
class StepOutput:
    """Logits (float32) and final hidden states for the positions just appended.

    ``taps``: the hidden states of the tap layers asked for, by the index as asked, one row per
    appended position (all of them, also with ``last_only``); empty when none were asked for.
    """

    logits: torch.Tensor  # [k, vocab]
    hidden: torch.Tensor  # [k, hidden]
    taps: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> [k, hidden]


class DecodeState(Protocol):
    """One sequence's KV cache. Lengths count tokens (positions) in the cache."""

    lm: LanguageModel

    @property
    def length(self) -> int: ...

    @property
    def capacity(self) -> int:
        """The most positions this cache can hold."""
        ...

    def extend(
        self, *, embeds: torch.Tensor | None = None, token_ids: Sequence[int] | torch.Tensor | None = None,
        last_only: bool = False, taps: Sequence[int] = (),
    ) -> StepOutput:
        """Append positions; ``last_only``: logits and hidden of the last one only (prefill);
        ``taps``: also the hidden states of these layers for every appended position."""
        ...

    def rollback(self, length: int) -> None: ...


class FeatureBuffer:
    """Tapped hidden states of a sequence's committed positions, one row per position and layer.

    Kept beside a :class:`DecodeState`: ``append`` what a pass computed, ``truncate`` with the
    cache's ``rollback``, so it holds exactly the rows of positions ``start .. length - 1``. The
    storage for ``capacity`` positions is allocated at the first append (rows are copied in; a
    roll-back is a length change, as in the static cache). ``buffer[layer]`` is a view, valid
    until the next append.
    """

    def __init__(self, layers: Sequence[int], capacity: int, start: int = 0) -> None:
        if not 0 <= start <= capacity:
            raise ValueError(f"a feature buffer of {capacity} positions cannot start at {start}")
        self.layers = tuple(layers)
        self.capacity = capacity
        self.start = start
        self._rows = 0
        self._store: dict[int, torch.Tensor] = {}

    @property
    def length(self) -> int:
        """One past the last position held (positions, like ``DecodeState.length``)."""
        return self.start + self._rows

    def append(self, rows: Mapping[int, torch.Tensor]) -> None:
        """Add the next positions' rows: ``rows[layer]`` is [n, hidden], the same n for every layer."""
        counts = {int(rows[layer].shape[0]) for layer in self.layers}
        if len(counts) != 1:
            raise ValueError(f"every tapped layer needs the same number of rows, got {sorted(counts)}")
        n = counts.pop()
        if self.length + n > self.capacity:
            raise ValueError(f"{self.length + n} positions exceed the feature buffer's {self.capacity}")
        for layer in self.layers:
            source = rows[layer]
            store = self._store.get(layer)
            if store is None:
                store = self._store[layer] = source.new_empty(self.capacity - self.start, source.shape[-1])
            store[self._rows: self._rows + n].copy_(source)
        self._rows += n

    def truncate(self, length: int) -> None:
        """Keep the positions before ``length`` (beside the cache's ``rollback(length)``)."""
        if not self.start <= length <= self.length:
            raise ValueError(f"cannot truncate to {length}: the buffer holds positions {self.start}..{self.length - 1}")
        self._rows = length - self.start

    def __getitem__(self, layer: int) -> torch.Tensor:
        """[length - start, hidden]: the rows held for ``layer`` (a view of the storage)."""
        if layer not in self.layers:
            raise KeyError(f"layer {layer} is not tapped (tapped: {self.layers})")
        store = self._store.get(layer)
        return store[: self._rows] if store is not None else torch.empty(0, 0)


StateFactory = Callable[[LanguageModel], DecodeState]
"""What makes a model's :class:`DecodeState` (:class:`EagerState`, or a ``StaticDecoder``)."""


def token_tensor(token_ids: Sequence[int] | torch.Tensor, device: torch.device) -> torch.Tensor:
    """Token ids as a long tensor on ``device``. A host list reaches a GPU through pinned memory
    without blocking: a plain copy waits for all queued device work, a host sync per call."""
    if isinstance(token_ids, torch.Tensor):
        return token_ids.to(device=device, dtype=torch.long)
    host = torch.tensor(list(token_ids), dtype=torch.long)
    if device.type != "cuda":
        return host.to(device)
    return host.pin_memory().to(device, non_blocking=True)


def extend_inputs(
    state: DecodeState, embeds: torch.Tensor | None, token_ids: Sequence[int] | torch.Tensor | None
) -> tuple[torch.Tensor, bool]:
    """One ``extend`` call's input as a batch of one: ([1, k, D] embeddings, False) or ([1, k] ids,
    True), after checking that exactly one was given and that the cache has room for it."""
    if (embeds is None) == (token_ids is None):
        raise ValueError("extend takes exactly one of embeds or token_ids")
    if embeds is not None:
        inputs, is_ids = (embeds if embeds.dim() == 3 else embeds.unsqueeze(0)), False
    else:
        inputs, is_ids = token_tensor(token_ids, state.lm.device).reshape(1, -1), True
    k = inputs.shape[1]
    if k == 0:
        raise ValueError("extend needs at least one position")
    if state.length + k > state.capacity:
        raise ConfigError(f"sequence of {state.length + k} tokens exceeds the cache's {state.capacity} positions")
    return inputs, is_ids


@contextmanager
def _layer_outputs(body: nn.Module, taps: Sequence[int]) -> Iterator[dict[int, torch.Tensor]]:
    """Collect the outputs of decoder layers 1..L-1 named in ``taps`` (tap i is layer i's output,
    ``body.layers[i - 1]``; module docstring) during one forward pass, through forward hooks on
    just those layers: no other layer's output is kept (``output_hidden_states`` keeps them all).
    Nothing is hooked when no such tap is asked for."""
    outputs: dict[int, torch.Tensor] = {}
    wanted = sorted({i for i in taps if 0 < i < len(body.layers)})
    if not wanted:
        yield outputs
        return

    def keep(index: int) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            # a decoder layer returns its hidden states, or (transformers < 4.56) a tuple led by them
            outputs[index] = (output[0] if isinstance(output, tuple) else output)[0]
        return hook

    handles = [body.layers[i - 1].register_forward_hook(keep(i)) for i in wanted]
    try:
        yield outputs
    finally:
        for handle in handles:
            handle.remove()


class EagerState:
    """transformers modules + ``DynamicCache``: bit-identical to the family's ``generate()``."""

    def __init__(self, lm: LanguageModel) -> None:
        from transformers import DynamicCache

        self.lm = lm
        self.cache = DynamicCache()
        self._length = 0

    @property
    def length(self) -> int:
        return self._length

    @property
    def capacity(self) -> int:
        return self.lm.context_length

    @torch.inference_mode()
    def extend(
        self, *, embeds: torch.Tensor | None = None, token_ids: Sequence[int] | torch.Tensor | None = None,
        last_only: bool = False, taps: Sequence[int] = (),
    ) -> StepOutput:
        inputs, is_ids = extend_inputs(self, embeds, token_ids)
        k = inputs.shape[1]
        ids, embeds = (inputs, None) if is_ids else (None, inputs)
        resolved = resolve_taps(taps, self.lm.num_layers) if taps else ()
        if 0 in resolved and ids is not None:  # the embeddings are a tap: look them up here, as the body would
            ids, embeds = None, self.lm.embed_tokens(ids)
        device = self.lm.device
        positions = torch.arange(self._length, self._length + k, device=device)
        # generate() passes an all-ones mask for one unpadded sequence; do the same so the
        # attention implementation takes the same path.
        mask = torch.ones(1, self._length + k, dtype=torch.long, device=device)
        with _layer_outputs(self.lm.body, resolved) as outputs:
            out = self.lm.body(
                input_ids=ids, inputs_embeds=embeds, use_cache=True, **{cache_keyword(type(self.lm.body)): self.cache},
                cache_position=positions, position_ids=positions.unsqueeze(0), attention_mask=mask,
            )
        final = out.last_hidden_state[0]
        hidden = final[-1:] if last_only else final
        # last_only: the LM head sees one row (generate()'s logits_to_keep=1), not the whole prompt
        logits = self.lm.lm_head(hidden).float()
        self._length += k
        tapped = {}
        for asked, layer in zip(taps, resolved):
            tapped[asked] = embeds[0] if layer == 0 else final if layer == self.lm.num_layers else outputs[layer]
        return StepOutput(logits=logits, hidden=hidden, taps=tapped)

    def rollback(self, length: int) -> None:
        if not 0 <= length <= self._length:
            raise ValueError(f"cannot roll back to {length}: cache holds {self._length}")
        if length < self._length:
            # A negative count removes that many tokens in every transformers 5.x release.
            self.cache.crop(length - self._length)
            self._length = length


# --------------------------------------------------------------------------- sampling


@dataclass(frozen=True)
class SamplingConfig:
    """temperature 0 means greedy. ``seed`` drives a private generator: runs are repeatable."""

    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not math.isfinite(self.temperature) or self.temperature < 0:  # nan < 0 is False
            raise ConfigError(f"temperature must be a finite number >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def generator(self, device: torch.device | str = "cpu") -> torch.Generator:
        gen = torch.Generator(device=device)
        gen.manual_seed(self.seed)
        return gen


def probabilities(logits: torch.Tensor, sampling: SamplingConfig) -> torch.Tensor:
    """The distribution sampling draws from: softmax(logits / T), then top-p (nucleus) renormalised.

    Top-p keeps the smallest set of most likely tokens whose mass reaches ``top_p`` (of tokens tied
    at its boundary, the lower ids). Greedy is the limit T -> 0: a one-hot on the argmax. Works on
    [..., vocab].
    """
    logits = logits.float()
    if sampling.greedy:
        return torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).float()
    probs = torch.softmax(logits / sampling.temperature, dim=-1)
    if sampling.top_p < 1.0:
        # stable: of tokens tied at the boundary the lower ids are kept (as argmax picks the lower
        # id); an unstable sort keeps arbitrary ones, which differ with the row length and device
        sorted_probs, order = probs.sort(dim=-1, descending=True, stable=True)
        before = sorted_probs.cumsum(-1) - sorted_probs  # mass strictly before each token
        sorted_probs = torch.where(before < sampling.top_p, sorted_probs, torch.zeros_like(sorted_probs))
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
        probs = probs / probs.sum(-1, keepdim=True)
    return probs


def select_token(logits: torch.Tensor, sampling: SamplingConfig, generator: torch.Generator | None) -> int:
    """Next token from one position's logits [vocab]."""
    if sampling.greedy:
        return int(logits.argmax(-1))
    probs = probabilities(logits, sampling)
    return int(torch.multinomial(probs.to(generator.device if generator else probs.device), 1, generator=generator))


# --------------------------------------------------------------------------- generation


@dataclass
class Prefilled:
    """A sequence after prefill: its cache, and the last position's logits and hidden state;
    ``taps``: the tapped layers' hidden states of every prompt position, when asked for."""

    state: DecodeState
    logits: torch.Tensor  # [vocab]
    hidden: torch.Tensor  # [hidden]
    n_prompt_tokens: int
    taps: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> [n_prompt_tokens, hidden]


def prefill(
    lm: LanguageModel, embeds: torch.Tensor, state_factory: StateFactory = EagerState, taps: Sequence[int] = (),
) -> Prefilled:
    """Run the prompt (text embeddings with visual features spliced in) through the model once.
    Logits are computed for the last position only (the one decoding uses)."""
    n = embeds.shape[-2]
    if n >= lm.context_length:
        raise ConfigError(f"prompt of {n} tokens leaves no room in the model's context of {lm.context_length}")
    state = state_factory(lm)
    # taps only when asked: a DecodeState written before taps existed still serves plain runs
    step = state.extend(embeds=embeds, last_only=True, **({"taps": tuple(taps)} if taps else {}))
    return Prefilled(state=state, logits=step.logits[-1], hidden=step.hidden[-1], n_prompt_tokens=n, taps=step.taps)


@dataclass
class DecodeResult:
    token_ids: list[int] = field(default_factory=list)
    stopped_on_eos: bool = False


def decode(
    prefilled: Prefilled,
    *,
    max_new_tokens: int,
    eos_token_ids: Sequence[int] = (),
    min_new_tokens: int = 0,
    sampling: SamplingConfig = SamplingConfig(),
    on_token: Callable[[int], None] | None = None,
    on_logits: Callable[[torch.Tensor], None] | None = None,
) -> DecodeResult:
    """One token per target pass, from a prefilled state. EOS is kept in the output, like generate().

    ``min_new_tokens`` masks EOS until that many tokens exist (fixed-length timing runs).
    ``on_token(i)`` is called after token i is chosen (the benchmark records per-token times there).
    ``on_logits(row)`` sees each row a token is chosen from, EOS mask applied (the lossless check
    records the top-2 margins there).
    """
    if max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    state, logits = prefilled.state, prefilled.logits
    room = state.capacity - state.length
    if min_new_tokens > room + 1:  # a promise decoding could not keep: an error, not fewer tokens
        raise ConfigError(
            f"min_new_tokens={min_new_tokens} cannot be met: the prompt of {state.length} tokens leaves room for "
            f"{room + 1} new tokens in the context of {state.capacity}"
        )
    if max_new_tokens > room + 1:
        max_new_tokens = room + 1  # the last token needs no cache slot of its own
    generator = None if sampling.greedy else sampling.generator()
    eos = list(eos_token_ids)
    result = DecodeResult()
    for i in range(max_new_tokens):
        if i < min_new_tokens and eos:
            logits = logits.clone()
            logits[eos] = float("-inf")
        if on_logits is not None:
            on_logits(logits)
        token = select_token(logits, sampling, generator)
        result.token_ids.append(token)
        if on_token is not None:
            on_token(i)
        if token in eos:
            result.stopped_on_eos = True
            break
        if i + 1 < max_new_tokens:
            logits = state.extend(token_ids=[token]).logits[-1]
    return result
