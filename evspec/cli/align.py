"""`evspec align ...`: the alignment data (and, later, adapters and heads). Thin over :mod:`evspec.align`.

``evspec align extract`` runs as one process, or under ``torchrun --nproc_per_node N`` (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK`` in the environment): each rank extracts its own samples and rank 0
merges the index; only rank 0 draws the progress bar and prints the summary.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import typer

from evspec.cli.common import EVENT_CANVAS_OPTION, progress_reporter
from evspec.models.registry import model_names_help

app = typer.Typer(help="Alignment: hidden-state stores for drafting adapters and heads.", no_args_is_help=True,
                  rich_markup_mode=None)


def parse_layers(text: str | None) -> tuple[int, int] | None:
    """``LOW,MID`` -> (low, mid); None or ``auto`` -> None (EAGLE-3's choice)."""
    from evspec.errors import ConfigError

    if text is None or text == "auto":
        return None
    pieces = text.split(",")
    if len(pieces) != 2 or not all(p.strip().isdigit() for p in pieces):
        raise ConfigError(f"layers must be LOW,MID (two hidden-state indices, e.g. 2,16) or auto, got {text!r}",
                          parameters=["layers"])
    return int(pieces[0]), int(pieces[1])


def _command_line(config: Any, out: Path, device: str, force: bool) -> str:
    args = ["evspec", "align", "extract", "--target", config.target, "--draft", config.draft,
            "--dataset", config.dataset, "--out", str(out), "--max-new-tokens", str(config.max_new_tokens),
            "--layers", "auto" if config.layers is None else ",".join(map(str, config.layers)),
            "--device", device, "--dtype", config.dtype, "--store-dtype", config.store_dtype,
            "--shard-rows", str(config.shard_rows), "--event-canvas", config.event_canvas]
    if config.split is not None:
        args += ["--split", config.split]
    if config.max_samples is not None:
        args += ["--max-samples", str(config.max_samples)]
    flags = [("--no-target-visual", not config.target_visual), ("--allow-outside-root", config.allow_outside_root),
             ("--force", force)]
    return shlex.join(args + [flag for flag, on in flags if on])


@contextmanager
def distributed(device: str) -> Iterator[tuple[int, int, str]]:
    """(rank, world size, this rank's device) under torchrun, with the process group up (gloo on
    the CPU, NCCL on CUDA) while the command runs; (0, 1, device) otherwise."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        yield 0, 1, device
        return
    import torch
    import torch.distributed as dist

    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if cuda:
        device = f"cuda:{local}"
        torch.cuda.set_device(local)
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    try:
        yield dist.get_rank(), dist.get_world_size(), device
    finally:
        dist.destroy_process_group()


@app.command("extract")
def extract(
    target: str = typer.Option(..., "--target", "-t", help=f"The target (its greedy answers are the data). Names: {model_names_help()}."),
    draft: str = typer.Option(..., "--draft", help="The draft (teacher-forced on the target's answers), e.g. an EventGPT."),
    dataset: Path = typer.Option(..., "--dataset", "-d", help="An evspec clip dataset folder or JSON."),
    out: Path = typer.Option(..., "--out", "-o", help="Store folder; rerun with the same --out to resume."),
    split: str | None = typer.Option(None, "--split", help="Only rows of this split."),
    max_samples: int | None = typer.Option(None, "--max-samples", "-n", help="First N samples only."),
    max_new_tokens: int = typer.Option(64, "--max-new-tokens", help="Most tokens of each target answer."),
    layers: str = typer.Option("auto", "--layers", help="The target's low and middle hidden states stored besides its last, "
                               "as LOW,MID hidden-state indices (0: embeddings, k: output of layer k); auto: EAGLE-3's."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N (under torchrun: each rank's own GPU)."),
    dtype: str = typer.Option("auto", "--dtype", help="The models' compute dtype: auto (bf16 on CUDA, fp32 on CPU), float32, bfloat16, float16."),
    store_dtype: str = typer.Option("bfloat16", "--store-dtype", help="Stored hidden states and features: bfloat16 or float16."),
    shard_rows: int = typer.Option(64, "--shard-rows", help="Samples per shard (a killed run redoes at most one shard per rank)."),
    target_visual: bool = typer.Option(True, "--target-visual/--no-target-visual",
                                       help="Store the target's visual tokens (for a ViSpec-like head)."),
    event_canvas: str = EVENT_CANVAS_OPTION,
    allow_outside_root: bool = typer.Option(False, "--allow-outside-root", help="Let dataset rows name files outside the dataset folder."),
    force: bool = typer.Option(False, "--force", help="Discard a store of another config in --out."),
) -> None:
    """Extract the target's answers and both models' hidden states and visual features into a store.

    Writes OUT/shard-r<rank>-<n>.safetensors, OUT/index.json (the merged index with bytes per
    sample and samples per second) and OUT/config.json. Resumes where a killed run stopped.
    """
    from rich.console import Console

    from evspec.align.extract import ExtractConfig, extract_store

    config = ExtractConfig(target=target, draft=draft, dataset=str(dataset), split=split, max_samples=max_samples,
                           max_new_tokens=max_new_tokens, layers=parse_layers(layers), dtype=dtype,
                           store_dtype=store_dtype, shard_rows=shard_rows, target_visual=target_visual,
                           event_canvas=event_canvas, allow_outside_root=allow_outside_root)
    with distributed(device) as (rank, world_size, rank_device):
        bar = progress_reporter() if rank == 0 else nullcontext(None)
        with bar as reporter:
            summary = extract_store(config, out, device=rank_device, rank=rank, world_size=world_size, force=force,
                                    reporter=reporter, command=_command_line(config, out, device, force))
    if rank != 0:
        return
    console = Console(highlight=False, soft_wrap=True)
    rate = "-" if summary.samples_per_second is None else f"{summary.samples_per_second:.2f}"
    per_sample = "-" if summary.bytes_per_sample is None else f"{summary.bytes_per_sample / 1e6:.3f} MB"
    ranks = f" on {world_size} processes (rank 0's count)" if world_size > 1 else ""
    console.print(f"extracted {summary.extracted} samples{ranks} in {summary.seconds:.1f} s ({rate} samples/s; "
                  f"{summary.already_done} already in the store; models loaded in {summary.model_load_s:.1f} s)", markup=False)
    console.print(f"store {out}: {summary.rows} rows, {summary.bytes} bytes, {per_sample} per sample, "
                  f"{'complete' if summary.complete else 'INCOMPLETE'}; index in {out}/index.json", markup=False)


def register(root: typer.Typer) -> None:
    """Add the ``align`` command group to the evspec app."""
    root.add_typer(app, name="align")
