"""A resumable sweep folder: ``run.json`` (settings, status) and ``sweep.jsonl`` (one line per finished item).

Semantics of an output folder (``open_sweep``):

- missing or empty: a new sweep starts there;
- holds an unfinished sweep with the same settings: it resumes, skipping the items in
  ``sweep.jsonl`` (a line cut short by an interruption is ignored and redone);
- holds a finished sweep, one with other settings, or anything else: refused with
  :class:`~lens.errors.OutputExistsError` unless ``force`` (which empties it first).

Items are appended and flushed as they finish, so a killed run loses at most the chunk
in flight.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lens.errors import OutputExistsError

RUN_FILE, LOG_FILE = "run.json", "sweep.jsonl"


@dataclass
class SweepLog:
    folder: Path
    settings: dict[str, Any]
    done: dict[str, dict[str, Any]] = field(default_factory=dict)  # item name -> its record
    resumed: bool = False

    def append(self, records: list[dict[str, Any]]) -> None:
        """Write finished items (each with a unique "item" key) and flush them to disk."""
        with open(self.folder / LOG_FILE, "a") as f:
            for r in records:
                f.write(json.dumps(r) + "\n")
                self.done[r["item"]] = r
            f.flush()
            os.fsync(f.fileno())

    def finish(self) -> None:
        _write_run(self.folder, self.settings, "complete")


def open_sweep(folder: str | Path, settings: dict[str, Any], *, force: bool = False) -> SweepLog:
    folder = Path(folder)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        state = _read_run(folder)
        same = state is not None and state.get("settings") == settings
        if same and state.get("status") == "running" and not force:
            return SweepLog(folder, settings, _read_log(folder / LOG_FILE), resumed=True)
        if not force:
            if same:
                why = "holds a finished sweep with these settings"
            elif state is not None:
                why = "holds a sweep with other settings"
            else:
                why = "is not empty"
            raise OutputExistsError(f"{folder} {why}: pass --force to overwrite it, or choose another --out")
        if folder.is_dir():
            shutil.rmtree(folder)
        else:
            folder.unlink()
    folder.mkdir(parents=True, exist_ok=True)
    _write_run(folder, settings, "running")
    return SweepLog(folder, settings)


def _read_run(folder: Path) -> dict | None:
    try:
        doc = json.loads((folder / RUN_FILE).read_text())
        return doc if isinstance(doc, dict) else None
    except (OSError, ValueError):
        return None


def _write_run(folder: Path, settings: dict, status: str) -> None:
    tmp = folder / (RUN_FILE + ".tmp")
    tmp.write_text(json.dumps({"settings": settings, "status": status}, indent=1))
    tmp.replace(folder / RUN_FILE)


def _read_log(path: Path) -> dict[str, dict]:
    done: dict[str, dict] = {}
    if not path.exists():
        return done
    for line in path.read_text().splitlines():
        try:
            r = json.loads(line)
        except ValueError:
            continue  # a line cut short by an interruption: that item is redone
        if isinstance(r, dict) and "item" in r:
            done[r["item"]] = r
    return done
