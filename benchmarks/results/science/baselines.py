"""Task baselines for docs/circuits.md (clean accuracy and logit difference per IOI template and per task)."""
import json, time, torch
torch.set_num_threads(2)
import lens
from analyses.circuits import encode_task, ioi, per_row
from analyses.circuits._hooks import Parts, last_logits
from analyses.circuits.tasks import IOI_TEMPLATES, greater_than, colored_objects
lm = lens.load("smollm2-135m"); tok = lm.tokenizer; parts = Parts(lm)
digits = [tok(str(d), add_special_tokens=False).input_ids[0] for d in range(10)]
out = {}
def measure(name, enc, extra=None):
    acc, ld, ldc = [], [], []
    for b in enc.batches:
        lg = last_logits(parts, b.clean)[0]; lc = last_logits(parts, b.corrupted)[0]
        acc.append(per_row("acc", lg, b.answer, b.distractor)); ld.append(per_row("logit-diff", lg, b.answer, b.distractor))
        ldc.append(per_row("logit-diff", lc, b.answer, b.distractor))
        if extra: extra(b, lg)
    acc, ld, ldc = torch.cat(acc), torch.cat(ld), torch.cat(ldc)
    out[name] = {"n": enc.n_examples, "accuracy": float(acc.mean()), "logit_diff": float(ld.mean()), "logit_diff_sd": float(ld.std()),
                 "share_logit_diff_positive": float((ld > 0).float().mean()), "corrupted_logit_diff": float(ldc.mean())}
    print(name, out[name], flush=True)
t0 = time.time()
for k in range(len(IOI_TEMPLATES)):
    measure(f"ioi template {k}", encode_task(ioi(tok, 24, seed=0, template=k), tok))
measure("ioi templates 0-4 (default)", encode_task(ioi(tok, 60, seed=0), tok))
gt = {"ge": [], "pd": []}
def gt_extra(b, lg):
    p = lg.softmax(-1)[:, digits]
    for r, ex in enumerate(b.examples):
        tens = int(ex.answer) - 1
        gt["ge"].append(float(int(p[r].argmax()) >= tens)); gt["pd"].append(float(p[r, tens + 1:].sum() - p[r, :tens].sum()))
measure("greater-than", encode_task(greater_than(tok, 40, seed=0), tok), gt_extra)
out["greater-than"]["argmax_digit_at_least_start_tens"] = sum(gt["ge"]) / len(gt["ge"])
out["greater-than"]["prob_diff_later_minus_earlier_digits"] = sum(gt["pd"]) / len(gt["pd"])
measure("colored-objects", encode_task(colored_objects(tok, 40, seed=0), tok))
out["seconds"] = time.time() - t0
json.dump(out, open("results/task_baselines.json", "w"), indent=1)
