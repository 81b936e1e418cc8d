"""Bridging the draft's vocabulary to the target's.

Two paths, chosen from the tokenizers themselves (:func:`bridge_vocabularies`):

- **same tokenizer** (:class:`TokenMap`): the ordinary (non-special, non-added) tokens have the
  same strings at the same ids in both vocabularies -- the LLaMA family, where EventGPT adds
  ``<ev_patch>`` and Video-LLaVA adds ``<image>``/``<video>``/``<pad>`` on top of one base
  vocabulary. Ordinary ids map to themselves; the roles BOS/EOS/UNK map explicitly (EOS of the
  draft -> EOS of the target, whatever their ids); added tokens of one side have no counterpart
  (-1). Drafting masks the draft tokens without a counterpart, so every drafted token exists in
  the target, and the draft distribution q is carried over to the target's vocabulary exactly.
- **different tokenizers** (:class:`TextBridge`), as transformers' Universal Assisted Generation
  does: decode tokens to text, re-encode with the other tokenizer, and align on the overlap.
  Drafts then come without a target-vocabulary distribution (the acceptance rule's one-hot case keeps
  sampling exact, see :mod:`evspec.spec.acceptance`).

Pairs that cannot be bridged (a tokenizer without ``encode``/``decode``, or one that cannot
round-trip plain ASCII text) raise :class:`~evspec.errors.ConfigError`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from evspec.errors import ConfigError

BridgeMode = Literal["auto", "same", "cross"]
PROBE_TEXT = "the quick brown fox jumps over the lazy dog. 0123456789"
"""Text both tokenizers must round-trip for the cross-tokenizer path."""


def _normalise(text: str) -> str:
    return " ".join(text.split())


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    """Number of leading positions where ``a`` and ``b`` agree."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


# --------------------------------------------------------------------------- same tokenizer


@dataclass
class TokenMap:
    """Id-to-id maps between two vocabularies that agree on their ordinary tokens.

    ``draft_to_target[i]`` is the target id of draft id ``i`` or -1; ``target_to_draft`` likewise.
    A target token without a draft counterpart (a target-only special token) is fed to the draft
    as ``draft_fallback`` (its UNK): the draft only conditions on it, the target decides.
    """

    draft_to_target: torch.Tensor  # [V_draft] long
    target_to_draft: torch.Tensor  # [V_target] long
    draft_fallback: int
    kind: str = "same"

    @property
    def draft_vocab_size(self) -> int:
        return int(self.draft_to_target.shape[0])

    @property
    def target_vocab_size(self) -> int:
        return int(self.target_to_draft.shape[0])

    @property
    def allowed(self) -> torch.Tensor:
        """[V_draft] bool: draft tokens that exist in the target (the ones drafting may pick)."""
        return self.draft_to_target >= 0

    def to_draft(self, target_ids: Sequence[int]) -> list[int]:
        if not target_ids:
            return []
        mapped = self.target_to_draft[torch.as_tensor(list(target_ids), dtype=torch.long)]
        return torch.where(mapped >= 0, mapped, self.draft_fallback).tolist()

    def to_target(self, draft_ids: Sequence[int]) -> list[int]:
        if not draft_ids:
            return []
        mapped = self.draft_to_target[torch.as_tensor(list(draft_ids), dtype=torch.long)].tolist()
        if min(mapped) < 0:
            raise ValueError(f"draft ids {list(draft_ids)} include tokens without a target counterpart")
        return mapped

    def project(self, q_draft: torch.Tensor) -> torch.Tensor:
        """A draft distribution [..., V_draft] as the distribution of the mapped token [..., V_target].

        Mass on draft tokens without a counterpart must be zero (drafting masks them).
        """
        allowed = self.allowed.to(q_draft.device)
        index = self.draft_to_target.to(q_draft.device)[allowed]
        out = torch.zeros(*q_draft.shape[:-1], self.target_vocab_size, dtype=q_draft.dtype, device=q_draft.device)
        return out.index_add_(-1, index, q_draft[..., allowed])


def identity_map(
    draft_vocab_size: int, target_vocab_size: int, *, draft_eos: Sequence[int] = (), target_eos: Sequence[int] = (),
    draft_fallback: int = 0,
) -> TokenMap:
    """Ids agree up to the smaller vocabulary (models built from one config, no tokenizer at hand)."""
    n = min(draft_vocab_size, target_vocab_size)
    d2t = torch.full((draft_vocab_size,), -1, dtype=torch.long)
    t2d = torch.full((target_vocab_size,), -1, dtype=torch.long)
    d2t[:n] = torch.arange(n)
    t2d[:n] = torch.arange(n)
    _map_roles(d2t, t2d, [(list(draft_eos), list(target_eos))])
    return TokenMap(d2t, t2d, draft_fallback)


