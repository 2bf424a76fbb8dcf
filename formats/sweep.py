"""A resumable sweep folder: ``run.json`` (settings, status) and ``sweep.jsonl`` (one line per finished item).

Semantics of an output folder (:func:`open_sweep`):

- missing or empty: a new sweep starts there;
- holds an unfinished sweep with the same settings: it resumes, skipping the items in
  ``sweep.jsonl`` (a line cut short by an interruption is cut off the file and redone);
- holds a finished sweep, one with other settings, or anything else: refused with
  :class:`~formats.errors.OutputExistsError` unless ``force``; with ``force`` the new sweep is
  written into a temporary sibling and swapped in by :meth:`SweepLog.finish`, so the old
  one stays until the new one is complete.

The folder is locked while a sweep runs (a second writer is refused). Items are appended
and flushed as they finish, so a killed run loses at most the chunk in flight.
"""

from __future__ import annotations

import json
import os
import shutil
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from attnlens.formats import _json
from attnlens.formats.errors import CorruptFileError, OutputExistsError
from attnlens.formats.output import check_target, locked, mark, new_sibling, os_error, swap_in

KIND = "sweep_log"
FORMAT_VERSION = 2
RUN_FILE, LOG_FILE = "run.json", "sweep.jsonl"
MAX_LOG_BYTES = 1 << 30  # a sweep of a million items stays well below this


@dataclass
class SweepLog:
    """An open sweep: ``done`` maps finished item names to their records. Write finished
    items with :meth:`append`; :meth:`finish` marks it complete (and swaps a forced rerun in);
    :meth:`close` releases the lock (also on error)."""

    folder: Path  # where this run writes (a temporary sibling of `target` for a forced rerun)
    target: Path
    settings: dict[str, Any]
    done: dict[str, dict[str, Any]] = field(default_factory=dict)
    resumed: bool = False
    _stack: ExitStack | None = None

    def append(self, records: list[dict[str, Any]]) -> None:
        """Write finished items (each with a unique "item" key) and flush them to disk."""
        with open(self.folder / LOG_FILE, "a") as f:
            for r in records:
                f.write(json.dumps(r, allow_nan=True) + "\n")
                self.done[r["item"]] = r
            f.flush()
            os.fsync(f.fileno())

    def finish(self) -> Path:
        """Mark the sweep complete; returns the folder the results are in (``target``)."""
        _write_run(self.folder, self.settings, "complete")
        if self.folder != self.target:
            swap_in(self.folder, self.target)
            self.folder = self.target
        return self.target

    def close(self) -> None:
        if self.folder != self.target and self.folder.exists():
            shutil.rmtree(self.folder, ignore_errors=True)  # an unfinished forced rerun: the old sweep stays
        if self._stack is not None:
            self._stack.close()
            self._stack = None

    def __enter__(self) -> SweepLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_run(folder: Path) -> dict | None:
    """The sweep's ``run.json`` (settings and status), or None when there is none or it is unreadable."""
    try:
        doc = _json.read_json(folder / RUN_FILE, what="sweep run file")
    except CorruptFileError:
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("settings"), dict):
        return None
    return doc


def open_sweep(folder: str | Path, settings: dict[str, Any], *, force: bool = False) -> SweepLog:
    """Open (start, resume or force-restart) the sweep in ``folder``; see the module docstring."""
    target = Path(folder)
    settings = json.loads(_json.dumps(settings))  # compare as it will be stored
    stack = ExitStack()
    try:
        stack.enter_context(locked(target))
        log = _open(target, settings, force)
    except BaseException:
        stack.close()
        raise
    log._stack = stack
    return log


def _open(target: Path, settings: dict, force: bool) -> SweepLog:
    occupied = target.is_symlink() or (target.exists() and (not target.is_dir() or any(target.iterdir())))
    if occupied:
        if target.is_symlink() or not target.is_dir():
            check_target(target, force)  # refuses links, files and devices, with or without force
        state = read_run(target)
        same = state is not None and state.get("settings") == settings
        if same and state.get("status") == "running" and not force:
            return SweepLog(target, target, settings, read_log(target / LOG_FILE, repair=True), resumed=True)
        if not force:
            if same:
                why = "holds a finished sweep with these settings"
            elif state is not None:
                why = "holds a sweep with other settings"
            else:
                why = "is not empty"
            changed = "" if same or state is None else f" (changed: {settings_diff(state['settings'], settings)})"
            raise OutputExistsError(f"{target} {why}: pass `force=True` to overwrite it, or choose another `out`{changed}")
        check_target(target, force)  # only a folder of lens output is replaced
        work = new_sibling(target, KIND)
    else:
        try:
            target.mkdir(parents=True, exist_ok=True)
            mark(target, KIND)
        except OSError as err:
            raise os_error(target, err) from None
        work = target
    _write_run(work, settings, "running")
    return SweepLog(work, target, settings)


_DIGESTS = {"task_sha256": "the task file's contents", "inputs_sha256": "the encoded prompts",
            "items_sha256": "the items swept", "weights_sha256": "the model's weights"}


def settings_diff(old: dict, new: dict, limit: int = 4) -> str:
    """The settings that differ between a stored sweep and a new run, in a few words each."""
    parts = []
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            if key in _DIGESTS:
                parts.append(f"{_DIGESTS[key]} ({key})" if key in old else f"{key} (not recorded by the stored sweep)")
            else:
                parts.append(f"{key} {_short(old.get(key))} -> {_short(new.get(key))}")
    more = f" and {len(parts) - limit} more" if len(parts) > limit else ""
    return ", ".join(parts[:limit]) + more


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _write_run(folder: Path, settings: dict, status: str) -> None:
    _json.write_json(folder / RUN_FILE, {"kind": KIND, "format_version": FORMAT_VERSION, "settings": settings,
                                         "status": status})


def read_log(path: Path, *, repair: bool = False) -> dict[str, dict]:
    """Finished items of a sweep log. A last line cut short by an interruption is ignored, and
    with ``repair`` cut off the file so that appends start on a fresh line."""
    done: dict[str, dict] = {}
    if not path.exists() and not path.is_symlink():
        return done
    data = _json.read_regular(path, what="sweep log", max_bytes=MAX_LOG_BYTES)
    good_end = 0
    for line in data.splitlines(keepends=True):
        try:
            r = _json.loads(line, f"{path} line", what="sweep log line")
        except ValueError:  # CorruptFileError too: a line too deep or too large is skipped like a broken one
            if line.endswith(b"\n"):
                good_end += len(line)  # a bad line in the middle: skip it, keep the rest
            continue
        if not line.endswith(b"\n"):
            continue  # valid JSON but no newline: the write was cut before it finished
        good_end += len(line)
        if isinstance(r, dict) and isinstance(r.get("item"), str):
            done[r["item"]] = r
    if repair and good_end < len(data):
        with open(path, "r+b") as f:
            f.truncate(good_end)
    return done


def sweep_progress(folder: Path) -> dict[str, Any] | None:
    """``{"settings", "status", "done"}`` of the sweep in ``folder`` (None when it is not one)."""
    state = read_run(folder)
    if state is None:
        return None
    return {"settings": state["settings"], "status": str(state.get("status")),
            "done": len(read_log(folder / LOG_FILE))}
