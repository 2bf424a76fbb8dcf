"""The ``lens`` command line: one typer app, one module per command group.

Commands parse options into typed values and call :mod:`pipelines` (the workflows); they
print and write, nothing more. Errors the user can cause (every
:class:`~formats.errors.AttnlensError`, and usage errors) print as one line and exit with
status 2; anything else is a bug: one line with a hint to rerun with ``--debug`` for the
traceback. ``lens --help`` imports no torch.
"""

from __future__ import annotations

import os
import sys

import typer

app = typer.Typer(
    name="lens",
    help="attnlens: capture and analyse attention in transformer models.\n\n"
    "Example: lens capture smollm2-135m --prompt 'The capital of France is' --layers 3 --out caps/fr",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks of unexpected errors."),
          trust_remote_code: bool = typer.Option(
              False, "--trust-remote-code",
              help="Let a model folder or hub id run the Python code it ships (auto_map); off by default.")) -> None:
    """(``--debug`` is read by :func:`main`, which decides how to report an unexpected error.)"""
    from lens.cli import _common

    _common.TRUST_REMOTE_CODE = trust_remote_code  # read by load_model, for every command that loads a model


# Command modules register themselves on `app` when imported.
from lens.cli import (  # noqa: E402,F401
    ablate_cmds,
    capture_cmds,
    dashboard_cmds,
    heads_cmds,
    models_cmds,
    scan_cmds,
    speech_cmds,
)


def _line(text: str) -> str:
    from lens.cli._terminal import printable

    return printable(" ".join(str(text).split()))


def _click_errors() -> tuple[tuple[type, ...], tuple[type, ...], tuple[type, ...]]:
    """(usage errors, other click errors, aborts) of the click typer runs on (typer >= 0.25 vendors its own)."""
    mods = []
    for name in ("typer._click.exceptions", "click.exceptions"):
        try:
            mods.append(__import__(name, fromlist=["UsageError"]))
        except ImportError:
            pass
    return (tuple(m.UsageError for m in mods), tuple(m.ClickException for m in mods),
            (typer.Abort, *(m.Abort for m in mods if hasattr(m, "Abort"))))


def main(argv: list[str] | None = None) -> None:
    """The console entry point: run the app, turning every failure into one line on stderr."""
    from attnlens.formats.errors import AttnlensError

    usage_errors, click_errors, aborts = _click_errors()

    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args or os.environ.get("ATTNLENS_DEBUG") == "1"
    try:
        code = app(args=args, prog_name="lens", standalone_mode=False)
    except AttnlensError as err:  # the library names its arguments; the user typed flags
        from lens.cli._flags import as_flags

        sys.stderr.write(f"error: {_line(as_flags(str(err)))}\n")
        sys.exit(2)
    except usage_errors as err:
        where = f" (see `{err.ctx.command_path} --help`)" if getattr(err, "ctx", None) is not None else ""
        sys.stderr.write(f"error: {_line(err.format_message())}{where}\n")
        sys.exit(2)
    except click_errors as err:
        sys.stderr.write(f"error: {_line(err.format_message())}\n")
        sys.exit(err.exit_code or 2)
    except (*aborts, KeyboardInterrupt):
        sys.stderr.write("interrupted\n")
        sys.exit(130)
    except Exception as err:  # a bug: keep it to one line unless asked
        if debug:
            raise
        sys.stderr.write(f"error: unexpected {type(err).__name__}: {_line(err)[:300]} "
                         "(a bug in attnlens: rerun with --debug for the traceback)\n")
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)
