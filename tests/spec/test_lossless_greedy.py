"""Greedy speculative decoding is token-identical to the target decoding alone.

Every proposer (draft model with the same tokenizer, a cross-tokenizer draft, n-gram, oracle at
several alphas, a near-copy of the target that is mostly accepted), gamma 1..8, adaptive gamma,
parallel prefill on and off, and prompts that end at the context limit. Float32 tiny models:
no near-tie flip between the batched verify pass and single-token decoding showed up here, so
float64 was not needed.
"""

from __future__ import annotations

import copy

import pytest
import torch

from evspec.errors import ConfigError
from evspec.runtime.decode import LanguageModel, SamplingConfig
from evspec.runtime.static import StaticDecoder
from evspec.spec.engine import speculative_generate, target_only
from evspec.spec.proposers import (
    DraftModelProposer,
    NgramProposer,
    OracleProposer,
    Proposer,
)
from evspec.spec.vocab import bridge_vocabularies, identity_map

from .conftest import EOS, tiny_lm, with_context

MAX_NEW = 24


def noisy_copy(lm: LanguageModel, vocab_size: int, noise: float, seed: int) -> LanguageModel:
    """The target's weights plus Gaussian noise (a draft that agrees often, not always)."""
    body = copy.deepcopy(lm.body)
    hidden = lm.hidden_size
    embed = torch.nn.Embedding(vocab_size, hidden)
    head = torch.nn.Linear(hidden, vocab_size, bias=False)
    with torch.no_grad():
        embed.weight.copy_(lm.embed_tokens.weight[:vocab_size])
        head.weight.copy_(lm.lm_head.weight[:vocab_size])
        body.embed_tokens = embed
        gen = torch.Generator().manual_seed(seed)
        for param in [*body.parameters(), head.weight]:
            param.add_(noise * param.std() * torch.randn(param.shape, generator=gen))
    return LanguageModel(body, embed, head, lm.context_length)


def prompt_for(seed: int, vocab: int = 60, length: int = 12) -> list[int]:
    gen = torch.Generator().manual_seed(1000 + seed)
    return [1] + torch.randint(3, vocab, (length - 1,), generator=gen).tolist()


@pytest.fixture(scope="module")
def proposers(target_lm, target_tok, same_draft_lm, same_draft_tok, cross_draft_lm, cross_draft_tok):
    """name -> factory(seed) of a fresh proposer."""
    same = bridge_vocabularies(same_draft_tok, target_tok, draft_vocab_size=same_draft_lm.vocab_size,
                               target_vocab_size=target_lm.vocab_size, draft_eos=[EOS], target_eos=[EOS])
    cross = bridge_vocabularies(cross_draft_tok, target_tok, draft_vocab_size=cross_draft_lm.vocab_size,
                                target_vocab_size=target_lm.vocab_size, draft_eos=[EOS], target_eos=[EOS])
    assert same.kind == "same" and cross.kind == "cross"
    near = noisy_copy(target_lm, same_draft_lm.vocab_size, 0.02, seed=5)
    return {
        "same": lambda s: DraftModelProposer(same_draft_lm, same),
        "near": lambda s: DraftModelProposer(near, same),
        "confident": lambda s: DraftModelProposer(near, same, confidence=0.3 + 0.05 * (s % 10)),
        "cross": lambda s: DraftModelProposer(cross_draft_lm, cross),
        "ngram": lambda s: NgramProposer(),
        "oracle0.3": lambda s: OracleProposer(same_draft_lm, 0.3, seed=s),
        "oracle0.8": lambda s: OracleProposer(same_draft_lm, 0.8, seed=s),
        "oracle1": lambda s: OracleProposer(same_draft_lm, 1.0, seed=s),
    }


def _check(target, proposer: Proposer, prompt: list[int], *, gamma: int, parallel: bool, adaptive: bool,
           max_new: int = MAX_NEW) -> tuple:
    base = target_only(target, prompt_ids=prompt, eos_token_ids=[EOS], max_new_tokens=max_new)
    out = speculative_generate(
        target, proposer, prompt_ids=prompt, eos_token_ids=[EOS], max_new_tokens=max_new, gamma=gamma,
        parallel_prefill=parallel, adaptive_gamma=adaptive, reference_ids=base.token_ids,
    )
    assert out.token_ids == base.token_ids, (proposer.name, gamma, parallel, adaptive)
    assert out.counts.emitted_tokens == len(base.token_ids)
    assert out.counts.target_passes <= len(base.token_ids)
    return base, out


@pytest.mark.parametrize("kind", ["same", "near", "confident", "cross", "ngram", "oracle0.3", "oracle0.8", "oracle1"])
def test_greedy_is_lossless_for_every_gamma(kind, proposers, target_lm) -> None:
    for gamma in range(1, 9):
        seed = 17 * gamma + len(kind)
        _check(target_lm, proposers[kind](seed), prompt_for(seed), gamma=gamma,
               parallel=gamma % 2 == 0, adaptive=gamma % 3 == 0)


