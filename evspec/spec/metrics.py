"""Speculative-decoding metrics with vLLM's definitions (vLLM's spec-decode metrics).

- a *draft* is one round in which the proposer offered at least one token;
- acceptance rate = accepted tokens / drafted tokens;
- mean acceptance length = 1 + accepted tokens / drafts (counts the target's own token per round);
- per-position acceptance rate[k] = drafts whose token at position k was accepted / drafts.

Rates over several samples are ratios of summed counts (vLLM's way), not means of per-sample
rates. :func:`position_match` is something else on purpose: the fraction of positions where two
*independent* generations agree (what the seeds reported as "acceptance"). It is labelled as such
everywhere, because a draft that is not conditioned on the target's accepted prefix is not being
accepted or rejected by anything.
"""

from __future__ import annotations

import statistics
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


@dataclass
class SpecCounts:
    """Token accounting of one speculative generation (or a sum over several)."""

    drafts: int = 0
    drafted_tokens: int = 0
    accepted_tokens: int = 0
    accepted_per_position: list[int] = field(default_factory=list)
    target_passes: int = 0
    emitted_tokens: int = 0

    def record_round(self, n_drafted: int, n_accepted: int) -> None:
        """One round's drafts; the target pass is counted by :meth:`record_pass`."""
        if n_drafted == 0:
            return
        self.drafts += 1
        self.drafted_tokens += n_drafted
        self.accepted_tokens += n_accepted
        if len(self.accepted_per_position) < n_accepted:
            self.accepted_per_position.extend([0] * (n_accepted - len(self.accepted_per_position)))
        for k in range(n_accepted):
            self.accepted_per_position[k] += 1

    def record_pass(self) -> None:
        self.target_passes += 1

    @property
    def acceptance_rate(self) -> float | None:
        return self.accepted_tokens / self.drafted_tokens if self.drafted_tokens else None

    @property
    def mean_acceptance_length(self) -> float | None:
        return 1.0 + self.accepted_tokens / self.drafts if self.drafts else None

    @property
    def per_position_acceptance_rate(self) -> list[float]:
        return [a / self.drafts for a in self.accepted_per_position] if self.drafts else []

    @property
    def tokens_per_target_pass(self) -> float | None:
        return self.emitted_tokens / self.target_passes if self.target_passes else None

    def __add__(self, other: SpecCounts) -> SpecCounts:
        n = max(len(self.accepted_per_position), len(other.accepted_per_position))
        pad = lambda xs: list(xs) + [0] * (n - len(xs))
        return SpecCounts(
            drafts=self.drafts + other.drafts,
            drafted_tokens=self.drafted_tokens + other.drafted_tokens,
            accepted_tokens=self.accepted_tokens + other.accepted_tokens,
            accepted_per_position=[a + b for a, b in zip(pad(self.accepted_per_position), pad(other.accepted_per_position))],
            target_passes=self.target_passes + other.target_passes,
            emitted_tokens=self.emitted_tokens + other.emitted_tokens,
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "acceptance_rate": self.acceptance_rate,
            "mean_acceptance_length": self.mean_acceptance_length,
            "per_position_acceptance_rate": self.per_position_acceptance_rate,
            "tokens_per_target_pass": self.tokens_per_target_pass,
        }


