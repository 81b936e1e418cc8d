"""Count what evspec does with hostile and damaged input (issue 15).

Builds the corpus of ``tests/hostile/corpus.py`` in a temporary folder (damaged and hostile
.npy/.npz/.h5/.png/.mp4 files through ``data inspect``, ``data render`` and ``data check``;
dataset JSON of wrong shapes and paths leaving the root; checkpoints that ask for custom code,
hold pickles or are damaged, through ``verify``; options that cannot work through every command),
runs each case through the CLI entry point in-process (``evspec.cli.main``), and prints:

    N hostile inputs tried: N clear errors, 0 tracebacks, 0 silent results, 0 code executions

Run from the repository root (CPU only; ~1 minute, most of it building the tiny checkpoints):

    python benchmarks/hostile_inputs.py [--verbose] [--no-models]

Exit code 0 only when every case ended in a clear error.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, for tests.hostile
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--verbose", action="store_true", help="One line per case with its verdict and output.")
    parser.add_argument("--no-models", action="store_true", help="Leave out the checkpoint cases (no tiny models built).")
    args = parser.parse_args()

    from tests.hostile.corpus import build_corpus, run_corpus, summary_line, tally

    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="evspec-hostile-") as tmp:
        os.environ.setdefault("EVSPEC_CACHE", str(Path(tmp) / "cache"))  # tiny checkpoints built afresh

        def show(outcome) -> None:
            if args.verbose or outcome.verdict != "clear error":
                detail = outcome.raised or (outcome.output.strip().splitlines() or [""])[-1]
                print(f"[{outcome.verdict}] {outcome.case.name}: {detail[:300]}", file=sys.stderr)

        corpus = build_corpus(Path(tmp) / "corpus", with_models=not args.no_models)
        outcomes = run_corpus(corpus, show)
    kinds = ", ".join(f"{kind} {sum(o.case.kind == kind for o in outcomes)}"
                      for kind in sorted({o.case.kind for o in outcomes}))
    print(f"cases by class: {kinds}; {time.perf_counter() - start:.0f} s")
    print(summary_line(outcomes))
    return 0 if tally(outcomes)["clear error"] == len(outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
