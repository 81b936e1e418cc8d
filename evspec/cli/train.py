"""`evspec train` (a family VLM from scratch on a clip dataset) and `evspec eval` (greedy answers
judged against the dataset's references). Both are thin layers over :mod:`evspec.training`."""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path
from typing import Any

import typer

from evspec.cli import err_console
from evspec.cli.common import config_command
from evspec.training.eval_config import EvalConfig


def _device(device: str) -> str:
    """The run layer's "auto" device (:mod:`evspec.run.shared`), as a name."""
    from evspec.run.shared import resolve_device

    return str(resolve_device(device))


class _TrainBar:
    """The loop's TrainProgress as a rich bar on stderr, with the last logged loss."""

    def __init__(self, progress: Any) -> None:
        self.progress = progress
        self.task = progress.add_task("training", total=None)

    def start(self, total: int, done: int) -> None:
        self.progress.update(self.task, total=total, completed=done, description="training", refresh=True)

    def advance(self, step: int, metrics: dict[str, Any]) -> None:
        text = f"training  loss {metrics['loss']:.4f}" if "loss" in metrics else "training"
        self.progress.update(self.task, completed=step, description=text, refresh=step % 10 == 0)

    def status(self, text: str) -> None:
        self.progress.update(self.task, description=text, refresh=True)

    def stage(self, text: str, done: int, total: int) -> None:
        self.progress.update(self.task, description=text, completed=done, total=total, refresh=done % 50 == 0 or done == total)


def _absolute_checkpoint(name: str | None) -> str | None:
    """``FAMILY:PATH`` with PATH made absolute (a resumed run may start elsewhere); names unchanged."""
    if name is None:
        return None
    family, sep, path = name.partition(":")
    return f"{family}:{Path(path).expanduser().resolve()}" if sep and path else name


def _command_line(config: Any, out: Path, device: str, workers: int) -> str:
    """The command that reproduces the run (every option that decides it, from its config)."""
    loop = config.loop
    return shlex.join([
        "evspec", "train", "--family", config.family, "--size", config.size, "--dataset", config.dataset,
        "--out", str(out), "--steps", str(loop.steps), "--batch-size", str(loop.batch_size), "--lr", str(loop.lr),
        "--warmup-steps", str(loop.warmup_steps), "--seed", str(loop.seed), "--eval-every", str(loop.eval_every),
        "--eval-questions", str(config.eval_questions), "--checkpoint-every", str(loop.checkpoint_every),
        "--workers", str(workers), "--event-canvas", config.event_canvas, "--save-dtype", config.save_dtype,
        "--pixel-cache-dtype", config.pixel_cache_dtype, *(["--mirror"] if config.mirror else []),
        *(["--reverse"] if config.reverse else []), *(["--colour-context"] if config.colour_context else []),
        *(["--compile"] if config.compile else []),
        "--device", device, *(["--allow-outside-root"] if config.allow_outside_root else []),
        *(["--init-from", config.init_from] if config.init_from else []),
    ])


