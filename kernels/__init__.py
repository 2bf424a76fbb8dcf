"""Fused attention with per-head statistics (lse, entropy, max/argmax, sink/window/span mass, top-k, per-key mass).

Public API::

    from attnlens.kernels import attention_with_stats, StatsSpec, AttnStats, AttnOut, KernelInputError
    from attnlens.kernels.hf_attention import stats_attention_call  # one attention call of a transformers model
    lens.stats_mode(model, spec)  # the switch that runs a whole model in stats mode (lens.attention)
    from attnlens.kernels.reference import naive_attention_stats, chunked_attention_stats
"""

from .api import attention_with_stats
from .errors import KernelInputError
from .spec import MAX_TOPK, AttnOut, AttnStats, StatsSpec

__all__ = ["attention_with_stats", "AttnOut", "AttnStats", "KernelInputError", "MAX_TOPK", "StatsSpec"]
