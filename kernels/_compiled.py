"""The CPU stats path's compiled kernel (``_cpu_fused.cpp``): when it runs, and building it.

The PyTorch path (:mod:`kernels._cpu_stats`) moves each ``[B, H, chunk, N]`` score block through memory once per
operation; ``_cpu_fused.cpp`` runs the same algorithm on blocks small enough to stay in the L2 cache, with the row
statistics in two vectorised passes per row.  Measured on this project's 2-core Xeon (torch 2.13, one thread;
``benchmarks/results/cpu_stats.md``), the attention of all 30 layers of SmolLM2-135M: at 8,192 tokens 24.5 s against
SDPA's 21.3 s (the PyTorch path 39.6 s), at 2,048 tokens 1.70 s against 1.63 s (2.82 s).  It is built once per
machine and torch version with torch's C++ extension tools (about 25 s; ``~/.cache/torch_extensions``, or
``TORCH_EXTENSIONS_DIR``), then loaded in well under a second.  Building needs a C++ compiler and ninja.  It covers
causal or full attention with a key-padding mask and every statistic; calls with an explicit mask (sliding windows,
packed sequences) take the PyTorch path.

Policy, per attention call (``compile`` argument of the kernels, or the ``ATTNLENS_COMPILE`` environment variable):

* ``None`` (the default) reads ``ATTNLENS_COMPILE``: ``0`` never, ``1`` whenever the inputs are on the CPU, unset or
  ``auto`` for calls with at least ``MIN_SCORES`` visible scores when a compiler and ninja are there (SmolLM2-135M
  from about 1,000 tokens on: smaller calls take milliseconds either way, and a first build should not fall on them).
* ``True`` / ``False`` decide for that call; ``True`` without a compiler or ninja is an error.

If building or loading fails, a warning says so once and the process keeps the PyTorch path.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import shutil
import sys
import sysconfig
import time
import warnings
from pathlib import Path
from types import ModuleType

import torch

from .errors import KernelInputError

ENV = "ATTNLENS_COMPILE"
MIN_SCORES = 1 << 22  # visible scores of one call (batch x heads x visible query-key pairs)
BLOCK_BYTES = 3 << 20  # float32 scores per block: about the L2 cache of one core here (2 MB) and a bit
SOURCE = Path(__file__).with_name("_cpu_fused.cpp")
_FINISHED = "finished"  # written next to the .so once a build has completed
_STALE_LOCK_S = 600  # a build takes about 30 s; a lock this old belongs to a build that died
_ON, _OFF = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
_failed = False  # set when building failed once: the process stays on the PyTorch path


def compiler_available() -> bool:
    """The C++ compiler torch's extension tools run (``CXX``, else ``c++``) and ninja (on PATH or next to this Python)
    are there."""
    return shutil.which(os.environ.get("CXX", "c++")) is not None and _ninja() is not None


def _ninja() -> str | None:
    """Path of ninja: on PATH, or the ``ninja`` wheel's, next to the running interpreter (a venv not activated)."""
    found = shutil.which("ninja")
    if found:
        return found
    beside = Path(sys.executable).with_name("ninja")
    return str(beside) if beside.exists() else None


def use_compiled(requested: bool | None, q: torch.Tensor, n_scores: int) -> bool:
    """Whether this call of the CPU stats path runs the compiled kernel (see the module docstring)."""
    if requested is not None and not isinstance(requested, bool):
        raise KernelInputError(f"compile={requested!r} must be True, False or None (None: {ENV} or by size)")
    if q.device.type != "cpu" or _failed or requested is False:
        return False
    if requested is None:
        env = os.environ.get(ENV, "auto").strip().lower()
        if env not in _ON + _OFF + ("auto", ""):
            raise KernelInputError(f"{ENV}={env!r} is not one of 0, 1, auto")
        if env in _OFF:
            return False
        if env not in _ON:
            return n_scores >= MIN_SCORES and compiler_available()
    if not compiler_available():
        raise KernelInputError(f"compile=True (or {ENV}=1) needs a C++ compiler (CXX or c++ on PATH) and ninja")
    return True


