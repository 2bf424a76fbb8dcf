"""Measure tiny-vlm's vision-aware heads, visual sinks and the two interventions (docs/vlm.md).

    PYTHONPATH=. python benchmarks/vlm_measure.py --out results/vlm

(defaults: the run in docs/vlm.md, scene counts reduced to fit the 2-core machine.)

1. VHD of every head on calibration scenes (held-out seeds 1000+, never trained on, not
   used for the accuracy numbers), the T-VHD of hallucinated vs correct probe answers.
2. VHR scale factors from that VHD ranking, and a random-head control of the same size.
3. The sink dimensions of the base LM (SmolLM2, text only: the built-in general prompts),
   the visual sinks and image-centric heads on calibration scenes.
4. Accuracy per question kind and the hallucination probe on evaluation scenes (held-out
   seeds 0+) for: no edit, VHR, VHR's random control, VAR redistribution, its random-head
   control.

Writes ``summary.json`` and the HeadScores files into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from attnlens.analyses import scenes as sc
from attnlens.analyses.prompts import GENERAL_PROMPTS
from attnlens.analyses.result import Provenance
from attnlens.analyses.vision_aware import (
    head_divergence,
    random_scales_like,
    token_divergence,
    vhr_scales,
    vision_aware_scores,
)
from attnlens.analyses.visual_sinks import visual_sink_scores
from attnlens.analyses.vlm_collect import (
    ask,
    base_lm_sink_dimensions,
    head_output_pairs,
    var_edit,
    var_inputs,
    vhr_edit,
)
from attnlens.analyses.vqa import accuracy_by_kind, normalise, probe_score

CONDITIONS = ("none", "vhr", "vhr_random_heads", "var", "var_random_heads")
CALIBRATION_START = 1000  # held-out seeds from here on calibrate; evaluation uses held-out seeds 0+


def held_out(start: int, n: int) -> list[sc.Scene]:
    return [sc.make_scene(s) for s in sc.split_seeds(sc.Split.HELD_OUT, start + n)[start:]]


def evaluate(lm, scenes, edit=None) -> dict:
    direct = [(s, q) for s in scenes for q in sc.questions(s)]
    probe = [(s, q) for s in scenes for q in sc.probe_questions(s)]
    recs = ask(lm, direct + probe, edit=edit)
    return {"accuracy": {k.value: v.to_json() for k, v in accuracy_by_kind(recs[: len(direct)]).items()},
            "probe": probe_score(recs[len(direct):]).to_json()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="tiny-vlm")
    p.add_argument("--out", type=Path, default=Path("results/vlm"))
    p.add_argument("--eval-images", type=int, default=32)
    p.add_argument("--calib-images", type=int, default=24)
    p.add_argument("--probe-vhd-images", type=int, default=12)
    p.add_argument("--alpha", default="2,1.5,1.25", help="VHR factor; a comma list runs VHR and its control for each "
                   "(conditions vhr@A, vhr_random_heads@A; the first is also plain vhr)")
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--conditions", default=",".join(CONDITIONS),
                   help="comma-separated subset of " + ", ".join(CONDITIONS) + " (split a long run in two)")
    args = p.parse_args()
    wanted = [c.strip() for c in args.conditions.split(",") if c.strip()]
    unknown = sorted(set(wanted) - set(CONDITIONS))
    if unknown:
        p.error(f"--conditions: unknown {unknown}; choose from {', '.join(CONDITIONS)}")
    need_vhd = any(c.startswith("vhr") for c in wanted)
    need_var = any(c.startswith("var") for c in wanted)
    torch.set_num_threads(args.threads)
    import lens

    t0 = time.time()
    lm = lens.load(args.model)
    prov = Provenance.for_model(lm.facts, seeds=(args.seed,), prompts="synthetic scenes (analyses.scenes), held-out")
    args.out.mkdir(parents=True, exist_ok=True)
    summary: dict = {"model": args.model, "settings": {k: str(v) for k, v in vars(args).items()}, "timing": {}}

    def timed(name, t):
        summary["timing"][name] = round(time.time() - t, 1)
        print(f"[{name}] {summary['timing'][name]} s", flush=True)
        (args.out / "summary.json").write_text(json.dumps(summary, indent=1))  # partial results survive a stop

    calib = held_out(CALIBRATION_START, args.calib_images)
    evaluation = held_out(0, args.eval_images)

    if need_vhd:
        # ---- VHD ranking ----------------------------------------------------------------
        t = time.time()
        items = [(s, q) for s in calib for q in sc.questions(s)]
        pairs = head_output_pairs(lm, items, steps=2)
        vhd = vision_aware_scores(pairs, provenance=prov, k=args.k)
        vhd.save(args.out)
        summary["vhd"] = {"top_heads": vhd.summary["top_heads"][:12], "top_layers": vhd.summary["top_layers"],
                          "mean": round(vhd.summary["mean_vhd"], 4), "max": round(vhd.summary["max_vhd"], 4),
                          "n_pairs": len(pairs), "mean_per_layer": [round(float(x), 3) for x in vhd.arrays["mean_per_layer"]]}
        timed("vhd", t)

    if need_vhd and args.probe_vhd_images > 0:
        # ---- T-VHD of hallucinated vs correct probe answers -----------------------------
        t = time.time()
        probe_scenes = calib[: args.probe_vhd_images]
        probe_items = [(s, q) for s in probe_scenes for q in sc.probe_questions(s) if q.answer == "no"]
        answers = ask(lm, probe_items)
        probe_pairs = head_output_pairs(lm, probe_items, steps=1)
        t_vhd = np.array([float(token_divergence(head_divergence(pp), args.k)[0]) for pp in probe_pairs])
        said_yes = np.array([normalise(a.given) == "yes" for a in answers])
        summary["t_vhd_probe"] = {
            "n_absent_questions": len(probe_items), "n_false_yes": int(said_yes.sum()),
            "t_vhd_false_yes": round(float(t_vhd[said_yes].mean()), 4) if said_yes.any() else None,
            "t_vhd_correct_no": round(float(t_vhd[~said_yes].mean()), 4) if (~said_yes).any() else None,
        }
        timed("t_vhd_probe", t)

    if need_var:
        # ---- sink dimensions and visual sinks -------------------------------------------
        t = time.time()
        dims = base_lm_sink_dimensions(lm, GENERAL_PROMPTS)
        summary["sink_dims"] = dims.to_json()
        inputs = var_inputs(lm, [(s, sc.questions(s)[0]) for s in calib[:32]])
        var = visual_sink_scores(inputs, dims, n_layers=lm.facts.n_layers, n_heads=lm.facts.n_heads, provenance=prov)
        var.save(args.out)
        summary["visual_sinks"] = {k: var.summary[k] for k in ("visual_sinks_per_prompt", "layers_with_visual_sinks",
                                                                 "most_frequent_sink_tokens",
                                                                 "image_centric_heads_over_half_queries")}
        summary["visual_sinks"]["per_layer"] = [round(float(x), 2) for x in var.arrays["visual_sinks_per_layer"]]
        summary["visual_sinks"]["top_image_centric"] = [list(h) for h in var.top(10)]
        timed("visual_sinks", t)

    # ---- interventions --------------------------------------------------------------
    conditions = {"none": lambda: None}
    if need_vhd:
        alphas = [float(a) for a in args.alpha.split(",")]
        for i, alpha in enumerate(alphas):
            scales = vhr_scales(vhd.scores, alpha=alpha)
            control = random_scales_like(scales, seed=args.seed + 1)
            summary[f"vhr@{alpha:g}"] = {
                "alpha": alpha, "n_scaled_heads": int((scales != 1).sum()),
                "scaled_per_layer": [int(x) for x in (scales != 1).sum(1)],
                "scaled_heads": [[int(a), int(b)] for a, b in zip(*(scales != 1).nonzero())],
                "control_heads": [[int(a), int(b)] for a, b in zip(*(control != 1).nonzero())]}
            names = [f"vhr@{alpha:g}", f"vhr_random_heads@{alpha:g}"] + (["vhr", "vhr_random_heads"] if i == 0 else [])
            for name in names:
                edit_scales = control if "random" in name else scales
                conditions[name] = lambda s=edit_scales: vhr_edit(lm, s)
            if i > 0 and "vhr" in wanted:
                wanted += [f"vhr@{alpha:g}", f"vhr_random_heads@{alpha:g}"]
    if need_var:
        conditions.update({"var": lambda: var_edit(lm, dims),
                           "var_random_heads": lambda: var_edit(lm, dims, random_heads_seed=args.seed + 1)})
    summary["conditions"] = {}
    for name in wanted:
        edit = conditions[name]()
        t = time.time()
        summary["conditions"][name] = evaluate(lm, evaluation, edit)
        print(name, json.dumps(summary["conditions"][name]), flush=True)
        timed(f"eval_{name}", t)
    summary["timing"]["total"] = round(time.time() - t0, 1)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"wrote {args.out / 'summary.json'}")


if __name__ == "__main__":
    main()
