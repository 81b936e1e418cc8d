"""What the run commands (``evspec bench``, ``evspec spec``, ``evspec eval``) share: the progress
bar, the default run folder and the command whose options are a run config's fields
(``config_command``)."""

from __future__ import annotations

import inspect
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import Field
from pathlib import Path
from typing import Any, Literal, get_origin, get_type_hints

import typer
from rich.markup import escape

from evspec.cli import err_console
from evspec.cli.output import print_line, stdout_console
from evspec.run.config import EVENT_CANVAS_HELP, flag_of, from_options, option_fields, shown

# The commands that load models share one --event-canvas option.
EVENT_CANVAS_OPTION: Any = typer.Option("auto", "--event-canvas", help=EVENT_CANVAS_HELP)


def _option_type(f: Field[Any], hint: Any) -> Any:
    """The type typer parses a field's option as: text for a field with its own ``parse`` (and for a
    Literal, which the config checks with its own message), else the field's annotation."""
    if f.metadata.get("parse") is not None:
        return str | None if f.default is None else str
    return str if get_origin(hint) is Literal else hint


def _typer_option(f: Field[Any]) -> Any:
    if isinstance(f.default, bool) and f.default:
        raise TypeError(f"{f.name}: a bool option is a flag and must default to False")
    names = [flag_of(f), *([f.metadata["short"]] if f.metadata.get("short") else [])]
    default = None if f.default is None else shown(f, f.default) if f.metadata.get("show") else f.default
    return typer.Option(default, *names, help=f.metadata["help"])


def config_command(config_class: type[Any]) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """A run command whose options are the fields of ``config_class`` (:mod:`evspec.run.config`).

    The decorated function takes ``config`` (built from the options and checked by the class) and
    its own options (``out``, ``force``), declared as usual. Why a built signature rather than a
    typer function written out beside the dataclass: typer reads the options from the function's
    signature, so building that signature from the fields leaves each option declared once, with
    nothing to keep in step."""

    def decorate(func: Callable[..., None]) -> Callable[..., None]:
        hints = get_type_hints(config_class)
        own_hints = get_type_hints(func)
        fields = option_fields(config_class)
        names = {f.name for f in fields}
        own = [p for p in inspect.signature(func).parameters.values() if p.name != "config"]
        clash = names & {p.name for p in own}
        if clash:
            raise TypeError(f"{func.__name__}: options {sorted(clash)} are also fields of {config_class.__name__}")
        params = [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=_typer_option(f),
                                    annotation=_option_type(f, hints[f.name])) for f in fields]
        params += [p.replace(kind=inspect.Parameter.KEYWORD_ONLY, annotation=own_hints[p.name]) for p in own]

        def command(**values: Any) -> None:
            extra = {name: values.pop(name) for name in list(values) if name not in names}
            func(from_options(config_class, values), **extra)

        command.__name__, command.__qualname__, command.__doc__ = func.__name__, func.__qualname__, func.__doc__
        command.__module__ = func.__module__
        command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params}
        return command

    return decorate


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
