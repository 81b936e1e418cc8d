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


def _command_line(config: Any, out: Path, device: str, workers: int) -> str:
    """The command that reproduces the run (every option that decides it, from its config)."""
    loop = config.loop
    return shlex.join([
        "evspec", "train", "--family", config.family, "--size", config.size, "--dataset", config.dataset,
        "--out", str(out), "--steps", str(loop.steps), "--batch-size", str(loop.batch_size), "--lr", str(loop.lr),
        "--warmup-steps", str(loop.warmup_steps), "--seed", str(loop.seed), "--eval-every", str(loop.eval_every),
        "--eval-questions", str(config.eval_questions), "--checkpoint-every", str(loop.checkpoint_every),
        "--workers", str(workers), "--event-canvas", config.event_canvas, "--save-dtype", config.save_dtype,
        "--device", device, *(["--allow-outside-root"] if config.allow_outside_root else []),
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
    eval_every: int = typer.Option(500, "--eval-every", help="Evaluate on the test split every N steps."),
    eval_questions: int = typer.Option(64, "--eval-questions", help="Test questions per evaluation (0: none)."),
    checkpoint_every: int = typer.Option(200, "--checkpoint-every", help="Save the training state every N steps."),
    workers: int = typer.Option(1, "--workers", help="Processes that read and preprocess the clips."),
    event_canvas: str = typer.Option("upstream", "--event-canvas", help="EventGPT frames: upstream (per-chunk canvas) or sensor."),
    save_dtype: str = typer.Option("float32", "--save-dtype", help="Weights' dtype in the written checkpoint."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N."),
    force: bool = typer.Option(False, "--force", help="Discard a run of another config in --out."),
    allow_outside_root: bool = typer.Option(False, "--allow-outside-root", help="Let dataset rows name files outside the dataset folder."),
) -> None:
    """Train one model of a family from scratch on an evspec clip dataset (loss on answer tokens).

    Under torchrun --nproc_per_node N it trains with DistributedDataParallel (--batch-size is the global batch)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from evspec.training.loop import LoopConfig
    from evspec.training.run import run_training
    from evspec.training.vlm import VLMTrainConfig

    loop = LoopConfig(steps=steps, batch_size=batch_size, lr=lr, warmup_steps=warmup_steps, seed=seed,
                      eval_every=eval_every, checkpoint_every=checkpoint_every)
    config = VLMTrainConfig(family=family, dataset=str(dataset.resolve()), size=size, loop=loop,
                            eval_questions=eval_questions, event_canvas=event_canvas, init_seed=seed,
                            save_dtype=save_dtype, allow_outside_root=allow_outside_root)
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


def evaluate(
    model: str | None = typer.Option(None, "--model", "-m", help="The model (any registry name, e.g. demo-videollava or videollava:PATH)."),
    answers: Path | None = typer.Option(None, "--answers", help='Judge these answers instead of a model\'s: JSON lines {"id", "prediction"}.'),
    dataset: Path = typer.Option(..., "--dataset", "-d", help="An evspec clip dataset with answers."),
    split: str | None = typer.Option(None, "--split", help="Only rows of this split."),
    max_samples: int | None = typer.Option(None, "--max-samples", "-n", help="First N samples only."),
    all_questions: bool = typer.Option(False, "--all-questions", help="Every question the synthetic builder wrote per clip, not only the row's."),
    max_new_tokens: int = typer.Option(64, "--max-new-tokens", help="Most tokens per answer."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N."),
    records: Path | None = typer.Option(None, "--records", help="Write every answer with its scores (JSON lines) here."),
    json_output: bool = typer.Option(False, "--json", help="Print one JSON document instead of the table."),
    allow_outside_root: bool = typer.Option(False, "--allow-outside-root", help="Let dataset rows name files outside the dataset folder."),
) -> None:
    """Greedy answers against `answer` and `event_visible_answer`: exact match and token F1."""
    from rich.console import Console
    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from evspec.data.dataset import load_dataset
    from evspec.errors import ConfigError, InputError
    from evspec.models.registry import check_model_name, load_model
    from evspec.training.evaluate import evaluate_model, judge_answer_file, questions_of, summarize

    if (model is None) == (answers is None):
        raise ConfigError("give either --model (answer with it) or --answers (judge a file of answers)")
    if model is not None:
        check_model_name(model)
    samples = load_dataset(dataset, split=split, max_samples=max_samples, allow_outside_root=allow_outside_root)
    questions = questions_of(samples, all_types=all_questions)
    if not any(q.answer or q.event_visible_answer for q in questions):
        raise InputError("the dataset has no answers to judge against ('answer' / 'event_visible_answer')", dataset)
    if answers is not None:
        judged = judge_answer_file(answers, questions)
    else:
        vlm = load_model(model, device=_device(device))
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=err_console, transient=True, auto_refresh=False) as progress:
            task = progress.add_task(escape(f"answering with {model}"), total=len(questions))
            judged = evaluate_model(vlm, questions, max_new_tokens=max_new_tokens,
                                    on_answer=lambda j: progress.update(task, advance=1, refresh=True))
    summary = summarize(judged)
    if records is not None:
        records.parent.mkdir(parents=True, exist_ok=True)
        records.write_text("".join(json.dumps(j.as_record()) + "\n" for j in judged), encoding="utf-8")
    document = {"model": model, "answers": None if answers is None else str(answers), "dataset": str(dataset), "split": split, "n_questions": len(judged), "summary": summary}
    if json_output:
        typer.echo(json.dumps(document, indent=1))
        return
    console = Console(highlight=False, soft_wrap=True)
    who = f"{model} (greedy)" if model is not None else str(answers)
    table = Table(title=escape(f"{who} on {len(judged)} questions"))
    for name in ("reference", "question type", "n", "exact match", "token F1"):
        table.add_column(name, justify="left" if name in ("reference", "question type") else "right", no_wrap=True)
    for field, values in summary.items():
        table.add_row(field, "all", str(values["n"]), f"{values['exact_match']:.3f}", f"{values['f1']:.3f}")
        for qtype, v in values["by_type"].items():  # question types come from the dataset: escaped
            table.add_row("", escape(qtype), str(v["n"]), f"{v['exact_match']:.3f}", f"{v['f1']:.3f}")
    console.print(table)
    if records is not None:
        console.print(f"wrote {records}", markup=False)


def register(app: typer.Typer) -> None:
    app.command("train")(train)
    app.command("eval")(evaluate)
