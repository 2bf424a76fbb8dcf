"""Task baselines of docs/circuits.md: clean accuracy and logit difference per IOI template and per task.

    python benchmarks/circuit_task_baselines.py --out benchmarks/results/science/task_baselines.json
"""

from __future__ import annotations

import argparse
import json
import time

import torch

import lens
from attnlens.analyses.circuits import encode_task, ioi, per_row
from attnlens.analyses.circuits._hooks import CircuitModules, last_logits
from attnlens.analyses.circuits.tasks import IOI_TEMPLATES, colored_objects, greater_than


def measure(parts, enc, extra=None) -> dict:
    """Accuracy, mean and sd of the logit difference, its share > 0, and the corrupted prompts' mean."""
    acc, ld, ldc = [], [], []
    for b in enc.batches:
        clean, corrupted = last_logits(parts, b.clean)[0], last_logits(parts, b.corrupted)[0]
        acc.append(per_row("acc", clean, b.answer, b.distractor))
        ld.append(per_row("logit-diff", clean, b.answer, b.distractor))
        ldc.append(per_row("logit-diff", corrupted, b.answer, b.distractor))
        if extra is not None:
            extra(b, clean)
    acc, ld, ldc = torch.cat(acc), torch.cat(ld), torch.cat(ldc)
    return {"n": enc.n_examples, "accuracy": float(acc.mean()), "logit_diff": float(ld.mean()),
            "logit_diff_sd": float(ld.std()), "share_logit_diff_positive": float((ld > 0).float().mean()),
            "corrupted_logit_diff": float(ldc.mean())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results/science/task_baselines.json")
    args = ap.parse_args()
    torch.set_num_threads(2)
    lm = lens.load("smollm2-135m")
    tok, parts = lm.tokenizer, CircuitModules(lm)
    digits = [tok(str(d), add_special_tokens=False).input_ids[0] for d in range(10)]
    out, t0 = {}, time.time()
    for k in range(len(IOI_TEMPLATES)):
        out[f"ioi template {k}"] = measure(parts, encode_task(ioi(tok, 24, seed=0, template=k), tok))
    out["ioi templates 0-4 (default)"] = measure(parts, encode_task(ioi(tok, 60, seed=0), tok))
    later, diff = [], []

    def digit_probs(b, logits):  # greater-than: is the argmax digit at least the start's tens digit?
        p = logits.softmax(-1)[:, digits]
        for r, ex in enumerate(b.examples):
            tens = int(ex.answer) - 1
            later.append(float(int(p[r].argmax()) >= tens))
            diff.append(float(p[r, tens + 1:].sum() - p[r, :tens].sum()))

    out["greater-than"] = measure(parts, encode_task(greater_than(tok, 40, seed=0), tok), digit_probs)
    out["greater-than"]["argmax_digit_at_least_start_tens"] = sum(later) / len(later)
    out["greater-than"]["prob_diff_later_minus_earlier_digits"] = sum(diff) / len(diff)
    out["colored-objects"] = measure(parts, encode_task(colored_objects(tok, 40, seed=0), tok))
    out["seconds"] = time.time() - t0
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
    for name, row in out.items():
        print(name, row)


if __name__ == "__main__":
    main()
