"""Direct logit attribution over every family of the conformance table (the same tiny models): the
parts sum to the eager reference model's own logits, or the family is refused in one line naming it.
Hybrids are refused: their Mamba blocks write to the residual stream without heads or an MLP."""

from __future__ import annotations

import numpy as np
import pytest

from attnlens.formats import errors as project_errors
from tests.conformance.test_matrix import IDS, built  # noqa: F401

_HYBRID = "has no attention (a hybrid's other block)"
REFUSED = {"jamba": _HYBRID, "bamba": _HYBRID, "granitemoehybrid": _HYBRID, "qwen3_next": _HYBRID, "lfm2": _HYBRID,
           "minimax": _HYBRID,  # its first block is linear (lightning) attention
           "falcon_h1": "another mixer (mamba) beside attention",
           "jetmoe": "no output projection",  # a mixture of attention heads
           "recurrent_gemma": "cannot find 2 transformer blocks"}


def test_dla_parts_sum_to_the_reference_logits(request, built):  # noqa: F811
    from attnlens.analyses.dla import direct_logit_attribution

    mt = built.family.model_type
    if mt in REFUSED:
        with pytest.raises(project_errors.BackendError) as info:
            direct_logit_attribution(built.lm, IDS, [40], positions=[-1, 3])
        message = str(info.value)
        assert "\n" not in message and REFUSED[mt] in message and type(built.lm.model).__name__ in message
        request.node.user_properties.append(("refusal", message))  # for the generated table (conftest.py)
        return
    res = direct_logit_attribution(built.lm, IDS, [40, 77], positions=[-1, 3], top=2)
    want = built.logits[0].double()[res.positions][:, res.target_ids].numpy()  # the eager reference's logits
    cap = getattr(built.lm.model.config, "final_logit_softcapping", None)
    got = cap * np.tanh(res.totals() / cap) if cap else res.totals()
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    assert np.abs(res.heads).max() > 0 and np.abs(res.mlps).max() > 0  # nothing came back empty
