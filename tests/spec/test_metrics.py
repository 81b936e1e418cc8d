"""Metric definitions (vLLM's) and the speedup formula."""

from __future__ import annotations

import pytest

from evspec.spec.metrics import (
    SpecCounts,
    SpecTimings,
    expected_speedup,
    expected_tokens_per_pass,
    position_match,
)


def test_counts_follow_vllm_definitions() -> None:
    c = SpecCounts()
    c.record_round(4, 4)
    c.record_round(4, 1)
    c.record_round(2, 0)
    c.record_round(0, 0)  # no drafts: not a draft
    assert (c.drafts, c.drafted_tokens, c.accepted_tokens) == (3, 10, 5)
    assert c.acceptance_rate == pytest.approx(0.5)
    assert c.mean_acceptance_length == pytest.approx(1 + 5 / 3)
    assert c.accepted_per_position == [2, 1, 1, 1]
    assert c.per_position_acceptance_rate == pytest.approx([2 / 3, 1 / 3, 1 / 3, 1 / 3])
    total = c + SpecCounts(drafts=1, drafted_tokens=3, accepted_tokens=3, accepted_per_position=[1, 1, 1, 0, 0, 0])
    assert total.accepted_per_position == [3, 2, 2, 1, 0, 0] and total.drafts == 4
    assert SpecCounts().acceptance_rate is None and SpecCounts().mean_acceptance_length is None


def test_prefill_overlap_is_the_hidden_fraction_of_the_draft_prefill() -> None:
    assert SpecTimings(target_prefill_s=1.0, draft_prefill_s=0.5, prefill_wall_s=1.0).prefill_overlap == pytest.approx(1.0)
    assert SpecTimings(target_prefill_s=1.0, draft_prefill_s=0.5, prefill_wall_s=1.5).prefill_overlap == pytest.approx(0.0)
    assert SpecTimings(target_prefill_s=1.0, draft_prefill_s=0.5, prefill_wall_s=1.25).prefill_overlap == pytest.approx(0.5)
    assert SpecTimings().prefill_overlap is None
    t = SpecTimings(prefill_wall_s=1.0, draft_s=0.5, verify_s=1.0, total_s=3.0)
    assert t.decode_s == pytest.approx(2.0) and t.other_s == pytest.approx(0.5)


def test_speedup_formula() -> None:
    assert expected_tokens_per_pass(0.0, 5) == pytest.approx(1.0)
    assert expected_tokens_per_pass(1.0, 5) == pytest.approx(6.0)
    assert expected_tokens_per_pass(0.5, 2) == pytest.approx(1.75)
    assert expected_speedup(0.8, 4, 0.05) == pytest.approx((1 - 0.8**5) / 0.2 / 1.2)


def test_position_match_is_not_conditioned_on_anything() -> None:
    assert position_match([1, 2, 3], [1, 5, 3, 4]) == pytest.approx(0.5)
    assert position_match([], [1]) == 0.0 and position_match([1], []) is None