@dataclass
class SpecTimings:
    """Seconds spent in each part of one speculative generation (host clock, device synced).

    ``target_prefill_s`` covers what the target does before its first token (encode and splice
    when not done by the caller, then the prompt pass); ``draft_prefill_s`` the draft's own
    load/preprocess/encode/splice/prefill plus its first proposal; ``prefill_wall_s`` the wall
    time of both together (equal to their sum when they run one after the other);
    ``draft_s``/``verify_s`` the proposal calls and the target passes (with the acceptance test)
    of the decode loop; ``total_s`` everything, bookkeeping included.
    """

    target_prefill_s: float = 0.0
    draft_prefill_s: float = 0.0
    prefill_wall_s: float = 0.0
    draft_s: float = 0.0
    verify_s: float = 0.0
    total_s: float = 0.0

    @property
    def prefill_overlap(self) -> float | None:
        """Concurrency of the prefill phase: (draft + target - wall) / draft, the share of the draft
        side's time that ran while the target's prefill ran; 0 = none. On one GPU the two sides
        slow each other down, so this overstates the wall time saved: for that, compare the walls
        of a sequential and a parallel run (``benchmarks/gpu_spec.py`` part 3)."""
        if self.draft_prefill_s <= 0:
            return None
        return (self.draft_prefill_s + self.target_prefill_s - self.prefill_wall_s) / self.draft_prefill_s

    @property
    def decode_s(self) -> float:
        return max(self.total_s - self.prefill_wall_s, 0.0)

    @property
    def other_s(self) -> float:
        """Bookkeeping not in any timed part (bridging, EOS checks, list handling)."""
        return max(self.total_s - self.prefill_wall_s - self.draft_s - self.verify_s, 0.0)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "prefill_overlap": self.prefill_overlap, "decode_s": self.decode_s, "other_s": self.other_s}


def position_match(a: Sequence[int], b: Sequence[int]) -> float | None:
    """Fraction of positions i < len(b) with a[i] == b[i] (``b`` = the target's tokens).

    NOT an acceptance rate: the two sequences were generated independently (module docstring).
    """
    if not b:
        return None
    return sum(1 for x, y in zip(a, b) if x == y) / len(b)


def expected_tokens_per_pass(alpha: float, gamma: int) -> float:
    """(1 - a^(g+1)) / (1 - a): tokens per target pass with i.i.d. acceptance ``alpha``."""
    if alpha >= 1.0:
        return float(gamma + 1)
    return (1.0 - alpha ** (gamma + 1)) / (1.0 - alpha)


def expected_speedup(alpha: float, gamma: int, c: float) -> float:
    """Leviathan et al.'s wall-time speedup: tokens per pass / (gamma * c + 1), c = draft step / target pass."""
    return expected_tokens_per_pass(alpha, gamma) / (gamma * c + 1.0)


