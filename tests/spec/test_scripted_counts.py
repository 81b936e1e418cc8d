"""Exact token accounting: a scripted proposer with fixed drafts against the greedy target.

The proposer drafts, per call, ``right`` tokens of the target's own greedy output followed by
wrong ones (the target's token + 1), so every verdict is known in advance and every count and
the gamma trace are worked out by hand below (SpecCounts' fields, vLLM's definitions: a *draft*
is a round that offered at least one token; the first-token carry makes the first drafts and the
pass that verifies the rest ONE draft). Covers adaptive gamma's boundaries (grow only after a
full round of the gamma asked for, capped at ``max_gamma``; shrink only when fewer than
``gamma // 2`` were accepted, never below 1), an EOS inside an accepted run (drafts after it do
not count as accepted), and the first-token carry (kept, rejected, and ended by EOS before any pass).
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from evspec.spec.engine import speculative_generate, target_only
from evspec.spec.proposers import DraftContext, Proposal, Proposer

PROMPT = [1, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14]


class ScriptedProposer(Proposer):
    """Call i drafts ``right`` tokens of the reference then ``wrong`` wrong ones (script[i]);
    records the gamma the engine asked for in each call."""

    name = "scripted"

    def __init__(self, reference: Sequence[int], vocab_size: int, script: Sequence[tuple[int, int]]) -> None:
        self.reference, self.vocab_size, self.script = list(reference), vocab_size, list(script)
        self.requested: list[int] = []

    def start(self, ctx: DraftContext) -> None:
        self.requested = []

    def propose(self, accepted: Sequence[int], gamma: int) -> Proposal:
        right, wrong = self.script[len(self.requested)]
        self.requested.append(gamma)
        assert right + wrong <= gamma, "the script drafts more than the engine asked for"
        at = len(accepted)
        ids = self.reference[at: at + right]
        ids += [(t + 1) % self.vocab_size for t in self.reference[at + right: at + right + wrong]]
        return Proposal(ids)


@pytest.fixture(scope="module")
def reference(target_lm) -> list[int]:
    """The target's greedy output without EOS; ref[9] (= 8) occurs nowhere before it."""
    ref = target_only(target_lm, prompt_ids=PROMPT, eos_token_ids=[], max_new_tokens=40).token_ids
    assert ref[9] not in ref[:9]
    return ref


def _run(target_lm, reference, script, **kw):
    proposer = ScriptedProposer(reference, target_lm.vocab_size, script)
    out = speculative_generate(target_lm, proposer, prompt_ids=PROMPT, **kw)
    assert len(proposer.requested) == len(script), "the engine called propose() a different number of times"
    return out, proposer


def test_adaptive_gamma_boundaries_and_counts(target_lm, reference) -> None:
    """gamma 4, max_gamma 5, 32 tokens, no EOS. Per call (asked, drafted = right + wrong):

    call 0 (first)  asked 4: 4 right. Prefill keeps draft 0 (token 0); the other 3 ride the next
                    pass (the carry): all kept + bonus -> tokens 1..4. ONE draft of 4, 4 accepted,
                    1 pass. Not in the trace, and gamma stays 4 (the carry round does not adapt).
    call 1  asked 4: 4 right      -> +5 (out 10), full round of gamma -> gamma 5
    call 2  asked 5: 5 right      -> +6 (out 16), full again, capped at max_gamma -> 5
    call 3  asked 5: 2 right 3 wr -> +3 (out 19), 2 = 5 // 2, not fewer: gamma stays 5
    call 4  asked 5: 1 right 4 wr -> +2 (out 21), 1 < 2 -> gamma 4
    call 5  asked 4: 3 right      -> +4 (out 25), all kept but fewer than gamma: stays 4
    call 6  asked 4: nothing      -> +1 (out 26), a pass but no draft: stays 4
    call 7  asked 4: 0 right 4 wr -> +1 (out 27), 0 < 2 -> gamma 3
    call 8  asked 3: 1 right 2 wr -> +2 (out 29), 1 = 3 // 2: stays 3
    call 9  asked 2 (room: 32 - 29 - 1): 2 right -> +3 (out 32); full, but fewer than gamma: no growth

    drafts 9 (calls 0+carry, 1-5, 7-9); drafted 4+4+5+5+5+3+4+3+2 = 35; accepted 4+4+5+2+1+3+0+1+2
    = 22; passes 10 (carry, calls 1-9); emitted 32 = 22 accepted + 10 bonus/corrections.
    Per position k, drafts whose k-th token was kept: k=0: carry,1,2,3,4,5,8,9 = 8; k=1: carry,1,
    2,3,5,9 = 6; k=2: carry,1,2,5 = 4; k=3: carry,1,2 = 3; k=4: call 2 = 1.
    """
    script = [(4, 0), (4, 0), (5, 0), (2, 3), (1, 4), (3, 0), (0, 0), (0, 4), (1, 2), (2, 0)]
    out, proposer = _run(target_lm, reference, script, eos_token_ids=[], max_new_tokens=32, gamma=4,
                         adaptive_gamma=True, max_gamma=5)
    assert out.token_ids == reference[:32]
    assert proposer.requested == [4, 4, 5, 5, 5, 4, 4, 4, 3, 2]
    assert out.gamma_trace == [4, 5, 5, 5, 3, 0, 4, 3, 2]
    c = out.counts
    assert (c.drafts, c.drafted_tokens, c.accepted_tokens, c.target_passes, c.emitted_tokens) == (9, 35, 22, 10, 32)
    assert c.accepted_per_position == [8, 6, 4, 3, 1]
    # a rejection at (output length before the round) + (drafts kept): calls 3 (16 + 2), 4 (19 + 1), 7 (26 + 0), 8 (27 + 1)
    assert out.rejected_at == [18, 20, 26, 28]
    assert not out.stopped_on_eos


