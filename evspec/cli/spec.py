"""`evspec spec`: speculative decoding against the target alone, sample by sample, lossless-checked.

With no --dataset it runs on the small synthetic set the bench builds into OUT/data.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape

from evspec.cli import err_console
from evspec.cli.common import EVENT_CANVAS_OPTION, dataset_args, default_out, progress_reporter
from evspec.models.registry import model_names_help


def _command_line(config: Any, out: Path, force: bool) -> str:
    args = ["evspec", "spec", "--target", config.target, "--draft", config.draft, *dataset_args(config)]
    args += ["--gamma", str(config.gamma), "--max-new-tokens", str(config.max_new_tokens),
             "--min-new-tokens", str(config.min_new_tokens), "--temperature", str(config.temperature),
             "--top-p", str(config.top_p), "--seed", str(config.seed), "--device", config.device,
             "--dtype", config.dtype, "--cache", config.cache, "--warmup", str(config.warmup),
             "--oracle-draft", config.oracle_draft, "--bridge", config.bridge, "--event-canvas", config.event_canvas,
             "--generation-config", config.generation_config, "--out", str(out)]
    if config.max_gamma is not None:
        args += ["--max-gamma", str(config.max_gamma)]
    if config.quantize is not None:
        args += ["--quantize", config.quantize]
    if config.draft_device is not None:
        args += ["--draft-device", config.draft_device]
    flags = [("--parallel-prefill", config.parallel_prefill), ("--adaptive-gamma", config.adaptive_gamma), ("--force", force)]
    return shlex.join(args + [flag for flag, on in flags if on])


def sample_line(record: dict[str, Any]) -> str:
    """One finished sample as a line of tab-separated ``key=value`` fields (what a pipe sees)."""
    head = f"sample={record['id']}"
    if record.get("error"):
        return f"{head}\terror={' '.join(str(record['error']).split())}"
    counts = record.get("counts") or {}

    def shown(value: Any, digits: int) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    return "\t".join([head, f"speedup={shown(record.get('speedup'), 3)}",
                       f"acceptance_rate={shown(counts.get('acceptance_rate'), 3)}",
                       f"new_tokens={len(record['spec']['token_ids'])}", f"lossless={record.get('lossless')}"])


def spec(
    target: str = typer.Option("demo-videollava", "--target", "-t", help=f"Target model. Names: {model_names_help()}."),
    draft: str = typer.Option(
        "demo-eventgpt", "--draft",
        help="Draft: a model name (its own modality input), 'ngram' (prompt lookup) or 'oracle:ALPHA' (synthetic).",
    ),
    dataset: Path | None = typer.Option(None, "--dataset", "-d", help="Dataset folder or JSON. Default: a synthetic set in OUT/data."),
    split: str | None = typer.Option(None, "--split", help="Only rows of this split."),
    allow_outside_root: bool = typer.Option(
        False, "--allow-outside-root", help="Let dataset rows name files outside the dataset folder."
    ),
    max_samples: int | None = typer.Option(None, "--max-samples", "-n", help="First N samples only."),
    gamma: int = typer.Option(4, "--gamma", "-g", help="Drafted tokens per round (the start value with --adaptive-gamma)."),
    max_gamma: int | None = typer.Option(None, "--max-gamma", help="Upper bound of adaptive gamma (default 2 x gamma)."),
    adaptive_gamma: bool = typer.Option(False, "--adaptive-gamma", help="+1 after all accepted, -1 after an early rejection."),
    max_new_tokens: int = typer.Option(32, "--max-new-tokens", help="Most tokens generated per sample."),
    min_new_tokens: int = typer.Option(0, "--min-new-tokens", help="EOS is masked below this length."),
    temperature: float = typer.Option(0.0, "--temperature", help="0 = greedy (lossless is then checked token by token)."),
    top_p: float = typer.Option(1.0, "--top-p", help="Nucleus mass with temperature > 0."),
    seed: int = typer.Option(0, "--seed", help="Seed of sampling and of the oracle's draws."),
    parallel_prefill: bool = typer.Option(False, "--parallel-prefill", help="Draft prefills while the target prefills."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N."),
    draft_device: str | None = typer.Option(None, "--draft-device", help="The draft's device (e.g. cuda:1). Default: --device."),
    dtype: str = typer.Option("auto", "--dtype", help="auto (bf16 on CUDA, fp32 on CPU), float32, bfloat16, float16."),
    cache: str = typer.Option("eager", "--cache", help="KV cache of both models: eager, static, compiled."),
    quantize: str | None = typer.Option(None, "--quantize", help="4bit or 8bit target and draft (bitsandbytes; CUDA only)."),
    warmup: int = typer.Option(1, "--warmup", help="Samples run first and discarded."),
    oracle_draft: str = typer.Option(
        "auto", "--oracle-draft",
        help="The model whose passes give oracle:ALPHA its real cost; auto: random-0.2b-eventgpt for a random-7b-* target, else tiny-eventgpt."),
    bridge: str = typer.Option("auto", "--bridge", help="Vocabulary bridge: auto, same (token ids), cross (text re-encoding)."),
    event_canvas: str = EVENT_CANVAS_OPTION,
    generation_config: str = typer.Option(
        "evspec", "--generation-config",
        help="evspec (--temperature/--top-p) or checkpoint (sample as the target's generation_config.json says).",
    ),
    out: Path | None = typer.Option(None, "--out", "-o", help="Run folder. Default: runs/spec-<timestamp>."),
    force: bool = typer.Option(False, "--force", help="Discard results of another config in --out."),
) -> None:
    """Speculative decoding vs the target alone on each sample: records, summary, report with plots.

    Writes OUT/records.jsonl (both outputs, metrics, lossless flag), OUT/summary.json and
    OUT/report.md. Rerunning with the same --out resumes.
    """
    from rich.console import Console

    from evspec.spec.run import SpecRunConfig, run_spec

    config = SpecRunConfig(
        target=target, draft=draft, dataset=str(dataset) if dataset is not None else None, split=split,
        allow_outside_root=allow_outside_root,
        max_samples=max_samples, gamma=gamma, max_gamma=max_gamma, adaptive_gamma=adaptive_gamma,
        max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens, temperature=temperature, top_p=top_p,
        seed=seed, parallel_prefill=parallel_prefill, device=device, draft_device=draft_device, dtype=dtype,
        cache=cache, quantize=quantize, warmup=warmup, oracle_draft=oracle_draft, bridge=bridge,
        event_canvas=event_canvas, generation_config=generation_config,
    )
    out = out if out is not None else default_out("spec")
    with progress_reporter(sample_line) as reporter:
        result = run_spec(config, out, force=force, progress=reporter, command=_command_line(config, out, force))
    s, c = result.summary, result.summary["counts"]
    console = Console(highlight=False, soft_wrap=True)
    tag = " [synthetic]" if s["synthetic"] else ""
    rate = "-" if c["acceptance_rate"] is None else f"{c['acceptance_rate']:.3f}"
    length = "-" if c["mean_acceptance_length"] is None else f"{c['mean_acceptance_length']:.2f}"
    speedup = "-" if s["speedup_median"] is None else f"{s['speedup_median']:.2f}x"
    lossless = "-" if s["lossless"] is None else f"{s.get('lossless_verdict')} ({s['n_exact']}/{s['n_samples']} exact)"
    console.print(f"{config.target} <- {config.draft}{tag}: acceptance rate {rate}, mean acceptance length {length}, "
                  f"median speedup {speedup}, lossless {lossless}", markup=False)
    loads = {k: v for k, v in (s.get("model_load_s") or {}).items() if v is not None}
    if loads:
        console.print("model load: " + ", ".join(f"{k} {v:.2f} s" for k, v in loads.items()), markup=False)
    console.print(f"wrote {out}/records.jsonl, {out}/summary.json and {result.report_path}", markup=False)
    for warning in s.get("timing_warnings") or []:
        err_console.print(f"[yellow]warning:[/] {escape(warning)}")
    if s["n_samples"] == 0:
        err_console.print(f"[red]error:[/] no sample succeeded (errors in {escape(str(out))}/records.jsonl)")
        raise typer.Exit(1)
    if s["lossless"] is False:
        # Each divergence was classified by the target's top-2 margin in both paths (evspec.spec.lossless):
        # near-tie flips are reported; a divergence above the dtype's tolerance fails the run.
        err_console.print(f"[red]error:[/] {escape(str(s.get('lossless_verdict')))}: speculative output differs "
                          f"from the target alone beyond a near tie; see lossless_check in {out}/records.jsonl")
        raise typer.Exit(1)
    if s.get("lossless_verdict") not in (None, "exact"):
        err_console.print(f"[yellow]note:[/] lossless {escape(str(s['lossless_verdict']))}: in 16-bit the verify pass "
                          f"and one-token steps round differently; see lossless_check in {out}/records.jsonl")


def register(app: typer.Typer) -> None:
    """Add the ``spec`` command to the evspec app."""
    app.command("spec")(spec)
