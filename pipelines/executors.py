"""Where a workflow's independent items run: in this process (the default) or on Ray actors.

A workflow splits its work into items and hands them to an :class:`Executor` with a
:class:`Job`: ``job.setup(lm, *job.setup_args)`` builds per-worker state once (reference
activations, a prepared task), ``job.work(state, item)`` computes one item. The executor
yields ``(index, result)`` as items finish; the workflow (the driver) is the one writer of
every file, whatever runs the items.

- :class:`SerialExecutor`: items in order, in this process, on the caller's model. No Ray.
- :class:`RayExecutor`: ``workers`` Ray actors, each loading the model once from a
  :class:`ModelSpec` (its zoo name or path and load options) and processing many items;
  the driver keeps one item in flight per actor and collects results with ``ray.wait``
  as they finish. A worker that dies is restarted by Ray and its item retried
  (``max_restarts``); when Ray gives up, the items that finished are still yielded and
  :class:`DistributedError` says how many did. Ray is imported only here, only when a
  :class:`RayExecutor` starts (``pip install 'attnlens[distributed]'``).

Items and results travel by pickle (Ray's cloudpickle); keep them small (component
sets, trials, arrays), not models.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from attnlens.formats.errors import AttnlensError, SelectionError

INSTALL_HINT = "pip install 'attnlens[distributed]'"


class DistributedError(AttnlensError, RuntimeError):
    """Ray is missing, cannot be reached, cannot place the workers, or lost a worker for good."""


# ---- what runs ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Job:
    """``work(state, item) -> result`` for every item; ``state`` is ``setup(lm, *setup_args)``
    (built once per worker and job), or the :class:`~lens.LoadedModel` itself without ``setup``.
    Both functions must be importable module-level functions (workers import them by name)."""

    work: Callable[[Any, Any], Any]
    setup: Callable[..., Any] | None = None
    setup_args: tuple = ()
    key: str = field(default_factory=lambda: uuid.uuid4().hex)


def _call(lm, item):
    fn, args, kwargs = item
    return fn(lm, *args, **kwargs)


#: Items are ``(fn, args, kwargs)``; each runs ``fn(lm, *args, **kwargs)`` on a worker.
CALLS = Job(work=_call, key="calls")


def call(fn: Callable, *args, **kwargs) -> tuple:
    """An item of :data:`CALLS`."""
    return (fn, args, kwargs)


@dataclass(frozen=True)
class ModelSpec:
    """How a worker loads the model: ``lens.load(name, dtype=..., device=..., device_map=..., max_memory=...)``.

    ``device`` "cpu" becomes "cuda" on a worker that was given GPUs. ``max_memory`` is
    ``((device, size), ...)`` as :func:`lens.zoo.placement.parse_max_memory` returns it.
    """

    name: str
    dtype: str = "float32"
    device: str = "cpu"
    device_map: str | None = None
    max_memory: tuple[tuple[str | int, str], ...] = ()
    offload_folder: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise SelectionError("a worker's model name is empty: give a zoo name, a local folder or a hub id")
        if self.dtype not in ("float32", "float16", "bfloat16"):
            raise SelectionError(f"dtype {self.dtype!r} is not one of float32, float16, bfloat16")

    def load(self, *, gpus: float = 0):
        import torch

        import lens

        device = "cuda" if gpus and self.device == "cpu" and self.device_map is None else self.device
        return lens.load(self.name, dtype=getattr(torch, self.dtype), device=device, device_map=self.device_map,
                         max_memory=dict(self.max_memory) or None, offload_folder=self.offload_folder)


# ---- executors ----------------------------------------------------------------------------
class Executor:
    """Runs a job's items; see the module docstring. Use as a context manager (or call :meth:`close`)."""

    workers: int = 1
    distributed: bool = False
    item_seconds: list[float]  # compute time of each item, as measured where it ran

    def map(self, job: Job, items: Sequence) -> Iterator[tuple[int, Any]]:
        raise NotImplementedError

    def map_ordered(self, job: Job, items: Sequence, on_result: Callable[[int], None] | None = None) -> list:
        """Every result, in the order of ``items`` (``on_result(index)`` as each arrives)."""
        out: list = [None] * len(items)
        for i, r in self.map(job, items):
            out[i] = r
            if on_result is not None:
                on_result(i)
        return out

    def describe(self) -> str:
        return "serial"

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class SerialExecutor(Executor):
    """Items in order, in this process, on ``lm``."""

    def __init__(self, lm):
        self.lm = lm
        self.item_seconds = []
        self._key: str | None = None
        self._state = None

    def map(self, job: Job, items: Sequence) -> Iterator[tuple[int, Any]]:
        if self._key != job.key:
            self._state = job.setup(self.lm, *job.setup_args) if job.setup else self.lm
            self._key = job.key
        for i, item in enumerate(items):
            t0 = time.perf_counter()
            r = job.work(self._state, item)
            self.item_seconds.append(time.perf_counter() - t0)
            yield i, r


