"""Progress reporting for long workflows, without tying them to a terminal.

A workflow takes a :class:`Progress` and calls ``progress.task(description, total)`` once per
stage, then ``advance()`` as items finish. The CLI passes a Rich progress bar, notebooks
may pass their own; the default :data:`SILENT` reports nothing.
"""

from __future__ import annotations

from typing import Protocol


class Task(Protocol):
    def advance(self, n: int = 1) -> None: ...


class Progress(Protocol):
    def task(self, description: str, total: int | None = None, completed: int = 0) -> Task: ...


class _NoTask:
    def advance(self, n: int = 1) -> None:
        pass


class _Silent:
    def task(self, description: str, total: int | None = None, completed: int = 0) -> Task:
        return _NoTask()


SILENT: Progress = _Silent()
