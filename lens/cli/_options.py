"""Option groups several commands share, each written once.

A group is a small frozen dataclass whose fields (:func:`option_field`) are the options;
:func:`group` makes its decorator. Decorating a command with
:func:`ray_options` or :func:`placement_options` puts the group's options where its parameter stands in
``--help`` (in field order) and hands the command one value, the group, instead of four or
three loose arguments::

    @app.command("scan")
    @ray_options
    @placement_options
    def scan(model: str, ..., cluster: RayGroup, place: PlacementGroup) -> None:
        load_kw = place.load_kwargs()
        options = cluster.options()

The group validates where the command calls it, so the order of a command's checks is its own.
Single options repeated per command (``--force``, ``--json``, ``--remote``) are shared
``typer.Option`` values here too.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from pathlib import Path
from typing import Any

import typer

from attnlens.formats.errors import SelectionError
from attnlens.formats.vocab import DeviceMap

FORCE_OPTION = typer.Option(False, "--force", help="Replace a non-empty --out folder (only once the new one is complete).")
JSON_OPTION = typer.Option(False, "--json", help="Print machine-readable JSON.")
REMOTE_OPTION = typer.Option(False, "--remote", help="With --backend nnsight: run the trace on NDIF (needs "
                             "NDIF_API_KEY and a model NDIF hosts; untested here).")


def option_field(default, *decls: str, **kw) -> dataclasses.Field:
    """A dataclass field that carries the typer option declaring it."""
    return dataclasses.field(default=default, metadata={"option": typer.Option(default, *decls, **kw)})


@dataclasses.dataclass(frozen=True)
class RayGroup:
    """``--ray/--workers/--cpus-per-worker/--gpus-per-worker``: where a command's items run."""

    ray: str | None = option_field(None, "--ray", help="Run the items on Ray workers: 'auto' (join this machine's "
                              "cluster or start one) or a cluster address (ray://head:10001, head:6379). Needs "
                              "pip install 'attnlens[distributed]'.")
    workers: int | None = option_field(None, "--workers", min=1, max=4096, help="Ray workers, each holding one copy "
                                  "of the model (default 2; with --ray).")
    cpus_per_worker: float | None = option_field(None, "--cpus-per-worker", min=0.0, max=1024.0,
                                            help="CPUs Ray reserves per worker, also its torch threads (default 1).")
    gpus_per_worker: float | None = option_field(None, "--gpus-per-worker", min=0.0, max=64.0,
                                            help="GPUs per worker (default 0; >0 puts the model on the worker's "
                                            "GPU, or splits it over its GPUs with --device-map).")

    def options(self):
        """A :class:`pipelines.executors.RayOptions` (None without ``--ray``); a one-line error
        when Ray is not installed or nothing answers at the address, before any model loads."""
        if self.ray is None:
            given = [n for n, v in (("--workers", self.workers), ("--cpus-per-worker", self.cpus_per_worker),
                                    ("--gpus-per-worker", self.gpus_per_worker)) if v is not None]
            if given:
                raise SelectionError(f"{', '.join(given)} apply to Ray runs: add --ray auto (or a cluster address)")
            return None
        from attnlens.pipelines.executors import RayOptions, check_address, import_ray

        options = RayOptions(address=self.ray.strip(), workers=2 if self.workers is None else self.workers,
                             cpus_per_worker=1.0 if self.cpus_per_worker is None else self.cpus_per_worker,
                             gpus_per_worker=0.0 if self.gpus_per_worker is None else self.gpus_per_worker)
        import_ray()
        check_address(options.address)  # seconds, not minutes of Ray's retries, and before any model loads
        return options


@dataclasses.dataclass(frozen=True)
class PlacementGroup:
    """``--device-map/--max-memory/--offload-folder``: a model split over devices with accelerate."""

    device_map: DeviceMap | None = option_field(None, "--device-map", help="Split the model over GPUs, CPU memory and "
                                           "disk with accelerate (auto: fill GPUs, then CPU, then disk). See "
                                           "docs/distributed.md.")
    max_memory: str | None = option_field(None, "--max-memory", help="Per-device budget with --device-map, e.g. "
                                     "'0=20GiB,1=20GiB,cpu=64GiB,disk=500GiB' (GPU index, cpu, mps or disk).")
    offload_folder: Path | None = option_field(None, "--offload-folder", help="Where disk-offloaded weights go "
                                          "(default: a temporary folder removed at exit).")

    def load_kwargs(self) -> dict[str, Any]:
        """``lens.load`` keywords (validated; {} without ``--device-map``)."""
        if self.device_map is None:
            if self.max_memory or self.offload_folder:
                raise SelectionError("--max-memory and --offload-folder need --device-map (e.g. --device-map auto)")
            return {}
        from lens.zoo.placement import check_devices, parse_max_memory

        kw: dict[str, Any] = {"device_map": self.device_map.value}
        mem = parse_max_memory(self.max_memory)
        check_devices(mem)
        if mem:
            kw["max_memory"] = mem
        if self.offload_folder is not None:
            kw["offload_folder"] = str(self.offload_folder)
        return kw


def group(cls: type, arg: str):
    """A decorator: the command's ``arg`` parameter becomes ``cls``'s options (at its place in
    ``--help``), and the command receives ``arg=cls(...)``."""
    fields = dataclasses.fields(cls)
    hints = typing.get_type_hints(cls)

    def decorate(command):
        sig, own_hints = inspect.signature(command), typing.get_type_hints(command)
        if arg not in sig.parameters:
            raise TypeError(f"{command.__name__} takes no {arg!r} argument for {cls.__name__}")
        params = []
        for p in sig.parameters.values():
            if p.name == arg:
                params += [inspect.Parameter(f.name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=f.metadata["option"],
                                             annotation=hints[f.name]) for f in fields]
            else:
                params.append(p.replace(annotation=own_hints.get(p.name, p.annotation)))

        @functools.wraps(command)
        def run(*args, **kwargs):
            kwargs[arg] = cls(**{f.name: kwargs.pop(f.name) for f in fields})
            return command(*args, **kwargs)

        run.__signature__ = sig.replace(parameters=params)
        run.__annotations__ = {p.name: p.annotation for p in params} | {"return": sig.return_annotation}
        return run

    return decorate


ray_options = group(RayGroup, "cluster")
placement_options = group(PlacementGroup, "place")
