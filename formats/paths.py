"""Paths read from results files stay inside their folder."""

from __future__ import annotations

from pathlib import Path, PurePosixPath, PureWindowsPath

from attnlens.formats.errors import CorruptFileError


def confined(folder: Path, relative: str, *, what: str = "path") -> Path:
    """``folder / relative``, refusing absolute paths, ``..`` and links that lead outside ``folder``."""
    if not isinstance(relative, str) or not relative or "\x00" in relative:
        raise CorruptFileError(f"{folder}: {what} {relative!r} is not a file name")
    parts = PurePosixPath(relative.replace("\\", "/"))
    if parts.is_absolute() or PureWindowsPath(relative).is_absolute() or ".." in parts.parts:
        raise CorruptFileError(f"{folder}: {what} {relative!r} points outside its folder")
    path = folder / parts
    base = folder.resolve()
    try:
        path.resolve().relative_to(base)
    except ValueError:
        raise CorruptFileError(f"{folder}: {what} {relative!r} points outside its folder") from None
    return path
