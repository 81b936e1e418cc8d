"""`evspec verify MODEL`: the decoupled pipeline gives the family's own generate() tokens.

The check itself is :func:`evspec.models.verify.verify_model`; this module parses options, picks
the samples and prints the result (tables, or one JSON document with ``--json``).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from evspec.cli import err_console
from evspec.cli.common import EVENT_CANVAS_OPTION
from evspec.cli.output import print_json, print_line, print_table
from evspec.errors import ConfigError, InputError
from evspec.models.registry import model_names_help

if TYPE_CHECKING:
    from evspec.data.dataset import Sample

SYNTH_SIZE = (96, 64)


def _samples(dataset: Path | None, k: int, workdir: Path, allow_outside_root: bool = False) -> list[Sample]:
    from evspec.data.dataset import load_dataset

    if dataset is not None:
        return load_dataset(dataset, max_samples=k, allow_outside_root=allow_outside_root)
    from evspec.data.synth.builder import SynthConfig, build_dataset

    build_dataset(workdir, SynthConfig(clips=k, size=SYNTH_SIZE, seed=0))
    return load_dataset(workdir, max_samples=k)


def _resolve_auto(device: str, dtype: str) -> tuple[str, str]:
    """The run layer's "auto" device and dtype (:mod:`evspec.run.shared`), as names."""
    from evspec.run.shared import resolve_device, resolve_dtype

    where = resolve_device(device)
    return str(where), str(resolve_dtype(dtype, where)).removeprefix("torch.")


def verify(
    model: str = typer.Argument(..., help=f"The model. Names: {model_names_help()}."),
    dataset: Path | None = typer.Option(
        None, "--dataset", "-d", help="Dataset folder (or its JSON). Default: a small synthetic set built in a temp dir."
    ),
    allow_outside_root: bool = typer.Option(
        False, "--allow-outside-root", help="Let dataset rows name files outside the dataset folder."
    ),
    max_samples: int = typer.Option(4, "--max-samples", "-n", help="First N samples only (checked one by one)."),
    max_new_tokens: int = typer.Option(32, "--max-new-tokens", help="Most tokens generated per sample."),
    min_new_tokens: int = typer.Option(0, "--min-new-tokens", help="EOS is masked below this length (longer checks)."),
    device: str = typer.Option("auto", "--device", help="auto (cuda if available), cpu, cuda, cuda:N."),
    dtype: str = typer.Option("auto", "--dtype", help="auto (bfloat16 on CUDA, float32 on CPU), float32, float16, bfloat16."),
    quantize: str | None = typer.Option(None, "--quantize", help="4bit or 8bit weights (bitsandbytes; CUDA only)."),
    hooks: bool = typer.Option(True, "--hooks/--no-hooks", help="Also time the vision tower inside generate() with hooks."),
    repeats: int = typer.Option(3, "--repeats", help="generate() runs per side for the hook overhead medians."),
    json_output: bool = typer.Option(False, "--json", help="Print one JSON document (every sample's tokens) instead of tables."),
    event_canvas: str = EVENT_CANVAS_OPTION,
) -> None:
    """Check that decoupled generation (encode once, prefill, decode) equals the model's own generate()."""
    from rich.markup import escape
    from rich.table import Table
    from transformers.utils import logging as hf_logging

    from evspec.models.registry import check_token_budget, load_model
    from evspec.models.verify import verify_model

    hf_logging.set_verbosity_error()  # backend-fallback and deprecation notices are not the user's concern here

    if max_samples < 1:
        raise ConfigError(f"--max-samples must be >= 1, got {max_samples}")
    if hooks and repeats < 1:
        raise ConfigError(f"--repeats must be >= 1, got {repeats}")
    if max_new_tokens < 1 or not 0 <= min_new_tokens <= max_new_tokens:
        raise ConfigError(f"need 1 <= --max-new-tokens and 0 <= --min-new-tokens <= --max-new-tokens, got {max_new_tokens}, {min_new_tokens}")
    check_token_budget(model, max_new_tokens, min_new_tokens)  # before loading: 10^6 tokens would run for hours
    device, dtype = _resolve_auto(device, dtype)
    vlm = load_model(model, device=device, dtype=dtype, quantize=quantize, event_canvas=event_canvas)
    with tempfile.TemporaryDirectory(prefix="evspec-verify-") as tmp:
        rows = _samples(dataset, max_samples, Path(tmp), allow_outside_root)
        if not rows:
            raise InputError("the dataset holds no samples", dataset)
        result = verify_model(vlm, rows, max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens,
                              hooks=hooks, repeats=repeats)

    if json_output:
        print_json({"model": model, "device": device, "dtype": dtype, "max_new_tokens": max_new_tokens,
                    "min_new_tokens": min_new_tokens, **result.to_dict()})
        if not result.passed:
            raise typer.Exit(1)
        return
    table = Table(title=f"evspec verify {escape(model)} ({device}, {dtype}, {len(rows)} samples, max {max_new_tokens} tokens)")
    for column in ("sample", "tokens (decoupled/reference)", "first mismatch", "result"):
        table.add_column(column)
    for r in result.comparisons:
        mismatch = "-" if r.first_mismatch is None else str(r.first_mismatch)
        verdict = "[green]PASS[/]" if r.passed else "[red]FAIL[/]"
        table.add_row(escape(r.sample_id), f"{len(r.decoupled)}/{len(r.reference)}", mismatch, verdict)
    print_table(table)

    report = result.hooks
    if report is not None:
        hook_table = Table(title=f"vision tower timed by hooks inside generate() "
                                 f"(sample {escape(str(result.hooks_sample_id))}, medians of {repeats})")
        for column in ("tower calls", "tower ms", "generate ms", "+hooks ms", "overhead", "tokens"):
            hook_table.add_column(column)
        hook_table.add_row(
            str(report.tower_calls), f"{report.tower_s * 1e3:.2f}", f"{report.generate_s * 1e3:.2f}",
            f"{report.generate_hooked_s * 1e3:.2f}", f"{report.overhead_s * 1e3:+.2f} ms ({report.overhead_pct:+.1f}%)",
            "[green]same[/]" if report.same_tokens else "[red]changed[/]",
        )
        print_table(hook_table)

    if not result.passed:
        err_console.print(f"[red]FAIL:[/] {result.n_failed} check(s) failed")
        raise typer.Exit(1)
    print_line(f"PASS: {len(result.comparisons)} sample(s) token-identical")


def register(app: typer.Typer) -> None:
    """Add the ``verify`` command to the evspec app."""
    app.command("verify")(verify)
