"""Library errors speak Python, the CLI speaks flags: one mapping between the two.

Library code names the argument that was wrong in backticks, as a Python caller writes it:
`` `max_memory` names cpu twice`` or ``pass `force=True` to overwrite it``. Before the CLI
prints such a message as its ``error: ...`` line, :func:`as_flags` writes each argument it
knows as the flag that sets it (``--max-memory``, ``--force``); an argument no command takes
keeps its Python spelling.
"""

from __future__ import annotations

import re

# library argument -> the CLI flag that sets it (the same name with dashes unless noted)
FLAGS: dict[str, str] = {
    **{name: "--" + name.replace("_", "-") for name in (
        "backend", "chat", "cpus_per_worker", "device_map", "force", "gpus_per_worker", "heads", "ig_steps", "images",
        "max_memory", "method", "metric", "mlps", "offload_folder", "out", "ray", "remote", "template", "templates",
        "workers", "mean_over", "level", "replacement", "unit", "source", "dtype", "image", "audio", "prompt",
    )},
    "n": "--n-prompts",  # load_task(name, tokenizer, n, ...)
    "ablated": "--ablate",  # resolve_setting(..., ablated=...)
    "objective": "--gate-objective",  # GateConfig(objective=...)
    "kind": "--sweep",  # pipelines.sweeps.sweep(lm, enc, kind, ...)
    "fmt": "--format",
    "map_method": "--maps",
    "layer": "--layer",  # pipelines.qk.run_loadings(lm, prompts, layer, head)
    "prompts": "--file",  # a prompt set: the lines of --file
}

_ARG = re.compile(r"`([A-Za-z_][A-Za-z0-9_]*)(?:=([^`]*))?`")


def _flag(m: re.Match) -> str:
    name, value = m.group(1), m.group(2)
    flag = FLAGS.get(name)
    if flag is None:
        return m.group(0)
    if value is None or value == "True":
        return flag
    if value == "False":
        return "--no-" + flag[2:]
    return f"{flag} {value}"


def as_flags(message: str) -> str:
    """``message`` with every backticked library argument it knows written as its CLI flag."""
    return _ARG.sub(_flag, message)