@dataclass(frozen=True)
class RayOptions:
    """Where and how many: ``address`` "auto" (join this machine's cluster, or start one) or a
    cluster address (``ray://head:10001``, ``head:6379``); ``workers`` actors with
    ``cpus_per_worker`` CPUs and ``gpus_per_worker`` GPUs each. A worker that dies is
    restarted and its item retried up to ``max_restarts`` times."""

    address: str = "auto"
    workers: int = 2
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    max_restarts: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.address, str) or not self.address.strip():
            raise SelectionError("`ray` is empty: give 'auto' or a cluster address like ray://head:10001")
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or not 1 <= self.workers <= 4096:
            raise SelectionError(f"`workers` must be 1-4096, got {self.workers!r}")
        for name, v, hi in (("cpus_per_worker", self.cpus_per_worker, 1024), ("gpus_per_worker", self.gpus_per_worker, 64)):
            if not isinstance(v, (int, float)) or not math.isfinite(v) or not 0 <= v <= hi:
                raise SelectionError(f"`{name}` must be a number in [0, {hi}], got {v!r}")
        if self.cpus_per_worker == 0 and self.gpus_per_worker == 0:
            raise SelectionError("`cpus_per_worker` and `gpus_per_worker` are both 0: a worker needs some resource")
        if not isinstance(self.max_restarts, int) or not 0 <= self.max_restarts <= 100:
            raise SelectionError(f"max_restarts must be 0-100, got {self.max_restarts!r}")


def import_ray():
    """The ``ray`` module, or a one-line :class:`DistributedError` naming the extra to install."""
    try:
        import ray
    except ImportError:
        raise DistributedError(f"`ray` needs Ray, which is not installed: {INSTALL_HINT}") from None
    return ray


CONNECT_TIMEOUT_S = 5.0  # how long a cluster address may take to accept a connection


