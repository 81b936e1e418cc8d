"""Two drafters' live acceptance on the same clips, with how sure the difference is.

Reads the ``records.jsonl`` of ``evspec spec`` runs (one per drafter, the same target, dataset and
gamma), keeps the samples every run finished, and prints each run's acceptance rate and mean
acceptance length pooled over those samples (as the spec report computes them), then for each run
after the first its mean acceptance length relative to the first's, with a paired percentile
bootstrap interval over samples (the same draws of whole samples for every run, so a long answer
weighs as it did in the run; the draws and the pooling are ``evspec.spec.metrics``', as in the spec
report's own intervals).

    python benchmarks/compare_live_runs.py runs/spec-B1 runs/spec-EC
    python benchmarks/compare_live_runs.py runs/spec-B1 runs/spec-EC --resamples 10000 --seed 0

Every figure printed is LIVE (measured by the runs); nothing is simulated. Deterministic for a seed.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from evspec.errors import InputError
from evspec.run.rundir import RECORDS_NAME, json_object, read_lines
from evspec.spec.metrics import bootstrap_draws, percentile_interval, pooled_over_draws

Records = dict[str, dict[str, Any]]  # sample id -> its records.jsonl row


def read_records(run: Path) -> Records:
    """The finished samples of one ``evspec spec`` run, by id (its records.jsonl read as every run
    folder is: a torn last line skipped, a corrupt one refused)."""
    path = run / RECORDS_NAME
    if not path.is_file():
        raise SystemExit(f"error: {path} does not exist (an evspec spec --out folder?)")
    try:
        rows = read_lines(path, json_object)
    except InputError as error:
        raise SystemExit(f"error: {error}") from None
    return {row["id"]: row for row in rows if not row.get("error") and row.get("counts")}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="evspec spec --out folders; the first is the baseline")
    parser.add_argument("--resamples", type=int, default=10000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--goal", type=float, default=0.10, help="relative gain to report the bootstrap's odds against")
    args = parser.parse_args()
    if len(args.runs) < 2 or args.resamples < 1:
        raise SystemExit("error: give at least two runs, and --resamples >= 1")
    runs = [read_records(run) for run in args.runs]
    ids = sorted(set.intersection(*(set(records) for records in runs)))
    if not ids:
        raise SystemExit("error: the runs share no finished sample")
    # the same draws for every run: a paired bootstrap (each draw holds the same clips for all)
    draws = bootstrap_draws(len(ids), args.resamples, args.seed)
    everything = np.arange(len(ids))[None, :]
    print(f"LIVE, pooled over the {len(ids)} samples every run finished; paired bootstrap: {args.resamples} "
          f"resamples of samples, seed {args.seed}")
    base_draws = pooled_over_draws([runs[0][i] for i in ids], draws)["mean_acceptance_length"]
    base_length = pooled_over_draws([runs[0][i] for i in ids], everything)["mean_acceptance_length"][0]
    for run, records in zip(args.runs, runs):
        rows = [records[i] for i in ids]
        whole = pooled_over_draws(rows, everything)
        rate, length = whole["acceptance_rate"][0], whole["mean_acceptance_length"][0]
        line = f"{run}: acceptance rate {rate:.3f}, mean acceptance length {length:.3f}"
        if records is not runs[0]:
            ratios = pooled_over_draws(rows, draws)["mean_acceptance_length"] / base_draws
            low, high = percentile_interval(ratios) or [float("nan")] * 2
            below = float(np.mean(ratios[~np.isnan(ratios)] < 1 + args.goal))
            line += (f"; against {args.runs[0]}: {100 * (length / base_length - 1):+.1f}% "
                     f"(95% interval {100 * (low - 1):+.1f}% to {100 * (high - 1):+.1f}%; "
                     f"share of resamples below {100 * args.goal:+.0f}%: {below:.2f})")
        print(line)


if __name__ == "__main__":
    main()
