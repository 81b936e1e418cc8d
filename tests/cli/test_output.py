"""Tables never cut a path or a number: folded on a terminal, tab-separated rows elsewhere."""

from __future__ import annotations

import io

from rich.console import Console
from rich.table import Table

from evspec.cli.output import print_table, table_lines

LONG = "/data/" + "very-long-folder-name/" * 6 + "synth_0005.mp4"


def _table() -> Table:
    table = Table(title="2 problems in [b]x[/b]")
    for column in ("sample", "file", "total ms"):
        table.add_column(column, no_wrap=True)
    table.add_row("synth_0005", LONG, "123456.789")
    return table


def test_on_a_narrow_terminal_columns_fold_instead_of_cutting() -> None:
    out = io.StringIO()
    print_table(_table(), Console(file=out, force_terminal=True, width=40, color_system=None))
    text = out.getvalue()
    assert "…" not in text
    cells = [line.split("│")[1:-1] for line in text.splitlines() if line.startswith("│")]
    column = ["".join(row[i].strip() for row in cells) for i in range(3)]  # each column's folded pieces
    assert column == ["synth_0005", LONG, "123456.789"]


def test_piped_tables_are_tab_separated_rows_in_full() -> None:
    out = io.StringIO()
    print_table(_table(), Console(file=out, force_terminal=False, width=20))
    assert out.getvalue().splitlines() == table_lines(_table())
    assert table_lines(_table()) == ["# 2 problems in x", "sample\tfile\ttotal ms", f"synth_0005\t{LONG}\t123456.789"]
