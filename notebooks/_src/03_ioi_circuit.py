# %% [markdown]
# # An IOI circuit in SmolLM2 (Wang et al. 2022; EAP, Syed et al. 2023; EAP-IG evaluation, Hanna et al. 2024)
#
# "When Mary and John went to the store, John gave a drink to" → " Mary". SmolLM2-135M solves
# indirect-object identification, so a real circuit can be found offline. This notebook scores
# every edge between heads and MLPs with edge attribution patching (one forward and one backward
# pass), checks the head scores against actual mean-ablation effects, and measures how faithful
# circuits of growing size are, with the ablation setting each paper used: every edge outside an
# edge circuit gets its corrupted activation (Hanna et al.), every head outside a head circuit its
# mean over the corrupted prompts of its template, MLPs kept (Wang et al.). `lens circuit` does the
# same from the shell with more prompts (`docs/circuits.md` has the numbers of a larger run).

# %%
import matplotlib.pyplot as plt
import numpy as np
from scipy.stats import spearmanr

import lens
from attnlens.analyses.circuits import encode_task, ioi, prepare, score_sets
from attnlens.analyses.circuits.curves import edge_circuits, head_circuits
from attnlens.analyses.circuits.eap import edge_attribution
from attnlens.analyses.circuits.evaluation import (
    HANNA_2024,
    WANG_2022,
    faithfulness_of,
    prepare_setting,
)
from lens.heads import HeadRef

lm = lens.load("smollm2-135m")
task = ioi(lm.tokenizer, n=8, seed=0, template=0)
enc = encode_task(task, lm.tokenizer)
print(task.examples[0])

# %% [markdown]
# ## Edge attribution patching
# Every edge's effect is estimated as (corrupted − clean activation of the sender) · gradient of the
# logit difference at the receiver's own input.

# %%
eap = edge_attribution(lm, enc, "logit-diff")
print(f"{len(eap.senders)} senders x {len(eap.receivers)} receivers, {eap.n_edges:,} edges, in {eap.seconds:.1f} s")
fig, ax = plt.subplots(figsize=(5, 6))
im = ax.imshow(eap.head_scores, aspect="auto", cmap="RdBu_r",
               vmin=-np.abs(eap.head_scores).max(), vmax=np.abs(eap.head_scores).max())
ax.set(xlabel="head", ylabel="layer", title="EAP head scores (IOI logit difference)")
fig.colorbar(im, ax=ax)
plt.tight_layout()

# %% [markdown]
# ## Does EAP agree with real ablations?
# Mean-ablate each of the 12 heads EAP ranks most important (by |score|) and 12 random heads, one at a time.

# %%
order = np.argsort(-np.abs(eap.head_scores).ravel())
rng = np.random.default_rng(0)
picked = list(order[:12]) + list(rng.choice(order[12:], 12, replace=False))
heads = [HeadRef(int(i // lm.facts.n_heads), int(i % lm.facts.n_heads)) for i in picked]
ctx = prepare(lm, enc, "mean", "logit-diff")
effects = score_sets(ctx, [[h] for h in heads]) - ctx.baseline
estimates = [eap.head_scores[h.layer, h.head] for h in heads]
print(f"clean logit difference {ctx.baseline:.2f}; Spearman(EAP, ablation effect) = {spearmanr(estimates, effects)[0]:.2f}")
for h, e, a in list(zip(heads, estimates, effects, strict=True))[:6]:
    print(f"{h}: EAP {e:+.2f}  mean-ablation effect {a:+.2f}")

# %% [markdown]
# ## Faithfulness against circuit size
# Edge circuits (the top-n edges, pruned to paths that reach the logits) under Hanna et al.'s
# edge-level setting, and head circuits (the top-n heads by |EAP score|) under Wang et al.'s.

# %%
ctx_edges = prepare_setting(lm, enc, "logit-diff", HANNA_2024)
edge_sizes = [200, 1000, 5000]
edge_rows = faithfulness_of(ctx_edges, edge_circuits(eap, lm.facts, edge_sizes), HANNA_2024)
ctx_heads = prepare_setting(lm, enc, "logit-diff", WANG_2022)
head_sizes = [10, 30, 60]
head_rows = faithfulness_of(ctx_heads, head_circuits(eap.head_scores, lm.facts, head_sizes), WANG_2022)
for n, r in zip(edge_sizes, edge_rows, strict=True):
    print(f"top {n} edges ({r['n_edges']} kept, {r['n_heads']} heads): faithfulness {r['faithfulness']:.2f}")
for n, r in zip(head_sizes, head_rows, strict=True):
    print(f"top {n} heads: faithfulness {r['faithfulness']:.2f}")
fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
axes[0].plot(edge_sizes, [r["faithfulness"] for r in edge_rows], "o-")
axes[0].set(xscale="log", xlabel="edges", ylabel="faithfulness", title="edge circuits (Hanna et al.)")
axes[1].plot(head_sizes, [r["faithfulness"] for r in head_rows], "o-")
axes[1].set(xlabel="heads", title="head circuits (Wang et al.)")
for ax in axes:
    ax.axhline(0.8, color="grey", ls=":")
plt.tight_layout()

# %% [markdown]
# Edge-level evaluation is strict: a receiver keeps only the senders whose edge to it is in the
# circuit, and every other sender, the embeddings included, reaches it with its output on the
# corrupted prompt. A few dozen heads, with the MLPs kept as Wang et al. keep them, recover most of
# the logit difference; an edge circuit needs thousands of edges on this 30-layer model. With 8
# prompts of one template the numbers are noisy; `docs/circuits.md` has curves from 20 prompts
# (discovery) and 40 other prompts (evaluation) over five templates.
