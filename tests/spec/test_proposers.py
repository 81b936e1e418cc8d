"""Proposers on their own: n-gram lookup, draft-cache consistency, the oracle's statistics,
and the hidden states the engine hands to a proposer."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from evspec.runtime.decode import SamplingConfig
from evspec.spec.engine import speculative_generate, target_only
from evspec.spec.metrics import expected_tokens_per_pass
from evspec.spec.proposers import (
    DraftContext,
    DraftModelProposer,
    NgramProposer,
    OracleProposer,
    lookup,
)
from evspec.spec.vocab import identity_map

from .conftest import EOS


def test_ngram_lookup_takes_the_latest_longest_match() -> None:
    h = np.array([1, 2, 3, 9, 8, 5, 2, 3, 7, 1, 2, 3])
    assert lookup(h, 3, max_n=3, min_n=1) == [9, 8, 5]  # "1 2 3" (n=3) at 0 beats the later "2 3" (n=2) at 6
    h2 = np.array([4, 2, 3, 9, 8, 1, 2, 3, 7, 6, 1, 2, 3])
    assert lookup(h2, 2, max_n=3, min_n=1) == [7, 6]  # latest earlier "1 2 3" is at 5
    assert lookup(np.array([5, 6, 7]), 4, max_n=3, min_n=1) == []  # no earlier occurrence of anything
    assert lookup(np.array([5, 6, 5]), 4, max_n=3, min_n=1) == [6, 5]  # falls back to n = 1
    assert lookup(np.array([5, 6, 5]), 4, max_n=3, min_n=2) == []
    assert lookup(np.array([1, 1, 1, 1]), 0, max_n=2, min_n=1) == []


def test_ngram_proposer_uses_prompt_and_output() -> None:
    ngram = NgramProposer(max_n=2)
    ngram.start(DraftContext(sample=None, target_prompt_ids=[10, 11, 12, 13], target_vocab_size=20))
    assert ngram.propose([10, 11], 3).token_ids == [12, 13, 10]
    assert ngram.propose([], 3).token_ids == []
    with pytest.raises(Exception, match="n-gram"):
        NgramProposer(max_n=1, min_n=2)


def test_draft_cache_rolls_back_to_the_accepted_prefix(target_lm, same_draft_lm) -> None:
    """After drafting down one branch, proposing for another equals a fresh draft's proposal."""
    bridge = identity_map(same_draft_lm.vocab_size, target_lm.vocab_size, draft_eos=[EOS], target_eos=[EOS])
    ctx = DraftContext(sample=None, target_prompt_ids=[1, 5, 6, 7], target_vocab_size=target_lm.vocab_size)
    used, fresh = DraftModelProposer(same_draft_lm, bridge), DraftModelProposer(same_draft_lm, bridge)
    used.start(ctx)
    first = used.propose([9, 10], 5).token_ids
    for accepted in ([9, 10] + first[:2] + [33], [9], [9, 10] + first, [], [9, 10, 11, 12, 13, 14]):
        fresh.start(ctx)
        assert used.propose(accepted, 4).token_ids == fresh.propose(accepted, 4).token_ids
        assert used.state.length == used._prompt_len + len(used._fed)


