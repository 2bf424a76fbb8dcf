"""A results folder written by the real `lens heads dla` on tiny-llama, for the DLA format, view,
report and browser tests."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

PROMPT = "When Mary and John went to the store, John gave a drink to"


def write_dla_folder(root: Path) -> Path:
    """Run ``lens heads dla tiny-llama`` with targets M and J at the last position and position 5 into ``root/dla``."""
    from lens.cli import main

    out = root / "dla"
    argv = sys.argv
    sys.argv = ["lens", "heads", "dla", "tiny-llama", "--prompt", PROMPT, "--target", "M", "--target", "J",
                "--pos", "-1", "--pos", "5", "--top", "3", "--out", str(out), "--json"]
    try:
        with pytest.raises(SystemExit) as info:
            main()
    finally:
        sys.argv = argv
    assert (info.value.code or 0) == 0
    return out
