"""A user cache of converted model folders, verified by hashes on every load.

Root: ``$ATTNLENS_CACHE`` if set, else ``$XDG_CACHE_HOME/attnlens``, else
``~/.cache/attnlens``. Each entry is a folder with a ``manifest.json`` that lists the
SHA-256 of every file in it; an entry whose files are missing, truncated or altered
is removed and rebuilt, never used. Entries are built in a temporary sibling folder
and renamed into place, so an interrupted build leaves nothing that looks complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

MANIFEST = "manifest.json"
_CHUNK = 1 << 22


def cache_root() -> Path:
    if env := os.environ.get("ATTNLENS_CACHE"):
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "attnlens"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def verified_manifest(folder: Path) -> dict | None:
    """The folder's manifest if every file it lists is present with its hash, else None."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        files = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    for name, digest in files.items():
        path = folder / name
        if not path.is_file() or sha256_file(path) != digest:
            return None
    return manifest


def cached_folder(
    key: str, build: Callable[[Path], dict], *, on_rebuild: Callable[[str], None] | None = None
) -> tuple[Path, dict]:
    """The verified cache folder for ``key``, building it with ``build(tmp_dir)`` if needed.

    ``build`` writes the files into ``tmp_dir`` and returns extra manifest fields.
    Returns the folder and its manifest.
    """
    root = cache_root()
    folder = root / key
    if folder.exists():
        manifest = verified_manifest(folder)
        if manifest is not None:
            return folder, manifest
        if on_rebuild:
            on_rebuild(f"cache entry {folder} is incomplete or corrupt; rebuilding it")
        shutil.rmtree(folder, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=root))
    try:
        extra = build(tmp)
        files = {
            p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file() and p.name != MANIFEST
        }
        manifest = {"key": key, "files": files, **extra}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
        try:
            os.replace(tmp, folder)
        except OSError:
            # another process (a second Ray worker on this node) built it first: use theirs
            theirs = verified_manifest(folder)
            if theirs is None:
                raise
            return folder, theirs
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder, manifest
