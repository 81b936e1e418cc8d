"""Vocabulary bridges: same-tokenizer maps, cross-tokenizer alignment, unbridgeable pairs."""

from __future__ import annotations

import pytest
import torch

from evspec.errors import ConfigError
from evspec.spec.vocab import (
    TextBridge,
    TokenMap,
    bridge_vocabularies,
    identity_map,
    same_tokenizer,
)

from .conftest import EOS


def _bridge(draft_tok, target_tok, **kw):
    args = dict(draft_vocab_size=len(draft_tok), target_vocab_size=len(target_tok) + 2,
                draft_eos=[EOS], target_eos=[EOS])
    args.update(kw)
    return bridge_vocabularies(draft_tok, target_tok, **args)


def test_same_ordinary_vocabulary_maps_ids_to_themselves(same_draft_tok, target_tok) -> None:
    assert same_tokenizer(same_draft_tok, target_tok)
    bridge = _bridge(same_draft_tok, target_tok)
    assert isinstance(bridge, TokenMap) and bridge.kind == "same"
    ordinary = [i for t, i in target_tok.get_vocab().items() if t not in target_tok.all_special_tokens]
    assert bridge.to_target(ordinary) == ordinary
    assert bridge.to_draft(ordinary) == ordinary
    ev_patch = same_draft_tok.convert_tokens_to_ids("<ev_patch>")
    image = target_tok.convert_tokens_to_ids("<image>")
    assert int(bridge.draft_to_target[ev_patch]) == -1 and not bool(bridge.allowed[ev_patch])
    assert bridge.to_draft([image, 5]) == [same_draft_tok.unk_token_id, 5]  # target-only token -> draft UNK
    assert bridge.to_draft([len(target_tok) + 1]) == [same_draft_tok.unk_token_id]  # padded LM-head row
    with pytest.raises(ValueError):
        bridge.to_target([ev_patch])


def test_eos_is_mapped_by_role_not_by_id(same_draft_tok, target_tok) -> None:
    bridge = _bridge(same_draft_tok, target_tok, draft_eos=[EOS], target_eos=[7, 9])
    assert bridge.to_target([EOS]) == [7]
    assert bridge.to_draft([7, 9]) == [EOS, EOS]


def test_projected_draft_distribution_keeps_its_mass(same_draft_tok, target_tok) -> None:
    bridge = _bridge(same_draft_tok, target_tok, draft_eos=[EOS, 5], target_eos=[EOS])
    logits = torch.randn(3, bridge.draft_vocab_size)
    logits[:, ~bridge.allowed] = float("-inf")
    q = torch.softmax(logits, -1)
    projected = bridge.project(q)
    assert projected.shape == (3, bridge.target_vocab_size)
    torch.testing.assert_close(projected.sum(-1), torch.ones(3))
    torch.testing.assert_close(projected[:, EOS], q[:, EOS] + q[:, 5])  # two draft EOS -> one target EOS
    torch.testing.assert_close(projected[:, 10], q[:, 10])


def test_identity_map_covers_the_smaller_vocabulary() -> None:
    m = identity_map(10, 12, draft_eos=[2], target_eos=[3])
    assert m.to_target([0, 1, 9]) == [0, 1, 9] and m.to_target([2]) == [3]
    assert m.to_draft([11]) == [0]


def test_different_vocabularies_take_the_text_bridge(cross_draft_tok, target_tok) -> None:
    assert not same_tokenizer(cross_draft_tok, target_tok)
    bridge = _bridge(cross_draft_tok, target_tok)
    assert isinstance(bridge, TextBridge) and bridge.kind == "cross"
    accepted = target_tok.encode("the quick brown", add_special_tokens=False)
    draft_context = bridge.to_draft(accepted)
    assert cross_draft_tok.decode(draft_context) == "the quick brown"
    draft_new = cross_draft_tok.encode("the quick brown fox jumps", add_special_tokens=False)[len(draft_context):]
    proposed = bridge.to_target(accepted, draft_context, draft_new)
    assert target_tok.decode(accepted + proposed) == "the quick brown fox jumps"
    assert proposed == target_tok.encode("the quick brown fox jumps", add_special_tokens=False)[len(accepted):]
    # a draft EOS ends the drafted text and becomes the target's EOS
    ended = bridge.to_target(accepted, draft_context, draft_new + [EOS, 11, 12])
    assert ended == proposed + [EOS]
    # nothing accepted yet: the drafted text is encoded as the start of the answer
    assert bridge.to_target([], [], draft_new[:2]) == target_tok.encode(cross_draft_tok.decode(draft_new[:2]), add_special_tokens=False)


def test_forcing_the_same_path_on_different_vocabularies_is_refused(cross_draft_tok, target_tok) -> None:
    with pytest.raises(ConfigError, match="differ"):
        _bridge(cross_draft_tok, target_tok, mode="same")


class _NoText:
    def get_vocab(self) -> dict[str, int]:
        return {"a": 0}


def test_unbridgeable_pairs_raise_config_errors(target_tok) -> None:
    with pytest.raises(ConfigError, match="no encode/decode"):
        bridge_vocabularies(_NoText(), target_tok, draft_vocab_size=1, target_vocab_size=66, draft_eos=[0], target_eos=[EOS])
    with pytest.raises(ConfigError, match="no tokenizer"):
        bridge_vocabularies(None, target_tok, draft_vocab_size=1, target_vocab_size=66, draft_eos=[0], target_eos=[EOS])
    # a vocabulary without digits or most letters and no byte fallback cannot carry text across
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = Tokenizer(models.WordLevel({"<unk>": 0, "<s>": 1, "</s>": 2, "the": 3, "dog": 4}, unk_token="<unk>"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    word_level = PreTrainedTokenizerFast(tokenizer_object=words, unk_token="<unk>", eos_token="</s>")
    assert not same_tokenizer(word_level, target_tok)
    with pytest.raises(ConfigError, match="round-trip"):
        bridge_vocabularies(word_level, target_tok, draft_vocab_size=5, target_vocab_size=66, draft_eos=[2], target_eos=[EOS])
    with pytest.raises(ConfigError, match="unknown vocabulary bridge"):
        _bridge(target_tok, target_tok, mode="token")


def test_tiny_family_tokenizers_share_their_ordinary_vocabulary() -> None:
    """The real tiny checkpoints (LLaMA sentencepiece + family tokens) take the same-tokenizer path."""
    from evspec.models.registry import load_model

    draft, target = load_model("tiny-eventgpt"), load_model("tiny-videollava")
    bridge = bridge_vocabularies(
        draft.tokenizer, target.tokenizer, draft_vocab_size=draft.language_model.vocab_size,
        target_vocab_size=target.language_model.vocab_size, draft_eos=draft.eos_token_ids, target_eos=target.eos_token_ids,
    )
    assert isinstance(bridge, TokenMap)
    ids = target.tokenizer.encode("the red circle moves left", add_special_tokens=False)
    assert bridge.to_draft(ids) == ids and bridge.to_target(ids) == ids
    video = target.tokenizer.convert_tokens_to_ids("<video>")
    assert int(bridge.target_to_draft[video]) == -1