def _map_roles(d2t: torch.Tensor, t2d: torch.Tensor, roles: list[tuple[list[int], list[int]]]) -> None:
    """Map special tokens by role (EOS -> EOS) whatever their ids; first id of a side is canonical."""
    for draft_ids, target_ids in roles:
        draft_ids = [i for i in draft_ids if i is not None and 0 <= i < d2t.shape[0]]
        target_ids = [i for i in target_ids if i is not None and 0 <= i < t2d.shape[0]]
        if not draft_ids or not target_ids:
            continue
        for i in draft_ids:
            d2t[i] = target_ids[0]
        for i in target_ids:
            t2d[i] = draft_ids[0]


def _special_strings(tokenizer: Any) -> set[str]:
    special = set(getattr(tokenizer, "all_special_tokens", []) or [])
    added = getattr(tokenizer, "added_tokens_encoder", None) or {}
    return special | set(added)


def _ordinary_vocab(tokenizer: Any) -> dict[str, int]:
    vocab = tokenizer.get_vocab()
    special = _special_strings(tokenizer)
    return {s: int(i) for s, i in vocab.items() if s not in special}


def same_tokenizer(draft_tokenizer: Any, target_tokenizer: Any) -> bool:
    """True when both tokenizers hold the same ordinary tokens at the same ids."""
    if draft_tokenizer is target_tokenizer:
        return True
    if not all(hasattr(t, "get_vocab") for t in (draft_tokenizer, target_tokenizer)):
        return False
    return _ordinary_vocab(draft_tokenizer) == _ordinary_vocab(target_tokenizer)


def _role_ids(tokenizer: Any, role: str) -> list[int]:
    value = getattr(tokenizer, f"{role}_token_id", None)
    return [int(value)] if isinstance(value, int) else []


def token_map(
    draft_tokenizer: Any, target_tokenizer: Any, *, draft_vocab_size: int, target_vocab_size: int,
    draft_eos: Sequence[int], target_eos: Sequence[int],
) -> TokenMap:
    """The same-tokenizer map: ordinary ids to themselves, BOS/EOS/UNK by role, added tokens -1."""
    d2t = torch.full((draft_vocab_size,), -1, dtype=torch.long)
    t2d = torch.full((target_vocab_size,), -1, dtype=torch.long)
    ids = torch.tensor(sorted(_ordinary_vocab(target_tokenizer).values()), dtype=torch.long)
    ids = ids[(ids < draft_vocab_size) & (ids < target_vocab_size)]
    d2t[ids] = ids
    t2d[ids] = ids
    roles = [(_role_ids(draft_tokenizer, r), _role_ids(target_tokenizer, r)) for r in ("bos", "unk")]
    roles.append((list(draft_eos), list(target_eos)))  # last: EOS wins if a role shares an id
    _map_roles(d2t, t2d, roles)
    unk = _role_ids(draft_tokenizer, "unk")
    return TokenMap(d2t, t2d, draft_fallback=unk[0] if unk else 0)


# --------------------------------------------------------------------------- different tokenizers


def _can_round_trip(tokenizer: Any) -> str | None:
    """None if ``tokenizer`` encodes and decodes plain text faithfully, else why not."""
    if not (callable(getattr(tokenizer, "encode", None)) and callable(getattr(tokenizer, "decode", None))):
        return f"{type(tokenizer).__name__} has no encode/decode"
    try:
        ids = tokenizer.encode(PROBE_TEXT, add_special_tokens=False)
        text = tokenizer.decode(ids, skip_special_tokens=True)
    except Exception as exc:
        return f"{type(tokenizer).__name__} failed to encode/decode text ({type(exc).__name__}: {exc})"
    if _normalise(text) != _normalise(PROBE_TEXT):
        return f"{type(tokenizer).__name__} does not round-trip plain text ({PROBE_TEXT!r} came back as {text!r})"
    return None


