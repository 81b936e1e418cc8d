"""What the run commands (``evspec bench``, ``evspec spec``) share: the progress bar, the default
run folder and the dataset part of the command line each records in its results."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape

from evspec.cli import err_console
from evspec.cli.output import print_line, stdout_console


# The commands that load models share one --event-canvas option.
EVENT_CANVAS_OPTION: Any = typer.Option(
    "auto", "--event-canvas",
    help="EventGPT's event frames: auto (what the checkpoint was trained with: evspec's record it, upstream's "
         "otherwise), upstream (its chunking, each chunk on its own canvas) or sensor (one sensor-sized canvas).",
)


class RichReporter:
    """The runner's Reporter (:class:`evspec.run.shared.Reporter`) as a rich progress bar;
    warnings print above the bar.

    The bar is redrawn only when the run reports (between samples), never by rich's refresh
    thread, so no thread of ours competes with a timed stage for the GIL.
    """

    def __init__(self, progress: Any, line: Callable[[Any], str] | None = None) -> None:
        self.progress = progress
        self.task = progress.add_task("starting", total=None)
        self.line = line

    def start(self, total: int, done: int) -> None:
        self.progress.update(self.task, total=total, completed=done, refresh=True)

    def status(self, message: str) -> None:  # rich renders a task description as markup
        self.progress.update(self.task, description=escape(message), refresh=True)

    def warn(self, message: str) -> None:
        self.progress.console.print(f"[yellow]warning:[/] {escape(message)}", highlight=False, soft_wrap=True)

    def advance(self, record: Any) -> None:
        """Move the bar; when stdout is not a terminal, also print the sample's line there at once
        (a pipe sees each sample as it finishes, not everything at the end)."""
        self.progress.update(self.task, advance=1, refresh=True)
        if self.line is not None and not stdout_console.is_terminal:
            print_line(self.line(record))
            sys.stdout.flush()


@contextmanager
def progress_reporter(line: Callable[[Any], str] | None = None) -> Iterator[RichReporter]:
    """A transient progress bar on stderr (gone when the run ends), as a :class:`RichReporter`;
    ``line(record)`` is the one line a finished sample prints when stdout is piped."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err_console, transient=True, auto_refresh=False) as progress:
        yield RichReporter(progress, line)


def default_out(command: str) -> Path:
    """``runs/<command>-<timestamp>``: the run folder when ``--out`` is not given."""
    return Path("runs") / f"{command}-{time.strftime('%Y%m%d-%H%M%S')}"


def dataset_args(config: Any) -> list[str]:
    """``--dataset``, ``--split``, ``--max-samples`` as given (a config with those three fields)."""
    args: list[str] = []
    if config.dataset is not None:
        args += ["--dataset", config.dataset]
    if config.split is not None:
        args += ["--split", config.split]
    if config.max_samples is not None:
        args += ["--max-samples", str(config.max_samples)]
    if getattr(config, "allow_outside_root", False):
        args.append("--allow-outside-root")
    return args
