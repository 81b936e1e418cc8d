"""Sampling with drafts that carry no distribution (n-gram, the cross-tokenizer bridge), end to end.

Those drafts go through the acceptance rule's one-hot case (keep x with probability p(x), else sample p
without x). The first two emitted tokens of N = 1000 seeded speculative runs (max_new_tokens 3,
gamma 2: the first drafts are judged by the prefill and by the carry's pass, and after a
rejection a new draft is judged by the next pass) are compared with the target's exact joint
distribution p(t0) p(t1 | t0) by the G-test of ``test_lossless_sampling`` at level 0.001.

Power, computed in the test rather than assumed: against an output that moves a share eps of the
mass from p to the drafts' own first two tokens r (an acceptance rule that waves the drafts through in a
share eps of the runs: (1 - eps) p + eps r, at total variation eps * TV(p, r) from p), a Monte
Carlo of the same G-test on N = 1000 draws rejects at least 95% of the time for
- n-gram: eps = 0.15 (r: the point mass on the lookup's drafts (5, 7); TV(p, r) = 0.79, so a
  deviation of total variation 0.12 is detected; power 1.0 there, 0.95 at eps = 0.12);
- cross-tokenizer: eps = 0.12 against r restricted to the pairs the target can emit (TV 0.74 from
  p, so a deviation of total variation 0.089 is detected; power 0.99). The unrestricted r puts
  76% of its mass on pairs the target cannot emit: one such waved-through draft gives p-value 0.
An acceptance rule that accepts every such draft (eps = 1) fails by far; the observed counts also reject
the half-waved-through mixture 0.5 p + 0.5 r (asserted; p-values ~1e-127). Acceptance rates in these runs: n-gram 0.36, cross-tokenizer 0.13. Each
test runs in about 6 s.
"""

from __future__ import annotations

import numpy as np
import torch

from evspec.runtime.decode import LanguageModel, SamplingConfig, prefill, probabilities
from evspec.spec.engine import speculative_generate
from evspec.spec.proposers import DraftContext, DraftModelProposer, NgramProposer, Proposer
from evspec.spec.vocab import bridge_vocabularies

from .conftest import EOS, tiny_lm
from .test_lossless_sampling import LEVEL, g_test_pvalue, power

N_RUNS = 1000
MAX_NEW, GAMMA = 3, 2
EPS_NGRAM, EPS_CROSS = 0.15, 0.12  # the shares of waved-through runs detected with power >= 0.95


def exact_joint(lm: LanguageModel, prompt: list[int], sampling: SamplingConfig) -> np.ndarray:
    """p(t0, t1) under ``sampling`` from the target's own logits, flattened [V * V]."""
    vocab = lm.vocab_size
    with torch.inference_mode():
        pre = prefill(lm, lm.embed_tokens(torch.tensor([prompt])))
        p0 = probabilities(pre.logits, sampling).double()
        joint = torch.zeros(vocab, vocab, dtype=torch.float64)
        for t0 in torch.nonzero(p0).flatten().tolist():
            step = pre.state.extend(token_ids=[t0])
            joint[t0] = p0[t0] * probabilities(step.logits[-1], sampling).double()
            pre.state.rollback(len(prompt))
    return joint.flatten().numpy()


def sample_joint(target: LanguageModel, proposer: Proposer, prompt: list[int], sampling: SamplingConfig) -> tuple[np.ndarray, int, int]:
    """Counts of (t0, t1) over N_RUNS seeds, and the drafted and accepted tokens of all runs."""
    vocab = target.vocab_size
    counts = np.zeros(vocab * vocab)
    drafted = accepted = 0
    for seed in range(N_RUNS):
        out = speculative_generate(target, proposer, prompt_ids=prompt, eos_token_ids=[], max_new_tokens=MAX_NEW,
                                   gamma=GAMMA, sampling=SamplingConfig(sampling.temperature, sampling.top_p, seed))
        t0, t1 = out.token_ids[:2]
        counts[t0 * vocab + t1] += 1
        drafted += out.counts.drafted_tokens
        accepted += out.counts.accepted_tokens
    return counts, drafted, accepted


def total_variation(a: np.ndarray, b: np.ndarray) -> float:
    return 0.5 * float(np.abs(a - b).sum())


# --------------------------------------------------------------------------- n-gram

NGRAM_VOCAB = 8
NGRAM_PROMPT = [1, 3, 6, 5, 7, 5, 6]  # the lookup drafts 5, 7 (what followed the earlier "6")


