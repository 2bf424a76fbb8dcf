"""Fixtures: synthetic results folders (no model) and one real `lens scan tiny-llama` folder."""

from __future__ import annotations

import pytest

from dashboards.synthetic import make_results_folder


@pytest.fixture(scope="session")
def synth(tmp_path_factory):
    """4 layers x 6 heads, scores, two captures with q/k, a sweep, a circuit, a vision capture."""
    return make_results_folder(tmp_path_factory.mktemp("synth"), n_captures=2, taxonomy=True, vision=True)


@pytest.fixture(scope="session")
def long_synth(tmp_path_factory):
    """One capture of 700 tokens: the explorer must window it."""
    return make_results_folder(tmp_path_factory.mktemp("long"), n_layers=2, n_heads=2, n_tokens=700,
                               sweep=False, circuit=False, qk=False)


@pytest.fixture(scope="session")
def tiny_scan(tmp_path_factory):
    """A real results folder: `lens scan tiny-llama` plus two example captures with pattern, q, k."""
    from typer.testing import CliRunner

    from lens.cli import app

    out = tmp_path_factory.mktemp("scan") / "tiny"
    runner = CliRunner()
    res = runner.invoke(app, ["scan", "tiny-llama", "--out", str(out), "--captures", "0"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["capture", "tiny-llama", "-p", "The quick brown fox jumps over the lazy dog.",
                              "-p", "Alice gave Bob a book.", "--sites", "pattern,q,k", "--out", str(out / "captures")])
    assert res.exit_code == 0, res.output
    return out
