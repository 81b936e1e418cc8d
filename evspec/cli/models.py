"""`evspec verify MODEL`: the decoupled pipeline gives the family's own generate() tokens.

For each sample: load -> preprocess once, then (a) decoupled generation (encode once, prefill and
decode from the cached features) and (b) the family's monolithic ``reference_generate``, both
greedy; PASS when the token lists are identical. With ``--hooks`` it also times the vision tower
inside a plain ``generate()`` through forward hooks and reports what the hooks cost.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from evspec.cli import err_console
from evspec.errors import ConfigError, InputError

if TYPE_CHECKING:
    from evspec.data.dataset import Sample
    from evspec.models.base import VisionLanguageModel

SYNTH_SIZE = (96, 64)


@dataclass(frozen=True)
class Comparison:
    """Decoupled vs reference tokens for one sample."""

    sample_id: str
    decoupled: list[int]
    reference: list[int]

    @property
    def first_mismatch(self) -> int | None:
        """Index of the first differing token (a length difference counts), None when equal."""
        for i, (a, b) in enumerate(zip(self.decoupled, self.reference)):
            if a != b:
                return i
        if len(self.decoupled) != len(self.reference):
            return min(len(self.decoupled), len(self.reference))
        return None

    @property
    def passed(self) -> bool:
        return self.first_mismatch is None


def compare_sample(model: VisionLanguageModel, sample: Sample, max_new_tokens: int, min_new_tokens: int = 0) -> Comparison:
    """Greedy decoupled generation vs the family's monolithic generate() on one sample."""
    prepared = model.preprocess(model.load(sample), sample.query)
    decoupled = model.generate(prepared, max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens).token_ids
    reference = model.reference_generate(prepared, max_new_tokens, min_new_tokens)
    return Comparison(sample.id, decoupled, reference)


def _samples(dataset: Path | None, k: int, workdir: Path) -> list[Sample]:
    from evspec.data.dataset import load_dataset

    if dataset is not None:
        return load_dataset(dataset, max_samples=k)
    from evspec.data.synth.builder import SynthConfig, build_dataset

    build_dataset(workdir, SynthConfig(clips=k, size=SYNTH_SIZE, seed=0))
    return load_dataset(workdir, max_samples=k)


def _resolve_auto(device: str, dtype: str) -> tuple[str, str]:
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype == "auto":
        dtype = "bfloat16" if device.startswith("cuda") else "float32"
    return device, dtype


def verify(
    model: str = typer.Argument(..., help="tiny-eventgpt, tiny-videollava, tiny-llava, or eventgpt:PATH, videollava:PATH, llava:PATH."),
    dataset: Path | None = typer.Option(
        None, "--dataset", "-d", help="Dataset folder (or its JSON). Default: a small synthetic set built in a temp dir."
    ),
    samples: int = typer.Option(4, "--samples", "-k", help="Number of samples to check."),
    max_new_tokens: int = typer.Option(32, "--max-new-tokens", help="Most tokens generated per sample."),
    min_new_tokens: int = typer.Option(0, "--min-new-tokens", help="EOS is masked below this length (longer checks)."),
    device: str = typer.Option("auto", "--device", help="auto (cuda if available), cpu, cuda, cuda:N."),
    dtype: str = typer.Option("auto", "--dtype", help="auto (bfloat16 on CUDA, float32 on CPU), float32, float16, bfloat16."),
    quantize: str | None = typer.Option(None, "--quantize", help="4bit or 8bit weights (bitsandbytes; CUDA only)."),
    hooks: bool = typer.Option(True, "--hooks/--no-hooks", help="Also time the vision tower inside generate() with hooks."),
    repeats: int = typer.Option(3, "--repeats", help="generate() runs per side for the hook overhead medians."),
) -> None:
    """Check that decoupled generation (encode once, prefill, decode) equals the model's own generate()."""
    from rich.console import Console
    from rich.table import Table
    from transformers.utils import logging as hf_logging

    from evspec.models.hooks import measure_hook_overhead
    from evspec.models.registry import load_model

    hf_logging.set_verbosity_error()  # backend-fallback and deprecation notices are not the user's concern here

    if samples < 1:
        raise ConfigError(f"--samples must be >= 1, got {samples}")
    if max_new_tokens < 1 or not 0 <= min_new_tokens <= max_new_tokens:
        raise ConfigError(f"need 1 <= --max-new-tokens and 0 <= --min-new-tokens <= --max-new-tokens, got {max_new_tokens}, {min_new_tokens}")
    device, dtype = _resolve_auto(device, dtype)
    console = Console(highlight=False, soft_wrap=True)
    vlm = load_model(model, device=device, dtype=dtype, quantize=quantize)
    with tempfile.TemporaryDirectory(prefix="evspec-verify-") as tmp:
        rows = _samples(dataset, samples, Path(tmp))
        if not rows:
            raise InputError("the dataset holds no samples", dataset)
        results = [compare_sample(vlm, s, max_new_tokens, min_new_tokens) for s in rows]
        report = None
        if hooks:
            prepared = vlm.preprocess(vlm.load(rows[0]), rows[0].query)
            report = measure_hook_overhead(
                vlm.vision_tower,  # type: ignore[attr-defined]
                lambda: vlm.reference_generate(prepared, max_new_tokens, min_new_tokens),
                vlm.device, repeats=repeats,
            )

    table = Table(title=f"evspec verify {model} ({device}, {dtype}, {len(rows)} samples, max {max_new_tokens} tokens)")
    for column in ("sample", "tokens (decoupled/reference)", "first mismatch", "result"):
        table.add_column(column)
    for r in results:
        mismatch = "-" if r.first_mismatch is None else str(r.first_mismatch)
        verdict = "[green]PASS[/]" if r.passed else "[red]FAIL[/]"
        table.add_row(r.sample_id, f"{len(r.decoupled)}/{len(r.reference)}", mismatch, verdict)
    console.print(table)
    failed = sum(not r.passed for r in results)

    if report is not None:
        hook_table = Table(title=f"vision tower timed by hooks inside generate() (sample {rows[0].id}, medians of {repeats})")
        for column in ("tower calls", "tower ms", "generate ms", "+hooks ms", "overhead", "tokens"):
            hook_table.add_column(column)
        hook_table.add_row(
            str(report.tower_calls), f"{report.tower_s * 1e3:.2f}", f"{report.generate_s * 1e3:.2f}",
            f"{report.generate_hooked_s * 1e3:.2f}", f"{report.overhead_s * 1e3:+.2f} ms ({report.overhead_pct:+.1f}%)",
            "[green]same[/]" if report.same_tokens else "[red]changed[/]",
        )
        console.print(hook_table)
        failed += not report.same_tokens

    if failed:
        err_console.print(f"[red]FAIL:[/] {failed} check(s) failed")
        raise typer.Exit(1)
    console.print(f"[green]PASS:[/] {len(results)} sample(s) token-identical")


def register(app: typer.Typer) -> None:
    """Add the ``verify`` command to the evspec app."""
    app.command("verify")(verify)