def _median(values: Iterable[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return statistics.median(kept) if kept else None


def _pooled_counts(records: Iterable[dict[str, Any]]) -> SpecCounts:
    counts = SpecCounts()
    for r in records:
        c = r["counts"]
        counts = counts + SpecCounts(
            drafts=c["drafts"], drafted_tokens=c["drafted_tokens"], accepted_tokens=c["accepted_tokens"],
            accepted_per_position=list(c["accepted_per_position"]), target_passes=c["target_passes"],
            emitted_tokens=c["emitted_tokens"],
        )
    return counts


BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_LEVEL = 0.95


def bootstrap_draws(n_samples: int, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> np.ndarray:
    """[resamples, n_samples] sample indices drawn with replacement, for a percentile bootstrap over
    samples: how much a run's figure would move on other clips like these. Whole samples are drawn,
    so a long answer weighs in a draw as it weighed in the run."""
    return np.random.default_rng(seed).integers(0, n_samples, size=(resamples, n_samples))


def pooled_over_draws(records: Sequence[dict[str, Any]], draws: np.ndarray) -> dict[str, np.ndarray]:
    """Each draw's acceptance rate and mean acceptance length, pooled as :func:`summarize` pools a
    run (ratios of summed counts); NaN where a draw holds no draft."""
    def total(key: str) -> np.ndarray:
        return np.array([r["counts"][key] for r in records], dtype=np.float64)[draws].sum(axis=1)

    accepted, drafted, drafts = total("accepted_tokens"), total("drafted_tokens"), total("drafts")
    with np.errstate(divide="ignore", invalid="ignore"):
        return {"acceptance_rate": np.where(drafted > 0, accepted / drafted, np.nan),
                "mean_acceptance_length": np.where(drafts > 0, 1.0 + accepted / drafts, np.nan)}


def percentile_interval(values: np.ndarray, level: float = BOOTSTRAP_LEVEL) -> list[float] | None:
    """The central ``level`` interval of bootstrap values (NaN ignored); None if all are NaN."""
    kept = values[~np.isnan(values)]
    if kept.size == 0:
        return None
    low, high = np.quantile(kept, [(1 - level) / 2, (1 + level) / 2])
    return [float(low), float(high)]


def summary_intervals(records: Sequence[dict[str, Any]], resamples: int = BOOTSTRAP_RESAMPLES,
                      seed: int = 0) -> dict[str, Any] | None:
    """95% bootstrap intervals over samples of the pooled acceptance rate, mean acceptance length
    and median speedup (None without samples). Seeded: the same records give the same intervals."""
    if not records:
        return None
    draws = bootstrap_draws(len(records), resamples, seed)
    pooled = pooled_over_draws(records, draws)
    speedups = np.array([np.nan if r.get("speedup") is None else r["speedup"] for r in records], dtype=np.float64)
    with warnings.catch_warnings():  # a draw of samples without a speedup has no median: NaN, dropped
        warnings.simplefilter("ignore", RuntimeWarning)
        speedup_medians = np.nanmedian(speedups[draws], axis=1)
    return {"level": BOOTSTRAP_LEVEL, "resamples": resamples, "seed": seed,
            "acceptance_rate": percentile_interval(pooled["acceptance_rate"]),
            "mean_acceptance_length": percentile_interval(pooled["mean_acceptance_length"]),
            "speedup_median": percentile_interval(speedup_medians)}


def rejection_tally(records: Iterable[dict[str, Any]], top: int = 15) -> list[tuple[str, int]]:
    """The target's tokens that replaced a rejected draft, most frequent first: where drafts fail."""
    tally: dict[str, int] = {}
    for r in records:
        for text in r["spec"].get("rejected_tokens", ()):
            tally[text] = tally.get(text, 0) + 1
    return sorted(tally.items(), key=lambda kv: (-kv[1], kv[0]))[:top]


def summarize(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Summary over per-sample records (``evspec spec``'s records.jsonl rows without errors)."""
    from evspec.spec.lossless import run_verdict

    ok = [r for r in records if not r.get("error")]
    counts = _pooled_counts(ok)
    by_type = {}
    for qtype in sorted({r["question_type"] for r in ok if r.get("question_type")}):
        rows = [r for r in ok if r.get("question_type") == qtype]
        pooled = _pooled_counts(rows)
        by_type[qtype] = {"n_samples": len(rows), "acceptance_rate": pooled.acceptance_rate,
                          "mean_acceptance_length": pooled.mean_acceptance_length,
                          "speedup_median": _median(r["speedup"] for r in rows)}
    spec_total = sum(r["spec"]["timings"]["total_s"] for r in ok)
    base_total = sum(r["baseline"]["wall_s"] for r in ok)
    greedy = [r for r in ok if r.get("lossless") is not None]
    return {
        "n_samples": len(ok),
        "n_errors": len(records) - len(ok),
        "counts": counts.as_dict(),
        "by_question_type": by_type,
        "rejected_tokens_top": rejection_tally(ok),
        "rejections": sum(len(r["spec"].get("rejected_tokens", ())) for r in ok),
        "lossless": all(r["lossless"] for r in greedy) if greedy else None,
        "n_lossless": sum(1 for r in greedy if r["lossless"]),
        "n_exact": sum(1 for r in greedy if r.get("exact", r["lossless"])),
        "lossless_verdict": run_verdict(ok)[0],
        "speedup_median": _median(r["speedup"] for r in ok),
        "intervals": summary_intervals(ok),
        "speedup_pooled": base_total / spec_total if spec_total > 0 else None,
        "decode_speedup_median": _median(r.get("decode_speedup") for r in ok),
        "speedup_vs_generate_median": _median(r.get("speedup_vs_generate") for r in ok),
        "prefill_overlap_median": _median(r["spec"]["timings"].get("prefill_overlap") for r in ok),
        "time_split_s": {
            key: sum(r["spec"]["timings"][key] for r in ok)
            for key in ("target_prefill_s", "draft_prefill_s", "prefill_wall_s", "draft_s", "verify_s", "other_s", "total_s")
        },
        "independent_position_match_NOT_acceptance": _median(r.get("independent_position_match") for r in ok),
    }