def block_rows(group: int, n_keys: int) -> int:
    """Query rows per block and head, for ``group`` query heads per kv head: a block of ``BLOCK_BYTES`` at most
    (8 to 128 rows).  Measured on this machine (one thread, causal): for 3 heads per kv head 32 rows are best at
    8,192 keys (64 rows 4% slower, 96 rows 13%), 96-128 rows at 1,024-2,048 keys (32 rows 3-10% slower); for one head
    per kv head 96-128 rows beat 32 by 13-22% at 1,024-4,096 keys."""
    return max(8, min(128, BLOCK_BYTES // (4 * group * max(1, n_keys))))


def extension() -> ModuleType | None:
    """The built kernel module (built on first use, then cached), or None once building has failed (warned once)."""
    global _failed
    if _failed:
        return None
    try:
        return _build()
    except Exception as exc:  # noqa: BLE001 - any compiler or loader failure falls back to the PyTorch path
        _failed = True
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        warnings.warn(f"building the CPU stats kernel failed ({type(exc).__name__}: {first}); using the PyTorch "
                      "path from now on", RuntimeWarning, stacklevel=3)
        return None


@functools.cache
def _build() -> ModuleType:
    return load_or_build(_cache_root())


def load_or_build(root: Path) -> ModuleType:
    """The kernel module for this source, torch, Python and CPU under ``root``: loaded if a finished build is there,
    else built (under torch's build lock) and marked finished."""
    name, flags = module_name(), _flags()
    where = root / name
    built, finished = where / f"{name}.so", where / _FINISHED
    if finished.exists() and built.exists():  # torch's loader would re-check the build: a second per process
        module_spec = importlib.util.spec_from_file_location(name, built)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
        return module
    from torch.utils.cpp_extension import load  # lazy: imports setuptools

    ninja = _ninja()
    if ninja and not shutil.which("ninja"):  # torch runs plain `ninja`
        os.environ["PATH"] = str(Path(ninja).parent) + os.pathsep + os.environ.get("PATH", "")
    where.mkdir(parents=True, exist_ok=True)
    lock = where / "lock"  # torch's build lock; a build killed hard leaves it behind, and torch waits on it forever
    if lock.exists() and time.time() - lock.stat().st_mtime > _STALE_LOCK_S:
        lock.unlink(missing_ok=True)
    print("attnlens: building the CPU stats kernel, once for this machine and torch version (about 30 s)",
          file=sys.stderr, flush=True)
    module = load(name, [str(SOURCE)], extra_cflags=flags, extra_ldflags=[f for f in flags if f == "-fopenmp"],
                  build_directory=str(where), verbose=False)
    finished.touch()  # only now may other processes load the .so directly: it is completely written
    return module


def module_name() -> str:
    """``attnlens_cpu_stats_<hash>``: a new kernel source, torch, Python ABI or flag set is a new module."""
    identity = " ".join([torch.__version__, sysconfig.get_config_var("EXT_SUFFIX") or sys.version, *_flags()])
    return f"attnlens_cpu_stats_{hashlib.sha256(SOURCE.read_bytes() + identity.encode()).hexdigest()[:12]}"


def _flags() -> list[str]:
    # OpenMP: at::parallel_for is header code, serial unless compiled with it; the process already holds torch's
    # libgomp, which the extension's libgomp.so.1 resolves to.  Elsewhere (macOS clang) the kernel runs serially.
    omp = ["-fopenmp"] if sys.platform.startswith("linux") else []
    return ["-O3", *omp, *_VECTOR_FLAGS.get(torch.backends.cpu.get_cpu_capability(), ())]


def _cache_root() -> Path:
    """Where built kernels live: ``TORCH_EXTENSIONS_DIR`` or ``~/.cache/torch_extensions``, as torch's own."""
    root = os.environ.get("TORCH_EXTENSIONS_DIR")
    return Path(root) if root else Path.home() / ".cache" / "torch_extensions"


# at::vec picks its vector width from these macros; the -m flags let the compiler emit those instructions.  Other
# CPUs (and "DEFAULT") get the portable build: correct, with the compiler's own vectorisation.
_VECTOR_FLAGS = {
    "AVX512": ("-mavx512f", "-mavx512dq", "-mavx512vl", "-mavx512bw", "-mfma", "-DCPU_CAPABILITY_AVX512"),
    "AVX2": ("-mavx2", "-mfma", "-DCPU_CAPABILITY_AVX2"),
}