def test_greedy_is_lossless_over_many_seeds(proposers, target_lm) -> None:
    for seed in range(16):
        kind = ["same", "near", "cross", "ngram", "oracle0.8", "confident"][seed % 6]
        gamma = 1 + seed % 8
        _check(target_lm, proposers[kind](seed), prompt_for(seed), gamma=gamma,
               parallel=seed % 2 == 1, adaptive=seed % 4 == 0)


def test_greedy_is_lossless_through_the_static_cache(target_lm, same_draft_lm) -> None:
    """Target and draft in StaticDecoders (preallocated cache, roll-back as a length change, fused
    projections for verify and catch-up passes): equal to the target alone through the same decoder.
    On a CUDA device the passes over several tokens also run the Triton kernels; their own
    proof runs under Triton's interpreter in tests/runtime/test_few_rows.py."""
    target_decoder = StaticDecoder(target_lm, max_length=64)
    same = identity_map(same_draft_lm.vocab_size, target_lm.vocab_size, draft_eos=[EOS], target_eos=[EOS])
    near = noisy_copy(target_lm, same_draft_lm.vocab_size, 0.02, seed=5)
    for seed, gamma in enumerate((1, 2, 3, 4, 5, 6, 7, 8)):
        prompt = prompt_for(seed)
        base = target_only(target_lm, prompt_ids=prompt, eos_token_ids=[EOS], max_new_tokens=MAX_NEW,
                           state_factory=target_decoder)
        draft = DraftModelProposer(near, same, state_factory=StaticDecoder(near, max_length=64))
        for proposer in (draft, NgramProposer()):
            out = speculative_generate(target_lm, proposer, prompt_ids=prompt, eos_token_ids=[EOS],
                                       max_new_tokens=MAX_NEW, gamma=gamma, adaptive_gamma=seed % 3 == 0,
                                       parallel_prefill=seed % 2 == 1, state_factory=target_decoder)
            assert out.token_ids == base.token_ids, (proposer.name, gamma)


def test_greedy_is_lossless_with_an_eager_target_and_a_static_draft(target_lm, same_draft_lm) -> None:
    """``evspec spec``'s default beside an eager target (draft_cache auto): the draft's numerics
    change in the last bits, the target's output does not."""
    same = identity_map(same_draft_lm.vocab_size, target_lm.vocab_size, draft_eos=[EOS], target_eos=[EOS])
    near = noisy_copy(target_lm, same_draft_lm.vocab_size, 0.02, seed=7)
    accepted = 0
    for seed, gamma in enumerate((1, 2, 3, 4, 5, 6, 7, 8)):
        prompt = prompt_for(seed + 20)
        base = target_only(target_lm, prompt_ids=prompt, eos_token_ids=[EOS], max_new_tokens=MAX_NEW)
        draft = DraftModelProposer(near, same, state_factory=StaticDecoder(near, max_length=64))
        out = speculative_generate(target_lm, draft, prompt_ids=prompt, eos_token_ids=[EOS], max_new_tokens=MAX_NEW,
                                   gamma=gamma, parallel_prefill=seed % 2 == 1)
        assert out.token_ids == base.token_ids, gamma
        accepted += out.counts.accepted_tokens
    assert accepted > 0  # the static draft's proposals are real, not all rejected


@pytest.mark.parametrize("room", [1, 2, 3, 6])
def test_prompts_that_end_at_the_context_limit(room, proposers, target_lm) -> None:
    """context = prompt + room: the target alone can emit room + 1 tokens, and so must the engine."""
    prompt = prompt_for(room)
    short = with_context(target_lm, len(prompt) + room)
    for kind in ("near", "ngram", "oracle1", "cross"):
        base, _ = _check(short, proposers[kind](room), prompt, gamma=4, parallel=kind == "near", adaptive=room == 6,
                           max_new=40)
        assert len(base.token_ids) <= room + 1


