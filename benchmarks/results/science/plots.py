"""Figures of docs/circuits.md from the result files (run after the circuit runs)."""
import sys
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from formats import Curves, HeadScores

edges = Curves.load("results/circuits/ioi-eap/circuit.ioi_faithfulness_edges.curves.json")
heads = Curves.load("results/circuits/ioi-eap/circuit.ioi_faithfulness_heads.curves.json")
fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
for label, y in edges.series.items():
    axes[0].plot(edges.x, y, "o-", label=label)
axes[0].set(xscale="log", xlabel="edges (top-n by |score|)", ylabel="faithfulness (circuit / full)",
            title="IOI edge circuits, Hanna et al. setting\n(edge-level, corrupted, heads + MLPs ablated)")
for label, y in heads.series.items():
    axes[1].plot(heads.x, y, "o-", label=label)
axes[1].set(xlabel="heads (top-n by |score|)", title="IOI head circuits, Wang et al. setting\n(node-level, mean per template, MLPs kept)")
for ax in axes:
    ax.axhline(0.8, color="grey", ls=":", lw=1)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
fig.tight_layout()
fig.savefig("docs/img/circuits_ioi_faithfulness.png", dpi=110)
hs = HeadScores.load("results/circuits/ioi-patching/circuit.ioi_patching_logit-diff.json")
fig, ax = plt.subplots(figsize=(4.5, 6))
v = np.nanmax(np.abs(hs.scores))
im = ax.imshow(hs.scores, aspect="auto", cmap="RdBu_r", vmin=-v, vmax=v)
ax.set(xlabel="head", ylabel="layer", title="IOI per-head patching (Δ logit diff)\n20 prompts, templates 0-4")
fig.colorbar(im, ax=ax)
fig.tight_layout()
fig.savefig("docs/img/circuits_ioi_patching.png", dpi=110)
print("ok")
