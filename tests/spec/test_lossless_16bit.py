"""Lossless in 16-bit, stated precisely (evspec.spec.lossless): divergences from the target alone
are classified by the target's top-2 margin in both paths; near ties are reported, others fail.

A constructed near tie: the LM head gets two identical rows A < B, so their logits tie exactly
and the target alone (argmax: first index) always picks A; a state factory then nudges B up by a
hair in passes over several tokens (the verify pass), as a kernel rounding differently would. The
speculative run then picks B wherever A would win: every such divergence must be a near-tie flip,
the re-runs must find each one, and a large nudge must come out NOT lossless.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch

from evspec.runtime.decode import EagerState, LanguageModel
from evspec.spec.engine import compare
from evspec.spec.lossless import (
    Divergence,
    LosslessCheck,
    TopTwo,
    check_lossless,
    classify,
    near_tie_tolerance,
    run_verdict,
)
from evspec.spec.proposers import OracleProposer
from evspec.spec.run import spec_record

from .conftest import EOS, tiny_lm
from .test_lossless_greedy import noisy_copy, prompt_for

VOCAB = 64
MAX_NEW = 24


class NudgedState(EagerState):
    """EagerState whose passes over 2+ tokens (verify passes) add ``nudge`` to token ``b``'s logit."""

    def __init__(self, lm: LanguageModel, b: int, nudge: float) -> None:
        super().__init__(lm)
        self.b, self.nudge = b, nudge

    def extend(self, *, embeds=None, token_ids=None, last_only=False):
        out = super().extend(embeds=embeds, token_ids=token_ids, last_only=last_only)
        if token_ids is not None and len(token_ids) > 1:
            out.logits[:, self.b] += self.nudge
        return out


def tied_lm(dtype: torch.dtype) -> tuple[LanguageModel, int, int, list[int]]:
    """A tiny LM whose head rows A and B are equal, A a token the target alone emits often, and a prompt."""
    from evspec.spec.engine import target_only

    lm = tiny_lm(4, VOCAB, layers=2, hidden=32, dtype=dtype)
    prompt = prompt_for(0)
    ids = target_only(lm, prompt_ids=prompt, eos_token_ids=[EOS], max_new_tokens=MAX_NEW,
                      min_new_tokens=MAX_NEW).token_ids
    a = max(set(ids[1:]) - {EOS}, key=ids.count)  # a token chosen after position 0
    b = VOCAB - 1 if a != VOCAB - 1 else VOCAB - 2
    head = copy.deepcopy(lm.lm_head)
    with torch.no_grad():
        head.weight[b] = head.weight[a]
    return LanguageModel(lm.body, lm.embed_tokens, head, lm.context_length), min(a, b), max(a, b), prompt


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_constructed_near_ties_are_classified_as_flips(dtype: torch.dtype) -> None:
    lm, a, b, prompt = tied_lm(dtype)
    nudge = 2e-4  # below the tolerance at these logits' size in both dtypes (asserted below)
    result = compare(lm, OracleProposer(lm, 1.0, seed=0), prompt_ids=prompt, eos_token_ids=[EOS],
                     max_new_tokens=MAX_NEW, min_new_tokens=MAX_NEW, gamma=4, state_factory=lambda m: NudgedState(m, b, nudge))
    check = result.check
    assert check is not None and result.exact is False
    assert check.status == "near-tie flips" and result.lossless is True
    assert len(check.divergences) >= 2  # the re-runs found the later flips, not only the first
    for d in check.divergences:
        assert (d.baseline_token, d.spec_token) == (a, b)
        assert d.baseline_margin == 0.0 and d.spec_margin == pytest.approx(nudge, rel=1e-3)
        assert d.near_tie and nudge < d.tolerance
    assert [d.position for d in check.divergences] == sorted({d.position for d in check.divergences})
    # the speculative output is the baseline's with B wherever A was chosen from a verify pass
    assert check.describe() == f"up to {len(check.divergences)} near-tie flips (largest margin {nudge:.4g})"
    record = spec_record(result)
    assert record["lossless"] is True and record["exact"] is False
    assert record["lossless_check"]["status"] == "near-tie flips"


def test_a_divergence_beyond_the_tolerance_is_not_lossless() -> None:
    lm, a, b, prompt = tied_lm(torch.bfloat16)
    result = compare(lm, OracleProposer(lm, 1.0, seed=0), prompt_ids=prompt, eos_token_ids=[EOS],
                     max_new_tokens=MAX_NEW, min_new_tokens=MAX_NEW, gamma=4, state_factory=lambda m: NudgedState(m, b, 4.0))
    check = result.check
    assert check.status == "NOT lossless" and result.lossless is False
    assert len(check.divergences) == 1  # the comparison stops at the first real difference
    (d,) = check.divergences
    assert d.spec_margin > d.tolerance and not d.near_tie
    assert d.spec_token == b and d.baseline_token != b
    assert check.describe().startswith(
        f"NOT lossless (position {d.position}: target alone {d.baseline_token}, speculative {b}; margins ")
    verdict, failed = run_verdict([spec_record(result)])
    assert failed == 1 and verdict == "NOT lossless on 1 of 1 samples"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_real_16bit_runs_are_exact_or_near_tie_flips(dtype: torch.dtype) -> None:
    """Tiny LLaMAs in 16-bit on CPU, a near-copy draft: whatever flips, nothing beyond a near tie."""
    from evspec.spec.proposers import DraftModelProposer
    from evspec.spec.vocab import identity_map

    target = tiny_lm(11, VOCAB, layers=3, hidden=48, dtype=dtype)
    near = noisy_copy(target, VOCAB, 0.05, seed=1)
    near = LanguageModel(near.body.to(dtype), near.embed_tokens.to(dtype), near.lm_head.to(dtype), near.context_length)
    bridge = identity_map(VOCAB, VOCAB, draft_eos=[EOS], target_eos=[EOS])
    statuses = []
    for seed in range(4):
        result = compare(target, DraftModelProposer(near, bridge), prompt_ids=prompt_for(seed),
                         eos_token_ids=[EOS], max_new_tokens=MAX_NEW, gamma=3)
        assert result.check is not None and result.check.status in ("exact", "near-tie flips"), result.check.describe()
        statuses.append(result.check.status)
    assert statuses  # every sample was checked


