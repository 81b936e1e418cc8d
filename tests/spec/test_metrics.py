"""Metric definitions (vLLM's) and the speedup formula."""

from __future__ import annotations

import pytest

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from evspec.spec.metrics import (
    SpecCounts,
    SpecTimings,
    bootstrap_draws,
    expected_speedup,
    expected_tokens_per_pass,
    pooled_over_draws,
    position_match,
    summary_intervals,
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


def _record(drafts: int, drafted: int, accepted: int, speedup: float | None) -> dict:
    return {"counts": {"drafts": drafts, "drafted_tokens": drafted, "accepted_tokens": accepted}, "speedup": speedup}


def test_bootstrap_pools_each_draw_as_the_run_pools_its_samples() -> None:
    records = [_record(2, 10, 4, 1.0), _record(1, 5, 5, 2.0), _record(3, 12, 0, 0.5)]
    draws = np.array([[0, 1, 2], [1, 1, 1], [2, 2, 0]])
    pooled = pooled_over_draws(records, draws)
    assert pooled["acceptance_rate"] == pytest.approx([9 / 27, 1.0, 4 / 34])
    assert pooled["mean_acceptance_length"] == pytest.approx([1 + 9 / 6, 1 + 5 / 1, 1 + 4 / 8])
    no_drafts = pooled_over_draws([_record(0, 0, 0, 1.0)], np.zeros((2, 1), dtype=int))
    assert np.isnan(no_drafts["mean_acceptance_length"]).all()


def test_intervals_collapse_where_every_sample_is_alike_and_are_seeded() -> None:
    alike = summary_intervals([_record(2, 8, 4, 1.5)] * 7)
    assert alike["mean_acceptance_length"] == pytest.approx([3.0, 3.0])
    assert alike["acceptance_rate"] == pytest.approx([0.5, 0.5])
    assert alike["speedup_median"] == pytest.approx([1.5, 1.5])
    records = [_record(d, 5 * d, a, s) for d, a, s in [(1, 5, 2.0), (4, 2, 1.1), (2, 9, 1.7), (3, 0, 0.9)]]
    assert summary_intervals(records, seed=3) == summary_intervals(records, seed=3)
    assert summary_intervals([]) is None
    assert summary_intervals([_record(0, 0, 0, None)])["mean_acceptance_length"] is None
    assert bootstrap_draws(4, 10, 0).shape == (10, 4)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 9), st.integers(0, 40), st.floats(0.2, 4.0)), min_size=2, max_size=30))
def test_intervals_hold_the_run_figure_between_the_draws_extremes(samples: list[tuple[int, int, float]]) -> None:
    records = [_record(d, 5 * d, min(a, 5 * d), s) for d, a, s in samples]
    intervals = summary_intervals(records, resamples=400)
    per_sample = [1 + r["counts"]["accepted_tokens"] / r["counts"]["drafts"] for r in records]
    low, high = intervals["mean_acceptance_length"]
    assert min(per_sample) - 1e-9 <= low <= high <= max(per_sample) + 1e-9
    speed_low, speed_high = intervals["speedup_median"]
    assert min(s for *_, s in samples) <= speed_low <= speed_high <= max(s for *_, s in samples)
