"""`evspec bench`: time every stage of every model on a dataset; records, summary, report.

With no arguments it benchmarks the three tiny models on a small synthetic dataset built on the
fly into the run folder: the project's smoke-sized main job.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape

from evspec.cli import err_console
from evspec.cli.common import EVENT_CANVAS_OPTION, dataset_args, default_out, progress_reporter
from evspec.cli.output import print_line, print_table
from evspec.models.registry import model_names_help


def _command_line(config: Any, out: Path, force: bool) -> str:
    """The full, explicit command that reproduces this run (recorded in the results)."""
    args = ["evspec", "bench", "--model", ",".join(config.models), *dataset_args(config)]
    args += [
        "--max-new-tokens", str(config.max_new_tokens), "--min-new-tokens", str(config.min_new_tokens),
        "--warmup", str(config.warmup), "--temperature", str(config.temperature), "--top-p", str(config.top_p),
        "--seed", str(config.seed), "--device", config.device, "--dtype", config.dtype, "--cache", config.cache,
        "--event-canvas", config.event_canvas, "--generation-config", config.generation_config, "--out", str(out),
    ]
    if config.quantize is not None:
        args += ["--quantize", config.quantize]
    return shlex.join(args + (["--force"] if force else []))


def sample_line(record: Any) -> str:
    """One finished sample as a line of tab-separated ``key=value`` fields (what a pipe sees)."""
    head = f"sample={record.id}\tmodel={record.model}"
    if record.error is not None:
        return f"{head}\terror={' '.join(record.error.split())}"
    ms = {"read_ms": record.read_s, "total_ms": record.total_s, "ttft_ms": record.ttft_s, "tpot_ms": record.tpot_s}
    fields = [f"{k}={'-' if v is None else f'{v * 1e3:.2f}'}" for k, v in ms.items()]
    return "\t".join([head, *fields, f"new_tokens={record.n_new_tokens}"])


def bench(
    model: str = typer.Option(
        "demo-eventgpt,demo-videollava,tiny-llava", "--model", "-m",
        help=f"Model name(s), comma-separated. Names: {model_names_help()}.",
    ),
    dataset: Path | None = typer.Option(
        None, "--dataset", "-d", help="Dataset folder (or its JSON). Default: a small synthetic set built into OUT/data.",
    ),
    split: str | None = typer.Option(None, "--split", help="Only rows of this split."),
    allow_outside_root: bool = typer.Option(
        False, "--allow-outside-root", help="Let dataset rows name files outside the dataset folder."
    ),
    max_samples: int | None = typer.Option(None, "--max-samples", "-n", help="First N samples only."),
    max_new_tokens: int = typer.Option(32, "--max-new-tokens", help="Most tokens generated per sample."),
    min_new_tokens: int = typer.Option(0, "--min-new-tokens", help="EOS is masked below this length (fixed-length timing)."),
    warmup: int = typer.Option(1, "--warmup", help="Samples run first per model and discarded."),
    temperature: float = typer.Option(0.0, "--temperature", help="0 = greedy."),
    top_p: float = typer.Option(1.0, "--top-p", help="Nucleus sampling mass (with temperature > 0)."),
    seed: int = typer.Option(0, "--seed", help="Sampling seed (the same for every sample, so resumes repeat)."),
    device: str = typer.Option("auto", "--device", help="auto (cuda if available), cpu, cuda, cuda:1 ..."),
    dtype: str = typer.Option("auto", "--dtype", help="auto (bf16 on CUDA, fp32 on CPU), float32, bfloat16, float16."),
    cache: str = typer.Option("eager", "--cache", help="KV cache: eager (transformers), static, compiled (CUDA graphs)."),
    quantize: str | None = typer.Option(None, "--quantize", help="4bit or 8bit weights (bitsandbytes; CUDA only)."),
    event_canvas: str = EVENT_CANVAS_OPTION,
    generation_config: str = typer.Option(
        "evspec", "--generation-config",
        help="evspec (--temperature/--top-p) or checkpoint (sample as the models' generation_config.json say; they must agree).",
    ),
    out: Path | None = typer.Option(None, "--out", "-o", help="Run folder. Default: runs/bench-<timestamp>."),
    force: bool = typer.Option(False, "--force", help="Discard results of another config in --out."),
    draft: str | None = typer.Option(
        None, "--draft", help="Decode speculatively with this draft: a model name (as --model), 'ngram' or 'oracle:ALPHA'.",
    ),
    gamma: int = typer.Option(4, "--gamma", help="With --draft: drafted tokens per round."),
    adaptive_gamma: bool = typer.Option(False, "--adaptive-gamma", help="With --draft: adapt gamma to acceptance."),
    parallel_prefill: bool = typer.Option(False, "--parallel-prefill", help="With --draft: draft prefills concurrently."),
    draft_device: str | None = typer.Option(None, "--draft-device", help="With --draft: the draft's device (default --device)."),
) -> None:
    """Benchmark each stage (load, preprocess, encode, prefill, decode) of each model.

    Writes OUT/records.jsonl (one line per sample and model), OUT/summary.json and OUT/report.md
    with plots. Rerunning with the same --out resumes: finished pairs are skipped.
    """
    from evspec.bench.report import summary_table
    from evspec.bench.runner import BenchConfig, run_bench

    config = BenchConfig(
        models=tuple(m.strip() for m in model.split(",") if m.strip()),
        dataset=str(dataset) if dataset is not None else None, split=split, max_samples=max_samples,
        allow_outside_root=allow_outside_root,
        max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens, warmup=warmup,
        temperature=temperature, top_p=top_p, seed=seed, device=device, dtype=dtype, cache=cache,  # type: ignore[arg-type]
        quantize=quantize, event_canvas=event_canvas, generation_config=generation_config,
    )
    out = out if out is not None else default_out("bench")
    strategy = None
    command = _command_line(config, out, force)
    if draft is not None:  # the speculative engine behind the runner's DecodeStrategy seam
        from evspec.run.shared import registry_loader_for
        from evspec.bench.spec_strategy import SpeculativeStrategy

        device_ = config.resolved_device()
        strategy = SpeculativeStrategy(
            draft, gamma=gamma, adaptive_gamma=adaptive_gamma, parallel_prefill=parallel_prefill,
            device=device_, dtype=config.resolved_dtype(device_), draft_device=draft_device,
            cache=cache, seed=seed, model_loader=registry_loader_for(None, event_canvas),
        )
        extra = ["--draft", draft, "--gamma", str(gamma)] + (["--draft-device", draft_device] if draft_device else [])
        extra += [f for f, on in (("--adaptive-gamma", adaptive_gamma), ("--parallel-prefill", parallel_prefill)) if on]
        command += " " + shlex.join(extra)
    with progress_reporter(sample_line) as reporter:
        result = run_bench(config, out, force=force, reporter=reporter, strategy=strategy, command=command)
    print_table(summary_table(result.summary))
    for warning in result.summary.get("timing_warnings") or []:
        err_console.print(f"[yellow]warning:[/] {escape(warning)}")
    print_line(f"wrote {out}/records.jsonl, {out}/summary.json and {result.report_path}")
    failed = [m for m in config.models if result.n_ok(m) == 0]
    if failed:
        for m in failed:
            n = sum(1 for r in result.records if r.model == m)
            err_console.print(f"[red]error:[/] model {escape(m)}: 0 of {n} samples succeeded "
                              f"(errors in {escape(str(out))}/records.jsonl)")
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add the ``bench`` command to the evspec app."""
    app.command("bench")(bench)
