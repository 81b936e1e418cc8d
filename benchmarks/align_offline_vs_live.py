"""Offline against live acceptance on the SAME clips: each trained head's simulated acceptance (chains
from every position, and the replay of the live loop's rounds) on a store extracted from the clips
a live ``evspec spec`` run used, next to that run's live acceptance.

    evspec align extract --target demo-videollava --draft demo-eventgpt --dataset data/heldout \\
        --max-samples 40 --max-new-tokens 48 --out stores/heldout40 --device cpu
    python benchmarks/align_offline_vs_live.py --store stores/heldout40 \\
        --pair B1=runs/align1200-B1,runs/spec1200-B1 --pair EC=runs/align1200-EC,runs/spec1200-EC

Every figure printed is labelled: SIMULATED (offline) or LIVE. CPU, float32; deterministic.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch

from evspec.align.heads import collate_rows, load_head
from evspec.align.proposer import read_adapter_run
from evspec.align.simulate import simulate
from evspec.align.store import AlignStore
from evspec.align.train import batch_on
from evspec.models.registry import load_model


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", required=True, help="a store extracted from the clips the live runs used")
    parser.add_argument("--pair", action="append", required=True, help="NAME=ALIGN_RUN,SPEC_RUN (repeat)")
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args(argv)
    store = AlignStore(args.store)
    target = load_model(str(store.identity["target"]), device="cpu", dtype="float32")
    rows = store.rows(list(range(len(store))))
    print(f"store {args.store}: {len(rows)} rows of {store.identity['dataset']}; torch {torch.__version__}, "
          f"{platform.processor() or 'cpu'}, float32")
    results: dict[str, dict[str, float]] = {}
    for pair in args.pair:
        name, _, paths = pair.partition("=")
        align_run, spec_run = paths.split(",")
        run = read_adapter_run(align_run)
        summary = json.loads((Path(spec_run) / "summary.json").read_text())
        gamma, live = int(summary["config"]["gamma"]), summary["counts"]
        head = load_head(run.head_folder, target.language_model.embed_tokens, target.language_model.lm_head)
        draft_lm_head = None
        if "draft_logits" in head.reads:
            draft_lm_head = load_model(str(run.draft_model), device="cpu", dtype="float32").language_model.lm_head
        batches = [batch_on(collate_rows(rows[i : i + args.batch_size], head, draft_lm_head=draft_lm_head), torch.device("cpu"))
                   for i in range(0, len(rows), args.batch_size)]
        simulated = simulate(head, batches, max_gamma=max(gamma, 1))
        results[name] = {
            "gamma": gamma,
            "simulated_rate": simulated.acceptance_rate(gamma), "simulated_length": simulated.mean_acceptance_length(gamma),
            "replay_rate": simulated.replay_acceptance_rate(gamma), "replay_length": simulated.replay_mean_acceptance_length(gamma),
            "live_rate": live["acceptance_rate"], "live_length": live["mean_acceptance_length"]}
        r = results[name]
        print(f"{name}: gamma {gamma}; SIMULATED (offline) every position {r['simulated_rate']:.3f} / {r['simulated_length']:.2f}, "
              f"replay of live rounds {r['replay_rate']:.3f} / {r['replay_length']:.2f}; LIVE {r['live_rate']:.3f} / "
              f"{r['live_length']:.2f}; live - replay {r['live_rate'] - r['replay_rate']:+.3f}", flush=True)
    return results


if __name__ == "__main__":
    main()
