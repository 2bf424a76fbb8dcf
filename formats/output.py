"""Writing an output folder safely: one writer at a time, all-or-nothing, and only over lens' own output.

``with output_folder(path, force=..., kind=...) as tmp:`` checks the target first, takes the
folder's lock, and yields a temporary sibling to write into. Only when the block finishes is
the new folder swapped in for the old one, so an error, Ctrl-C or SIGKILL part-way leaves the
previous output as it was. The lock is a file ``.NAME.lock`` beside the folder holding the
writer's PID; a lock whose process is gone is stale and taken over. A second writer on a
locked folder gets :class:`~formats.errors.OutputLockedError`.

What may be replaced (:func:`check_target`): nothing, an empty folder, or with ``force`` a
folder of lens output: one holding the marker file ``.attnlens`` (every folder written here
gets one) or, for folders written before the marker existed, one in which
:class:`~formats.ResultsFolder` finds lens results and that holds no other kind of file.
Never a folder with anything else in it (a project with ``src/`` and ``.git``), never a
link, a file or a device, and never a path whose last part is not a name (``.``, ``..``).
Everything the file system refuses (permission, a name too long, a read-only disk) is one
:class:`~formats.errors.OutputPathError` naming the path.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from attnlens.formats._json import umask
from attnlens.formats.errors import (
    OutputExistsError,
    OutputLockedError,
    OutputPathError,
    SelectionError,
)

MARKER = ".attnlens"  # in every output folder: "attnlens output: KIND"
# files a lens command writes (a folder from before the marker holding anything else is not replaced)
LENS_SUFFIXES = frozenset({".json", ".jsonl", ".safetensors", ".png", ".wav", ".html", ".md", ".pdf", ".lock",
                           ".tmp"})
_TEMP_NAME = 20  # bytes lens adds to a folder's name for its lock and temporaries (".NAME.new-XXXXXXXX")
MAX_SCAN = 20_000  # entries looked at when deciding whether an old folder is lens output


def _describe(mode: int) -> str:
    for test, what in ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISREG, "a file"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return what
    return "not a folder"


def os_error(path: Path, err: OSError, doing: str = "cannot write to") -> OutputPathError:
    """One line for what the file system refused (EACCES, ENAMETOOLONG, EROFS, ENOSPC...)."""
    why = err.strerror or str(err)
    if err.errno == errno.ENAMETOOLONG:
        why += " (a name in the path is longer than the file system allows)"
    where = f" ({err.filename})" if err.filename and str(err.filename) != str(path) else ""
    return OutputPathError(f"{doing} {path}: {why}{where}")


def check_name(path: Path) -> None:
    """The last part of ``path`` must be a real name (not ``.``, ``..`` or empty) short enough for the
    lock and temporary names made from it."""
    if path.name in ("", ".", ".."):
        raise SelectionError(f"output folder {str(path)!r} does not end in a folder name: give one like "
                             "results/scan (., .., / and '' cannot be replaced)")
    try:
        parent = path.parent if path.parent.is_dir() else Path(".")
        name_max = os.pathconf(parent, "PC_NAME_MAX")
    except (OSError, ValueError):
        name_max = 255
    n = len(os.fsencode(path.name))
    if n + _TEMP_NAME > name_max:
        raise OutputPathError(f"output folder name {path.name[:40]!r}... is {n} bytes: too long for this file system "
                              f"with lens' lock and temporary names (at most {name_max - _TEMP_NAME})")


def holds_lens_output(path: Path) -> bool:
    """Whether the folder ``path`` holds lens output only (see the module docstring)."""
    marker = path / MARKER
    try:
        if stat.S_ISREG(os.lstat(marker).st_mode):
            return True
    except OSError:
        pass
    from attnlens.formats.folder import ResultsFolder
    from attnlens.formats.sweep import read_run

    seen, stack = 0, [path]
    while stack:
        folder = stack.pop()
        try:
            children = list(os.scandir(folder))
        except OSError:
            return False
        seen += len(children)
        if seen > MAX_SCAN:
            return False
        for child in children:
            if child.is_symlink():
                return False
            if child.is_dir(follow_symlinks=False):
                stack.append(Path(child.path))
            elif not child.is_file(follow_symlinks=False) or Path(child.name).suffix not in LENS_SUFFIXES:
                return False
    if read_run(path) is not None:  # a sweep folder
        return True
    found = ResultsFolder.load(path)
    return not found.is_empty or bool(found.sweeps)


def check_target(path: Path, force: bool) -> None:
    """Refuse (before any work) an output path that cannot or may not be replaced (see the module docstring)."""
    path = Path(path)
    check_name(path)
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        mode = None
    except NotADirectoryError:
        raise SelectionError(f"cannot write to {path}: a part of {path.parent} is a file, not a folder") from None
    except OSError as err:
        raise os_error(path, err) from None
    if mode is None:
        parent = next((p for p in path.parents if p.exists() or p.is_symlink()), None)
        if parent is not None and not parent.is_dir():
            raise SelectionError(f"cannot write to {path}: {parent} is a file")
        return
    if not stat.S_ISDIR(mode):
        raise OutputExistsError(f"{path} already exists and is {_describe(mode)}, not a folder: lens writes folders "
                                "and never replaces anything else, even with `force=True`; choose another `out`")
    try:
        empty = not any(os.scandir(path))
    except OSError as err:
        raise os_error(path, err, "cannot list") from None
    if empty:
        return
    if not force:
        raise OutputExistsError(f"{path} already exists and is not empty: pass `force=True` to overwrite it")
    if not holds_lens_output(path):
        raise OutputExistsError(f"{path} holds files lens did not write: `force=True` replaces only a folder of lens "
                                "output (or an empty one); choose another `out`")


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


def _take(lock: Path, path: Path) -> None:
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW, 0o644)
        except FileExistsError:
            try:
                pid = int(lock.read_text().strip() or 0) if stat.S_ISREG(os.lstat(lock).st_mode) else 0
            except (OSError, ValueError):
                pid = 0
            if pid != os.getpid() and _alive(pid):
                raise OutputLockedError(f"{path} is being written by another lens command (PID {pid}): wait for it "
                                        f"to finish or stop it; remove {lock} if that process is not lens") from None
            lock.unlink(missing_ok=True)  # stale: its writer died
            continue
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        return
    raise OutputLockedError(f"{path}: cannot take the lock {lock}")


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold the writer lock of ``path`` (a sibling file with this process's PID)."""
    path = Path(path)
    check_name(path)
    lock = lock_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):  # a part of the parent is a file
        raise SelectionError(f"cannot write to {path}: a part of {path.parent} is a file, not a folder") from None
    except OSError as err:
        raise os_error(path, err, "cannot create the folder of") from None
    try:
        _take(lock, path)
    except OutputLockedError:
        raise
    except OSError as err:
        raise os_error(path, err, "cannot take the lock of") from None
    try:
        try:
            _recover(path)
        except OSError as err:
            raise os_error(path, err, "cannot tidy up beside") from None
        yield
    finally:
        try:
            lock.unlink(missing_ok=True)
        except OSError:
            pass


