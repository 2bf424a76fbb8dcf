"""A needle folder on tiny-llama: the scan's own needle example (``pipelines.examples.needle_example``:
a needle prompt with the model's greedy answer, its focus rows and keys in the capture metadata)
and a retrieval-style head score read from that capture.

Why not ``lens scan``: on tiny-llama (random weights) no needle trial passes, so the scan skips
retrieval and writes no needle capture. The score here (per head: the share of answer rows whose
top key lies in the needle, plus the mean mass on the needle as a tie-break) stands in for the
retrieval score so that a view can be checked against the capture it opens.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

_BUILT: dict[str, Path] = {}


def needle_scores(cap) -> np.ndarray:
    """``[layer, head]``: share of focus rows whose top key is inside the focus keys (+ mass / 100)."""
    f = cap.focus
    out = np.full((cap.facts.n_layers, cap.facts.n_heads), np.nan)
    (r0, r1), (k0, k1) = f.rows, f.keys
    for layer in cap.layers:
        for head in cap.heads:
            p = cap.pattern(layer, head)[r0:r1]
            top = p.argmax(axis=1)
            out[layer, head] = ((top >= k0) & (top < k1)).mean() + p[:, k0:k1].sum(axis=1).mean() / 100
    return out


def build(root: Path) -> Path:
    import lens
    from attnlens.analyses.decode import greedy_decode
    from attnlens.formats import CaptureFile, HeadScores, Provenance
    from attnlens.pipelines import examples, heads

    lm = lens.load("tiny-llama")
    trial = heads.niah_trials(lm, lengths=[400], depths=[0.5], seeds=[0], chat=False)[0]
    answer, _ = greedy_decode(lm, trial.input_ids, max_new_tokens=8, source="none")
    ex = examples.needle_example(lm, trial, answer)
    scan = root / "scan"
    ex.capture.save(scan / ex.name)
    cap = CaptureFile.load(scan / ex.name)
    prov = Provenance.for_model(lm.facts, seeds=(0,), prompts="1 NIAH trial", inputs=[trial.input_ids.tolist()])
    HeadScores("retrieval", "needle_top_key_share", needle_scores(cap), prov,
               "share of the answer's rows whose top key is in the needle",
               params={"example_capture": examples.NEEDLE}).save(scan)
    return root


def needle_folder(tmp_path_factory) -> Path:
    if "root" not in _BUILT:
        reuse = os.environ.get("ATTNLENS_NEEDLE")  # a folder build() wrote before (for quick reruns)
        _BUILT["root"] = Path(reuse) if reuse else build(tmp_path_factory.mktemp("needle") / "results")
    return _BUILT["root"]