def test_greedy_drafts_stop_after_an_end_of_answer_token(target_lm, same_draft_lm) -> None:
    """Drafting runs on the device without per-token checks; an EOS draft still ends the proposal,
    and the cache bookkeeping stays exact for the next round."""
    bridge = identity_map(same_draft_lm.vocab_size, target_lm.vocab_size)
    ctx = DraftContext(sample=None, target_prompt_ids=[1, 5, 6, 7], target_vocab_size=target_lm.vocab_size)
    free = DraftModelProposer(same_draft_lm, bridge)
    free.start(ctx)
    drafts = free.propose([9], 6).token_ids
    assert len(drafts) == 6
    stop = drafts[2]
    cut = DraftModelProposer(same_draft_lm, bridge)
    cut.start(dataclasses.replace(ctx, eos_token_ids=(stop,)))
    assert cut.propose([9], 6).token_ids == drafts[: drafts.index(stop) + 1]
    assert cut.state.length == cut._prompt_len + len(cut._fed)
    assert cut.propose([9, 4], 3).token_ids == free.propose([9, 4], 3).token_ids


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_a_confidence_threshold_ends_a_draft_after_its_first_unlikely_token(target_lm, same_draft_lm,
                                                                           temperature: float) -> None:
    """With ``confidence``, a round ends after the first draft the draft gives less than it (still
    proposed); the tokens before are the unthresholded proposal's, and the cache stays exact."""
    bridge = identity_map(same_draft_lm.vocab_size, target_lm.vocab_size)
    sampling = SamplingConfig(temperature=temperature, seed=3)
    ctx = DraftContext(sample=None, target_prompt_ids=[1, 5, 6, 7], target_vocab_size=target_lm.vocab_size,
                       sampling=sampling)
    free = DraftModelProposer(same_draft_lm, bridge)
    free.start(ctx)
    drafts = free.propose([9], 8).token_ids
    # each draft's probability under the draft, given the ones before it
    probs = []
    for j, token in enumerate(drafts):
        fresh = DraftModelProposer(same_draft_lm, bridge)
        fresh.start(ctx)
        fresh._sync(fresh._to_draft([9] + drafts[:j]))
        probs.append(float(torch.softmax(fresh._last_logits.float() / (temperature or 1.0), -1)[token]))
    for threshold in sorted(set(probs))[:3] + [max(probs) + 1e-6]:
        threshold = min(threshold + 1e-6, 0.999)
        stop = next((j for j, p in enumerate(probs) if p < threshold), len(drafts) - 1)
        cut = DraftModelProposer(same_draft_lm, bridge, confidence=threshold)
        cut.start(ctx)
        proposal = cut.propose([9], 8)
        assert proposal.token_ids == drafts[: stop + 1], threshold
        assert cut.state.length == cut._prompt_len + len(cut._fed)
        if temperature == 0:  # (sampled: the two generators have drawn different counts by now)
            assert cut.propose([9, 4], 3).token_ids[:1] == free.propose([9, 4], 3).token_ids[:1]
    with pytest.raises(Exception, match="confidence"):
        DraftModelProposer(same_draft_lm, bridge, confidence=1.0)


def test_oracle_realizes_its_alpha(target_lm, same_draft_lm) -> None:
    """i.i.d. per-position acceptance alpha: tokens per pass follow (1 - a^(g+1)) / (1 - a)."""
    alpha, gamma = 0.6, 4
    emitted = passes = 0
    for seed in range(6):
        prompt = [1] + list(range(3 + seed, 13 + seed))
        base = target_only(target_lm, prompt_ids=prompt, eos_token_ids=[], max_new_tokens=120)
        out = speculative_generate(target_lm, OracleProposer(same_draft_lm, alpha, seed=seed), prompt_ids=prompt,
                                   eos_token_ids=[], max_new_tokens=120, gamma=gamma, reference_ids=base.token_ids)
        assert out.token_ids == base.token_ids and out.synthetic
        emitted += out.counts.emitted_tokens
        passes += out.counts.target_passes + 1  # + the prefill, which decides the first token
    assert abs(emitted / passes - expected_tokens_per_pass(alpha, gamma)) < 0.25


def test_oracle_runs_real_draft_passes(target_lm, same_draft_lm) -> None:
    prompt = [1, 4, 5, 6]
    base = target_only(target_lm, prompt_ids=prompt, eos_token_ids=[], max_new_tokens=10)
    oracle = OracleProposer(same_draft_lm, 1.0)
    calls = []
    original = same_draft_lm.body.forward
    same_draft_lm.body.forward = lambda *a, **k: (calls.append(1), original(*a, **k))[1]
    try:
        speculative_generate(target_lm, oracle, prompt_ids=prompt, eos_token_ids=[], max_new_tokens=10, gamma=3,
                             reference_ids=base.token_ids)
    finally:
        del same_draft_lm.body.forward
    assert len(calls) >= 1 + 10 // 4  # the prefill plus at least one pass per round


