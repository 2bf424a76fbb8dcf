"""The ``lens`` command line: one typer app, one module per command group.

Errors the user can cause (``AttnlensError``) print as one red line and exit with
status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys

import typer

from lens.errors import AttnlensError

app = typer.Typer(
    name="lens",
    help="attnlens: capture and analyse attention in transformer models.\n\n"
    "Example: lens capture smollm2-135m --prompt 'The capital of France is' --layers 3 --out caps/fr",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

# Command modules register themselves on `app` when imported.
from lens.cli import ablate_cmds, capture_cmds, dashboard_cmds, heads_cmds, models_cmds, scan_cmds  # noqa: E402,F401


def main() -> None:
    from rich.console import Console

    try:
        app()
    except AttnlensError as err:
        Console(stderr=True).print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
        sys.exit(2)