@dataclass
class TextBridge:
    """Universal-assisted-generation style bridge: tokens -> text -> tokens, aligned on overlap.

    Drafting is done in the draft's vocabulary from the draft's view of the accepted text
    (:meth:`to_draft`); the drafted text is re-encoded for the target with a few accepted target
    tokens in front (``lookbehind``) so that the tokenizer sees the word boundary, and only the
    tokens after those accepted ones are proposed (:meth:`to_target`).
    """

    draft_tokenizer: Any
    target_tokenizer: Any
    draft_eos: tuple[int, ...]
    target_eos: tuple[int, ...]
    lookbehind: int = 6
    kind: str = "cross"

    def to_draft(self, target_ids: Sequence[int]) -> list[int]:
        """The draft's tokens for the accepted target tokens (re-encoded text)."""
        if not target_ids:
            return []
        text = self.target_tokenizer.decode(list(target_ids), skip_special_tokens=True)
        return list(self.draft_tokenizer.encode(text, add_special_tokens=False)) if text else []

    def to_target(self, accepted: Sequence[int], draft_context: Sequence[int], draft_new: Sequence[int]) -> list[int]:
        """Target tokens for the draft's new tokens ``draft_new`` that follow ``draft_context``.

        A draft EOS ends the text and becomes the target's EOS. Alignment: for windows of the last
        ``w = lookbehind .. 0`` accepted target tokens, encode ``text(window) + new text`` and keep
        the tokens after the window when the encoding starts with the window itself.
        """
        draft_new = list(draft_new)
        eos_at = next((i for i, t in enumerate(draft_new) if t in self.draft_eos), None)
        ended = eos_at is not None
        if ended:
            draft_new = draft_new[:eos_at]
        decode = self.draft_tokenizer.decode
        before = decode(list(draft_context), skip_special_tokens=True)
        after = decode(list(draft_context) + draft_new, skip_special_tokens=True)
        new_text = after[len(before):] if after.startswith(before) else decode(draft_new, skip_special_tokens=True)
        proposed: list[int] = []
        if new_text and not accepted:
            proposed = list(self.target_tokenizer.encode(new_text, add_special_tokens=False))
        elif new_text:
            encode = self.target_tokenizer.encode
            for w in range(min(self.lookbehind, len(accepted)), 0, -1):
                window = list(accepted[len(accepted) - w:])
                ids = list(encode(self.target_tokenizer.decode(window, skip_special_tokens=True) + new_text,
                                  add_special_tokens=False))
                # the window may sit after a token or two the encoder puts in front (a dummy-prefix space)
                offset = next((o for o in range(min(3, len(ids) - w) + 1) if ids[o:o + w] == window), None)
                if offset is not None and len(ids) > offset + w:
                    proposed = ids[offset + w:]
                    break
        if ended and self.target_eos:
            proposed.append(self.target_eos[0])
        return proposed


# --------------------------------------------------------------------------- choosing the bridge


def bridge_vocabularies(
    draft_tokenizer: Any,
    target_tokenizer: Any,
    *,
    draft_vocab_size: int,
    target_vocab_size: int,
    draft_eos: Sequence[int],
    target_eos: Sequence[int],
    mode: BridgeMode = "auto",
) -> TokenMap | TextBridge:
    """The bridge for a draft/target pair: same tokenizer -> :class:`TokenMap`, else
    :class:`TextBridge` when both tokenizers round-trip text, else :class:`ConfigError`.

    ``mode="same"`` or ``"cross"`` forces a path (``same`` on differing vocabularies is an error).
    """
    if mode not in ("auto", "same", "cross"):
        raise ConfigError(f"unknown vocabulary bridge {mode!r}; use auto, same or cross")
    if draft_tokenizer is None or target_tokenizer is None:
        raise ConfigError(
            "cannot pair the draft with the target: a model has no tokenizer to compare vocabularies with"
        )
    if mode != "cross" and same_tokenizer(draft_tokenizer, target_tokenizer):
        return token_map(
            draft_tokenizer, target_tokenizer, draft_vocab_size=draft_vocab_size,
            target_vocab_size=target_vocab_size, draft_eos=draft_eos, target_eos=target_eos,
        )
    if mode == "same":
        raise ConfigError("the draft's and the target's tokenizers differ in their ordinary tokens; use the cross-tokenizer bridge")
    for side, tokenizer in (("draft", draft_tokenizer), ("target", target_tokenizer)):
        problem = _can_round_trip(tokenizer)
        if problem is not None:
            raise ConfigError(f"cannot pair the draft with the target: the {side} tokenizer {problem}")
    return TextBridge(draft_tokenizer, target_tokenizer, tuple(draft_eos), tuple(target_eos))
