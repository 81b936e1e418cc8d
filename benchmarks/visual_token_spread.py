"""How much a model's visual tokens change from clip to clip: does its input reach its language model?

For each model, the first N samples go through the model's own ``load`` -> ``preprocess`` ->
``encode_batch`` (the tokens its language model reads in place of the placeholders). Printed per
model: the tokens' root mean square, and their standard deviation across samples (per token
position and channel, then averaged), and the ratio of the two. A ratio near 0 means every clip
gives the language model the same visual tokens: its answers cannot depend on what the clip shows
(the demo EventGPT shipped before 580df10: 0.00005; the one after: 0.64).

    python benchmarks/visual_token_spread.py --models demo-eventgpt,eventgpt:OLD --dataset data/heldout -n 32
"""

from __future__ import annotations

import argparse
import json
import platform
import warnings

import torch
import transformers

from evspec.data.dataset import load_dataset
from evspec.models.registry import load_model


def spread(model_name: str, samples: list, event_canvas: str | None) -> dict[str, float]:
    model = load_model(model_name, device="cpu", dtype="float32", event_canvas=event_canvas)
    prepared = [model.preprocess(model.load(s), s.query) for s in samples]
    with torch.no_grad():
        tokens = torch.stack([f.embeds for f in model.encode_batch(prepared)]).float()  # [N, T, D]
    rms = float(tokens.pow(2).mean().sqrt())
    across = float(tokens.std(dim=0).mean())
    return {"rms": rms, "std_across_samples": across, "ratio": across / rms if rms else 0.0, "tokens": list(tokens.shape[1:])}


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", required=True, help="comma-separated model names (registry names or FAMILY:PATH)")
    parser.add_argument("--dataset", required=True)
    parser.add_argument("-n", "--samples", type=int, default=32)
    parser.add_argument("--event-canvas", default=None, help="EventGPT: upstream or sensor (default: the checkpoint's)")
    args = parser.parse_args(argv)
    samples = load_dataset(args.dataset)[: args.samples]
    if len(samples) < 2:
        parser.error(f"--dataset {args.dataset}: needs at least 2 samples for a spread")
    print(f"# {len(samples)} samples of {args.dataset}; CPU float32; torch {torch.__version__}, "
          f"transformers {transformers.__version__}, {platform.processor() or platform.machine()}")
    results = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the synthetic clips' 1 s event windows (upstream refuses >= 100 ms)
        for name in args.models.split(","):
            results[name] = spread(name, samples, args.event_canvas)
            r = results[name]
            print(f"{name}: visual tokens {r['tokens']}, rms {r['rms']:.4g}, std across samples "
                  f"{r['std_across_samples']:.4g}, ratio {r['ratio']:.4g}")
    print(json.dumps(results))
    return results


if __name__ == "__main__":
    main()
