"""Reading and writing the project's JSON files: bounded, validated, atomic.

A file is read inside one error boundary: missing, unreadable, not UTF-8, not JSON, too
large, nested too deep, or of the wrong top-level type all become one
:class:`~formats.errors.CorruptFileError` that names the file. Writes go to a temporary
sibling and are renamed into place, so a reader never sees half a file.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from attnlens.formats.errors import CorruptFileError, FormatVersionError

MAX_BYTES = 64 * 2**20  # no file the project writes comes near this
MAX_DEPTH = 32  # nor this deep


def depth(obj: Any) -> int:
    """Nesting depth of a JSON value (a scalar is 0), computed without recursion."""
    best, stack = 0, [(obj, 0)]
    while stack:
        x, d = stack.pop()
        if isinstance(x, dict):
            stack.extend((v, d + 1) for v in x.values())
        elif isinstance(x, list):
            stack.extend((v, d + 1) for v in x)
        else:
            continue
        best = max(best, d + 1)
    return best


_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)


def text_depth(data: bytes | str) -> int:
    """The deepest bracket nesting of JSON text, found without parsing it (strings are skipped):
    a linear scan, so a crafted file is refused before the parser's recursion could fail.
    Text with at most :data:`MAX_DEPTH` brackets returns their count (an upper bound)."""
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    if raw.count(b"[") + raw.count(b"{") <= MAX_DEPTH:
        return raw.count(b"[") + raw.count(b"{")
    a = np.frombuffer(_STRING.sub(b'""', raw), np.uint8)
    steps = ((a == 91) | (a == 123)).astype(np.int64) - ((a == 93) | (a == 125))  # [ { minus ] }
    return int(np.cumsum(steps).max(initial=0))


def loads(data: bytes | str, where: str, *, what: str = "file", max_bytes: int = MAX_BYTES) -> Any:
    """Parse JSON text whose size and depth are checked first; :class:`CorruptFileError` naming ``where``."""
    if len(data) > max_bytes:
        raise CorruptFileError(f"{where} is {len(data)} bytes: too large for a {what} (at most {max_bytes})")
    if text_depth(data) > MAX_DEPTH:
        raise CorruptFileError(f"{where} is nested deeper than {MAX_DEPTH} levels: not a {what}")
    try:
        return json.loads(data)
    except UnicodeDecodeError as err:
        raise CorruptFileError(f"{where} is not UTF-8 text: {err.reason} at byte {err.start}") from None
    except RecursionError:
        raise CorruptFileError(f"{where} is nested too deeply to be a {what}") from None
    except ValueError as err:
        raise CorruptFileError(f"{where} is not valid JSON: {err}") from None


def read_regular(path: str | Path, *, what: str = "file", max_bytes: int = MAX_BYTES) -> bytes:
    """The bytes of the regular file ``path`` (at most ``max_bytes``). A FIFO, socket or device is
    refused without blocking on it (opened non-blocking, checked with fstat before any read)."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise CorruptFileError(f"{path} is missing") from None
    except IsADirectoryError:
        raise CorruptFileError(f"{path} is a folder, expected a {what}") from None
    except OSError as err:
        raise CorruptFileError(f"{path} cannot be read: {err.strerror or err}") from None
    with os.fdopen(fd, "rb") as f:
        try:
            st = os.fstat(fd)
            if stat.S_ISDIR(st.st_mode):
                raise CorruptFileError(f"{path} is a folder, expected a {what}")
            if not stat.S_ISREG(st.st_mode):
                raise CorruptFileError(f"{path} is not a regular file ({special_kind(st.st_mode)}): not read")
            if st.st_size > max_bytes:
                raise CorruptFileError(f"{path} is {st.st_size} bytes: too large for a {what} (at most {max_bytes})")
            data = f.read(max_bytes + 1)
        except OSError as err:
            raise CorruptFileError(f"{path} cannot be read: {err.strerror or err}") from None
    if len(data) > max_bytes:
        raise CorruptFileError(f"{path} grew past {max_bytes} bytes while it was read: too large for a {what}")
    return data


