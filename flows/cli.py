"""The ``enrich`` command line."""

from __future__ import annotations

import typer

from emulator.cli import emulator

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Enrich Parquet datasets through the Mistral Batch API.",
)
app.command("emulator")(emulator)
