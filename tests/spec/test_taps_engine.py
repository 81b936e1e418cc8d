"""The speculative engine with a proposer that taps the target's hidden states (EAGLE's inputs).

What the proposer receives is checked against one teacher-forced forward pass of the target over
the final output (transformers' ``output_hidden_states``): the prompt's rows before its first
proposal, then each round the rows of the positions the pass committed; the feature buffer holds
exactly the committed rows after every roll-back. Taps change nothing else: greedy output equals
the target alone, and tokens and counts equal the same run without taps, on both decode paths.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch

from evspec.errors import ConfigError
from evspec.runtime.decode import FINAL, FeatureBuffer, LanguageModel, SamplingConfig, Taps
from evspec.runtime.static import StaticDecoder
from evspec.spec.engine import speculative_generate, target_only
from evspec.spec.proposers import DraftModelProposer, Proposal
from evspec.spec.vocab import identity_map

from .conftest import EOS
from .test_lossless_greedy import noisy_copy, prompt_for

MAX_NEW = 24
LAYERS = (0, 1, FINAL)  # the tiny target has 2 layers: embeddings, after layer 1, after the final norm


class TappingDraft(DraftModelProposer):
    """A draft model that asks for taps and records what it is given, and when."""

    def __init__(self, *args, taps: Taps, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._taps = taps
        self.events: list[str] = []
        self.deliveries: list[tuple[int, dict[int, torch.Tensor]]] = []
        self.buffer: FeatureBuffer | None = None

    @property
    def taps(self) -> Taps:
        return self._taps

    def start(self, ctx) -> None:
        self.events.append("start")
        super().start(ctx)

    def propose(self, accepted: Sequence[int], gamma: int) -> Proposal:
        self.events.append("propose")
        return super().propose(accepted, gamma)

    def observe_features(self, features: dict[int, torch.Tensor], start: int, buffer: FeatureBuffer) -> None:
        self.events.append("features")
        self.deliveries.append((start, {layer: rows.clone() for layer, rows in features.items()}))
        self.buffer = buffer


@pytest.fixture(scope="module")
def draft_parts(target_lm, same_draft_lm):
    """A noisy copy of the target (accepted often, not always) and its vocabulary map."""
    bridge = identity_map(same_draft_lm.vocab_size, target_lm.vocab_size, draft_eos=[EOS], target_eos=[EOS])
    return noisy_copy(target_lm, same_draft_lm.vocab_size, 0.05, seed=5), bridge


def _reference(lm: LanguageModel, ids: list[int]) -> dict[int, torch.Tensor]:
    """Tap layer -> [len(ids), hidden] from one forward pass (transformers' output_hidden_states)."""
    with torch.inference_mode():
        states = lm.body(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states
    return {layer: states[layer][0] for layer in LAYERS}


def _close(got: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("path", ["eager", "static"])
def test_tapping_proposer_gets_prompt_and_committed_rows(target_lm, draft_parts, path: str) -> None:
    draft_lm, bridge = draft_parts
    factory = StaticDecoder(target_lm, max_length=64) if path == "static" else None
    rounds_with_rejections = 0
    for seed, gamma in ((0, 2), (1, 4), (2, 6)):
        prompt = prompt_for(seed)
        proposer = TappingDraft(draft_lm, bridge, taps=Taps(layers=LAYERS, prompt=True))
        out = speculative_generate(target_lm, proposer, prompt_ids=prompt, eos_token_ids=[EOS], max_new_tokens=MAX_NEW,
                                   gamma=gamma, **({"state_factory": factory} if factory else {}))
        rounds_with_rejections += len(out.rejected_at)
        committed = len(prompt) + len(out.token_ids) - 1
        reference = _reference(target_lm, prompt + out.token_ids[:-1])
        # the prompt's rows come after start() and before the first proposal
        assert proposer.events[:3] == ["start", "features", "propose"]
        start, rows = proposer.deliveries[0]
        assert start == 0 and set(rows) == set(LAYERS)
        for layer in LAYERS:
            assert rows[layer].shape == (len(prompt), target_lm.hidden_size)
            _close(rows[layer], reference[layer][: len(prompt)])
        # then each round: the rows of the positions it committed, contiguous and in order
        position = len(prompt)
        for start, rows in proposer.deliveries[1:]:
            assert start == position
            n = rows[FINAL].shape[0]
            assert n >= 1 and all(r.shape[0] == n for r in rows.values())
            for layer in LAYERS:
                _close(rows[layer], reference[layer][start:start + n])
            position += n
        assert len(proposer.deliveries) == 1 + out.counts.target_passes - 1  # no delivery after the last pass
        # the buffer: exactly the committed positions, whatever was rolled back
        buffer = proposer.buffer
        assert buffer is not None and buffer.start == 0 and buffer.length == committed
        for layer in LAYERS:
            _close(buffer[layer], reference[layer])
    assert rounds_with_rejections > 0  # roll-backs happened


def test_without_prompt_taps_the_prefill_gives_the_last_row(target_lm, draft_parts) -> None:
    draft_lm, bridge = draft_parts
    prompt = prompt_for(3)
    proposer = TappingDraft(draft_lm, bridge, taps=Taps(layers=(1,)))
    out = speculative_generate(target_lm, proposer, prompt_ids=prompt, eos_token_ids=[EOS], max_new_tokens=12, gamma=3)
    start, rows = proposer.deliveries[0]
    reference = _reference(target_lm, prompt + out.token_ids[:-1])
    assert start == len(prompt) - 1 and rows[1].shape == (1, target_lm.hidden_size)
    _close(rows[1], reference[1][start:start + 1])
    buffer = proposer.buffer
    assert buffer is not None and buffer.start == len(prompt) - 1
    _close(buffer[1], reference[1][len(prompt) - 1:])


@pytest.mark.parametrize("path", ["eager", "static"])
def test_taps_change_neither_tokens_nor_counts(target_lm, draft_parts, path: str) -> None:
    """Greedy: equal to the target alone; greedy and sampled: tokens, counts and gamma trace equal
    to the same proposer without taps."""
    draft_lm, bridge = draft_parts
    factory = StaticDecoder(target_lm, max_length=64) if path == "static" else None
    kwargs = {"state_factory": factory} if factory else {}
    for seed in range(4):
        gamma = (1, 3, 5, 8)[seed]
        prompt = prompt_for(10 + seed)
        sampling = SamplingConfig() if seed < 3 else SamplingConfig(temperature=0.8, top_p=0.9, seed=seed)
        outs = [
            speculative_generate(target_lm, proposer, prompt_ids=prompt, eos_token_ids=[EOS], max_new_tokens=MAX_NEW,
                                 gamma=gamma, adaptive_gamma=seed % 2 == 1, sampling=sampling, **kwargs)
            for proposer in (TappingDraft(draft_lm, bridge, taps=Taps(layers=LAYERS, prompt=True)),
                             DraftModelProposer(draft_lm, bridge))
        ]
        tapped, plain = outs
        assert tapped.token_ids == plain.token_ids, (path, seed)
        assert tapped.counts.as_dict() == plain.counts.as_dict() and tapped.gamma_trace == plain.gamma_trace
        if sampling.greedy:
            base = target_only(target_lm, prompt_ids=prompt, eos_token_ids=[EOS], max_new_tokens=MAX_NEW, **kwargs)
            assert tapped.token_ids == base.token_ids, (path, seed, gamma)


def test_parallel_prefill_delivers_the_last_prompt_row_after_the_first_proposal(target_lm, draft_parts) -> None:
    draft_lm, bridge = draft_parts
    prompt = prompt_for(4)
    proposer = TappingDraft(draft_lm, bridge, taps=Taps(layers=(FINAL,)))
    out = speculative_generate(target_lm, proposer, prompt_ids=prompt, eos_token_ids=[EOS], max_new_tokens=12,
                               gamma=3, parallel_prefill=True)
    assert proposer.events[:3] == ["start", "propose", "features"]
    start, rows = proposer.deliveries[0]
    reference = _reference(target_lm, prompt + out.token_ids[:-1])
    assert start == len(prompt) - 1 and rows[FINAL].shape == (1, target_lm.hidden_size)
    _close(rows[FINAL], reference[FINAL][start:start + 1])
    assert out.token_ids == target_only(target_lm, prompt_ids=prompt, eos_token_ids=[EOS], max_new_tokens=12).token_ids


def test_parallel_prefill_refuses_a_proposer_tapping_every_prompt_row(target_lm, draft_parts) -> None:
    draft_lm, bridge = draft_parts
    proposer = TappingDraft(draft_lm, bridge, taps=Taps(layers=(FINAL,), prompt=True))
    with pytest.raises(ConfigError, match="parallel_prefill") as error:
        speculative_generate(target_lm, proposer, prompt_ids=prompt_for(0), eos_token_ids=[EOS], max_new_tokens=8,
                             parallel_prefill=True)
    assert error.value.parameters == ("parallel_prefill",)
    assert proposer.events == []  # refused before any work
