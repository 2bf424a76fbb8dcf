"""Run time of the discrete-SAE method beside EAP, EAP-IG and per-head patching, in one process
on the same prompts (SmolLM2, CPU).

The full per-head patching loop (270 heads) takes tens of minutes on a loaded 2-core machine,
so by default it is timed on every ``--patch-every``-th head and scaled to 270 (labelled as an
extrapolation in the output); ``--patch-every 1`` times the whole loop.

Example:
    python benchmarks/sae_circuit_timing.py --task ioi -n 10 --out benchmarks/results/science/circuits/sae-timing-ioi.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import lens
from attnlens.analyses.circuits import prepare, score_sets
from attnlens.analyses.circuits.ablation import all_heads
from attnlens.analyses.circuits.eap import edge_attribution
from attnlens.analyses.circuits.metrics import Metric
from attnlens.analyses.circuits.tasks import encode_task, load_task
from attnlens.pipelines.circuits import sae_scores


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="ioi")
    ap.add_argument("-n", type=int, default=10)
    ap.add_argument("--patch-every", type=int, default=10)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    lm = lens.load("smollm2-135m")
    enc = encode_task(load_task(a.task, lm.tokenizer, n=a.n, seed=0), lm.tokenizer, max_batch=32)
    metric = Metric.LOGIT_DIFF
    out = {"model": lm.facts.name, "task": a.task, "prompts": enc.n_examples, "load_before": os.getloadavg()}
    s = sae_scores(lm, enc, n_examples=a.n)
    out["sae_seconds"] = s.seconds
    print("sae", s.seconds, flush=True)
    for name, steps in (("eap", 0), ("eap-ig", 5)):
        out[f"{name}_seconds"] = edge_attribution(lm, enc, metric, ig_steps=steps).seconds
        print(name, out[f"{name}_seconds"], flush=True)
    heads = all_heads(lm.facts)
    subset = heads[::a.patch_every]
    t0 = time.perf_counter()
    ctx = prepare(lm, enc, "patch", metric)
    t_prep = time.perf_counter() - t0
    per_chunk = max(1, 64 // max(b.size for b in enc.batches))
    for i in range(0, len(subset), per_chunk):
        score_sets(ctx, [[c] for c in subset[i:i + per_chunk]], max_rows=64)
    took = time.perf_counter() - t0 - t_prep  # the per-head loop; the clean / corrupted runs once
    out.update({"patching_heads_timed": len(subset), "patching_prepare_seconds": t_prep,
                "patching_seconds_timed": took,
                "patching_seconds_270_heads_extrapolated": t_prep + took * len(heads) / len(subset),
                "load_after": os.getloadavg()})
    print(out, flush=True)
    a.out.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
