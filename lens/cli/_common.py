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

import typer
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


TRUST_REMOTE_CODE = False  # `lens --trust-remote-code ...`


def load_model(name: str, **load_kwargs):
    """The model, with a spinner (and a one-line error for anything that is not a model).
    ``load_kwargs``: what :func:`placement` returns (a model split with accelerate)."""
    import lens

    with status(f"loading {name}"):
        return lens.load(name, trust_remote_code=TRUST_REMOTE_CODE, **load_kwargs)


# ---- big models and distributed runs: options shared by the commands that take them ----------
class DeviceMap(str, enum.Enum):
    AUTO = "auto"
    BALANCED = "balanced"
    BALANCED_LOW_0 = "balanced_low_0"
    SEQUENTIAL = "sequential"


DEVICE_MAP_OPTION = typer.Option(None, "--device-map", help="Split the model over GPUs, CPU memory and disk with "
                                 "accelerate (auto: fill GPUs, then CPU, then disk). See docs/distributed.md.")
MAX_MEMORY_OPTION = typer.Option(None, "--max-memory", help="Per-device budget with --device-map, e.g. "
                                 "'0=20GiB,1=20GiB,cpu=64GiB,disk=500GiB' (GPU index, cpu, mps or disk).")
OFFLOAD_FOLDER_OPTION = typer.Option(None, "--offload-folder", help="Where disk-offloaded weights go "
                                     "(default: a temporary folder removed at exit).")
RAY_OPTION = typer.Option(None, "--ray", help="Run the items on Ray workers: 'auto' (join this machine's cluster or "
                          "start one) or a cluster address (ray://head:10001, head:6379). Needs "
                          "pip install 'attnlens[distributed]'.")
WORKERS_OPTION = typer.Option(None, "--workers", min=1, max=4096, help="Ray workers, each holding one copy of the "
                              "model (default 2; with --ray).")
CPUS_PER_WORKER_OPTION = typer.Option(None, "--cpus-per-worker", min=0.0, max=1024.0,
                                      help="CPUs Ray reserves per worker, also its torch threads (default 1).")
GPUS_PER_WORKER_OPTION = typer.Option(None, "--gpus-per-worker", min=0.0, max=64.0,
                                      help="GPUs per worker (default 0; >0 puts the model on the worker's GPU, "
                                      "or splits it over its GPUs with --device-map).")
REMOTE_OPTION = typer.Option(False, "--remote", help="With --backend nnsight: run the trace on NDIF (needs "
                             "NDIF_API_KEY and a model NDIF hosts; untested here).")


def placement(device_map: DeviceMap | None, max_memory: str | None, offload_folder: Path | None) -> dict[str, Any]:
    """``lens.load`` keywords for ``--device-map/--max-memory/--offload-folder`` (validated; {} without them)."""
    if device_map is None:
        if max_memory or offload_folder:
            raise SelectionError("--max-memory and --offload-folder need --device-map (e.g. --device-map auto)")
        return {}
    from lens.zoo.placement import parse_max_memory

    kw: dict[str, Any] = {"device_map": device_map.value}
    mem = parse_max_memory(max_memory)
    if mem:
        kw["max_memory"] = mem
    if offload_folder is not None:
        kw["offload_folder"] = str(offload_folder)
    return kw


def ray_options(ray: str | None, workers: int | None, cpus_per_worker: float | None,
                gpus_per_worker: float | None):
    """A :class:`pipelines.executors.RayOptions` for ``--ray`` (None without it); a one-line
    error when Ray is not installed, before any model loads."""
    if ray is None:
        given = [n for n, v in (("--workers", workers), ("--cpus-per-worker", cpus_per_worker),
                                ("--gpus-per-worker", gpus_per_worker)) if v is not None]
        if given:
            raise SelectionError(f"{', '.join(given)} apply to Ray runs: add --ray auto (or a cluster address)")
        return None
    from pipelines.executors import RayOptions, import_ray

    options = RayOptions(address=ray.strip(), workers=2 if workers is None else workers,
                         cpus_per_worker=1.0 if cpus_per_worker is None else cpus_per_worker,
                         gpus_per_worker=0.0 if gpus_per_worker is None else gpus_per_worker)
    import_ray()
    return options


@contextmanager
def executor(lm, model: str, options, load_kwargs: dict[str, Any] | None = None) -> Iterator[Any]:
    """Where a command's items run: this process (``options`` None) or Ray workers that load
    ``model`` with ``load_kwargs``; stopped (workers, and a cluster it started) on exit."""
    from pipelines.executors import ModelSpec, make_executor, max_memory_items

    spec = None
    if options is not None:
        kw = load_kwargs or {}
        spec = ModelSpec(model, device_map=kw.get("device_map"), max_memory=max_memory_items(kw.get("max_memory")),
                         offload_folder=kw.get("offload_folder"))
    with make_executor(lm, spec, options) as ex:
        if options is not None:
            say(f"running on {ex.describe()}; each worker loads {model}")
        yield ex
