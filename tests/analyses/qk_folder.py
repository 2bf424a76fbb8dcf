"""A results folder written by the real `lens heads qk` on tiny-llama, for the QK format, view and
browser tests."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

PROMPT = "When Mary and John went to the store, John gave a drink to"


def write_qk_folder(root: Path, head: int) -> Path:
    """Run ``lens heads qk tiny-llama`` for layer 3, ``head``, answers M and J into ``root/qk``."""
    from lens.cli import main

    out = root / "qk"
    argv = sys.argv
    sys.argv = ["lens", "heads", "qk", "tiny-llama", "--layer", "3", "--head", str(head), "--prompt", PROMPT,
                "--answer", "M", "--answer", "J", "--out", str(out), "--json"]
    try:
        with pytest.raises(SystemExit) as info:
            main()
    finally:
        sys.argv = argv
    assert (info.value.code or 0) == 0
    return out
