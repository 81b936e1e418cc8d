"""Library errors name parameters (``max_new_tokens``); the CLI's error line names flags (``--max-new-tokens``)."""

from __future__ import annotations

import ast
import re
from collections.abc import Callable
from pathlib import Path

import pytest

import evspec
from evspec import errors
from evspec.bench.runner import BenchConfig
from evspec.cli import as_flags, main
from evspec.errors import ConfigError, EvspecError
from evspec.models.generation import check_generation_source
from evspec.run.shared import check_run_options
from evspec.spec.run import SpecRunConfig

PACKAGE = Path(evspec.__file__).parent
ERROR_NAMES = {name for name, value in vars(errors).items()
               if isinstance(value, type) and issubclass(value, (EvspecError, errors.EvspecWarning))}
FLAG = re.compile(r"(?<![\w-])--[a-z]")


def _strings(node: ast.AST) -> list[str]:
    return [n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)]


def test_no_library_error_or_warning_names_a_flag() -> None:
    """Every ``raise XError(...)`` / ``XWarning(...)`` of evspec's own types outside ``evspec/cli``."""
    offenders, seen = [], 0
    for path in PACKAGE.rglob("*.py"):
        if "cli" in path.relative_to(PACKAGE).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ERROR_NAMES:
                seen += 1
                offenders += [f"{path.relative_to(PACKAGE)}:{node.lineno}: {text!r}"
                              for text in _strings(node) if FLAG.search(text)]
    assert seen > 100  # the sweep reads the package's errors, not nothing
    assert offenders == []


def _run_options(**changed: object) -> None:
    options: dict[str, object] = dict(max_new_tokens=8, min_new_tokens=0, max_samples=None, warmup=0,
                                      dtype="auto", cache="eager")
    check_run_options(**{**options, **changed})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("call", "message", "parameters"),
    [
        (lambda: _run_options(max_new_tokens=0), "max_new_tokens must be >= 1, got 0", ("max_new_tokens",)),
        (lambda: _run_options(min_new_tokens=9), "min_new_tokens must be between 0 and max_new_tokens (8), got 9",
         ("min_new_tokens", "max_new_tokens")),
        (lambda: _run_options(dtype="float7"), "unknown dtype 'float7'", ("dtype",)),
        (lambda: BenchConfig(warmup=-1), "warmup must be >= 0, got -1", ("warmup",)),
        (lambda: SpecRunConfig(gamma=0), "gamma must be >= 1, got 0", ("gamma",)),
        (lambda: SpecRunConfig(draft="oracle:0.5", temperature=0.8), "use temperature=0", ("temperature",)),
        (lambda: check_generation_source("mine"), "unknown generation_config 'mine'", ("generation_config",)),
    ],
)
def test_a_library_call_names_the_parameter(call: Callable[[], object], message: str,
                                             parameters: tuple[str, ...]) -> None:
    with pytest.raises(ConfigError) as raised:
        call()
    assert message in str(raised.value) and "--" not in str(raised.value)
    assert raised.value.parameters == parameters


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["bench", "--max-new-tokens", "0"], "error: --max-new-tokens must be >= 1, got 0"),
        (["bench", "--max-new-tokens", "8", "--min-new-tokens", "9"],
         "error: --min-new-tokens must be between 0 and --max-new-tokens (8), got 9"),
        (["bench", "--dtype", "float7"], "error: unknown --dtype 'float7'"),
        (["spec", "--warmup", "-1"], "error: --warmup must be >= 0, got -1"),
        (["spec", "--draft", "oracle:0.5", "--temperature", "0.8"], "use --temperature 0"),
        (["bench", "--generation-config", "mine"], "error: unknown --generation-config 'mine'"),
    ],
)
def test_the_same_mistake_through_the_cli_names_the_flag(argv: list[str], message: str,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_parameters_become_flags_by_whole_name_only() -> None:
    parameters = ("generation_config", "force", "temperature", "out_dir", "lr")
    message = ("generation_config checkpoint: generation_config.json files disagree; rerun with force=True; "
               "use temperature=0.5 or out_dir /tmp/run; lower lr.")
    assert as_flags(message, parameters) == (
        "--generation-config checkpoint: generation_config.json files disagree; rerun with --force; "
        "use --temperature 0.5 or --out /tmp/run; lower --lr."
    )
    assert as_flags("force the lr", ()) == "force the lr"  # only the parameters the error names