def train(
    family: str = typer.Option(..., "--family", help="videollava, eventgpt or llava."),
    dataset: Path = typer.Option(..., "--dataset", "-d", help="An evspec clip dataset (its 'train' rows are learnt)."),
    size: str = typer.Option(..., "--size", help="Model size: tiny, demo-draft, demo-target."),
    out: Path = typer.Option(..., "--out", "-o", help="Checkpoint folder to write (the family's layout); rerun to resume."),
    steps: int = typer.Option(1000, "--steps", help="Optimizer steps."),
    batch_size: int = typer.Option(16, "--batch-size", help="Questions per step."),
    lr: float = typer.Option(1e-3, "--lr", help="Peak learning rate (AdamW, warm-up then cosine)."),
    warmup_steps: int = typer.Option(100, "--warmup-steps", help="Linear warm-up steps."),
    seed: int = typer.Option(0, "--seed", help="Seed of the data order and the initial weights."),
    init_from: str | None = typer.Option(None, "--init-from", help="Start from this trained checkpoint (a demo "
                                            "name or FAMILY:PATH that evspec train made, same family and size) "
                                            "instead of random weights."),
    eval_every: int = typer.Option(500, "--eval-every", help="Evaluate on the test split every N steps."),
    eval_questions: int = typer.Option(64, "--eval-questions", help="Test questions per evaluation (0: none)."),
    checkpoint_every: int = typer.Option(200, "--checkpoint-every", help="Save the training state every N steps."),
    workers: int = typer.Option(1, "--workers", help="Processes that read and preprocess the clips."),
    event_canvas: str = typer.Option("upstream", "--event-canvas", help="EventGPT frames: upstream (per-chunk canvas) or sensor."),
    save_dtype: str = typer.Option("float32", "--save-dtype", help="Weights' dtype in the written checkpoint."),
    mirror: bool = typer.Option(False, "--mirror", help="Also learn every clip mirrored left to right, 'left' and "
                                "'right' swapped in its answers (exact for evspec's synthetic answers)."),
    reverse: bool = typer.Option(False, "--reverse", help="Also learn every clip played backwards, each direction "
                                 "turned around in its answers (video and event models)."),
    colour_context: bool = typer.Option(False, "--colour-context", help="EventGPT only: also learn on each full "
                                        "answer that differs from the event-visible one in colour words alone, the "
                                        "colour words read but not predicted (a draft then continues the target's "
                                        "text after a colour word)."),
    pixel_cache_dtype: str = typer.Option("float32", "--pixel-cache-dtype", help="dtype of the preprocessed clips kept "
                                          "on the device (float16 halves their memory)."),
    compile_blocks: bool = typer.Option(False, "--compile", help="torch.compile each transformer block for the "
                                        "training steps (faster on a GPU; evaluation stays eager)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N."),
    force: bool = typer.Option(False, "--force", help="Discard a run of another config in --out."),
    allow_outside_root: bool = typer.Option(False, "--allow-outside-root", help="Let dataset rows name files outside the dataset folder."),
) -> None:
    """Train one model of a family on an evspec clip dataset (loss on answer tokens), from scratch or
    from a checkpoint it trained before (--init-from).

    Under torchrun --nproc_per_node N it trains with DistributedDataParallel (--batch-size is the global batch)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from evspec.training.loop import LoopConfig
    from evspec.training.run import run_training
    from evspec.training.vlm import VLMTrainConfig

    loop = LoopConfig(steps=steps, batch_size=batch_size, lr=lr, warmup_steps=warmup_steps, seed=seed,
                      eval_every=eval_every, checkpoint_every=checkpoint_every)
    config = VLMTrainConfig(family=family, dataset=str(dataset.resolve()), size=size, loop=loop,
                            eval_questions=eval_questions, event_canvas=event_canvas, init_seed=seed,
                            init_from=_absolute_checkpoint(init_from),
                            save_dtype=save_dtype, mirror=mirror, reverse=reverse, pixel_cache_dtype=pixel_cache_dtype,
                            colour_context=colour_context,
                            compile=compile_blocks, allow_outside_root=allow_outside_root)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err_console, transient=True, auto_refresh=False) as progress:
        bar = _TrainBar(progress)
        result = run_training(config, out, device=_device(device), workers=workers, force=force, progress=bar,
                              command=_command_line(config, out, device, workers))
    if os.environ.get("RANK", "0") != "0":  # under torchrun, rank 0 reports
        return
    resumed = f" (resumed at step {result.resumed_from})" if result.resumed_from else ""
    score = result.final_eval.get("exact_match")
    score_text = "-" if score is None else f"{score:.3f} over {result.final_eval.get('n')} test questions"
    typer.echo(f"trained {family} ({size}) for {result.steps} steps{resumed} in {result.seconds:.0f} s; "
               f"exact match {score_text}")
    typer.echo(f"wrote {out} (load it as {family}:{out}); training log in {out}/training")


@config_command(EvalConfig)  # one option per field of EvalConfig
def evaluate(
    config: EvalConfig,
    out: Path | None = typer.Option(None, "--out", "-o", help="Run folder. Default: runs/eval-<timestamp>."),
    force: bool = typer.Option(False, "--force", help="Discard results of another config in --out."),
    json_output: bool = typer.Option(False, "--json", help="Print one JSON document instead of the table."),
    records: Path | None = typer.Option(
        None, "--records", help="Also write every answer with its scores (JSON lines, one per question) here."),
) -> None:
    """Greedy answers against `answer` and `event_visible_answer`: exact match and token F1.

    Writes OUT/records.jsonl (one line per sample: its judged questions), OUT/summary.json and
    OUT/report.md. Rerunning with the same --out resumes: finished samples are skipped.
    """
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from evspec.cli.common import default_out, progress_reporter
    from evspec.run.config import command_line
    from evspec.training.eval_run import run_eval, score_rows, who_answered

    out = out if out is not None else default_out("eval")
    command = command_line(config, ["evspec", "eval"], ["--out", str(out), *(["--force"] if force else [])])
    with progress_reporter() as reporter:
        result = run_eval(config, out, force=force, reporter=reporter, command=command)
    s = result.summary
    if records is not None:
        records.parent.mkdir(parents=True, exist_ok=True)
        records.write_text("".join(json.dumps(j.as_record()) + "\n" for j in result.judged()), encoding="utf-8")
    if json_output:
        document = {key: s[key] for key in ("model", "answers", "dataset", "split", "n_questions", "summary")}
        typer.echo(json.dumps(document, indent=1))
    else:
        console = Console(highlight=False, soft_wrap=True)
        table = Table(title=escape(f"{who_answered(s)} on {s['n_questions']} questions"))
        for name in ("reference", "question type", "n", "exact match", "token F1"):
            table.add_column(name, justify="left" if name in ("reference", "question type") else "right", no_wrap=True)
        for row in score_rows(s["summary"]):  # question types come from the dataset: escaped
            table.add_row(*(escape(cell) for cell in row))
        console.print(table)
        if records is not None:
            console.print(f"wrote {records}", markup=False)
        console.print(f"wrote {out}/records.jsonl, {out}/summary.json and {result.report_path}", markup=False)
    if s["n_failed"]:
        err_console.print(f"[red]error:[/] {s['n_failed']} of {s['n_samples']} samples failed; the scores leave them "
                          f"out (errors in {escape(str(out))}/records.jsonl; rerun with the same --out to retry them)")
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("train")(train)
    app.command("eval")(evaluate)
