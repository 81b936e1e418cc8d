"""`evspec data ...`: synthesise, render, inspect and check event + video data."""

from __future__ import annotations

import typer

app = typer.Typer(help="Synthesise, render, inspect and check event + video data.", no_args_is_help=True)
