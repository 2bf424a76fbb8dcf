"""The registry drives the scan (issue 26): every entry names its runner and what it needs;
a third-party analysis registered with ``register_analysis`` runs in ``lens scan``, its
scores are written, and the dashboard shows them."""

from __future__ import annotations

import numpy as np
import pytest

import lens
from attnlens.analyses import registry
from attnlens.analyses.registry import register_analysis
from attnlens.formats import HeadScores, Provenance, ResultsFolder
from attnlens.formats.errors import SelectionError
from attnlens.formats.facts import Modality

PROMPT = "The cat sat on the mat because the mat was warm"


@pytest.fixture
def own_registry(monkeypatch):
    """The built-in summary entry alone (a fast scan), plus whatever the test registers; restored after."""
    monkeypatch.setattr(registry, "_REGISTRY", {"summary": registry.analyses()["summary"]})


def self_focus_runner(lm, plan, progress):
    """How much each head's last query attends to itself; its output (the scores) is what others need."""
    from attnlens.pipelines.scan import ScanPart

    cap = lens.run(lm, PROMPT, sites=[lens.Site.PATTERN]).capture
    scores = np.stack([cap.pattern(layer)[0, :, -1, -1].float().numpy() for layer in range(lm.facts.n_layers)])
    result = HeadScores("self_focus", "self_attention", scores, Provenance.for_model(lm.facts, prompts=PROMPT))
    return ScanPart(output=scores).add("self_focus", [result])


def elsewhere_runner(lm, plan, progress, *, self_focus):
    """A runner that needs self_focus' output: returns plain results (no ScanPart)."""
    return [HeadScores("elsewhere", "attention_elsewhere", 1.0 - self_focus,
                       Provenance.for_model(lm.facts, prompts=PROMPT))]


def _register():
    @register_analysis("self_focus", "attention of the last query to itself", metrics=("self_attention",),
                       modalities=(Modality.TEXT,), in_scan=True, runner=self_focus_runner)
    def self_focus(pattern):  # the scoring function: [batch, head, q, k] -> [head]
        return pattern[0, :, -1, -1]

    @register_analysis("elsewhere", "attention of the last query to other tokens", metrics=("attention_elsewhere",),
                       in_scan=True, runner=elsewhere_runner, needs=("self_focus",))
    def elsewhere(self_attention):
        return 1.0 - self_attention

    return self_focus


def test_every_builtin_scan_entry_names_a_runner_that_loads():
    for e in registry.analyses().values():
        assert callable(e.load()), e.name
        if e.in_scan:
            assert callable(e.load_runner()), e.name
        for need in e.needs:
            assert need in registry.analyses(), (e.name, need)
    assert registry.analyses()["streaming"].needs == ("retrieval",)
    vit = {e.runner for e in registry.for_modality(Modality.VISION)}
    assert len(vit) == 1  # the four ViT analyses share one pass over the images


def test_a_registered_analysis_runs_in_lens_scan_and_shows_in_the_dashboard(own_registry, cli, tmp_path):
    fn = _register()
    assert registry.analyses()["self_focus"].load() is fn
    out = tmp_path / "scan"
    code, _, err = cli("scan", "tiny-llama", "--no-chat", "--captures", "0", "--out", out)
    assert code == 0, err
    folder = ResultsFolder.load(out)
    written = {p.name for p in out.glob("*.json")}
    assert {"summary.sink_mass.json", "self_focus.self_attention.json", "elsewhere.attention_elsewhere.json"} <= written
    assert "no scan runner" not in err

    from attnlens.dashboards.app import Dashboard
    from attnlens.dashboards.selection import ModelResults, describe

    sel = ModelResults.of(folder)
    label = next(k for k, r in sel.results.items() if r.name == "self_focus.self_attention")
    other = next(k for k, r in sel.results.items() if r.name == "elsewhere.attention_elsewhere")
    np.testing.assert_allclose(sel.results[other].scores, 1.0 - sel.results[label].scores, atol=1e-6)
    assert describe(sel, label) == "attention of the last query to itself"
    board = Dashboard(folder)
    assert label in board.atlas.param.metric.objects
    board.atlas.metric = label
    np.testing.assert_allclose(board.atlas.grid.source.data["value"], sel.results[label].scores.ravel())


def test_the_scan_pipeline_passes_what_an_entry_needs(own_registry, tiny_lm):
    from attnlens.pipelines.scan import ScanSettings, scan

    _register()
    out = scan(tiny_lm, ScanSettings(chat=False, captures=0))
    by_name = {r.name: r for r in out.results}
    assert list(by_name) == ["summary.sink_mass", "summary.entropy", "self_focus.self_attention",
                             "elsewhere.attention_elsewhere"]  # registry order
    np.testing.assert_allclose(by_name["elsewhere.attention_elsewhere"].scores,
                               1.0 - by_name["self_focus.self_attention"].scores)
    assert by_name["self_focus.self_attention"].params["example_capture"] == "captures/prose"


def test_registering_a_scan_analysis_without_a_runner_or_with_unknown_needs_is_refused(own_registry):
    with pytest.raises(SelectionError, match="`in_scan` analysis 'x' needs a `runner`"):
        register_analysis("x", "d", metrics=("m",), in_scan=True)
    with pytest.raises(SelectionError, match="`needs` of 'y' names 'nothing', which no registered analysis is"):
        register_analysis("y", "d", metrics=("m",), in_scan=True, runner=elsewhere_runner, needs=("nothing",))


def test_a_runner_that_spreads_its_own_items_runs_its_followup_with_its_output(own_registry, tiny_lm):
    """The retrieval pattern: a `distributes` runner gets the executor (None here, serial), and its
    `followup` runs after it with its output, before the entries that need nothing of it are assembled."""
    from attnlens.analyses.registry import AnalysisEntry
    from attnlens.pipelines.scan import ScanPart, ScanSettings, scan

    seen = {}

    def ranking(lm, plan, progress, executor=None):
        seen["executor"] = executor
        scores = np.arange(lm.facts.n_layers * lm.facts.n_heads, dtype=float).reshape(lm.facts.n_layers, -1)
        return ScanPart(output=scores).add("ranked", [HeadScores("ranked", "score", scores,
                                                                 Provenance.for_model(lm.facts))])

    def followup(lm, plan, progress, *, ranked):
        return ScanPart(notes=[f"followup got a ranking topped by {ranked.max():g}"])

    registry._declare(AnalysisEntry("ranked", "a ranking", ("score",), lambda x: x, (Modality.TEXT,),
                                    runner=ranking, distributes=True, followup=followup))
    out = scan(tiny_lm, ScanSettings(chat=False, captures=0))
    assert seen == {"executor": None}
    assert [r.name for r in out.results] == ["summary.sink_mass", "summary.entropy", "ranked.score"]
    n = tiny_lm.facts.n_layers * tiny_lm.facts.n_heads
    assert out.notes == [f"followup got a ranking topped by {n - 1}"]
