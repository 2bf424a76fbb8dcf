# %% [markdown]
# # attnlens quickstart: load a model, capture attention, look at it
#
# This notebook runs on a CPU with the embedded SmolLM2-135M-Instruct (no network needed).
# It loads the model, captures attention patterns and per-head outputs through hooks,
# looks at a first-token sink head, ablates it, and saves the capture.

# %%
import matplotlib.pyplot as plt
import torch

import lens
from lens import Site

lm = lens.load("smollm2-135m")
lm.facts

# %% [markdown]
# The model answers questions greedily through its chat template:

# %%
lm.generate("What is the capital of France?", max_new_tokens=12)

# %% [markdown]
# ## Capture
# `lens.run` runs one forward pass and records the sites you ask for. Sites are a typed enum;
# layers and heads are integers. Patterns are `[batch, head, q, k]`; per-head outputs `z`
# are `[batch, head, pos, d_head]`.

# %%
prompt = "When Mary and John went to the store, John gave a drink to"
result = lens.run(lm, prompt, sites=[Site.PATTERN, Site.Z], layers=[3, 20])
cap = result.capture
print("next token:", repr(lm.tokenizer.decode(result.logits[0, -1].argmax())))
print("pattern", tuple(cap.pattern(3).shape), "z", tuple(cap.get(Site.Z, 3).shape))

# %% [markdown]
# Layer 3 has heads that park most of their attention on the first token (an attention sink).
# Here is the mass each head puts on the first token, averaged over queries after the first:

# %%
first_token_mass = cap.pattern(3)[0, :, 1:, 0].mean(-1)
for head, mass in enumerate(first_token_mass.tolist()):
    print(f"L3H{head}: {mass:.2f}")

# %%
tokens = cap.meta.tokens[0]
head = int(first_token_mass.argmax())
fig, ax = plt.subplots(figsize=(6, 5))
ax.imshow(cap.pattern(3, head=head)[0], cmap="viridis")
ax.set_xticks(range(len(tokens)), tokens, rotation=90, fontsize=7)
ax.set_yticks(range(len(tokens)), tokens, fontsize=7)
ax.set_title(f"L3H{head}: attention pattern (query rows, key columns)")
plt.tight_layout()

# %% [markdown]
# ## Intervene
# Interventions are lists of `lens.Edit`s: a target (a head's output `z`, an MLP's output or the residual
# stream), an action (zero, replace with a mean / resampled / patched activation, scale) and optionally
# one position. Zero-ablating every head of layer 20 changes the logit difference between " Mary" and " John":

# %%
mary, john = lm.tokenizer.encode(" Mary")[0], lm.tokenizer.encode(" John")[0]


def logit_diff(logits):
    return (logits[0, -1, mary] - logits[0, -1, john]).item()


ablated = lens.run(lm, prompt, sites=[Site.Z], layers=[20], edits=lens.zero_ablation([(20, h) for h in range(9)]))
print(f"clean {logit_diff(result.logits):.2f}  ablated {logit_diff(ablated.logits):.2f}")

# %% [markdown]
# ## The same through TransformerLens and nnsight
# All three backends give the same patterns and logits:

# %%
for backend in ("transformer_lens", "nnsight"):
    other = lens.run(lm, prompt, sites=[Site.PATTERN], layers=[3], backend=backend)
    print(backend, float((other.capture.pattern(3) - cap.pattern(3)).abs().max()))

# %% [markdown]
# ## Across generation, and saving
# As a context manager, `lens.capture` records one step per forward pass, also inside `generate()`.

# %%
ids = lm.encode("The Eiffel Tower is in")
with lens.capture(lm, sites=[Site.PATTERN], layers=[3]) as gen_cap:
    out = lm.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, do_sample=False)
print(lm.tokenizer.decode(out[0]))
print([tuple(gen_cap.pattern(3, step=s).shape) for s in range(len(gen_cap.steps))])

# %%
import tempfile

folder = gen_cap.save(tempfile.mkdtemp() + "/eiffel")
lens.Capture.load(folder).meta.tokens[0]
