"""Temperature and top-p (``probabilities``) against the definitions, written out independently.

Nucleus sampling (Holtzman et al. 2020): the kept set is the SMALLEST set of most likely tokens
whose mass reaches ``top_p`` (the token that crosses ``top_p`` is kept, the next is not); the
distribution is softmax(logits / T) restricted to it and renormalised. Among tokens of equal
probability at the boundary the lower id is kept (as argmax picks the lower id). The reference
below uses Python floats, ``math.exp`` and a sort by (-probability, id), none of the code under test.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from evspec.runtime.decode import SamplingConfig, probabilities


def reference(logits: list[float], temperature: float, top_p: float) -> tuple[list[float], float]:
    """(the distribution, the smallest distance of a cumulative mass to top_p) from the definition."""
    top = max(logits)
    weights = [math.exp((x - top) / temperature) for x in logits]
    total = sum(weights)
    probs = [w / total for w in weights]
    order = sorted(range(len(probs)), key=lambda i: (-probs[i], i))
    kept, mass, margin = [], 0.0, math.inf
    for i in order:
        if kept and mass >= top_p:
            break
        kept.append(i)
        mass += probs[i]
        margin = min(margin, abs(mass - top_p))
    return [probs[i] / mass if i in kept else 0.0 for i in range(len(probs))], margin


@settings(max_examples=150, deadline=None)
@given(
    rows=st.integers(1, 3).flatmap(lambda k: st.lists(
        st.lists(st.integers(-60, 60).map(lambda v: v / 10), min_size=5, max_size=5), min_size=k, max_size=k)),
    temperature=st.floats(0.2, 3.0),
    top_p=st.floats(0.05, 1.0),
)
def test_matches_the_definition(rows: list[list[float]], temperature: float, top_p: float) -> None:
    """Rows [k, V] (the engine passes k + 1 verify rows at once) against the reference, row by row.
    Logits on a 0.1 grid: equal ones tie exactly in both (lower id first), others differ clearly.
    Examples whose cumulative mass lies within 1e-5 of top_p are left out: float32 rounding may
    put them on either side (exact boundaries are the hand-worked cases below)."""
    expected = [reference(row, temperature, top_p) for row in rows]
    assume(all(margin > 1e-5 for _, margin in expected) or top_p == 1.0)
    got = probabilities(torch.tensor(rows), SamplingConfig(temperature=temperature, top_p=top_p))
    want = torch.tensor([dist for dist, _ in expected], dtype=torch.float32)
    assert torch.equal(got > 0, want > 0), f"kept sets differ: {got} vs {want}"
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def _probs(logits: list[float], temperature: float, top_p: float) -> list[float]:
    return probabilities(torch.tensor(logits), SamplingConfig(temperature=temperature, top_p=top_p)).tolist()


def test_hand_worked_top_p() -> None:
    """p = (0.5, 0.25, 0.15, 0.1). Mass of the head: 0.5, 0.75, 0.9, 1.0."""
    logits = [math.log(v) for v in (0.5, 0.25, 0.15, 0.1)]
    # top_p 0.4: 0.5 alone reaches it -> one token
    assert _probs(logits, 1.0, 0.4) == pytest.approx([1.0, 0.0, 0.0, 0.0])
    # top_p 0.7: 0.5 < 0.7 <= 0.75 -> the two first, renormalised by 0.75
    assert _probs(logits, 1.0, 0.7) == pytest.approx([2 / 3, 1 / 3, 0.0, 0.0], abs=1e-6)
    # top_p 0.8: 0.75 < 0.8 <= 0.9 -> three, renormalised by 0.9; the 0.1 token is not needed
    assert _probs(logits, 1.0, 0.8) == pytest.approx([0.5 / 0.9, 0.25 / 0.9, 0.15 / 0.9, 0.0], abs=1e-6)
    # top_p 1: everything
    assert _probs(logits, 1.0, 1.0) == pytest.approx([0.5, 0.25, 0.15, 0.1], abs=1e-6)


def test_hand_worked_exact_boundary_and_ties() -> None:
    """Four equal logits: p = 0.25 each, exactly (exp(0) / 4). Cumulative mass 0.25, 0.5, 0.75, 1."""
    equal = [0.0, 0.0, 0.0, 0.0]
    # top_p 0.5: two tokens reach it exactly -> the smallest set has 2 (not 3), the lower ids
    assert _probs(equal, 1.0, 0.5) == [0.5, 0.5, 0.0, 0.0]
    assert _probs(equal, 1.0, 0.25) == [1.0, 0.0, 0.0, 0.0]
    assert _probs(equal, 1.0, 0.5 + 1e-3) == pytest.approx([1 / 3, 1 / 3, 1 / 3, 0.0])
    # a tie at the boundary behind a larger token: p = (0.5, 0.25, 0.25) exactly; top_p 0.6 keeps
    # token 0 and the lower id of the tied pair
    assert _probs([math.log(2.0), 0.0, 0.0], 1.0, 0.6) == pytest.approx([2 / 3, 1 / 3, 0.0])
    # many ties: the lower ids, whatever the sort does with long rows
    wide = probabilities(torch.zeros(2, 2048), SamplingConfig(temperature=1.0, top_p=3 / 2048))
    assert wide.nonzero()[:, 1].tolist() == [0, 1, 2, 0, 1, 2] and wide.sum(-1).tolist() == [1.0, 1.0]


def test_hand_worked_temperature() -> None:
    """logits (2, 1, 0): T = 2 -> softmax(1, 0.5, 0) = (e, e^0.5, 1) / 5.3670; T = 0.5 -> softmax(4, 2, 0)
    = (e^4, e^2, 1) / 62.987; with top_p 0.9 at T = 0.5: 0.8668 < 0.9, so two tokens, and
    e^4 / (e^4 + e^2) = sigmoid(2) = 0.880797."""
    logits = [2.0, 1.0, 0.0]
    assert _probs(logits, 2.0, 1.0) == pytest.approx([0.506480, 0.307196, 0.186324], abs=1e-6)
    assert _probs(logits, 0.5, 1.0) == pytest.approx([0.866813, 0.117310, 0.015876], abs=1e-6)
    assert _probs(logits, 0.5, 0.9) == pytest.approx([0.880797, 0.119203, 0.0], abs=1e-6)
    assert _probs(logits, 1.0, 1.0) == pytest.approx([0.665241, 0.244728, 0.090031], abs=1e-6)
