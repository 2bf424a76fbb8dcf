"""Shared CLI pieces: bounded option parsing into typed values, output folders, printing, progress.

Nothing here imports torch: ``lens --help`` stays fast. User text is never interpreted as
Rich markup (a prompt or model name with ``[/]`` in it prints as it is).
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.text import Text

from attnlens.formats.errors import PromptError, SelectionError
from attnlens.formats.output import check_target, output_folder
from lens.cli._terminal import printable

console = Console(stderr=True, highlight=False)  # progress and tables on stderr; --json output alone on stdout

MAX_RANGE = 100_000  # no integer option expands to more values than this
MAX_TEXT_BYTES = 32 * 2**20  # prompt and text files read at most this much
MODEL_HELP = "Zoo name (lens models), local folder or Hugging Face id."


def say(text: str, style: str | None = None) -> None:
    """Print ``text`` to stderr as it is (no markup), control characters escaped (see :mod:`lens.cli._terminal`)."""
    console.print(Text(printable(text), style=style or ""), soft_wrap=True)


_INT_PART = re.compile(r"(-?[0-9]+)(?:-(-?[0-9]+))?", re.ASCII)
_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?", re.ASCII)


def int_list(text: str | None, what: str, *, lo: int = 0, hi: int | None = None, max_count: int = MAX_RANGE,
             default: list[int] | None = None) -> list[int] | None:
    """``'3'``, ``'0,2,5'`` or ``'4-7'`` (inclusive) as integers, each in ``[lo, hi]``, at most
    ``max_count`` of them; ``None``/``''``/``'all'`` give ``default``. Only ASCII digits count
    (``300.5``, ``1_000``, ``+3`` or ``1e3`` are refused, never rounded); ranges are bounded
    before they are expanded."""
    if text is None or text.strip().lower() in ("", "all"):
        return default
    out: list[int] = []
    for part in text.split(","):
        m = _INT_PART.fullmatch(part.strip())
        if m is None:
            raise SelectionError(f"--{what} {text!r} is not a list of integers like 0,2,5 or 4-7")
        a = int(m.group(1))
        b = int(m.group(2)) if m.group(2) is not None else a
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
    """``'0,0.5,1'`` as finite floats in ``[lo, hi]`` (plain decimal numbers only: no ``nan``,
    ``inf`` or ``1_0``)."""
    parts = [x.strip() for x in text.split(",")]
    if not any(parts):
        raise SelectionError(f"--{what} is empty: give numbers like 0,0.5,1")
    if not all(_NUMBER.fullmatch(x) for x in parts):
        raise SelectionError(f"--{what} {text!r} is not a list of numbers like 0,0.5,1")
    values = [float(x) for x in parts]
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


def check_text(text: str, what: str) -> str:
    """``text`` from the command line, refused in one line when it is not valid UTF-8 (Python
    keeps undecodable argv bytes as lone surrogates, which fail later, deep in a tokenizer)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        bad = text[err.start]
        byte = f"byte 0x{ord(bad) - 0xDC00:02x}" if 0xDC80 <= ord(bad) <= 0xDCFF else f"code point U+{ord(bad):04X}"
        raise PromptError(f"--{what} is not valid UTF-8 text ({byte} at character {err.start}): "
                          "pass UTF-8 text") from None
    return text


def check_prompt(text: str, what: str = "prompt") -> str:
    """A prompt from the command line: valid UTF-8 and not blank."""
    if not check_text(text, what).strip():
        raise PromptError(f"--{what} is empty: give the text of a prompt")
    return text


def read_text(path: Path, what: str, *, max_bytes: int = MAX_TEXT_BYTES) -> str:
    """A UTF-8 text file of at most ``max_bytes``, or a one-line error naming it. The read is
    bounded, so ``/dev/zero`` or an endless pipe is refused instead of filling memory."""
    try:
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as err:
        raise PromptError(f"--{what} {path} cannot be read: {err.strerror or err}") from None
    if len(data) > max_bytes:
        raise PromptError(f"--{what} {path} is larger than {max_bytes // 2**20} MiB: give a smaller text file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise PromptError(f"--{what} {path} is not UTF-8 text (byte {err.start}): save it as UTF-8") from None


def prompt_lines(path: Path, what: str) -> list[str]:
    """The non-blank lines of a prompt file (one prompt each); a file without any is refused."""
    lines = [line for line in read_text(path, what).splitlines() if line.strip()]
    if not lines:
        raise PromptError(f"--{what} {path} holds no prompt: every line is empty (give one prompt per line)")
    return lines


def check_out(out: Path, force: bool) -> None:
    """Refuse an occupied output before anything runs (``--force`` overrides)."""
    check_target(Path(out), force)


@contextmanager
def writing(out: Path, force: bool) -> Iterator[Path]:
    """A temporary folder that replaces ``out`` when the block succeeds (see :func:`formats.output_folder`)."""
    with output_folder(out, force=force) as tmp:
        yield tmp


def print_json(obj: Any) -> None:
    from attnlens.formats._json import dumps

    sys.stdout.write(dumps(obj) + "\n")


class RichProgress:
    """A :class:`pipelines.progress.Progress` drawn as Rich progress bars on stderr."""

    def __init__(self, bar):
        self.bar = bar

    def task(self, description: str, total: int | None = None, completed: int = 0):
        bar, tid = self.bar, self.bar.add_task(printable(description), total=total, completed=completed)

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
    return console.status(Text(printable(message)))


TRUST_REMOTE_CODE = False  # `lens --trust-remote-code ...`


def load_model(name: str, **load_kwargs):
    """The model, with a spinner (and a one-line error for anything that is not a model).
    ``load_kwargs``: what :meth:`lens.cli._options.PlacementGroup.load_kwargs` returns (a model split with accelerate)."""
    import lens

    with status(f"loading {name}"):
        return lens.load(name, trust_remote_code=TRUST_REMOTE_CODE, **load_kwargs)


# ---- distributed runs (the options: lens.cli._options.RayGroup) ----------------------------------
@contextmanager
def executor(lm, model: str, options, load_kwargs: dict[str, Any] | None = None) -> Iterator[Any]:
    """Where a command's items run: this process (``options`` None) or Ray workers that load
    ``model`` with ``load_kwargs``; stopped (workers, and a cluster it started) on exit."""
    from attnlens.pipelines.executors import ModelSpec, make_executor, max_memory_items

    spec = None
    if options is not None:
        kw = load_kwargs or {}
        spec = ModelSpec(model, device_map=kw.get("device_map"), max_memory=max_memory_items(kw.get("max_memory")),
                         offload_folder=kw.get("offload_folder"))
    with make_executor(lm, spec, options) as ex:
        if options is not None:
            say(f"running on {ex.describe()}; each worker loads {model}")
        yield ex
