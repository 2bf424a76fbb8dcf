"""Shared CLI pieces: option parsing into typed values, output folders, JSON printing."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from lens.errors import OutputExistsError, SelectionError
from lens.sites import Site

console = Console(stderr=True)  # progress and tables on stderr; --json output alone on stdout

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def parse_int_list(text: str | None, what: str) -> list[int] | None:
    """'3', '0,2,5' or '4-7' (inclusive ranges) into ints; None for all."""
    if text is None or text.strip().lower() in ("", "all"):
        return None
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        try:
            if "-" in part[1:]:
                lo, hi = part[0] + part[1:].split("-", 1)[0], part[1:].split("-", 1)[1]
                out.extend(range(int(lo), int(hi) + 1))
            else:
                out.append(int(part))
        except ValueError:
            raise SelectionError(f"--{what} {text!r} is not a list of integers like 0,2,5 or 4-7") from None
    return out


def parse_sites(text: str) -> list[Site]:
    return [Site.parse(s) for s in text.split(",") if s.strip()]


def parse_dtype(text: str | None) -> torch.dtype | None:
    if text is None:
        return None
    if text not in DTYPES:
        raise SelectionError(f"--dtype {text!r} is not one of {', '.join(DTYPES)}")
    return DTYPES[text]


def prepare_out_dir(out: Path, force: bool) -> Path:
    """An empty output folder; a non-empty one is replaced only with --force."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not force:
            raise OutputExistsError(f"{out} already exists and is not empty: pass --force to overwrite it")
        if out.is_dir():
            shutil.rmtree(out)
        else:
            out.unlink()
    out.mkdir(parents=True, exist_ok=True)
    return out


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


def progress():
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, transient=False)


def status(message: str):
    return console.status(message)