def _recover(path: Path) -> None:
    """Under the lock: restore a folder a killed swap left aside, drop dead writers' temporaries."""
    olds = sorted(path.parent.glob(f".{glob_escape(path.name)}.old-*"))
    if olds and not path.exists():
        os.replace(olds[0], path)
        olds = olds[1:]
    for stale in olds + sorted(path.parent.glob(f".{glob_escape(path.name)}.new-*")):
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)


def glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def swap_in(tmp: Path, path: Path) -> None:
    """Replace ``path`` (a folder or nothing) by the folder ``tmp`` (same parent); the old folder is
    put back if the new one cannot be moved in."""
    if path.exists() or path.is_symlink():
        old = path.parent / f".{path.name}.old-{os.getpid()}"
        os.replace(path, old)
        try:
            os.replace(tmp, path)
        except BaseException:
            os.replace(old, path)
            raise
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)
    else:
        os.replace(tmp, path)


def new_sibling(path: Path, kind: str = "output") -> Path:
    """A new temporary folder beside ``path``, with the lens marker in it and the permissions a plain
    ``mkdir`` would give (``mkdtemp`` makes it ``drwx------``, which would hide the results from the group)."""
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.new-", dir=path.parent))
        os.chmod(tmp, 0o777 & ~umask())
        mark(tmp, kind)
    except OSError as err:
        raise os_error(path, err) from None
    return tmp


def mark(folder: Path, kind: str) -> None:
    """Write the marker that says ``folder`` is lens output (of ``kind``)."""
    (folder / MARKER).write_text(f"attnlens output: {kind}\n", encoding="utf-8")


@contextmanager
def output_folder(path: str | Path, *, force: bool = False, kind: str = "output") -> Iterator[Path]:
    """Yield a temporary folder that becomes ``path`` when the block succeeds (see the module docstring)."""
    path = Path(path)
    check_target(path, force)
    with locked(path):
        check_target(path, force)  # again: another writer may have finished meanwhile
        tmp = new_sibling(path, kind)
        try:
            yield tmp
            try:
                swap_in(tmp, path)
            except OSError as err:
                raise os_error(path, err) from None
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
