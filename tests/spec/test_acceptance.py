"""The acceptance rule alone: greedy prefix rule and the exactness of the stochastic rule."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from evspec.spec.acceptance import (
    Verdict,
    acceptance_probabilities,
    residual_distribution,
    accept_greedy,
    accept_stochastic,
)


def _distribution(values: list[float]) -> torch.Tensor:
    x = torch.tensor(values, dtype=torch.float64)
    return x / x.sum()


dist_values = st.lists(st.floats(0.0, 1.0), min_size=2, max_size=12).filter(lambda v: sum(v) > 1e-3)


@st.composite
def p_q_pair(draw):
    v = draw(st.integers(2, 12))
    p = draw(st.lists(st.floats(0.0, 1.0), min_size=v, max_size=v).filter(lambda x: sum(x) > 1e-3))
    q = draw(st.lists(st.floats(0.0, 1.0), min_size=v, max_size=v).filter(lambda x: sum(x) > 1e-3))
    return _distribution(p), _distribution(q)


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_greedy_accepts_exactly_the_matching_prefix(data) -> None:
    vocab = data.draw(st.integers(2, 9))
    k = data.draw(st.integers(0, 6))
    with_bonus_row = data.draw(st.booleans())
    rows = k + 1 if with_bonus_row else k
    choice = data.draw(st.lists(st.integers(0, vocab - 1), min_size=rows, max_size=rows))
    logits = torch.randn(rows, vocab)
    logits[torch.arange(rows), torch.tensor(choice, dtype=torch.long)] = 100.0  # argmax is `choice`
    drafts = data.draw(st.lists(st.integers(0, vocab - 1), min_size=k, max_size=k))
    verdict = accept_greedy(logits, drafts)
    prefix = 0
    while prefix < k and drafts[prefix] == choice[prefix]:
        prefix += 1
    assert verdict.n_accepted == prefix
    expected_next = choice[prefix] if prefix < rows else None
    assert verdict.next_token == expected_next
    assert verdict.tokens(drafts) == drafts[:prefix] + ([] if expected_next is None else [expected_next])


@settings(max_examples=300, deadline=None)
@given(pq=p_q_pair())
def test_stochastic_rule_first_token_marginal_is_exactly_p(pq) -> None:
    """q(x) min(1, p/q) + (1 - sum_x q min(1, p/q)) * residual = p, with the sampler's own helpers."""
    p, q = pq
    accept = acceptance_probabilities(p, q)
    kept = q * accept
    rejected_mass = 1.0 - kept.sum()
    marginal = kept + rejected_mass * residual_distribution(p, q)
    torch.testing.assert_close(marginal, p, rtol=0, atol=1e-12)


@settings(max_examples=200, deadline=None)
@given(p=dist_values)
def test_one_hot_rule_is_exact_for_any_deterministic_draft(p) -> None:
    """q = None (n-gram, cross-tokenizer): keep x w.p. p(x), else sample p without x -> p."""
    p = _distribution(p)
    for x in range(len(p)):
        q = torch.nn.functional.one_hot(torch.tensor(x), len(p)).double()
        marginal = q * acceptance_probabilities(p, q) + (1 - (q * acceptance_probabilities(p, q)).sum()) * residual_distribution(p, q)
        torch.testing.assert_close(marginal, p, rtol=0, atol=1e-12)


def test_stochastic_sampler_matches_p_empirically() -> None:
    """accept_stochastic itself (not only its helpers): the first emitted token is distributed as p."""
    p = _distribution([0.5, 0.2, 0.2, 0.1])
    q = _distribution([0.1, 0.1, 0.2, 0.6])
    gen = torch.Generator().manual_seed(0)
    n = 20000
    counts = np.zeros(4)
    draws = torch.multinomial(q.float(), n, replacement=True, generator=gen).tolist()
    rows = torch.stack([p, p])  # [k+1, V] with k = 1
    for x in draws:
        v = accept_stochastic(rows, [x], q[None], gen)
        counts[x if v.n_accepted == 1 else v.next_token] += 1
    expected = p.numpy() * n
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 16.27  # df = 3, alpha = 0.001


def test_stochastic_edge_cases() -> None:
    gen = torch.Generator().manual_seed(1)
    p = _distribution([0.0, 0.5, 0.5])
    q = _distribution([1.0, 0.0, 0.0])
    for _ in range(50):  # p(x) = 0 -> never accepted, and the residual never gives x
        v = accept_stochastic(torch.stack([p, p]), [0], q[None], gen)
        assert v.n_accepted == 0 and v.next_token in (1, 2)
    for _ in range(50):  # p == q -> always accepted, then a bonus from the last row
        v = accept_stochastic(torch.stack([p, p]), [1], p[None], gen)
        assert v.n_accepted == 1 and v.next_token in (1, 2)
    v = accept_stochastic(p[None], [1], p[None], gen)  # no bonus row
    assert v == Verdict(1, None)
    with pytest.raises(ValueError):
        accept_stochastic(p[None], [1, 2], None, gen)
    with pytest.raises(ValueError):
        accept_greedy(torch.zeros(4, 3), [0])
