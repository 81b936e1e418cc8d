"""A run config is one frozen dataclass whose fields carry their command-line option in ``metadata``.

Each field is written once, with :func:`option`: its default, its help, its flag, and whether it
is part of the run's identity. From that one declaration follow

- the command's options (``evspec.cli.common.config_command`` builds the typer signature from it),
- the resume identity (:func:`identity_fields`, :func:`identity`: what a rerun into the same folder
  must match),
- the recorded command line (:func:`command_line`: the ``evspec ...`` line in ``config.json``), and
- the config recorded in ``config.json`` and ``summary.json`` (``dataclasses.asdict``), which the
  reports read their settings from.

Nothing here imports torch (the CLI builds its options from these classes at start-up).
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Iterable, Mapping
from dataclasses import MISSING, Field, field, fields
from typing import Any, Literal

CacheKind = Literal["eager", "static", "compiled"]
CACHES: tuple[str, ...] = ("eager", "static", "compiled")

EVENT_CANVAS_HELP = (
    "EventGPT's event frames: auto (what the checkpoint was trained with: evspec's record it, upstream's "
    "otherwise), upstream (its chunking, each chunk on its own canvas) or sensor (one sensor-sized canvas)."
)


def option(
    default: Any, help: str, *, flag: str | None = None, short: str | None = None, identity: bool = False,
    always: bool = False, parse: Callable[[str], Any] | None = None, show: Callable[[Any], str] | None = None,
) -> Any:
    """A config field and its option. ``flag`` defaults to ``--`` + the name with dashes;
    ``identity``: a resumed run must keep its value; ``always``: the recorded command names it
    even at its default (what ran: the models); ``parse``/``show``: the option's text <-> the
    field's value, for a field that is not a plain str/int/float/bool (e.g. a comma-separated list)."""
    return field(default=default, metadata={
        "help": help, "flag": flag, "short": short, "identity": identity, "always": always, "parse": parse, "show": show,
    })


def flag_of(f: Field[Any]) -> str:
    """The option's long flag: ``--max-new-tokens`` for ``max_new_tokens`` unless the field names one."""
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def option_fields(config: Any) -> tuple[Field[Any], ...]:
    """The fields of a run config class (or instance); every one must be declared with :func:`option`."""
    found = fields(config)
    bare = [f.name for f in found if "help" not in f.metadata]
    if bare:
        raise TypeError(f"{getattr(config, '__name__', type(config).__name__)}: fields {bare} are not declared with option()")
    if any(f.default is MISSING for f in found):
        raise TypeError("every run config field needs a default (it is an option)")
    return found


def shown(f: Field[Any], value: Any) -> str:
    """A field's value as the option's text."""
    show = f.metadata.get("show")
    return show(value) if show is not None else str(value)


def parsed(f: Field[Any], value: Any) -> Any:
    """The option's value (as the command line parsed it) as the field's value."""
    parse = f.metadata.get("parse")
    return parse(value) if parse is not None and value is not None else value


def from_options(config_class: type[Any], values: Mapping[str, Any]) -> Any:
    """The config the options' values make (one value per field, keyed by field name)."""
    return config_class(**{f.name: parsed(f, values[f.name]) for f in option_fields(config_class)})


def identity_fields(config: Any) -> tuple[str, ...]:
    """The names of the fields marked ``identity``: a rerun into the same folder must match them."""
    return tuple(f.name for f in option_fields(config) if f.metadata["identity"])


def identity(config: Any, **resolved: Any) -> dict[str, Any]:
    """The run's identity: the identity fields' values, with ``resolved`` replacing some of them by
    what they resolve to (``device="auto"`` -> ``"cpu"``) or adding what the run derives (the bench's
    decode strategy)."""
    return {**{name: getattr(config, name) for name in identity_fields(config)}, **resolved}


def command_line(config: Any, prog: Iterable[str], extra: Iterable[str] = ()) -> str:
    """The command that reproduces ``config``: ``prog``, every option whose value is not its default
    (and the ``always`` ones) as its flag, then ``extra`` (``--out``, ``--force``). A bool option
    is a flag without a value (the options' bools all default to False)."""
    args = list(prog)
    for f in option_fields(config):
        value = getattr(config, f.name)
        if value == f.default and not f.metadata["always"]:
            continue
        if isinstance(value, bool):
            args += [flag_of(f)] if value else []
        elif value is not None:
            args += [flag_of(f), shown(f, value)]
    return shlex.join([*args, *extra])
