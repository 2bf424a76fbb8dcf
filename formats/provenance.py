"""Where a result came from: model, weights, inputs (hashed), command, code version, machine."""

from __future__ import annotations

import datetime as _dt
import functools
import hashlib
import platform
import socket
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from importlib import metadata
from pathlib import Path
from typing import Any

from attnlens.formats.errors import CorruptFileError

_VERSIONED = ("attnlens", "torch", "transformers", "safetensors", "transformer-lens", "nnsight", "triton", "numpy")


def package_versions() -> dict[str, str]:
    """Versions of Python and the packages results depend on (those installed)."""
    versions = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


@functools.cache
def code_version() -> str:
    """The project's version plus the git commit of its source tree (``+dirty`` when it has local
    changes), or the version alone outside a git checkout."""
    try:
        version = metadata.version("attnlens")
    except metadata.PackageNotFoundError:
        version = "unknown"
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                                text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return version
    return f"{version}+g{commit}{'.dirty' if dirty else ''}" if commit else version


def inputs_digest(items: Iterable[Any]) -> str:
    """SHA-256 (first 16 hex digits) of the inputs a result was computed on: prompts, token ids, settings."""
    h = hashlib.sha256()
    for item in items:
        h.update(repr(item).encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class Provenance:
    """Where a result came from: enough to reproduce it."""

    model: str
    weights_sha256: str | None = None
    seeds: tuple[int, ...] = ()
    prompts: str = ""  # a short description of the inputs (e.g. "8 built-in prompts, 60-120 tokens")
    inputs_sha256: str = ""  # inputs_digest() of the exact inputs
    command: str = field(default_factory=lambda: " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]))
    created: str = field(default_factory=lambda: _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"))
    machine: str = field(default_factory=lambda: f"{socket.gethostname()} {platform.machine()} {platform.system()}")
    code_version: str = field(default_factory=code_version)
    versions: dict[str, str] = field(default_factory=dict)

    @classmethod
    def for_model(cls, facts, *, inputs: Iterable[Any] | None = None, **kw) -> Provenance:
        """Provenance of a result computed on ``facts``' model; ``inputs`` are hashed into ``inputs_sha256``."""
        if inputs is not None:
            kw["inputs_sha256"] = inputs_digest(inputs)
        return cls(model=facts.name, weights_sha256=facts.weights_sha256, versions=package_versions(), **kw)

    def to_json(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["seeds"] = list(self.seeds)
        return d

    @classmethod
    def from_json(cls, d: Any, where: str = "provenance") -> Provenance:
        if not isinstance(d, dict) or not isinstance(d.get("model"), str):
            raise CorruptFileError(f"{where}: provenance must be an object with a model name")
        known = {f.name for f in fields(cls)}
        d = {k: v for k, v in d.items() if k in known}
        seeds = d.get("seeds", ())
        if not isinstance(seeds, (list, tuple)) or not all(isinstance(s, int) for s in seeds):
            raise CorruptFileError(f"{where}: provenance seeds must be a list of integers")
        d["seeds"] = tuple(seeds)
        for key in ("weights_sha256",):
            if d.get(key) is not None:
                d[key] = str(d[key])
        for key in ("prompts", "inputs_sha256", "command", "created", "machine", "code_version"):
            if key in d:
                d[key] = "" if d[key] is None else str(d[key])
        versions = d.get("versions", {})
        d["versions"] = {str(k): str(v) for k, v in versions.items()} if isinstance(versions, dict) else {}
        return cls(**d)