class _Recorder(NgramProposer):
    def __init__(self) -> None:
        super().__init__()
        self.rows: list[torch.Tensor] = []

    def observe(self, target_hidden: torch.Tensor) -> None:
        self.rows.append(target_hidden)


def test_proposer_sees_the_target_hidden_states_of_committed_positions(target_lm) -> None:
    prompt = [1, 7, 8, 9, 7, 8, 9, 7, 8]
    recorder = _Recorder()
    out = speculative_generate(target_lm, recorder, prompt_ids=prompt, eos_token_ids=[], max_new_tokens=16, gamma=3)
    rows = torch.cat(recorder.rows)
    ids = torch.tensor([prompt + out.token_ids])
    with torch.inference_mode():
        full = target_lm.body(input_ids=ids).last_hidden_state[0]
    # row 0: the prompt's last position; then one row per committed position, in order
    expected = full[len(prompt) - 1: len(prompt) - 1 + rows.shape[0]]
    torch.testing.assert_close(rows, expected, rtol=1e-4, atol=1e-4)
    assert rows.shape[0] >= len(out.token_ids) - 4


def test_sampling_drafts_carry_their_distributions(target_lm, same_draft_lm) -> None:
    bridge = identity_map(same_draft_lm.vocab_size, target_lm.vocab_size, draft_eos=[EOS], target_eos=[EOS])
    proposer = DraftModelProposer(same_draft_lm, bridge)
    proposer.start(DraftContext(sample=None, target_prompt_ids=[1, 5, 6], target_vocab_size=target_lm.vocab_size,
                                sampling=SamplingConfig(temperature=1.0, seed=3)))
    proposal = proposer.propose([4], 3)
    assert proposal.q is not None and proposal.q.shape == (len(proposal), target_lm.vocab_size)
    torch.testing.assert_close(proposal.q.sum(-1), torch.ones(len(proposal)))
    assert all(float(proposal.q[i, t]) > 0 for i, t in enumerate(proposal.token_ids))


@pytest.mark.parametrize("alpha", [0.0, 1.0, 0.6])
def test_rejections_are_recorded_where_the_target_replaced_a_draft(target_lm, same_draft_lm, alpha: float) -> None:
    prompt, n = [1, 4, 5, 6, 7], 12
    base = target_only(target_lm, prompt_ids=prompt, eos_token_ids=[], max_new_tokens=n)
    out = speculative_generate(target_lm, OracleProposer(same_draft_lm, alpha, seed=3), prompt_ids=prompt,
                               eos_token_ids=[], max_new_tokens=n, gamma=3, reference_ids=base.token_ids)
    assert out.token_ids == base.token_ids
    if alpha == 1.0:
        assert out.rejected_at == []
    elif alpha == 0.0:
        # every round's first draft is wrong: each emitted token but the last (no room left to draft
        # for it) replaced a rejected draft
        assert out.rejected_at == list(range(n - 1))
    else:
        # at most one rejection a round, at increasing positions
        assert 0 < len(out.rejected_at) <= out.counts.drafts and out.rejected_at == sorted(set(out.rejected_at))
    assert len(out.rejected_tokens) == len(out.rejected_at)


def test_the_parallel_prefill_worker_runs_one_cpu_thread_and_leaves_the_callers() -> None:
    """The draft's worker thread computes with one intra-op thread (engine._one_cpu_thread: a second
    OpenMP team slows every later step of the main thread); the caller keeps its own count."""
    from evspec.spec.engine import run_concurrently

    before = torch.get_num_threads()
    torch.set_num_threads(2)  # on a 1-core machine too, so that 1 in the worker means something
    try:
        main_threads, _, worker_threads, _, _ = run_concurrently(torch.get_num_threads, None, torch.get_num_threads, None)
        assert worker_threads == 1
        assert main_threads == 2 == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
