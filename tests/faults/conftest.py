"""Fixtures of the fault matrix: a tiny task file and a saved capture to damage."""

from __future__ import annotations

import json

import pytest


@pytest.fixture(scope="session")
def task_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("task") / "pairs.jsonl"
    rows = [{"prompt": f"{a}b{c} {a}x", "answer": "q", "corrupted": f"{d}b{c} {a}x", "distractor": "z"}
            for a, c, d in zip("abcd", "hgfe", "mnop")]
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return p


@pytest.fixture
def saved_capture(tmp_path):
    import lens

    lm = lens.load("tiny-llama")
    return lens.run(lm, "a capture to damage", sites=[lens.Site.PATTERN, lens.Site.Z], layers=[0, 1]).capture.save(
        tmp_path / "cap")
