"""Output a user can pipe: tables that never cut a path or a number, and one JSON document.

On a terminal a table is drawn by rich with every column folding (a long path wraps onto more
lines instead of ending in an ellipsis). When stdout is not a terminal (a pipe, a file), the
same table is written as plain tab-separated rows: a ``# title`` line, the header (when the
table has one) and one line per row, markup removed, nothing wrapped or cut, so ``cut``,
``awk`` and spreadsheets read it.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

stdout_console = Console(highlight=False, soft_wrap=True)
"""The commands' stdout (rich resolves ``sys.stdout`` when printing, so tests can capture it)."""


def _plain(cell: Any) -> str:
    """A cell as plain text: markup strings rendered, ``Text`` as its characters."""
    if isinstance(cell, Text):
        return cell.plain
    if isinstance(cell, str):
        try:
            return Text.from_markup(cell).plain
        except Exception:  # not valid markup: the string is the text
            return cell
    return str(cell)


def _field(text: str) -> str:
    """One tab-separated field: tabs and line breaks inside it become spaces."""
    return " ".join(text.replace("\t", " ").splitlines())


def table_lines(table: Table) -> list[str]:
    """The plain tab-separated form of a rich table (``# title``, header, rows)."""
    lines = [f"# {_field(_plain(table.title))}"] if table.title else []
    if table.show_header:
        lines.append("\t".join(_field(_plain(column.header)) for column in table.columns))
    columns = [list(column.cells) for column in table.columns]
    for row in zip(*columns):
        lines.append("\t".join(_field(_plain(cell)) for cell in row))
    return lines


def print_table(table: Table, console: Console | None = None) -> None:
    """A table on a terminal (columns fold, never cut), plain tab-separated rows elsewhere."""
    console = console or stdout_console
    if console.is_terminal:
        for column in table.columns:
            column.overflow = "fold"
            column.no_wrap = False
        console.print(table)
        return
    out = console.file  # written directly: rich would expand the tabs into spaces
    out.write("".join(f"{line}\n" for line in table_lines(table)))
    out.flush()


def print_json(document: Any) -> None:
    """Exactly one JSON document on stdout (paths and other objects as strings)."""
    sys.stdout.write(json.dumps(document, indent=2, default=str, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def print_line(text: str, console: Console | None = None) -> None:
    """One line of plain text, never wrapped or cut, tabs kept (no markup interpreted)."""
    out = (console or stdout_console).file
    out.write(text + "\n")
    out.flush()
