"""The ``evspec`` command line: a thin typer app over the library.

Every command parses its options, calls library functions and prints with rich. Errors that
evspec raises on purpose (``EvspecError``) become one red line and exit code 1; anything else
is a bug and says so in one line too. ``--debug`` anywhere on the line shows the traceback.
"""

from __future__ import annotations

import os
import sys
import warnings

import typer
from rich.console import Console
from rich.markup import escape

from evspec.errors import EvspecError

try:  # typer >= 0.20 vendors click; usage errors derive from its ClickException
    from typer._click.exceptions import ClickException as _ClickException
except ImportError:  # pragma: no cover - older typer with click as a dependency
    from click import ClickException as _ClickException

app = typer.Typer(
    name="evspec",
    help="Event-camera drafters for video-language models, and honest stage timing.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    # click's plain help: flags render as flags (typer's rich panels show `--force <bool>`, a value
    # the flag does not take), and the text pipes without box-drawing characters.
    rich_markup_mode=None,
)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
) -> None:
    """evspec: event-camera drafters for video-language models."""


def _register() -> None:
    # Sub-apps import heavy libraries (torch, transformers) only inside their commands,
    # so `evspec --help` and `evspec data ...` start fast.
    from evspec.cli import data

    app.add_typer(data.app, name="data")
    for module_name in ("evspec.cli.models", "evspec.cli.bench", "evspec.cli.spec", "evspec.cli.train"):
        try:
            module = __import__(module_name, fromlist=["register"])
        except ModuleNotFoundError as error:
            if error.name != module_name:
                raise
            continue
        module.register(app)


_register()


def main(argv: list[str] | None = None) -> int:
    """Run the CLI on ``argv`` and return the exit code (used by tests and ``run``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    if not debug:
        # transformers' advice about optional backends and deprecations is noise on every run of a
        # command; --debug shows it. Set before transformers is first imported.
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    try:
        with warnings.catch_warnings():
            if not debug:
                warnings.showwarning = _show_warning
            result = app(args=argv, prog_name="evspec", standalone_mode=False)
        return result if isinstance(result, int) else 0
    except typer.Exit as stop:
        return stop.exit_code
    except _ClickException as usage:
        usage.show()
        return usage.exit_code
    except (typer.Abort, KeyboardInterrupt):
        err_console.print("[red]interrupted[/]")
        return 130
    except EvspecError as error:
        if debug:
            raise
        # one line: file names may hold rich markup, and a library's message line breaks
        err_console.print(f"[red]error:[/] {escape(_one_line(error))}")
        return 1
    except Exception as error:
        if debug:
            raise
        err_console.print(
            f"[red]internal error:[/] {type(error).__name__}: {escape(_one_line(error))} (rerun with --debug for the traceback)"
        )
        return 2


def _one_line(error: BaseException) -> str:
    return " ".join(line.strip() for line in str(error).splitlines() if line.strip())


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    """evspec's own warnings as one yellow line (no source line); others as Python shows them."""
    from evspec.errors import EvspecWarning

    if issubclass(category, EvspecWarning):
        err_console.print(f"[yellow]warning:[/] {escape(str(message))}")
    else:
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
