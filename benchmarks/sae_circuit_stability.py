"""How stable is the discrete-SAE circuit (``lens circuit --method sae``) on SmolLM2?

Captures the head outputs (z at the last position) of the first N clean and corrupted
prompts of a task once, then runs the SAE scoring for several seeds and codebook sizes and
reports the precision / recall of each top-k head set against the project's saved circuits
(IOI: per-head patching, ``ioi-patching``, and EAP-IG head scores, ``ioi-eap``;
greater-than: the EAP-IG head circuit, ``ioi-gt``), beside the chance level k / heads.

Example:
    python benchmarks/sae_circuit_stability.py --out benchmarks/results/science/circuits/sae-stability.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

import lens
from attnlens.analyses.circuits.discrete_sae import SAEConfig, discrete_sae_scores, precision_recall
from attnlens.analyses.circuits.tasks import encode_task, load_task
from attnlens.formats.head_scores import HeadScores
from attnlens.pipelines.circuits import _top_heads, head_outputs

SAVED = Path("benchmarks/results/science/circuits")


def truths(k: int) -> dict[str, dict[str, list]]:
    ioi_patch = json.loads((SAVED / "ioi-patching/ioi_patching.circuit.json").read_text())["heads"]
    ioi_eapig = HeadScores.load(SAVED / "ioi-eap/circuit.ioi_eap-ig_logit-diff.json").scores
    gt_eapig = json.loads((SAVED / "ioi-gt/greater-than_eap-ig.circuit.json").read_text())["heads"]
    return {"ioi": {"patching (ioi-patching, 30 heads)": [tuple(h) for h in ioi_patch],
                    f"eap-ig top {k} heads (ioi-eap)": _top_heads(ioi_eapig, k)},
            "greater-than": {"eap-ig head circuit (ioi-gt, 30 heads)": [tuple(h) for h in gt_eapig]}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=10)
    ap.add_argument("--top-n", type=int, default=30)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--codes", default="8,16,32")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    lm = lens.load("smollm2-135m")
    n_heads = lm.facts.n_layers * lm.facts.n_heads
    doc = {"model": lm.facts.name, "examples": a.examples, "top_n": a.top_n, "chance_precision": a.top_n / n_heads,
           "tasks": {}}
    for task, refs in truths(a.top_n).items():
        enc = encode_task(load_task(task, lm.tokenizer, n=20, seed=0), lm.tokenizer, max_batch=32)
        t0 = time.perf_counter()
        pos, neg = head_outputs(lm, enc, a.examples)
        rows = {"capture_seconds": time.perf_counter() - t0, "configs": []}
        for n_codes in (int(c) for c in a.codes.split(",")):
            per_ref = {r: [] for r in refs}
            secs = []
            for seed in range(a.seeds):
                s = discrete_sae_scores(pos, neg, SAEConfig(n_codes=n_codes, seed=seed))
                secs.append(s.seconds)
                top = _top_heads(s.score, a.top_n)
                for r, heads in refs.items():
                    per_ref[r].append(precision_recall(top, heads)["precision"])
            rows["configs"].append({"n_codes": n_codes, "seeds": a.seeds, "sae_seconds_median": statistics.median(secs),
                                    "precision": {r: {"mean": float(np.mean(v)), "min": min(v), "max": max(v)}
                                                  for r, v in per_ref.items()}})
            print(task, rows["configs"][-1], flush=True)
        doc["tasks"][task] = rows
    a.out.write_text(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    main()
