"""`evspec bench`: time every stage of every model on a dataset; records, summary, report.

With no arguments it benchmarks the three tiny models on a small synthetic dataset built on the
fly into the run folder: the project's smoke-sized main job.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.markup import escape

from evspec.bench.config import BenchConfig
from evspec.cli import err_console
from evspec.cli.common import config_command, default_out, progress_reporter
from evspec.cli.output import print_line, print_table
from evspec.run.config import command_line


def sample_line(record: Any) -> str:
    """One finished sample as a line of tab-separated ``key=value`` fields (what a pipe sees)."""
    head = f"sample={record.id}\tmodel={record.model}"
    if record.error is not None:
        return f"{head}\terror={' '.join(record.error.split())}"
    ms = {"read_ms": record.read_s, "total_ms": record.total_s, "ttft_ms": record.ttft_s, "tpot_ms": record.tpot_s}
    fields = [f"{k}={'-' if v is None else f'{v * 1e3:.2f}'}" for k, v in ms.items()]
    return "\t".join([head, *fields, f"new_tokens={record.n_new_tokens}"])


@config_command(BenchConfig)  # one option per field of BenchConfig
def bench(
    config: BenchConfig,
    out: Path | None = typer.Option(None, "--out", "-o", help="Run folder. Default: runs/bench-<timestamp>."),
    force: bool = typer.Option(False, "--force", help="Discard results of another config in --out."),
) -> None:
    """Benchmark each stage (load, preprocess, encode, prefill, decode) of each model.

    Writes OUT/records.jsonl (one line per sample and model), OUT/summary.json and OUT/report.md
    with plots. Rerunning with the same --out resumes: finished pairs are skipped.
    """
    from evspec.bench.report import summary_table
    from evspec.bench.runner import run_bench

    out = out if out is not None else default_out("bench")
    command = command_line(config, ["evspec", "bench"], ["--out", str(out), *(["--force"] if force else [])])
    with progress_reporter(sample_line) as reporter:
        result = run_bench(config, out, force=force, reporter=reporter, command=command)
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
