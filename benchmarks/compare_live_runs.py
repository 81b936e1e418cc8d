"""Two drafters' live acceptance on the same clips, with how sure the difference is.

Reads the ``records.jsonl`` of ``evspec spec`` runs (one per drafter, the same target, dataset and
gamma), keeps the samples every run finished, and prints each run's acceptance rate and mean
acceptance length pooled over those samples (as the spec report computes them), then for each run
after the first its mean acceptance length relative to the first's, with a percentile bootstrap
interval over samples (resampling whole samples, so a long answer weighs as it did in the run).

    python benchmarks/compare_live_runs.py runs/spec-B1 runs/spec-EC
    python benchmarks/compare_live_runs.py runs/spec-B1 runs/spec-EC --resamples 10000 --seed 0

Every figure printed is LIVE (measured by the runs); nothing is simulated. Deterministic for a seed.
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Mapping, Sequence
from pathlib import Path

Counts = Mapping[str, Mapping[str, int]]  # sample id -> its counts (drafts, drafted and accepted tokens)


def read_counts(run: Path) -> Counts:
    path = run / "records.jsonl"
    if not path.is_file():
        raise SystemExit(f"error: {path} does not exist (an evspec spec --out folder?)")
    counts = {}
    with path.open() as lines:
        for number, line in enumerate(lines, 1):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                raise SystemExit(f"error: {path}:{number} is not a JSON line") from None
            if not record.get("error") and record.get("counts"):
                counts[record["id"]] = record["counts"]
    return counts


def pooled(counts: Counts, ids: Sequence[str]) -> tuple[float, float]:
    """(acceptance rate, mean acceptance length) over ``ids``, as the spec summary pools them."""
    accepted = sum(counts[i]["accepted_tokens"] for i in ids)
    drafted = sum(counts[i]["drafted_tokens"] for i in ids)
    drafts = sum(counts[i]["drafts"] for i in ids)
    return accepted / max(drafted, 1), 1 + accepted / max(drafts, 1)


def bootstrap_ratio(base: Counts, other: Counts, ids: Sequence[str], resamples: int, seed: int) -> list[float]:
    """Sorted ``other``/``base`` mean-length ratios over samples drawn with replacement."""
    rng = random.Random(seed)
    ratios = []
    for _ in range(resamples):
        draw = [rng.choice(ids) for _ in ids]
        ratios.append(pooled(other, draw)[1] / pooled(base, draw)[1])
    return sorted(ratios)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="evspec spec --out folders; the first is the baseline")
    parser.add_argument("--resamples", type=int, default=10000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--goal", type=float, default=0.10, help="relative gain to report the bootstrap's odds against")
    args = parser.parse_args()
    if len(args.runs) < 2 or args.resamples < 1:
        raise SystemExit("error: give at least two runs, and --resamples >= 1")
    counts = [read_counts(run) for run in args.runs]
    ids = sorted(set.intersection(*(set(c) for c in counts)))
    if not ids:
        raise SystemExit("error: the runs share no finished sample")
    print(f"LIVE, pooled over the {len(ids)} samples every run finished; bootstrap: {args.resamples} resamples "
          f"of samples, seed {args.seed}")
    base_length = pooled(counts[0], ids)[1]
    for run, run_counts in zip(args.runs, counts):
        rate, length = pooled(run_counts, ids)
        line = f"{run}: acceptance rate {rate:.3f}, mean acceptance length {length:.3f}"
        if run_counts is not counts[0]:
            ratios = bootstrap_ratio(counts[0], run_counts, ids, args.resamples, args.seed)
            low, high = ratios[int(0.025 * len(ratios))], ratios[min(int(0.975 * len(ratios)), len(ratios) - 1)]
            below = sum(r < 1 + args.goal for r in ratios) / len(ratios)
            line += (f"; against {args.runs[0]}: {100 * (length / base_length - 1):+.1f}% "
                     f"(95% interval {100 * (low - 1):+.1f}% to {100 * (high - 1):+.1f}%; "
                     f"share of resamples below {100 * args.goal:+.0f}%: {below:.2f})")
        print(line)


if __name__ == "__main__":
    main()
