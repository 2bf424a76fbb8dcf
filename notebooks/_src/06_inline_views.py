# %% [markdown]
# # Looking at attention inline: `show`
#
# One line shows a capture or a results folder in the notebook, with Panel's and Bokeh's
# JavaScript inlined (no CDN: it works offline). In a live kernel the views stay interactive:
# hover a token to see what it attends to and what attends to it, click a pattern row to pin
# a query, click a head in a grid to select it.
#
# - `show(capture, layer=L, head=H)`: one head's pattern, colour bar, token view (a step
#   selector for a capture across `generate()`; click a token to pin it as the query)
# - `show(capture)`: every head of the prompt as small multiples
# - `show(dla_of_capture(lm, run, targets))`: each head's direct logit attribution
# - `show("results/folder")`: the whole dashboard

# %%
import tempfile
from pathlib import Path

import numpy as np
import torch

import lens
from attnlens.analyses.collect import repeated_tokens
from attnlens.analyses.taxonomy import head_type_scores
from attnlens.dashboards import show
from attnlens.pipelines.dla import dla_of_capture

torch.set_num_threads(2)
lm = lens.load("smollm2-135m")

# %% [markdown]
# ## An induction head on repeated random tokens
# A random sequence repeated once: on the second copy an induction head attends to the token
# after the earlier copy of the current token. We capture every pattern and score every head.

# %%
ids, offset = repeated_tokens(lm, repeat_len=40, batch=1, seed=0)
run = lens.run(lm, ids, sites=[lens.Site.PATTERN])
run.capture

# %%
scores = np.stack([head_type_scores(run.capture.pattern(layer), repeat_len=40, offset=offset)["induction"].numpy()
                   for layer in run.capture.meta.layers])
layer, head = map(int, np.unravel_index(np.argmax(scores), scores.shape))
print(f"top induction head L{layer}H{head}: induction score {scores[layer, head]:.2f}, "
      f"first-token mass {run.capture.pattern(layer, head)[0, 1:, 0].mean():.2f}")

# %% [markdown]
# Most of its attention sits on the first token (a sink); the default colour scale leaves
# that column out (drawn in magenta), so the induction stripe is visible.

# %%
show(run.capture, layer=layer, head=head)

# %% [markdown]
# ## Every head of the prompt

# %%
show(run.capture)

# %% [markdown]
# ## Direct logit attribution
# Each head's output at the last position, projected on the unembedding of a target token
# (with the final norm's scale frozen): which heads push " Mary" up?

# %%
ioi = lens.run(lm, "When Mary and John went to the store, John gave a drink to", sites=[lens.Site.Z])
dla = show(dla_of_capture(lm, ioi, [" Mary", " John"]))
dla

# %% [markdown]
# ## A capture across `generate()`, step by step
# Each forward pass of `generate()` is one step: step 0 is the prompt, step k adds the k-th
# new token as a query row. The step box (and, for a batch, the prompt box) picks what is shown;
# the view opens on the step's own token.

# %%
prompt = lm.encode("The Eiffel Tower is in")
with lens.capture(lm, sites=[lens.Site.PATTERN], layers=[layer]) as gen:
    lm.model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=5, do_sample=False,
                      pad_token_id=lm.tokenizer.eos_token_id)
print("generated:", gen.meta.generated_tokens[0])
show(gen, layer=layer, head=head)

# %% [markdown]
# Without a head, the same capture as the grid of every head, with its own step box.

# %%
show(gen)

# %% [markdown]
# ## A results folder, inline
# The taxonomy scores and the capture, saved through the results format, shown as the dashboard.

# %%
from attnlens.pipelines.heads import run_taxonomy

folder = Path(tempfile.mkdtemp()) / "results"
for result in run_taxonomy(lm, repeat_len=40, batch=2):
    result.params["example_capture"] = "captures/repeated-tokens"
    result.save(folder / "scan")
run.capture.write_into(folder / "scan" / "captures" / "repeated-tokens")
show(folder)
