"""Why SmolLM2's IOI name movers attend to the indirect object: QK attribution and a causal check.

For each name mover (the project's patching circuit: L20H0, L23H3, L29H1), on IOI prompts:
the query is the last token, the keys are the IO name (first mention) and the subject S1.
Query-side contribution of a component to "IO over S" = its row sum at key IO minus its row sum
at key S1 (how much what it writes at the last token makes the head prefer IO to S).

Causal check: patch the top-k query-side contributors (earlier heads, by mean IO-over-S
contribution) at the last position with their activations on the corrupted (ABC) prompts,
and measure the change of the name mover's attention to IO; compare with k random earlier
heads (several seeds). Writes a JSON of everything measured.

    PYTHONPATH=. python benchmarks/qk_ioi_name_movers.py --n 12 --out benchmarks/results/science/qk-ioi
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch

import lens
from attnlens.analyses.circuits._hooks import CircuitModules
from attnlens.analyses.circuits.tasks import ioi
from attnlens.analyses.qk_attribution import Kind, qk_attribution
from lens.attention import AttentionObserver, attention_mode

NAME_MOVERS = [(20, 0), (23, 3), (29, 1)]


class _Pattern(AttentionObserver):
    needs_weights = True

    def __init__(self, layer):
        self.layers = frozenset({layer})
        self.w = None

    def on_outputs(self, module, layer, query, key, value, out, weights):
        self.w = weights.detach().float()


def _z_at(parts, ids, pos=-1):
    L, H = parts.facts.n_layers, parts.facts.n_heads
    z = {}
    hs = [parts.adapter.out_proj(la).register_forward_pre_hook(
        lambda m, a, la=la: z.__setitem__(la, a[0].detach()[:, pos].view(a[0].shape[0], H, -1).clone()))
        for la in range(L)]
    try:
        with torch.no_grad():
            parts.lm.model(input_ids=ids)
    finally:
        for h in hs:
            h.remove()
    return z


def _attn_to(parts, ids, layer, head, io_pos, patch=None, at=-1):
    """The head's attention from the last token to io_pos, with ``patch`` {(l, h): z [batch, d_head]} at position ``at``."""
    H = parts.facts.n_heads
    hs = []
    for (la, h), val in (patch or {}).items():
        def pre(m, a, h=h, val=val):
            x = a[0].clone()
            v = x[:, at].view(x.shape[0], H, -1)
            v[:, h] = val
            x[:, at] = v.reshape(x.shape[0], -1)
            return (x,)
        hs.append(parts.adapter.out_proj(la).register_forward_pre_hook(pre))
    obs = _Pattern(layer)
    try:
        with torch.no_grad(), attention_mode(parts.lm, obs):
            parts.lm.model(input_ids=ids)
    finally:
        for h in hs:
            h.remove()
    w = obs.w[:, head, -1]  # [batch, k]
    return w[torch.arange(len(io_pos)), torch.tensor(io_pos)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=12)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--heads", default="", help="e.g. L29H1 (default: the three name movers)")
    ap.add_argument("--argmax-only", action="store_true", help="only the second study (the argmax key)")
    args = ap.parse_args()
    if args.heads:
        NAME_MOVERS[:] = [tuple(int(x) for x in h[1:].split("H")) for h in args.heads.split(",")]
    lm = lens.load("smollm2-135m")
    parts = CircuitModules(lm)
    f = lm.facts
    task = ioi(lm.tokenizer, n=args.n, templates=[0])  # one template: one token length, one batch
    rows = []
    for ex in task.examples:
        ids = lm.encode(ex.prompt)
        io_id = lm.tokenizer(ex.answer, add_special_tokens=False).input_ids[0]
        s_id = lm.tokenizer(ex.distractor, add_special_tokens=False).input_ids[0]
        toks = ids[0].tolist()
        rows.append(dict(ids=ids, cor=lm.encode(ex.corrupted), io=toks.index(io_id), s1=toks.index(s_id)))
    clean = torch.cat([r["ids"] for r in rows])
    corrupted = torch.cat([r["cor"] for r in rows])
    assert clean.shape == corrupted.shape, "one template: clean and corrupted prompts have one length"
    io_pos = [r["io"] for r in rows]
    z_cor = _z_at(parts, corrupted)
    report = {"model": f.name, "n_prompts": len(rows), "k": args.k, "random_seeds": args.seeds,
              "example": task.examples[0].prompt, "heads": {}}
    for layer, head in ([] if args.argmax_only else NAME_MOVERS):
        t0 = time.perf_counter()
        io_over_s = torch.zeros(layer, f.n_heads, dtype=torch.float64)
        key_io = torch.zeros(layer, f.n_heads, dtype=torch.float64)
        other = {"embed": 0.0, "mlp": 0.0, "bias": 0.0}
        score_io, score_s, att_io, att_s, check = [], [], [], [], []
        for r in rows:
            a = qk_attribution(lm, r["ids"], layer, head, key_pos=r["io"])
            t_io, t_s = a.terms[r["io"]].double(), a.terms[r["s1"]].double()
            check.append(float((a.terms.double().sum((1, 2)) - a.scores.double()).abs().max()))
            d = t_io.sum(1) - t_s.sum(1)  # query side, IO over S
            for j, c in enumerate(a.components):
                if c.kind is Kind.HEAD:
                    io_over_s[c.layer, c.head] += d[j] / len(rows)
                    key_io[c.layer, c.head] += t_io[:, j].sum() / len(rows)
                elif c.kind is Kind.MLP:
                    other["mlp"] += float(d[j]) / len(rows)
                elif c.kind in (Kind.EMBED, Kind.POS):
                    other["embed"] += float(d[j]) / len(rows)
                else:
                    other["bias"] += float(d[j]) / len(rows)
            score_io.append(float(a.scores[r["io"]]))
            score_s.append(float(a.scores[r["s1"]]))
            att_io.append(float(a.pattern[r["io"]]))
            att_s.append(float(a.pattern[r["s1"]]))
        t_attr = time.perf_counter() - t0
        flat = io_over_s.flatten()
        order = torch.argsort(flat, descending=True)
        top = [(int(i) // f.n_heads, int(i) % f.n_heads) for i in order[:args.k]]
        bottom = [(int(i) // f.n_heads, int(i) % f.n_heads) for i in torch.argsort(flat)[:5]]
        kord = torch.argsort(key_io.flatten().abs(), descending=True)
        key_top = [(int(i) // f.n_heads, int(i) % f.n_heads, float(key_io.flatten()[i])) for i in kord[:5]]
        base = _attn_to(parts, clean, layer, head, io_pos)
        patched = _attn_to(parts, clean, layer, head, io_pos, {(la, h): z_cor[la][:, h] for la, h in top})
        rng = random.Random(f"qk-ioi:{layer}:{head}")
        pool = [(la, h) for la in range(layer) for h in range(f.n_heads)]
        rand = []
        for _ in range(args.seeds):
            pick = rng.sample(pool, args.k)
            rand.append(float((_attn_to(parts, clean, layer, head, io_pos, {(la, h): z_cor[la][:, h] for la, h in pick})
                               - base).mean()))
        report["heads"][f"L{layer}H{head}"] = {
            "attention_to_io": sum(att_io) / len(att_io), "attention_to_s1": sum(att_s) / len(att_s),
            "score_io": sum(score_io) / len(rows), "score_s1": sum(score_s) / len(rows),
            "max_abs_terms_minus_score": max(check), "attribution_seconds": round(t_attr, 1),
            "query_side_io_over_s_top": [(f"L{la}H{h}", float(io_over_s[la, h])) for la, h in top],
            "query_side_io_over_s_most_negative": [(f"L{la}H{h}", float(io_over_s[la, h])) for la, h in bottom],
            "query_side_io_over_s_non_head": other,
            "query_side_io_over_s_all_heads": float(io_over_s.sum()),
            "key_side_at_io_top": [(f"L{la}H{h}", v) for la, h, v in key_top],
            "causal": {"attention_to_io_clean": float(base.mean()),
                       "patched_top_k": float(patched.mean()), "change_top_k": float((patched - base).mean()),
                       "change_random_k": rand,
                       "share_random_with_larger_drop": sum(r <= float((patched - base).mean()) for r in rand) / len(rand)},
        }
        print(json.dumps({f"L{layer}H{head}": report["heads"][f"L{layer}H{head}"]}, indent=1), flush=True)
    report["argmax_key"] = _argmax_study(lm, parts, rows, clean, corrupted, args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"qk_ioi_name_movers{'_' + args.heads if args.heads else ''}.json").write_text(json.dumps(report, indent=1))


def _argmax_study(lm, parts, rows, clean, corrupted, args) -> dict:
    """Per head, the key it attends to most (the same position in every prompt of the template):
    top key-side and query-side contributors to the score there, OV on the IO and S answers, and the
    causal check on the key side (patch the top-k key-side contributors at that key position)."""
    f = lm.facts
    out = {}
    for layer, head in NAME_MOVERS:
        t0 = time.perf_counter()
        first = qk_attribution(lm, rows[0]["ids"], layer, head)
        kpos = first.key_pos
        qside = torch.zeros(layer, f.n_heads, dtype=torch.float64)
        kside = torch.zeros(layer, f.n_heads, dtype=torch.float64)
        ov_io, ov_s, ov_io_k, ov_s_k, att = [], [], [], [], []
        non_head = {"embed": 0.0, "mlp": 0.0}
        for r in rows:
            ids = r["ids"]
            toks = ids[0].tolist()
            io_id, s_id = toks[r["io"]], toks[r["s1"]]
            a = qk_attribution(lm, ids, layer, head, key_pos=kpos, answers=[io_id, s_id])
            t = a.terms[kpos].double()
            for j, c in enumerate(a.components):
                if c.kind is Kind.HEAD:
                    qside[c.layer, c.head] += t[j].sum() / len(rows)
                    kside[c.layer, c.head] += t[:, j].sum() / len(rows)
                elif c.kind is Kind.MLP:
                    non_head["mlp"] += float(t[:, j].sum()) / len(rows)
                elif c.kind is Kind.EMBED:
                    non_head["embed"] += float(t[:, j].sum()) / len(rows)
            ov_io.append(float(a.ov[0].sum()))
            ov_s.append(float(a.ov[1].sum()))
            ov_io_k.append(float(a.ov[0, kpos]))
            ov_s_k.append(float(a.ov[1, kpos]))
            att.append(float(a.pattern[kpos]))
        n = len(rows)
        ko = torch.argsort(kside.flatten(), descending=True)
        qo = torch.argsort(qside.flatten(), descending=True)
        name = lambda i: f"L{int(i) // f.n_heads}H{int(i) % f.n_heads}"  # noqa: E731
        top_k = [(int(i) // f.n_heads, int(i) % f.n_heads) for i in ko[:args.k]]
        z_cor = _z_at(parts, corrupted, kpos)
        kp = [kpos] * n
        base = _attn_to(parts, clean, layer, head, kp)
        patched = _attn_to(parts, clean, layer, head, kp, {(la, h): z_cor[la][:, h] for la, h in top_k}, at=kpos)
        rng = random.Random(f"qk-ioi-key:{layer}:{head}")
        pool = [(la, h) for la in range(layer) for h in range(f.n_heads)]
        rand = []
        for _ in range(args.seeds):
            pick = rng.sample(pool, args.k)
            rand.append(float((_attn_to(parts, clean, layer, head, kp, {(la, h): z_cor[la][:, h] for la, h in pick},
                                        at=kpos) - base).mean()))
        out[f"L{layer}H{head}"] = {
            "key_pos": kpos, "key_token": first.tokens[kpos], "role": _role(rows[0], kpos),
            "attention": sum(att) / n, "seconds": round(time.perf_counter() - t0, 1),
            "key_side_top": [(name(i), float(kside.flatten()[i])) for i in ko[:8]],
            "key_side_most_negative": [(name(i), float(kside.flatten()[i])) for i in ko.flip(0)[:5]],
            "query_side_top": [(name(i), float(qside.flatten()[i])) for i in qo[:8]],
            "query_side_most_negative": [(name(i), float(qside.flatten()[i])) for i in qo.flip(0)[:5]],
            "key_side_non_head": non_head,
            "ov_io_total": sum(ov_io) / n, "ov_s_total": sum(ov_s) / n,
            "ov_io_through_key": sum(ov_io_k) / n, "ov_s_through_key": sum(ov_s_k) / n,
            "causal_key_side": {"attention_clean": float(base.mean()), "patched_top_k": float(patched.mean()),
                                "change_top_k": float((patched - base).mean()), "change_random_k": rand},
        }
        print(json.dumps({f"argmax L{layer}H{head}": out[f"L{layer}H{head}"]}, indent=1), flush=True)
    return out


def _role(row, pos) -> str:
    if pos == row["io"]:
        return "IO"
    if pos == row["s1"]:
        return "S1"
    toks = row["ids"][0].tolist()
    if toks[pos] == toks[row["s1"]]:
        return "S2"
    return "other"


if __name__ == "__main__":
    main()
