"""When the CPU stats path hands its element-wise group to ``torch.compile``, and the compiled function.

Between the two GEMMs of a chunk, the eager path makes five passes over the float32 ``[B, H, c, k]`` score block
(centre, floor, exp, row sum, entropy product and sum; see :func:`kernels._cpu_stats.weights_and_sums`).  Inductor,
``torch.compile``'s CPU backend, generates one C++ loop for them.  Measured on this project's 2-core Xeon (torch 2.13,
one thread; ``benchmarks/results/cpu_stats*.md``): SmolLM2-135M's stats attention over 8,192 tokens takes about 10%
less time (all 30 layers: 3.8 s less of 36.8 s), over 2,048 tokens no measurable gain.  The price is a compile on the
first call of a process: about 15 s with an empty Inductor cache (once per machine and torch version), 5.5 s with a
warm one (2 s of it importing Dynamo and Inductor).  Rows over 4,096 keys are a second graph (a fraction of a second
more with a warm cache).  It needs a C++ compiler on PATH.

Policy, per attention call (``compile`` argument of the kernels, or the ``ATTNLENS_COMPILE`` environment variable):

* ``None`` (the default) reads ``ATTNLENS_COMPILE``: ``0`` never, ``1`` whenever the inputs are on the CPU, unset or
  ``auto`` only for calls with at least ``MIN_SCORES`` visible scores (SmolLM2-135M from about 7,700 tokens on).  There
  one forward of a 30-layer model saves most of a warm compile (3.8 s of 5.5 s at 8,192 tokens) and every further
  forward in the process gains; a one-off run that must not compile sets ``ATTNLENS_COMPILE=0``.  Without a C++
  compiler ``auto`` stays eager.
* ``True`` / ``False`` decide for that call; ``True`` without a C++ compiler is an error.

If compiling or running the compiled function raises, a warning says so once and the process keeps the eager path.
"""

from __future__ import annotations

import functools
import os
import shutil
import warnings
from collections.abc import Callable

import torch

from .errors import KernelInputError

ENV = "ATTNLENS_COMPILE"
MIN_SCORES = 1 << 28  # visible scores of one call (batch x heads x visible query-key pairs)
_CXX = ("g++", "c++", "clang++")
_ON, _OFF = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
_failed = False  # set when compiling failed once: the process stays eager


def compiler_available() -> bool:
    """A C++ compiler Inductor can use is on PATH (or named by ``CXX``)."""
    cxx = os.environ.get("CXX")
    return any(shutil.which(name) for name in ((cxx,) if cxx else ()) + _CXX)


def use_compiled(requested: bool | None, q: torch.Tensor, n_scores: int) -> bool:
    """Whether this call of the CPU stats path runs its element-wise group compiled (see the module docstring)."""
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
        raise KernelInputError(f"compile=True (or {ENV}=1) needs a C++ compiler on PATH ({', '.join(_CXX)})")
    return True


def compiled(fn: Callable) -> Callable:
    """``fn`` compiled by Inductor (dynamic shapes: one compile for every chunk width), falling back to ``fn``."""
    compiled_fn = _compile(fn)

    def call(*args):
        global _failed
        if not _failed:
            try:
                with torch.no_grad():  # one graph: the stats path never needs gradients through this group
                    return compiled_fn(*args)
            except Exception as exc:  # noqa: BLE001 - any compiler or runtime failure falls back to the eager path
                _failed = True
                warnings.warn(f"torch.compile of the CPU stats path failed ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''}); using the eager path from now on",
                              RuntimeWarning, stacklevel=2)
        return fn(*args)

    return call


@functools.cache
def _compile(fn: Callable) -> Callable:
    return torch.compile(fn, dynamic=True)
