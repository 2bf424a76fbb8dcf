"""Fixtures: synthetic folders written through the formats writers, and the contract folder
written by the real commands on the tiny models."""

from __future__ import annotations

import pytest

from tests.dashboards.contract import contract_folder
from tests.dashboards.synthetic import make_results_folder


@pytest.fixture(scope="session")
def synth(tmp_path_factory):
    """4 layers x 6 heads: every kind, with known head structure, plus a vision capture."""
    return make_results_folder(tmp_path_factory.mktemp("synth") / "results", n_captures=2, vision=True)


@pytest.fixture(scope="session")
def long_synth(tmp_path_factory):
    """One capture of 700 tokens: the explorer must window it."""
    return make_results_folder(tmp_path_factory.mktemp("long") / "results", n_layers=2, n_heads=2, n_tokens=700,
                               curves=False, circuit=False, stats=False, ablation=False, qk=False)


@pytest.fixture(scope="session")
def contract(tmp_path_factory):
    """The real commands' output on tiny-llama and tiny-dinov2 (see tests/dashboards/contract.py)."""
    return contract_folder(tmp_path_factory)
