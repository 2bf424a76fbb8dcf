"""Writing an output folder safely: one writer at a time, and all-or-nothing.

``with output_folder(path, force=...) as tmp:`` checks the target first (a non-empty
folder needs ``force``), takes the folder's lock, and yields a temporary sibling to write
into. Only when the block finishes is the new folder swapped in for the old one, so an
error, Ctrl-C or SIGKILL part-way leaves the previous output as it was. The lock is a file
``.NAME.lock`` beside the folder holding the writer's PID; a lock whose process is gone
is stale and taken over. A second writer on a locked folder gets
:class:`~formats.errors.OutputLockedError`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from formats.errors import OutputExistsError, OutputLockedError, SelectionError


def check_target(path: Path, force: bool) -> None:
    """Refuse (before any work) an output path that holds something, unless ``force``."""
    if path.exists() and (not path.is_dir() or any(path.iterdir())) and not force:
        what = "a file" if not path.is_dir() else "not empty"
        raise OutputExistsError(f"{path} already exists and is {what}: pass --force to overwrite it")
    if path.parent.exists() and not path.parent.is_dir():
        raise SelectionError(f"cannot write to {path}: {path.parent} is a file")


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def lock_path(path: Path) -> Path:
    return path.parent / f".{path.name}.lock"


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold the writer lock of ``path`` (a sibling file with this process's PID)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = lock_path(path)
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                pid = int(lock.read_text().strip() or 0)
            except (OSError, ValueError):
                pid = 0
            if pid != os.getpid() and _alive(pid):
                raise OutputLockedError(f"{path} is being written by another lens command (PID {pid}): wait for it "
                                        f"to finish or stop it; remove {lock} if that process is not lens") from None
            lock.unlink(missing_ok=True)  # stale: its writer died
            continue
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        break
    else:
        raise OutputLockedError(f"{path}: cannot take the lock {lock}")
    try:
        _recover(path)
        yield
    finally:
        lock.unlink(missing_ok=True)


def _recover(path: Path) -> None:
    """Under the lock: restore a folder a killed swap left aside, drop dead writers' temporaries."""
    olds = sorted(path.parent.glob(f".{path.name}.old-*"))
    if olds and not path.exists():
        os.replace(olds[0], path)
        olds = olds[1:]
    for stale in olds + sorted(path.parent.glob(f".{path.name}.new-*")):
        shutil.rmtree(stale, ignore_errors=True)


def swap_in(tmp: Path, path: Path) -> None:
    """Replace ``path`` (folder, file or nothing) by the folder ``tmp`` (same parent)."""
    if path.exists() or path.is_symlink():
        old = path.parent / f".{path.name}.old-{os.getpid()}"
        os.replace(path, old)
        os.replace(tmp, path)
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)
    else:
        os.replace(tmp, path)


def new_sibling(path: Path) -> Path:
    """A new temporary folder next to ``path`` with the permissions a plain ``mkdir`` would give
    (``mkdtemp`` makes it ``drwx------``, which would hide the results from the group)."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.new-", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    return tmp


def _umask() -> int:
    """This process's umask, read without changing it where Linux says it (``/proc/self/status``)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore (not thread-safe, but only on other systems)
    os.umask(mask)
    return mask


@contextmanager
def output_folder(path: str | Path, *, force: bool = False) -> Iterator[Path]:
    """Yield a temporary folder that becomes ``path`` when the block succeeds (see the module docstring)."""
    path = Path(path)
    check_target(path, force)
    with locked(path):
        check_target(path, force)  # again: another writer may have finished meanwhile
        tmp = new_sibling(path)
        try:
            yield tmp
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        swap_in(tmp, path)
