"""QK attribution over every family of the conformance table (the same tiny models): the terms sum to
the score to 1e-4, or the family is refused in one line that names it and says why."""

from __future__ import annotations

import pytest
import torch

from attnlens.formats import errors as project_errors
from tests.conformance.test_matrix import IDS, built  # noqa: F401

_QK_NORM = "normalises each head's queries and keys (q_norm, k_norm)"
_NO_INTERFACE = "without transformers' attention interface"
REFUSED = {
    "qwen3": _QK_NORM, "gemma3_text": _QK_NORM, "olmo2": _QK_NORM, "qwen3_moe": _QK_NORM,
    "mpt": _NO_INTERFACE, "opt": "not the linear image of the residual stream",  # OPT: learned positions offset by 2
    "gptj": "not the linear image of the residual stream",  # its interleaved partial rotary
    "falcon": _NO_INTERFACE, "bloom": _NO_INTERFACE,
    "gpt_oss": "not the linear image of the residual stream",  # attention sinks and its own rotary layout
    "deepseek_v2": "multi-head latent attention", "deepseek_v3": "multi-head latent attention",
    "jamba": "has no attention (a hybrid's other block)", "bamba": "has no attention (a hybrid's other block)",
    # ---- beyond the first 30 ----
    "olmo3": _QK_NORM, "olmoe": _QK_NORM, "exaone4": _QK_NORM, "apertus": _QK_NORM, "dots1": _QK_NORM,
    "doge": _QK_NORM, "qwen3_next": _QK_NORM,
    "persimmon": "(q_layernorm, k_layernorm)", "lfm2": "(q_layernorm, k_layernorm)",
    "hunyuan_v1_dense": "(query_layernorm, key_layernorm)", "hunyuan_v1_moe": "(query_layernorm, key_layernorm)",
    "codegen": "not the linear image of the residual stream",  # GPT-J's rotary layout
    "xglm": _NO_INTERFACE,
    "dbrx": "clips queries, keys and values",
    "jetmoe": "no output projection",  # a mixture of attention heads
    "minimax": "has no attention (a hybrid's other block)",  # its first block is linear (lightning) attention
    "granitemoehybrid": "has no attention (a hybrid's other block)",
    "falcon_h1": "another mixer (mamba) beside attention",
    "recurrent_gemma": "cannot find 2 transformer blocks",
}


def test_qk_terms_sum_to_the_score_or_the_family_is_refused(built):  # noqa: F811
    from attnlens.analyses.qk_attribution import qk_attribution

    lm, mt = built.lm, built.family.model_type
    layer, head = lm.facts.n_layers - 1, lm.facts.n_heads - 1
    if mt in REFUSED:
        with pytest.raises(project_errors.BackendError) as info:
            qk_attribution(lm, IDS, layer, head)
        message = str(info.value)
        assert "\n" not in message and REFUSED[mt] in message, message
        assert type(lm.model).__name__ in message, message
        return
    first = qk_attribution(lm, IDS, 0, 0)  # the first layer too (Cohere2: rotary there, none in the last)
    torch.testing.assert_close(first.terms.double().sum((1, 2)), first.scores.double(), atol=1e-4, rtol=0)
    a = qk_attribution(lm, IDS, layer, head)
    torch.testing.assert_close(a.terms.double().sum((1, 2)), a.scores.double(), atol=1e-4, rtol=0)
    # independent of the decomposition: the model's own probabilities follow the scores (sliding windows: seen keys)
    cap = getattr(lm.model.config, "attn_logit_softcapping", None)
    s = a.scores.double()
    s = cap * torch.tanh(s / cap) if cap else s
    seen = a.pattern > 0
    logp = a.pattern.double().log()
    k = a.key_pos
    torch.testing.assert_close((s - s[k])[seen], (logp - logp[k])[seen], atol=1e-4, rtol=0)
