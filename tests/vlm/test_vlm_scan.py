"""`lens scan` on a vision-text model (the tiny random LLaVA): the language model's text analyses
and the vision-language ones, every result the registry declares for the modality written (or its
skip noted), an image example capture with its layout, and the dashboard showing all of it."""

import json

import numpy as np

from attnlens.analyses.registry import for_modality
from attnlens.formats import Modality, ResultsFolder


def test_scan_runs_every_vision_text_analysis(cli, tmp_path):
    from attnlens.dashboards.app import Dashboard
    from attnlens.dashboards.vision import VisionOverlay

    out = tmp_path / "scan"
    code, stdout, err = cli("scan", "tiny-llava", "--no-chat", "--captures", "1", "--out", out, "--json")
    assert code == 0, err
    doc = json.loads(stdout)
    written = {r["name"] for r in doc["results"]}
    for entry in for_modality(Modality.VISION_TEXT, causal=True):
        if entry.name == "retrieval":  # a random model finds no needle: skipped, and said so
            assert any("retrieval skipped" in n for n in doc["notes"]), doc["notes"]
            continue
        declared = set(entry.result_names()) - {"streaming.duo_gate"}  # gates run with --gate-steps only
        assert declared <= written, (entry.name, written)
    folder = ResultsFolder.load(out)
    assert folder.problems == {}
    vhd = folder.results["vision_aware.vhd"]
    assert vhd.scores.shape == (4, 4) and np.isfinite(vhd.scores).all() and (vhd.scores > 0).any()
    cap = folder.captures["captures/image-000"]
    assert cap.layout is not None and cap.layout.start > 0 and cap.image_path().is_file()
    dash = Dashboard(folder)
    assert {"vision_aware.vhd", "visual_sinks.image_centric", "taxonomy.induction"} <= set(dash.atlas.param.metric.objects)
    dash.atlas.metric = "vision_aware.vhd"
    assert dash.explorer.capture == "captures/image-000" and dash.explorer.cells["x"]  # the analysis' own inputs
    view = VisionOverlay(folder)
    assert view.capture == "captures/image-000"
    note, row = view.plot().objects  # the note, then the overlays and the patch map side by side
    assert type(note).__name__ == "HTML" and [type(o).__name__ for o in row.objects][0] == "PNG"