def test_acceptance_is_measured_on_the_accepted_prefix(proposers, target_lm) -> None:
    """A near-copy draft is mostly accepted; a self-draft is always accepted (gamma + 1 per pass)."""
    prompt = prompt_for(3)
    _, near = _check(target_lm, proposers["near"](0), prompt, gamma=4, parallel=False, adaptive=False)
    assert near.counts.acceptance_rate is not None and near.counts.acceptance_rate > 0.5
    target_vocab_map = identity_map(target_lm.vocab_size, target_lm.vocab_size, draft_eos=[EOS], target_eos=[EOS])
    _, self_draft = _check(target_lm, DraftModelProposer(target_lm, target_vocab_map), prompt,
                           gamma=3, parallel=False, adaptive=False)
    assert self_draft.counts.acceptance_rate == 1.0
    assert self_draft.counts.mean_acceptance_length == 4.0 or self_draft.counts.emitted_tokens < MAX_NEW
    assert self_draft.counts.target_passes <= -(-MAX_NEW // 4)


def test_adaptive_gamma_grows_when_all_accepted_and_shrinks_on_rejection(target_lm, same_draft_lm) -> None:
    prompt = prompt_for(4)
    base = target_only(target_lm, prompt_ids=prompt, eos_token_ids=[EOS], max_new_tokens=40)
    grow = speculative_generate(target_lm, OracleProposer(same_draft_lm, 1.0), prompt_ids=prompt, eos_token_ids=[EOS],
                                max_new_tokens=40, gamma=2, adaptive_gamma=True, max_gamma=5,
                                reference_ids=base.token_ids)
    assert max(grow.gamma_trace) == 5 and grow.gamma_trace[:3] == [2, 3, 4]
    shrink = speculative_generate(target_lm, OracleProposer(same_draft_lm, 0.0), prompt_ids=prompt,
                                  eos_token_ids=[EOS], max_new_tokens=40, gamma=6, adaptive_gamma=True,
                                  reference_ids=base.token_ids)
    assert shrink.gamma_trace[:7] == [6, 5, 4, 3, 2, 1, 1]
    assert grow.token_ids == shrink.token_ids == base.token_ids


def test_min_new_tokens_masks_eos_like_the_target_alone(target_lm, proposers) -> None:
    prompt = prompt_for(6)
    # Make EOS the target's favourite: a big EOS bias on the LM head (a copy, the fixture stays intact).
    head = torch.nn.Linear(target_lm.hidden_size, target_lm.vocab_size, bias=True)
    with torch.no_grad():
        head.weight.copy_(target_lm.lm_head.weight)
        head.bias.zero_()
        head.bias[EOS] = 0.3
    biased = LanguageModel(target_lm.body, target_lm.embed_tokens, head, target_lm.context_length)
    for kind in ("near", "ngram"):
        base = target_only(biased, prompt_ids=prompt, eos_token_ids=[EOS], max_new_tokens=20, min_new_tokens=7)
        out = speculative_generate(biased, proposers[kind](0), prompt_ids=prompt, eos_token_ids=[EOS],
                                   max_new_tokens=20, min_new_tokens=7, gamma=3)
        assert out.token_ids == base.token_ids
        assert EOS not in base.token_ids[:7]


def test_bad_settings_raise_config_errors(target_lm, same_draft_lm) -> None:
    prompt = prompt_for(0)
    with pytest.raises(ConfigError, match="gamma"):
        speculative_generate(target_lm, NgramProposer(), prompt_ids=prompt, eos_token_ids=[EOS], gamma=0)
    with pytest.raises(ConfigError, match="alpha"):
        OracleProposer(same_draft_lm, 1.5)
    with pytest.raises(ConfigError, match="alpha"):
        OracleProposer(same_draft_lm, -0.1)
    with pytest.raises(ConfigError, match="greedy only"):
        speculative_generate(target_lm, OracleProposer(same_draft_lm, 0.5), prompt_ids=prompt, eos_token_ids=[EOS],
                             sampling=SamplingConfig(temperature=0.7), reference_ids=[3, 4])
    with pytest.raises(ConfigError, match="reference"):
        speculative_generate(target_lm, OracleProposer(same_draft_lm, 0.5), prompt_ids=prompt, eos_token_ids=[EOS])


def test_float64_models_also_lossless() -> None:
    """The same proof holds in float64 (used if float32 ever shows a near-tie flip)."""
    target = tiny_lm(10, 40, dtype=torch.float64)
    draft = tiny_lm(11, 40, layers=1, dtype=torch.float64)
    bridge = identity_map(40, 40, draft_eos=[EOS], target_eos=[EOS])
    for gamma in (2, 5):
        _check(target, DraftModelProposer(draft, bridge), prompt_for(gamma, vocab=40), gamma=gamma,
               parallel=gamma == 5, adaptive=False)


def test_cross_tokenizer_alignment_lets_a_text_bridged_self_draft_be_accepted(target_lm, target_tok) -> None:
    """The target drafting for itself through text (decode -> re-encode -> align) is accepted often:
    the alignment recovers the target's own tokens, not just any lossless output."""
    bridge = bridge_vocabularies(target_tok, target_tok, draft_vocab_size=target_lm.vocab_size,
                                 target_vocab_size=target_lm.vocab_size, draft_eos=[EOS], target_eos=[EOS], mode="cross")
    assert bridge.kind == "cross"
    accepted = drafted = 0
    for seed in range(4):
        _, out = _check(target_lm, DraftModelProposer(target_lm, bridge), prompt_for(seed), gamma=4,
                        parallel=False, adaptive=False, max_new=30)
        accepted += out.counts.accepted_tokens
        drafted += out.counts.drafted_tokens
    assert accepted / drafted > 0.3
