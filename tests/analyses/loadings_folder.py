"""A results folder written by the real `lens heads loadings` on tiny-llama, for the head loadings format,
view, report and browser tests."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

PROMPTS = ["When Mary and John went to the store, John gave a drink to",
           "The cat sat on the mat and the dog sat on the",
           "abcabcabcabc"]


def run_lens(*args: str) -> int:
    """``lens ARGS`` in this process; its exit code."""
    from lens.cli import main

    argv = sys.argv
    sys.argv = ["lens", *args]
    try:
        with pytest.raises(SystemExit) as info:
            main()
    finally:
        sys.argv = argv
    return info.value.code or 0


def write_loadings_folder(root: Path, layer: int = 3, head: int = 2) -> Path:
    """Run ``lens heads loadings tiny-llama`` for ``(layer, head)`` over :data:`PROMPTS` into ``root/loadings``."""
    prompts = root / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n", encoding="utf-8")
    out = root / "loadings"
    code = run_lens("heads", "loadings", "tiny-llama", "--layer", str(layer), "--head", str(head),
                    "--file", str(prompts), "--out", str(out), "--json")
    assert code == 0
    return out