def test_classify_needs_swapped_top_two_and_small_margins() -> None:
    top = [TopTwo(0.5, 7, 9, 4.0), TopTwo(0.001, 3, 5, 4.0)]
    swapped = [TopTwo(0.5, 7, 9, 4.0), TopTwo(0.01, 5, 3, 4.0)]
    tol = near_tie_tolerance(torch.bfloat16, 4.0)
    assert tol == pytest.approx(8 * 2**-7 * 4)  # 8 ulps of bfloat16 at |logit| 4
    d = classify(1, [7, 3], top, [7, 5], swapped, torch.bfloat16)
    assert d.near_tie and d.tolerance == tol
    third = [TopTwo(0.5, 7, 9, 4.0), TopTwo(0.01, 6, 3, 4.0)]  # chose a token that was not the runner-up
    assert not classify(1, [7, 3], top, [7, 6], third, torch.bfloat16).near_tie
    wide = [TopTwo(0.5, 7, 9, 4.0), TopTwo(1.0, 5, 3, 4.0)]  # runner-up, but by a clear margin
    assert not classify(1, [7, 3], top, [7, 5], wide, torch.bfloat16).near_tie
    # an exact tie (margin 0) may put a third tied token in the runner-up slot: still a near tie
    tied = [TopTwo(0.5, 7, 9, 4.0), TopTwo(0.0, 3, 4, 4.0)]
    assert classify(1, [7, 3], tied, [7, 5], swapped, torch.bfloat16).near_tie
    # one output stopped where the other went on: no flip explains a length difference
    short = classify(2, [7, 3], top, [7, 3, 2], swapped + [TopTwo(1.0, 2, 4, 4.0)], torch.bfloat16)
    assert not short.near_tie and short.baseline_margin is None
    # float32's tolerance is far smaller: the same near tie in float32 would have to be tighter
    assert near_tie_tolerance(torch.float32, 4.0) < 1e-4 < tol


def test_check_reruns_after_each_flip_and_counts_them() -> None:
    base_ids, spec_ids = [1, 2, 3, 4], [1, 9, 3, 8]
    t = TopTwo
    base = [t(1, 1, 0, 2), t(0.0, 2, 9, 2), t(1, 3, 0, 2), t(0.0, 4, 8, 2)]
    spec = [t(1, 1, 0, 2), t(0.001, 9, 2, 2), t(1, 3, 0, 2), t(0.002, 8, 4, 2)]
    calls = []

    def rerun(prefix):
        calls.append(list(prefix))
        return prefix + base_ids[len(prefix):], spec[: len(prefix)] + base[len(prefix):]

    check = check_lossless(base_ids, base, spec_ids, spec, torch.bfloat16, rerun)
    assert calls == [[1, 9], [1, 9, 3, 8]]
    assert [d.position for d in check.divergences] == [1, 3] and check.status == "near-tie flips"
    assert check.describe() == "up to 2 near-tie flips (largest margin 0.002)"
    assert LosslessCheck().describe() == "exact"


def test_run_verdict_over_records() -> None:
    flip = {"baseline_margin": 0.0, "spec_margin": 0.004}
    exact = {"lossless": True, "exact": True, "lossless_check": {"divergences": []}}
    flipped = {"lossless": True, "exact": False, "lossless_check": {"divergences": [flip, flip]}}
    assert run_verdict([exact, exact]) == ("exact", 0)
    assert run_verdict([exact, flipped]) == ("up to 2 near-tie flips (largest margin 0.004)", 0)
    assert run_verdict([{"lossless": None}]) == (None, 0)
    assert math.isclose(Divergence(0, 1, 2, 0.0, 0.5, 1.0, True).spec_margin, 0.5)


@pytest.mark.parametrize(("verdict", "lossless", "code", "line"), [
    ("NOT lossless on 1 of 2 samples", False, 1, "error: NOT lossless on 1 of 2 samples"),
    ("up to 3 near-tie flips (largest margin 0.01)", True, 0, "note: lossless up to 3 near-tie flips"),
])
def test_spec_command_fails_only_beyond_a_near_tie(tmp_path, monkeypatch, capsys, verdict, lossless, code, line) -> None:
    from evspec.cli import main
    from evspec.spec import run as spec_run

    summary = {
        "counts": {"acceptance_rate": 0.5, "mean_acceptance_length": 2.0}, "synthetic": False, "speedup_median": 1.2,
        "lossless": lossless, "n_lossless": 2 if lossless else 1, "n_exact": 1, "n_samples": 2,
        "lossless_verdict": verdict, "identity": {"dtype": "bfloat16"},
    }
    monkeypatch.setattr(spec_run, "run_spec", lambda config, out, **kw: spec_run.SpecRunResult(
        Path(out), [], summary, Path(out) / "report.md"))
    assert main(["spec", "--out", str(tmp_path / "run")]) == code
    captured = capsys.readouterr()
    assert f"lossless {verdict} (1/2 exact)" in captured.out
    assert line in " ".join(captured.err.split())