def test_ngram_drafts_under_sampling_give_the_target_distribution() -> None:
    target = tiny_lm(20, NGRAM_VOCAB)
    with torch.no_grad():
        target.lm_head.weight.mul_(20)  # peaked but not one-hot: p(5) = 0.53, p(7 | 5) = 0.40
    sampling = SamplingConfig(temperature=1.0)
    ngram = NgramProposer()
    ngram.start(DraftContext(sample=None, target_prompt_ids=NGRAM_PROMPT, target_vocab_size=NGRAM_VOCAB))
    assert ngram.propose([], GAMMA).token_ids == [5, 7]
    p = exact_joint(target, NGRAM_PROMPT, sampling)
    r = np.zeros_like(p)
    r[5 * NGRAM_VOCAB + 7] = 1.0  # the drafts' own joint: always (5, 7)
    assert total_variation(p, r) > 0.75
    assert power(p, (1 - EPS_NGRAM) * p + EPS_NGRAM * r, N_RUNS) >= 0.95

    counts, drafted, accepted = sample_joint(target, NgramProposer(), NGRAM_PROMPT, sampling)
    assert g_test_pvalue(counts, p) > LEVEL
    assert g_test_pvalue(counts, 0.5 * p + 0.5 * r) < LEVEL  # what half-waved-through drafts would give
    assert 0.2 * drafted < accepted < 0.8 * drafted  # acceptance and rejection both ran, often


# --------------------------------------------------------------------------- cross-tokenizer


def restricted_target(vocab: int, allowed: list[int], favoured: int) -> LanguageModel:
    """A random tiny target whose LM head can only say ``allowed`` (a bias of -inf elsewhere;
    ``favoured`` gets +2), with context-dependent odds among them: the bridged drafts land on
    those tokens often enough for both verdicts to run, which a near-uniform 68-token target
    would not give."""
    lm = tiny_lm(30, vocab)
    head = torch.nn.Linear(lm.hidden_size, vocab, bias=True)
    with torch.no_grad():
        head.weight.copy_(lm.lm_head.weight * 5)
        head.bias.fill_(float("-inf"))
        head.bias[allowed] = 0.0
        head.bias[favoured] = 2.0
    return LanguageModel(lm.body, lm.embed_tokens, head, lm.context_length)


def test_cross_tokenizer_drafts_under_sampling_give_the_target_distribution(target_tok, cross_draft_tok) -> None:
    vocab = len(target_tok) + 2
    # the word-boundary piece (the drafts' usual first token) and pieces the drafts' text often
    # re-encodes to after it
    boundary = target_tok.convert_tokens_to_ids("▁")
    allowed = sorted({target_tok.convert_tokens_to_ids(t) for t in ("▁", "a", "e", "g", "u", "t", "▁l", "▁c")})
    target = restricted_target(vocab, allowed, boundary)
    draft = tiny_lm(31, len(cross_draft_tok), layers=1)
    bridge = bridge_vocabularies(cross_draft_tok, target_tok, draft_vocab_size=draft.vocab_size,
                                 target_vocab_size=vocab, draft_eos=[EOS], target_eos=[EOS])
    assert bridge.kind == "cross"
    prompt = [1] + target_tok.encode("the quick brown fox", add_special_tokens=False)
    sampling = SamplingConfig(temperature=1.0)
    p = exact_joint(target, prompt, sampling)

    proposer = DraftModelProposer(draft, bridge)
    r = np.zeros_like(p)  # the drafts' own joint: their first two target tokens, over the same seeds
    for seed in range(N_RUNS):
        proposer.start(DraftContext(sample=None, target_prompt_ids=prompt, target_vocab_size=vocab,
                                    sampling=SamplingConfig(1.0, seed=seed)))
        proposal = proposer.propose([], GAMMA)  # what the engine asks for first
        assert proposal.q is None  # so the one-hot rule is what runs
        ids = proposal.token_ids
        if len(ids) >= 2:
            r[ids[0] * vocab + ids[1]] += 1
    r /= r.sum()
    possible = p > 0
    r_possible = np.where(possible, r, 0.0) / r[possible].sum()  # the drafts the target could emit
    assert r[~possible].sum() > 0.5  # most drafted pairs are impossible for the target
    assert total_variation(p, r_possible) > 0.7
    assert power(p, (1 - EPS_CROSS) * p + EPS_CROSS * r_possible, N_RUNS) >= 0.95

    counts, drafted, accepted = sample_joint(target, proposer, prompt, sampling)
    assert g_test_pvalue(counts, p) > LEVEL
    assert g_test_pvalue(counts, 0.5 * p + 0.5 * r) < LEVEL
    assert 0.05 * drafted < accepted < 0.5 * drafted  # acceptance and rejection both ran
