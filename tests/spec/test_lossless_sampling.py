"""Sampling: the speculative output is distributed exactly as the target's own.

Vocabulary of 8, a target and a draft whose distributions differ a lot (q far from p). The
first two emitted tokens are counted over N independent seeded runs and compared with the
target's exact joint distribution p(t0) p(t1 | t0) (computed from the target's logits) by a
G-test at level 0.001. The test's power is computed here, not assumed: against a 5%
contamination by the draft's own joint distribution (0.95 p + 0.05 q, i.e. one sample in twenty
leaking the draft's choice) a Monte Carlo of the same G-test on N = 1000 draws must reject at
least 95% of the time (it is ~0.998 and 1.0 for the two settings), so an acceptance rule with that bug
would fail this test.

The expected distribution comes from the engine's own ``probabilities()``; that function is checked
against the definition of temperature and top-p in ``tests/runtime/test_sampling.py``. Drafts
without a distribution (n-gram, cross-tokenizer) are checked in ``test_sampling_one_hot_drafts.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from evspec.runtime.decode import LanguageModel, SamplingConfig, prefill, probabilities
from evspec.spec.engine import speculative_generate
from evspec.spec.proposers import DraftModelProposer
from evspec.spec.vocab import identity_map

from .conftest import tiny_lm

VOCAB = 8
PROMPT = [1, 5, 3, 7, 4]
LEVEL = 1e-3
N_RUNS = 1000


@pytest.fixture(scope="module")
def sharp_pair() -> tuple[LanguageModel, LanguageModel]:
    """Random tiny models with scaled LM heads, so p and q are peaked and far apart."""
    target, draft = tiny_lm(20, VOCAB), tiny_lm(21, VOCAB, layers=1)
    with torch.no_grad():
        target.lm_head.weight.mul_(40)
        draft.lm_head.weight.mul_(40)
    return target, draft


def exact_joint(lm: LanguageModel, sampling: SamplingConfig) -> np.ndarray:
    """p(t0, t1) under ``sampling`` from the model's own logits: [V, V]."""
    with torch.inference_mode():
        pre = prefill(lm, lm.embed_tokens(torch.tensor([PROMPT])))
        p0 = probabilities(pre.logits, sampling).double()
        joint = torch.zeros(VOCAB, VOCAB, dtype=torch.float64)
        for t0 in range(VOCAB):
            step = pre.state.extend(token_ids=[t0])
            joint[t0] = p0[t0] * probabilities(step.logits[-1], sampling).double()
            pre.state.rollback(len(PROMPT))
    return joint.flatten().numpy()


def g_test_pvalue(counts: np.ndarray, expected_probs: np.ndarray) -> float:
    """G-test of counts against probabilities; cells with expected count < 5 pooled into one.
    A count in a cell of probability 0 is impossible under the hypothesis: p-value 0."""
    n = counts.sum()
    expected = expected_probs * n
    if counts[expected_probs == 0].sum() > 0:
        return 0.0
    small = expected < 5
    obs = np.append(counts[~small], counts[small].sum())
    exp = np.append(expected[~small], expected[small].sum())
    keep = exp > 0
    obs, exp = obs[keep], exp[keep]
    nz = obs > 0
    g = 2.0 * float((obs[nz] * np.log(obs[nz] / exp[nz])).sum())
    df = len(obs) - 1
    return float(torch.special.gammaincc(torch.tensor(df / 2, dtype=torch.float64), torch.tensor(g / 2, dtype=torch.float64)))


def power(p: np.ndarray, alternative: np.ndarray, n: int, sims: int = 400) -> float:
    rng = np.random.default_rng(0)
    draws = rng.multinomial(n, alternative / alternative.sum(), size=sims)
    return float(np.mean([g_test_pvalue(d, p) < LEVEL for d in draws]))


@pytest.mark.parametrize(
    ("temperature", "top_p", "gamma", "parallel"),
    [(1.0, 1.0, 2, False), (1.5, 0.95, 3, True)],
)
def test_output_distribution_matches_the_target(sharp_pair, temperature, top_p, gamma, parallel) -> None:
    target, draft = sharp_pair
    sampling = SamplingConfig(temperature=temperature, top_p=top_p)
    p = exact_joint(target, sampling)
    q = exact_joint(draft, sampling)
    assert 0.5 * np.abs(p - q).sum() > 0.5  # the draft is far from the target (total variation)
    assert power(p, 0.95 * p + 0.05 * q, N_RUNS) >= 0.95

    bridge = identity_map(VOCAB, VOCAB)
    proposer = DraftModelProposer(draft, bridge)
    counts = np.zeros(VOCAB * VOCAB)
    accepted = 0
    for seed in range(N_RUNS):
        out = speculative_generate(
            target, proposer, prompt_ids=PROMPT, eos_token_ids=[], max_new_tokens=2, gamma=gamma,
            sampling=SamplingConfig(temperature=temperature, top_p=top_p, seed=seed), parallel_prefill=parallel,
        )
        t0, t1 = out.token_ids
        counts[t0 * VOCAB + t1] += 1
        accepted += out.counts.accepted_tokens
    assert 0 < accepted < N_RUNS * 2  # both acceptance and rejection paths ran
    assert g_test_pvalue(counts, p) > LEVEL
    assert g_test_pvalue(counts, q) < LEVEL  # and the draft's own distribution is clearly rejected
