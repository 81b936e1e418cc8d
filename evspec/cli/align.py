"""`evspec align ...`: the alignment data (``extract``) and training an adapter or head on it (``train``).
Thin over :mod:`evspec.align`.

``evspec align extract`` runs as one process, or under ``torchrun --nproc_per_node N`` (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK`` in the environment): each rank extracts its own samples and rank 0
merges the index; only rank 0 draws the progress bar and prints the summary. ``evspec align train``
runs the same way: under torchrun the one training loop trains with DistributedDataParallel.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Any

import typer

from evspec.cli import err_console
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
        from evspec.training.loop import end_distributed

        end_distributed()


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
        # Piped, each extracted sample prints one line at once, as the run commands' samples do.
        bar = progress_reporter(lambda row: f"sample={row.sample_id}\tpositions={len(row.target_ids)}") \
            if rank == 0 else nullcontext(None)
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


def _train_command_line(config: Any, out: Path, device: str, force: bool) -> str:
    """The command that reproduces the training run (every option that decides it)."""
    loop = config.loop
    if config.online is None:
        source = ["--store", config.store]
    else:
        online = config.online
        source = ["--online", "--target", online["target"], "--draft", online["draft"], "--dataset", online["dataset"],
                  "--max-new-tokens", str(online["max_new_tokens"])]
        source += ["--split", online["split"]] if online["split"] else []
        source += ["--max-samples", str(online["max_samples"])] if online["max_samples"] else []
    args = ["evspec", "align", "train", *source, "--adapter", config.adapter, "--out", str(out),
            "--steps", str(loop.steps), "--batch-size", str(loop.batch_size), "--lr", str(loop.lr),
            "--warmup-steps", str(loop.warmup_steps), "--seed", str(loop.seed), "--eval-every", str(loop.eval_every),
            "--checkpoint-every", str(loop.checkpoint_every), "--log-every", str(loop.log_every),
            "--holdout", str(config.holdout), "--holdout-seed", str(config.holdout_seed),
            "--max-gamma", str(config.max_gamma), "--eval-rows", str(config.eval_rows), "--device", device]
    args += ["--fsdp"] if loop.fsdp else []
    for name, value in sorted(config.head.items()):
        args += [f"--{name.replace('_', '-')}", str(value)]
    return shlex.join(args + (["--force"] if force else []))


def _online_config(online: bool, store: Path | None, target: str | None, draft: str | None, dataset: Path | None,
                   split: str | None, max_samples: int | None, max_new_tokens: int) -> Any:
    """The ExtractConfig an --online run computes its rows with (None for a store's run)."""
    from evspec.align.extract import ExtractConfig
    from evspec.errors import ConfigError

    given = [name for name, value in (("target", target), ("draft", draft), ("dataset", dataset)) if value is not None]
    if not online:
        if store is None:
            raise ConfigError("give --store, or --online with --target, --draft and --dataset", parameters=["store"])
        if given:
            raise ConfigError(f"--{given[0]} is for --online runs; a store names its own models and data",
                              parameters=[given[0]])
        return None
    if store is not None:
        raise ConfigError("give --store or --online, not both", parameters=["store", "online"])
    missing = [name for name in ("target", "draft", "dataset") if name not in given]
    if missing:
        raise ConfigError(f"--online needs --{missing[0]}", parameters=[missing[0]])
    return ExtractConfig(target=str(target), draft=str(draft), dataset=str(Path(str(dataset)).resolve()), split=split,
                         max_samples=max_samples, max_new_tokens=max_new_tokens)


def _steps_for(steps: int | None, epochs: float | None, store: Path | None, online: Any, holdout: float,
               holdout_seed: int, batch_size: int) -> int:
    """--steps as given, or --epochs over the training rows (the store's, or the samples') at the global batch."""
    import math

    from evspec.errors import ConfigError

    if (steps is None) == (epochs is None):
        raise ConfigError("give exactly one of steps and epochs", parameters=["steps", "epochs"])
    if steps is not None:
        return steps
    if not (math.isfinite(epochs) and epochs > 0):
        raise ConfigError(f"epochs must be > 0, got {epochs}", parameters=["epochs"])
    from evspec.align.store import AlignStore
    from evspec.align.train import holdout_split

    from evspec.align.extract import load_samples

    n = len(AlignStore(store)) if online is None else len(load_samples(online))
    train_rows, _ = holdout_split(n, holdout, holdout_seed)
    return max(1, math.ceil(epochs * len(train_rows) / batch_size))


@app.command("train")
def train(
    store: Path | None = typer.Option(None, "--store", "-s", help="An alignment store (evspec align extract); or --online."),
    adapter: str = typer.Option(..., "--adapter", "-a", help="TokenAdapter, L1, L2, L3, L4, L5, B1, L5F, EC or VS."),
    online: bool = typer.Option(False, "--online", help="No store: compute each batch's rows in the loop with --target, "
                                "--draft and --dataset, as `align extract` would (for stores that would not fit on disk)."),
    target: str | None = typer.Option(None, "--target", "-t", help="--online: the target (as for align extract)."),
    draft: str | None = typer.Option(None, "--draft", help="--online: the draft (as for align extract)."),
    dataset: Path | None = typer.Option(None, "--dataset", "-d", help="--online: an evspec clip dataset folder or JSON."),
    split: str | None = typer.Option(None, "--split", help="--online: only rows of this split."),
    max_samples: int | None = typer.Option(None, "--max-samples", "-n", help="--online: first N samples only."),
    max_new_tokens: int = typer.Option(64, "--max-new-tokens", help="--online: most tokens of each target answer."),
    out: Path = typer.Option(..., "--out", "-o", help="Run folder (the head lands in OUT/head); rerun to resume."),
    steps: int | None = typer.Option(None, "--steps", help="Optimizer steps (or --epochs)."),
    epochs: float | None = typer.Option(None, "--epochs", help="Passes over the training rows (or --steps)."),
    batch_size: int = typer.Option(16, "--batch-size", help="Rows per step, over all processes (each takes batch/world)."),
    lr: float = typer.Option(1e-3, "--lr", help="Peak learning rate (AdamW, warm-up then cosine)."),
    warmup_steps: int = typer.Option(100, "--warmup-steps", help="Linear warm-up steps."),
    seed: int = typer.Option(0, "--seed", help="Seed of the data order and the head's initial weights."),
    eval_every: int = typer.Option(200, "--eval-every", help="Evaluate on the held-out rows every N steps."),
    checkpoint_every: int = typer.Option(200, "--checkpoint-every", help="Save the training state every N steps."),
    log_every: int = typer.Option(10, "--log-every", help="Write a training row to metrics.jsonl every N steps."),
    holdout: float = typer.Option(0.1, "--holdout", help="Fraction of the store's samples held out for evaluation."),
    holdout_seed: int = typer.Option(0, "--holdout-seed", help="Seed of the held-out split."),
    max_gamma: int = typer.Option(8, "--max-gamma", help="Simulated acceptance at gamma 1..N."),
    eval_rows: int = typer.Option(256, "--eval-rows", help="Most held-out rows per evaluation."),
    num_heads: int | None = typer.Option(None, "--num-heads", help="Attention heads (L4, EAGLE heads, visual compressor)."),
    ffn_size: int | None = typer.Option(None, "--ffn-size", help="FFN width (0: 4 x the target's width)."),
    bottleneck: int | None = typer.Option(None, "--bottleneck", help="L1/L2 bottleneck width (256)."),
    wide_bottleneck: int | None = typer.Option(None, "--wide-bottleneck", help="L3 bottleneck width (1024)."),
    stacked_blocks: int | None = typer.Option(None, "--stacked-blocks", help="L2's number of blocks (3)."),
    token_rank: int | None = typer.Option(None, "--token-rank", help="TokenAdapter's soft-token width (256)."),
    visual_queries: int | None = typer.Option(None, "--visual-queries", help="EC/VS: learned queries the visual features are compressed into (4)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N (under torchrun: each rank's own GPU)."),
    fsdp: bool = typer.Option(False, "--fsdp", help="Under torchrun: shard the head, its gradients and optimizer state "
                              "across processes (FSDP2) instead of replicating them (DDP), for a head one device cannot hold."),
    force: bool = typer.Option(False, "--force", help="Discard a run of another adapter or config in --out."),
) -> None:
    """Train one adapter or draft head on an alignment store, or --online (the one training loop; torchrun: DDP or --fsdp).

    Writes OUT/config.json, OUT/state.pt, OUT/metrics.jsonl (training rows and held-out evaluations:
    losses, cosine, top-1 agreement, SIMULATED acceptance at gamma 1..8), plots and OUT/head.
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from evspec.align.train import AlignTrainConfig, run_align_training
    from evspec.cli.train import _TrainBar
    from evspec.training.loop import LoopConfig, check_batch_split, world_size_from_env

    online_config = _online_config(online, store, target, draft, dataset, split, max_samples, max_new_tokens)
    sizes = {"num_heads": num_heads, "ffn_size": ffn_size, "bottleneck": bottleneck, "wide_bottleneck": wide_bottleneck,
             "stacked_blocks": stacked_blocks, "token_rank": token_rank, "visual_queries": visual_queries}
    total = _steps_for(steps, epochs, store, online_config, holdout, holdout_seed, batch_size)
    loop = LoopConfig(steps=total, batch_size=batch_size, lr=lr, warmup_steps=warmup_steps, seed=seed,
                      eval_every=eval_every, checkpoint_every=checkpoint_every, log_every=log_every, fsdp=fsdp)
    config = AlignTrainConfig(store=str(store.resolve()) if store else "", adapter=adapter, loop=loop, holdout=holdout,
                              holdout_seed=holdout_seed, max_gamma=max_gamma, eval_rows=eval_rows,
                              head={k: v for k, v in sizes.items() if v is not None},
                              online=asdict(online_config) if online_config else None)
    command = _train_command_line(config, out, device, force)
    check_batch_split(batch_size, world_size_from_env())  # before any process group is started
    with distributed(device) as (rank, world_size, rank_device):
        if rank == 0:
            columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
            with Progress(*columns, console=err_console, transient=True, auto_refresh=False) as progress:
                result = run_align_training(config, out, device=rank_device, force=force, progress=_TrainBar(progress),
                                            command=command)
        else:
            result = run_align_training(config, out, device=rank_device, force=force, command=command)
    if rank != 0:
        return
    console = Console(highlight=False, soft_wrap=True)
    resumed = f" (resumed at step {result.resumed_from})" if result.resumed_from else ""
    ranks = f" on {world_size} processes" if world_size > 1 else ""
    console.print(f"trained {adapter} for {result.steps} steps{resumed}{ranks} in {result.seconds:.0f} s", markup=False)
    final = result.final_eval
    if final:
        simulated = final["simulated"]
        gamma = "5" if "5" in simulated["acceptance_rate"] else max(simulated["acceptance_rate"], key=int)
        console.print(f"held-out ({final['rows']} rows, {final['positions']} positions): loss {final['loss']:.4f}, "
                      f"cosine {final['cosine']:.3f}, top-1 agreement {final['top1_agree']:.3f}; SIMULATED (offline) "
                      f"at gamma {gamma}: acceptance rate {simulated['acceptance_rate'][gamma]:.3f}, mean acceptance "
                      f"length {simulated['mean_acceptance_length'][gamma]:.2f}{_replay_text(simulated, gamma)}", markup=False)
    console.print(f"wrote {out}/head; metrics in {out}/metrics.jsonl, plots {out}/align.png", markup=False)


def _replay_text(simulated: dict[str, Any], gamma: str) -> str:
    replay = simulated.get("replay") or {}
    rate, length = (replay.get("acceptance_rate") or {}).get(gamma), (replay.get("mean_acceptance_length") or {}).get(gamma)
    if rate is None or length is None:
        return ""
    return f"; replaying the live loop's rounds: {rate:.3f}, {length:.2f}"


def register(root: typer.Typer) -> None:
    """Add the ``align`` command group to the evspec app."""
    root.add_typer(app, name="align")
