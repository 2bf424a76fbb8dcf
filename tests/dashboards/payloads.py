"""A results folder whose every text field is a script or onerror payload (issue 12): result
descriptions, params and summaries (keys and values), analysis, metric, model, circuit and
task names, tokens and text, sweep labels, file and folder names. Each payload, if it ran,
would set ``window.__xss`` or open a dialog; the tests check that none does.

Written through the formats writers, like the tools' output; plus one broken file and a
capture whose image path points outside its folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from attnlens.formats import (
    AblationResult,
    Circuit,
    Curves,
    Edge,
    HeadScores,
    Input,
    Node,
    NodeKind,
    Provenance,
    Receiver,
)
from tests.dashboards.synthetic import facts, make_results_folder, text_capture

SCRIPT = "<script>window.__xss = 'script'; alert('script')</script>"
IMG = "<img src=x onerror=\"window.__xss='img'; alert('img')\">"
SVG = "<svg onload=\"window.__xss='svg'\">"
LINK = "[click](javascript:window.__xss='link')"
ALL = (SCRIPT, IMG, SVG, LINK)
NAME = "x<img src=x onerror=alert(1)>"  # a file/analysis name (no slash allowed there)


def payload_text(i: int = 0) -> str:
    return f"{ALL[i % len(ALL)]} and {ALL[(i + 1) % len(ALL)]}"


def make_payload_folder(root: str | Path) -> Path:
    root = Path(root)
    model = f"model {SCRIPT}{IMG}"
    prov = Provenance(model=model, prompts=payload_text(1), command=payload_text(2), machine=payload_text(3),
                      code_version=IMG, inputs_sha256=SVG, versions={SCRIPT: IMG})
    scan = root / f"scan{NAME}"
    rng = np.random.default_rng(0)
    for i, (analysis, metric) in enumerate([(NAME, "m" + NAME), ("summary", "sink_mass"), ("taxonomy", "induction")]):
        HeadScores(analysis, metric, rng.uniform(size=(3, 4)), prov, payload_text(i),
                   params={SCRIPT: IMG, "example_capture": f"captures/{NAME}", "list": [SCRIPT, IMG, SVG] * 5},
                   summary={IMG: SCRIPT, "nested": {SVG: [LINK, {"k": SCRIPT}]}, "top": [{"item": IMG}] * 12}).save(scan)
    f = facts(model, 3, 4)
    words = [SCRIPT, " ", IMG, " the", "\n", SVG, LINK, " cat", " sat", " <b>bold</b>", " &amp;"] * 2
    text_capture(scan / "captures" / NAME, f, ["<bos>", *words], rng=rng)
    Curves(NAME, "m", np.arange(3.0), {SCRIPT: rng.normal(size=(2, 3)), IMG: rng.normal(size=3)}, prov,
           x_label=IMG, y_label=SCRIPT, x_ticks=[SVG, IMG, LINK], description=payload_text(1),
           params={IMG: SCRIPT}, summary={SCRIPT: IMG}).save(root / "curves")
    AblationResult(task=payload_text(2), method=IMG, metric=SCRIPT, heads=[(0, 1)], mlps=[], baseline=1.0, ablated=0.5,
                   n_examples=3, provenance=prov, random_effects=[0.1, -0.2, 0.05], params={SCRIPT: IMG}
                   ).save(root / "ablation")
    Circuit(heads=[(0, 1), (2, 3)], mlps=[1], edges=[Edge(Node(NodeKind.HEAD, 0, 1), Receiver(Input.K, 2, 1), 0.4),
                                                    Edge(Node(NodeKind.HEAD, 2, 3), Receiver(Input.LOGITS), 0.7)],
            name=NAME, task=payload_text(0), method=IMG, metric=SCRIPT, n_layers=3, n_heads=4, group_size=2,
            faithfulness={SCRIPT: 0.5, "faithfulness": 0.8}, details={IMG: SVG, "vs": {SCRIPT: IMG}},
            params={LINK: SCRIPT}, provenance=prov, description=payload_text(3)).save(root / "circuit")
    make_results_folder(root / "more", n_layers=3, n_heads=4, model=model, curves=False, circuit=False,
                        ablation=False, vision=True, sub="scan")
    # a capture whose image path leads out of its folder, and a broken result: both named, the rest used
    bad = root / "more" / "image" / "000" / "capture.json"
    doc = json.loads(bad.read_text())
    doc["meta"]["layout"]["image_file"] = "../../../../etc/passwd"
    bad.write_text(json.dumps(doc))
    (root / f"broken{NAME}.json").write_text('{"kind": "head_scores", "format_version": 2, "analysis": ')
    return root