def test_first_token_rejected_shrink_to_one_and_eos_inside_an_accepted_run(target_lm, reference) -> None:
    """gamma 2, adaptive (max_gamma 4), EOS = reference[9] (its first occurrence).

    call 0 (first)  asked 2: 0 right 2 wr -> the prefill rejects draft 0 and emits token 0; one
                    draft of 2, 0 accepted, no pass; rejected at 0
    call 1  asked 2: 0 right 2 wr -> +1 (out 2), 0 < 1 -> gamma 1; rejected at 1
    call 2  asked 1: 0 right 1 wr -> +1 (out 3), 0 < 1 // 2 = 0 is false: stays 1 (the floor)
    call 3  asked 1: 1 right      -> +2 (out 5), full -> gamma 2
    call 4  asked 2: 2 right      -> +3 (out 8), full -> gamma 3
    call 5  asked 3: 3 right = tokens 8, 9 (EOS), 10: the target keeps all 3, but the output ends
                    at the EOS: +2 (out 10), and only the 2 drafts up to the EOS count as accepted

    drafts 6, drafted 2+2+1+1+2+3 = 11, accepted 0+0+0+1+2+2 = 5, passes 5, emitted 10;
    per position: k=0: calls 3,4,5 = 3; k=1: calls 4,5 = 2. Trace [2, 1, 1, 2, 3].
    """
    eos = reference[9]
    script = [(0, 2), (0, 2), (0, 1), (1, 0), (2, 0), (3, 0)]
    out, proposer = _run(target_lm, reference, script, eos_token_ids=[eos], max_new_tokens=32, gamma=2,
                         adaptive_gamma=True)
    assert out.token_ids == reference[:10] and out.stopped_on_eos
    assert proposer.requested == [2, 2, 1, 1, 2, 3]
    assert out.gamma_trace == [2, 1, 1, 2, 3]
    c = out.counts
    assert (c.drafts, c.drafted_tokens, c.accepted_tokens, c.target_passes, c.emitted_tokens) == (6, 11, 5, 5, 10)
    assert c.accepted_per_position == [3, 2]
    assert out.rejected_at == [0, 1, 2]


def test_first_token_carry_ended_by_eos_before_any_pass(target_lm, reference) -> None:
    """EOS = reference[0]: the prefill keeps draft 0, which ends the answer. The 2 drafts riding
    on the carry never reach a pass, yet the first proposal was one draft of 3 tokens, 1 accepted."""
    out, proposer = _run(target_lm, reference, [(3, 0)], eos_token_ids=[reference[0]], max_new_tokens=32, gamma=3)
    assert out.token_ids == reference[:1] and out.stopped_on_eos
    assert proposer.requested == [3]
    c = out.counts
    assert (c.drafts, c.drafted_tokens, c.accepted_tokens, c.target_passes, c.emitted_tokens) == (1, 3, 1, 0, 1)
    assert c.accepted_per_position == [1] and out.gamma_trace == [] and out.rejected_at == []


def test_first_token_carry_with_nothing_left_to_carry(target_lm, reference) -> None:
    """max_new_tokens 2: the first proposal is capped at 1 draft (the last token needs no draft).
    The prefill keeps it; the carry is empty, yet the pass that adds the bonus token still counts
    the first draft: one draft of 1, 1 accepted, 1 pass, 2 tokens."""
    out, proposer = _run(target_lm, reference, [(1, 0)], eos_token_ids=[], max_new_tokens=2, gamma=4)
    assert out.token_ids == reference[:2]
    assert proposer.requested == [1]
    c = out.counts
    assert (c.drafts, c.drafted_tokens, c.accepted_tokens, c.target_passes, c.emitted_tokens) == (1, 1, 1, 1, 2)
    assert c.accepted_per_position == [1] and out.gamma_trace == []


def test_one_token_answer_drafts_nothing(target_lm, reference) -> None:
    """max_new_tokens 1: the engine asks for 0 drafts; the prefill alone gives the token."""
    out, proposer = _run(target_lm, reference, [(0, 0)], eos_token_ids=[], max_new_tokens=1, gamma=4)
    assert out.token_ids == reference[:1] and proposer.requested == [0]
    c = out.counts
    assert (c.drafts, c.drafted_tokens, c.accepted_tokens, c.target_passes, c.emitted_tokens) == (0, 0, 0, 0, 1)
