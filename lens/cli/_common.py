"""Shared CLI pieces: bounded option parsing into typed values, output folders, printing, progress.

Nothing here imports torch: ``lens --help`` stays fast. User text is never interpreted as
Rich markup (a prompt or model name with ``[/]`` in it prints as it is).
"""

from __future__ import annotations

import enum
import math
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.text import Text

from formats.errors import PromptError, SelectionError
from formats.output import check_target, output_folder

console = Console(stderr=True, highlight=False)  # progress and tables on stderr; --json output alone on stdout

MAX_RANGE = 100_000  # no integer option expands to more values than this
MODEL_HELP = "Zoo name (lens models), local folder or Hugging Face id."


class DType(str, enum.Enum):
    FLOAT32 = "float32"
    FLOAT16 = "float16"
    BFLOAT16 = "bfloat16"

    def torch(self):
        import torch

        return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[self.value]


class Source(str, enum.Enum):
    PATTERN = "pattern"
    KERNEL = "kernel"


def say(text: str, style: str | None = None) -> None:
    """Print ``text`` to stderr exactly as it is (no markup)."""
    console.print(Text(text, style=style or ""), soft_wrap=True)


def int_list(text: str | None, what: str, *, lo: int = 0, hi: int | None = None, max_count: int = MAX_RANGE,
             default: list[int] | None = None) -> list[int] | None:
    """``'3'``, ``'0,2,5'`` or ``'4-7'`` (inclusive) as integers, each in ``[lo, hi]``, at most
    ``max_count`` of them; ``None``/``''``/``'all'`` give ``default``. Ranges are bounded before
    they are expanded."""
    if text is None or text.strip().lower() in ("", "all"):
        return default
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        lo_s, sep, hi_s = part[1:].partition("-")
        lo_s = part[0] + lo_s if part else ""
        try:
            a = int(lo_s)
            b = int(hi_s) if sep else a
        except ValueError:
            raise SelectionError(f"--{what} {text!r} is not a list of integers like 0,2,5 or 4-7") from None
        if a > b:
            raise SelectionError(f"--{what}: range {a}-{b} is empty: write it low-high")
        top = MAX_RANGE if hi is None else hi
        if a < lo or b > top:
            raise SelectionError(f"--{what}: {b if b > top else a} is out of range: valid values are {lo}-{top}")
        if len(out) + (b - a + 1) > max_count:
            raise SelectionError(f"--{what} {text!r} names more than {max_count} values")
        out.extend(range(a, b + 1))
    return out


def float_list(text: str, what: str, *, lo: float = -math.inf, hi: float = math.inf, max_count: int = 1000) -> list[float]:
    """``'0,0.5,1'`` as finite floats in ``[lo, hi]``."""
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SelectionError(f"--{what} {text!r} is not a list of numbers like 0,0.5,1") from None
    if not values:
        raise SelectionError(f"--{what} is empty: give numbers like 0,0.5,1")
    if len(values) > max_count:
        raise SelectionError(f"--{what} names more than {max_count} values")
    for v in values:
        if not math.isfinite(v) or not lo <= v <= hi:
            raise SelectionError(f"--{what}: {v} is outside [{lo:g}, {hi:g}]")
    return values


def positive_float(value: float | None, what: str, *, hi: float = math.inf) -> float | None:
    if value is not None and (not math.isfinite(value) or not 0 < value <= hi):
        raise SelectionError(f"--{what} must be a positive number up to {hi:g}, got {value}")
    return value


def read_text(path: Path, what: str) -> str:
    """A UTF-8 text file, or a one-line error naming it."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise PromptError(f"--{what} {path} is not UTF-8 text (byte {err.start}): save it as UTF-8") from None
    except OSError as err:
        raise PromptError(f"--{what} {path} cannot be read: {err.strerror or err}") from None


def check_out(out: Path, force: bool) -> None:
    """Refuse an occupied output before anything runs (``--force`` overrides)."""
    check_target(Path(out), force)


@contextmanager
def writing(out: Path, force: bool) -> Iterator[Path]:
    """A temporary folder that replaces ``out`` when the block succeeds (see :func:`formats.output_folder`)."""
    with output_folder(out, force=force) as tmp:
        yield tmp


def print_json(obj: Any) -> None:
    from formats._json import dumps

    sys.stdout.write(dumps(obj) + "\n")


class RichProgress:
    """A :class:`pipelines.progress.Progress` drawn as Rich progress bars on stderr."""

    def __init__(self, bar):
        self.bar = bar

    def task(self, description: str, total: int | None = None, completed: int = 0):
        bar, tid = self.bar, self.bar.add_task(Text(description).plain, total=total, completed=completed)

        class _Task:
            def advance(self, n: int = 1) -> None:
                bar.advance(tid, n)

        return _Task()


@contextmanager
def progress() -> Iterator[RichProgress]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, transient=False) as bar:
        yield RichProgress(bar)


def status(message: str):
    return console.status(Text(message))


def load_model(name: str):
    """The model, with a spinner (and a one-line error for anything that is not a model)."""
    import lens

    with status(f"loading {name}"):
        return lens.load(name)
