"""`evspec spec`: speculative decoding against the target alone, sample by sample, lossless-checked.

With no --dataset it runs on the small synthetic set the bench builds into OUT/data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.markup import escape

from evspec.cli import err_console
from evspec.cli.common import config_command, default_out, progress_reporter
from evspec.run.config import command_line
from evspec.spec.config import SpecRunConfig


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


@config_command(SpecRunConfig)  # one option per field of SpecRunConfig
def spec(
    config: SpecRunConfig,
    out: Path | None = typer.Option(None, "--out", "-o", help="Run folder. Default: runs/spec-<timestamp>."),
    force: bool = typer.Option(False, "--force", help="Discard results of another config in --out."),
) -> None:
    """Speculative decoding vs the target alone on each sample: records, summary, report with plots.

    Writes OUT/records.jsonl (both outputs, metrics, lossless flag), OUT/summary.json and
    OUT/report.md. Rerunning with the same --out resumes.
    """
    from rich.console import Console

    from evspec.spec.run import run_spec

    out = out if out is not None else default_out("spec")
    command = command_line(config, ["evspec", "spec"], ["--out", str(out), *(["--force"] if force else [])])
    with progress_reporter(sample_line) as reporter:
        result = run_spec(config, out, force=force, progress=reporter, command=command)
    s, c = result.summary, result.summary["counts"]
    console = Console(highlight=False, soft_wrap=True)
    tag = " [synthetic]" if s["synthetic"] else ""
    rate = "-" if c["acceptance_rate"] is None else f"{c['acceptance_rate']:.3f}"
    length = "-" if c["mean_acceptance_length"] is None else f"{c['mean_acceptance_length']:.2f}"
    speedup = "-" if s["speedup_median"] is None else f"{s['speedup_median']:.2f}x"
    interval = (s.get("intervals") or {}).get("speedup_median")
    if s["speedup_median"] is not None and interval is not None:  # how far other clips like these could move it
        speedup += f" (95% interval {interval[0]:.2f}-{interval[1]:.2f}x)"
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
