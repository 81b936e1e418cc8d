"""The ``evspec`` command line: a thin typer app over the library.

Every command parses its options, calls library functions and prints with rich. Errors that
evspec raises on purpose (``EvspecError``) become one red line and exit code 1; anything else
is a bug and says so in one line too. ``--debug`` anywhere on the line shows the traceback.
Library messages name parameters (``max_new_tokens``); this line names the flags (``--max-new-tokens``).
"""

from __future__ import annotations

import os
import re
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
    for module_name in ("evspec.cli.models", "evspec.cli.bench", "evspec.cli.spec", "evspec.cli.train",
                        "evspec.cli.align"):
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
        err_console.print(f"[red]error:[/] {escape(as_flags(_one_line(error), error.parameters))}")
        return 1
    except Exception as error:
        if debug:
            raise
        err_console.print(
            f"[red]internal error:[/] {type(error).__name__}: {escape(_one_line(error))} (rerun with --debug for the traceback)"
        )
        return 2


FLAGS = {"out_dir": "--out"}
"""Library parameters whose flag is not ``--`` and the name with dashes."""


def flag_of(parameter: str) -> str:
    """The CLI flag of a library parameter: ``max_new_tokens`` -> ``--max-new-tokens``."""
    return FLAGS.get(parameter, "--" + parameter.replace("_", "-"))


def as_flags(message: str, parameters: tuple[str, ...]) -> str:
    """``message`` with each of ``parameters`` written as its flag: ``max_new_tokens`` ->
    ``--max-new-tokens``, ``force=True`` -> ``--force``, ``temperature=0`` -> ``--temperature 0``.
    Whole names only: ``generation_config.json`` stays a file name."""
    for parameter in parameters:
        flag = flag_of(parameter)
        pattern = rf"(?<![\w.-]){re.escape(parameter)}(?:=(\w[\w.]*))?(?![\w-]|\.\w)"
        message = re.sub(pattern, lambda m: flag if m.group(1) in (None, "True") else f"{flag} {m.group(1)}", message)
    return message


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
