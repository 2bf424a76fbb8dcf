# %% [markdown]
# # Retrieval heads and their causal test (Wu et al. 2024)
#
# A needle sentence is hidden at some depth of a haystack; the model is asked for it and
# decodes greedily. A head scores when its top-1 attention lands inside the needle on the
# token being copied. Heads with high scores are *retrieval heads*; ablating them should break
# needle retrieval while ablating as many random heads should not. (Definitions: METHODS.md.)
# This notebook runs a small version on CPU (two trials, so its numbers are coarse); `lens heads retrieval` runs the full sweep.

# %%
import matplotlib.pyplot as plt

import lens
from attnlens.analyses import Provenance, make_trials, retrieval_scores
from attnlens.analyses.causal import ablation_plan
from attnlens.analyses.collect import needle_accuracy
from attnlens.analyses.decode import decode_trials

lm = lens.load("smollm2-135m")
trials = make_trials(lm.tokenizer, context_length=lm.facts.context_length, lengths=[300],
                     depths=[0.25, 0.75], seeds=[0], chat=True)
print(len(trials), "trials; needle:", trials[0].reference)

# %% [markdown]
# ## Decode and score
# Each decoding step records, per layer and head, the key with the highest attention from the
# query that produced the token. Trials count only when the answer recalls the needle (ROUGE-1 > 0.5).

# %%
traces = decode_trials(lm, trials, max_new_tokens=32)
for t in traces:
    print(f"length {t.length} depth {t.depth}: recall {t.recall:.2f}  {t.answer[:80]!r}")
score = retrieval_scores(traces, provenance=Provenance.for_model(lm.facts, seeds=(0,)))[0]
print(f"{int((score.scores > 0.1).sum())} of {score.scores.size} heads score above 0.1")
score.top(8)

# %%
fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
im = a.imshow(score.scores, aspect="auto", cmap="magma")
a.set(xlabel="head", ylabel="layer", title="retrieval score")
fig.colorbar(im, ax=a)
b.hist(score.scores.ravel(), bins=30, log=True)
b.set(xlabel="retrieval score", ylabel="heads (log)", title=f"distribution over {score.scores.size} heads")
plt.tight_layout()

# %% [markdown]
# ## Causal test
# Zero-ablate the top-5 retrieval heads, then 5 random heads drawn from the rest, and measure needle accuracy.

# %%
plan = ablation_plan(score.scores, ks=[5], seeds=[0])
full = needle_accuracy(lm, trials, max_new_tokens=32)
top = needle_accuracy(lm, trials, heads=plan[5]["top"], max_new_tokens=32)
rand = needle_accuracy(lm, trials, heads=plan[5]["random"][0], max_new_tokens=32)
print(f"full model {full:.2f} | top-5 retrieval heads ablated {top:.2f} | 5 random heads ablated {rand:.2f}")
print("ablated top heads:", [f"L{layer}H{head}" for layer, head in plan[5]["top"]])
