"""One recording thread per model.

A capture's hooks sit on the model itself, so two threads capturing one model at once would
each record the other's forward passes (and apply the other's edits). :func:`recording`
marks a model as recorded by the calling thread for the block; the same thread may nest
recordings (a capture inside stats mode), another thread is refused in one line.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager

from lens.errors import BackendError

_LOCK = threading.Lock()
_OWNERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> [thread ident, thread name, depth]


@contextmanager
def recording(model, what: str = "a capture") -> Iterator[None]:
    """Hold ``model`` for the calling thread; :class:`BackendError` if another thread holds it."""
    me = threading.current_thread()
    with _LOCK:
        owner = _OWNERS.get(model)
        if owner is not None and owner[0] != me.ident:
            raise BackendError(f"{what} cannot start: another thread ({owner[1]}) is capturing from this model; "
                               "captures on one model run one at a time (load a second copy with lens.load "
                               "for parallel captures)")
        if owner is None:
            owner = _OWNERS[model] = [me.ident, me.name, 0]
        owner[2] += 1
    try:
        yield
    finally:
        with _LOCK:
            owner[2] -= 1
            if owner[2] == 0:
                _OWNERS.pop(model, None)


def owned_by_caller(model) -> bool:
    """Whether the calling thread holds ``model`` (forward passes of other threads are not recorded)."""
    owner = _OWNERS.get(model)
    return owner is not None and owner[0] == threading.get_ident()
