# %% [markdown]
# # Long-context head statistics with the fused kernel
#
# Attention patterns cost O(N^2) memory per head: 30 layers x 9 heads of SmolLM2 at 8k tokens
# would be 70 GB in fp32. The statistics kernel computes what head analyses need — entropy,
# the largest weight and its key, the mass on sink tokens, on a recent window and on given
# spans, the top-k keys, and the mass every key receives — in the same pass as the attention
# output, in O(N) memory. On a GPU it is a Triton kernel; on a CPU (here) a C++ kernel built on
# first use (or, without a compiler, the chunked PyTorch reference) computes the same numbers.

# %%
import matplotlib.pyplot as plt
import torch

import lens
from attnlens.analyses import row_stats_from_kernel, row_stats_from_pattern
from attnlens.kernels import StatsSpec, attention_with_stats

lm = lens.load("smollm2-135m")

# %% [markdown]
# ## The kernel on its own
# `attention_with_stats` takes `q [batch, head, q, d_head]` and `k, v [batch, kv_head, k, d_head]`
# (GQA: fewer KV heads) and always returns the same structure.

# %%
torch.manual_seed(0)
q, k, v = torch.randn(1, 9, 300, 64), torch.randn(1, 3, 300, 64), torch.randn(1, 3, 300, 64)
out = attention_with_stats(q, k, v, causal=True, spec=StatsSpec(sink_tokens=4, window=32, spans=((100, 120),), topk=4))
print(out.out.shape, out.stats.entropy.shape, out.stats.span_mass.shape, out.stats.topk_index.shape)

# %% [markdown]
# ## A whole model in "stats" mode
# A haystack with a needle: which heads look at the needle span when the question comes?

# %%
filler = "The grass is green and the sky is blue. Birds sing in the trees while people walk along the river. "
needle = "The secret code is 48213. "
text = filler * 20 + needle + filler * 20 + "What is the secret code?"
ids = lm.encode(text)
prefix = lm.encode(filler * 20).shape[1]
span = (prefix, prefix + lm.tokenizer(needle, return_tensors="pt", add_special_tokens=False).input_ids.shape[1])
print("tokens:", ids.shape[1], "needle span:", span)

run = lens.run_stats(lm, ids, spec=StatsSpec(sink_tokens=1, window=64, spans=(span,), topk=4))
needle_mass = torch.stack([run.stats[layer].span_mass[0, :, -1, 0] for layer in range(30)])  # [layer, head], last query
sink_mass = torch.stack([run.stats[layer].sink_mass[0].mean(-1) for layer in range(30)])

fig, axes = plt.subplots(1, 2, figsize=(9, 5))
for ax, data, title in zip(axes, (needle_mass, sink_mass), ("mass on the needle (last query)", "first-token mass (mean)"), strict=True):
    im = ax.imshow(data, aspect="auto", cmap="magma")
    ax.set(xlabel="head", ylabel="layer", title=title)
    fig.colorbar(im, ax=ax)
plt.tight_layout()

# %%
top = torch.topk(needle_mass.flatten(), 5)
[(f"L{i // 9}H{i % 9}", round(m, 3)) for i, m in zip(top.indices.tolist(), top.values.tolist(), strict=True)]

# %% [markdown]
# ## The same numbers as from patterns
# On a prompt short enough for patterns, the statistics equal those computed from the captured pattern:

# %%
short = "When Mary and John went to the store, John gave a drink to"
pattern = lens.run(lm, short, layers=[15]).capture.pattern(15)
from_pattern = row_stats_from_pattern(pattern)
from_kernel = row_stats_from_kernel(lens.run_stats(lm, short, layers=[15]).stats[15], sink_tokens=1)
print(float((from_pattern.entropy - from_kernel.entropy).abs().max()), float((from_pattern.sink_mass - from_kernel.sink_mass).abs().max()))