def special_kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISLNK, "a symbolic link")):
        if test(mode):
            return name
    return "not a file"


def read_json(path: str | Path, *, what: str = "file") -> Any:
    """The JSON value in ``path``; :class:`CorruptFileError` naming the file for anything wrong."""
    path = Path(path)
    data = read_regular(path, what=what)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise CorruptFileError(f"{path} is not UTF-8 text: {err.reason} at byte {err.start}") from None
    doc = loads(text, str(path), what=what)
    if depth(doc) > MAX_DEPTH:
        raise CorruptFileError(f"{path} is nested deeper than {MAX_DEPTH} levels: not a {what}")
    return doc


def read_doc(path: str | Path, *, kind: str, versions: tuple[int, ...], what: str | None = None,
             legacy: bool = False) -> dict[str, Any]:
    """A JSON object of ``kind`` at one of ``versions``.

    With ``legacy``, a document that has no ``kind`` and no ``format_version`` (written before
    they were recorded) is accepted as version 1.
    """
    what = what or kind.replace("_", " ")
    doc = read_json(path, what=what)
    if not isinstance(doc, dict):
        raise CorruptFileError(f"{path} holds a JSON {type(doc).__name__}, expected an object ({what})")
    got_kind = doc.get("kind")
    version = doc.get("format_version")
    if legacy and got_kind is None:
        got_kind, version = kind, version if version is not None else 1
    if got_kind != kind:
        raise CorruptFileError(f"{path} is a {got_kind!r} file, expected {kind!r}")
    if version not in versions:
        raise FormatVersionError(
            f"{path} has format_version {version!r}; this attnlens reads {kind} versions "
            f"{', '.join(map(str, versions))}: rewrite it with the command that made it")
    return doc


def _clean(x: Any) -> Any:
    """JSON-safe values: numpy scalars and arrays to Python, NaN/inf to null (strict JSON)."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple, set)):
        return [_clean(v) for v in x]
    if hasattr(x, "tolist") and not isinstance(x, (str, bytes)):  # numpy scalar or array
        return _clean(x.tolist())
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if x is None or isinstance(x, (str, int, float, bool)):
        return x
    return str(x)


def dumps(doc: Any) -> str:
    return json.dumps(_clean(doc), indent=1, allow_nan=False)


def write_json(path: str | Path, doc: Any) -> Path:
    """Write ``doc`` atomically (temporary sibling, fsync, rename); NaN is stored as null."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes(path, dumps(doc).encode("utf-8"))
    return path


def write_bytes(path: Path, data: bytes) -> None:
    """``data`` into ``path`` atomically: staged beside it (:func:`stage_bytes`), then renamed over it."""
    tmp = stage_bytes(path, data)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def umask() -> int:
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


def stage_bytes(path: Path, data: bytes) -> Path:
    """``data`` in a new temporary file beside ``path``, flushed to disk; the caller renames it. The file gets the
    mode a plain ``open`` would give it (0666 less the umask), not the temporary file's private 0600."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def need(doc: dict, key: str, types, path: Path, what: str = "") -> Any:
    """``doc[key]`` checked to be one of ``types``; the error names the file and the field."""
    if key not in doc:
        raise CorruptFileError(f"{path}: {what + '.' if what else ''}{key} is missing")
    value = doc[key]
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in _as_tuple(types)):
        names = "/".join(t.__name__ for t in _as_tuple(types))
        raise CorruptFileError(f"{path}: {what + '.' if what else ''}{key} must be {names}, got "
                               f"{type(value).__name__}")
    return value


def _as_tuple(types) -> tuple:
    return types if isinstance(types, tuple) else (types,)


def int_list(value: Any, path: Path, field: str, *, lo: int = 0, hi: int | None = None) -> list[int]:
    """A list of ints in ``[lo, hi)``, else :class:`CorruptFileError` naming the field."""
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise CorruptFileError(f"{path}: {field} must be a list of integers")
    for v in value:
        if v < lo or (hi is not None and v >= hi):
            raise CorruptFileError(f"{path}: {field} holds {v}, outside {lo}-{'' if hi is None else hi - 1}")
    return list(value)