def check_address(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Refuse, within ``timeout`` seconds, a cluster address where nothing accepts a connection
    (``ray.init`` would retry for minutes). ``auto`` and ``local`` need no probe."""
    address = address.strip()
    if address in ("auto", "local"):
        return
    rest = address.split("://", 1)[1] if "://" in address else address
    host, sep, port_s = rest.rstrip("/").rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_s.isascii() or not port_s.isdigit() or not 0 < int(port_s) < 65536:
        raise DistributedError(f"`ray` {address!r} is not 'auto' or a cluster address like ray://head:10001 or "
                               "head:6379 (host and port)")
    try:
        with socket.create_connection((host, int(port_s)), timeout=timeout):
            pass
    except OSError as err:
        why = f"no answer within {timeout:g} s" if isinstance(err, TimeoutError) else (err.strerror or type(err).__name__)
        raise DistributedError(f"`ray` {address}: cannot connect to a Ray cluster: nothing accepts connections at "
                               f"{host}:{port_s} ({why}); start one with `ray start --head` or check the "
                               "address") from None


class _Worker:
    """One Ray actor: the model, loaded once, and the state of the job it is working on."""

    def __init__(self, spec: ModelSpec, threads: int, gpus: float):
        import torch

        torch.set_num_threads(max(1, threads))
        self.lm = spec.load(gpus=gpus)
        self.key: str | None = None
        self.job: Job | None = None
        self.state = None

    def ready(self) -> dict:
        return {"host": socket.gethostname(), "pid": os.getpid(), "device": str(self.lm.device)}

    def run(self, key: str, boxed_job: list, item) -> tuple[Any, float]:
        if key != self.key:  # a new job (or a restarted worker): build its state once
            import ray

            self.job = ray.get(boxed_job[0])
            self.state = None
            self.state = self.job.setup(self.lm, *self.job.setup_args) if self.job.setup else self.lm
            self.key = key
        t0 = time.perf_counter()
        result = self.job.work(self.state, item)
        return result, time.perf_counter() - t0


def _first_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text[:300] or type(err).__name__


class RayExecutor(Executor):
    """``options.workers`` Ray actors, each holding the model of ``spec``; see the module docstring.

    Connects on first use: to the Ray session this process already has (a test or a
    notebook that called ``ray.init``; left running), else as ``options.address`` says
    (disconnected again, and a cluster it started stopped, by :meth:`close`).
    """

    distributed = True

    def __init__(self, spec: ModelSpec, options: RayOptions = RayOptions()):
        import_ray()  # the one-line error before anything runs
        self.spec, self.options = spec, options
        self.workers = options.workers
        self.item_seconds = []
        self.placed: list[dict] = []  # where each worker runs (host, pid, device)
        self.startup_seconds = 0.0
        self._actors: list = []
        self._owns_connection = False

    def describe(self) -> str:
        o = self.options
        return (f"Ray ({o.address}): {o.workers} worker(s) x {o.cpus_per_worker:g} CPU"
                + (f" + {o.gpus_per_worker:g} GPU" if o.gpus_per_worker else ""))

    # -- lifecycle --
    def _connect(self):
        ray = import_ray()
        if ray.is_initialized():
            return ray
        address = None if self.options.address == "auto" else self.options.address
        check_address(self.options.address)
        try:
            ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING,
                     configure_logging=True, log_to_driver=True)
        except (ConnectionError, ValueError, RuntimeError) as err:
            raise DistributedError(f"`ray` {self.options.address}: cannot connect to a Ray cluster: "
                                   f"{_first_line(err)}") from None
        self._owns_connection = True
        return ray

    def _start(self):
        ray = self._connect()
        if self._actors:
            return ray
        o = self.options
        t0 = time.perf_counter()
        # refuse what cannot be placed now rather than wait for it forever
        total, free = ray.cluster_resources(), ray.available_resources()
        for res, name, per in (("CPU", "cpus_per_worker", o.cpus_per_worker), ("GPU", "gpus_per_worker", o.gpus_per_worker)):
            need = per * o.workers
            if need > free.get(res, 0) + 1e-9:
                raise DistributedError(f"`workers` {o.workers} x `{name}` {per:g} needs {need:g} "
                                       f"{res}s; the Ray cluster has {total.get(res, 0):g}, {free.get(res, 0):g} free")
        actor_cls = ray.remote(_Worker).options(num_cpus=o.cpus_per_worker, num_gpus=o.gpus_per_worker,
                                                max_restarts=o.max_restarts, max_task_retries=o.max_restarts,
                                                max_concurrency=1)
        threads = max(1, int(o.cpus_per_worker))
        self._actors = [actor_cls.remote(self.spec, threads, o.gpus_per_worker) for _ in range(o.workers)]
        try:
            self.placed = ray.get([a.ready.remote() for a in self._actors])
        except ray.exceptions.RayError as err:
            self.close()
            raise DistributedError(f"a Ray worker could not load {self.spec.name}: {_first_line(err)}") from None
        self.startup_seconds = time.perf_counter() - t0
        return ray

    def close(self) -> None:
        if not self._actors and not self._owns_connection:
            return
        try:
            import ray
        except ImportError:
            return
        for a in self._actors:
            try:
                ray.kill(a, no_restart=True)
            except Exception:  # already dead or disconnected: nothing left to stop
                pass
        self._actors = []
        if self._owns_connection and ray.is_initialized():
            ray.shutdown()  # a cluster this process started stops with it; a joined one stays
        self._owns_connection = False

    # -- work --
    def map(self, job: Job, items: Sequence) -> Iterator[tuple[int, Any]]:
        """Yield ``(index, result)`` as items finish (any order). One item in flight per
        worker; when a worker is lost for good or an item fails, nothing new is started, the
        items in flight are still yielded, and then the error is raised."""
        ray = self._start()
        job_ref = ray.put(job)
        free = list(self._actors)
        pending = list(range(len(items)))[::-1]  # pop() takes the next item in order
        inflight: dict = {}
        failure: BaseException | None = None
        lost: list[int] = []
        finished = 0
        while (pending and free and failure is None) or inflight:
            while pending and free and failure is None:
                actor, i = free.pop(), pending.pop()
                inflight[actor.run.remote(job.key, [job_ref], items[i])] = (i, actor)
            done, _ = ray.wait(list(inflight), num_returns=1)
            ref = done[0]
            i, actor = inflight.pop(ref)
            try:
                result, seconds = ray.get(ref)
            except ray.exceptions.RayActorError as err:  # the worker died and Ray's restarts are spent
                lost.append(i)
                failure = failure or err
                continue
            except ray.exceptions.RayTaskError as err:  # the item itself failed: the worker is fine
                free.append(actor)
                failure = failure or err
                continue
            free.append(actor)
            finished += 1
            self.item_seconds.append(seconds)
            yield i, result
        if failure is not None:
            cause = getattr(failure, "cause", None)
            if isinstance(cause, AttnlensError):
                raise cause
            if lost:
                raise DistributedError(f"a Ray worker died on item {lost[0]} and was not restarted (max_restarts "
                                       f"{self.options.max_restarts}): {finished} of {len(items)} items finished; "
                                       f"rerun the same command to resume: {_first_line(failure)}")
            raise DistributedError(f"item failed on a Ray worker: {_first_line(cause or failure)}")


def make_executor(lm, spec: ModelSpec | None = None, options: RayOptions | None = None) -> Executor:
    """Serial on ``lm`` without ``options``, else a :class:`RayExecutor` loading ``spec`` on each worker."""
    if options is None:
        return SerialExecutor(lm)
    if spec is None:
        raise SelectionError("running on Ray needs the model's name (a ModelSpec) so that workers can load it")
    return RayExecutor(spec, options)


def max_memory_items(max_memory: Mapping | None) -> tuple:
    """A ``max_memory`` mapping as the sorted tuple a frozen :class:`ModelSpec` holds."""
    return tuple(sorted((max_memory or {}).items(), key=lambda kv: str(kv[0])))
