"""Direct logit attribution workflow: run :mod:`analyses.dla` on one prompt (``lens heads dla`` calls
this, and so can a notebook) or on a capture's first prompt (``show(dla_of_capture(lm, capture,
model=lm)``) and return the torch-free result; nothing is written here."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from attnlens.formats.dla import DLAResult
from attnlens.formats.provenance import Provenance
from lens.errors import PromptError


def target_ids(lm, targets: Sequence[str | int]) -> list[int]:
    """One token id per target: an id as is, a string as the one token the tokenizer makes of it."""
    out = []
    for t in targets:
        if isinstance(t, int) and not isinstance(t, bool):
            out.append(int(t))
            continue
        if not isinstance(t, str) or not t:
            raise PromptError(f"a target must be a one-token string or a token id, got {t!r}")
        ids = lm.tokenizer(t, add_special_tokens=False).input_ids
        if len(ids) != 1:
            raise PromptError(f"target {t!r} is {len(ids)} tokens for this tokenizer, expected one "
                              "(try it with a leading space, e.g. ' Mary')")
        out.append(int(ids[0]))
    return out


def run_dla(lm, prompt: str, targets: Sequence[str | int] = (), *, positions: Sequence[int] = (-1,), top: int = 5,
            name: str = "dla") -> DLAResult:
    """Every head's, MLP's and embedding's direct share of the logits of ``targets`` (and the model's
    ``top`` predictions) at ``positions`` of ``prompt`` (see :func:`analyses.dla.direct_logit_attribution`)."""
    from attnlens.analyses.dla import direct_logit_attribution

    if not isinstance(prompt, str) or not prompt:
        raise PromptError(f"prompt must be non-empty text, got {prompt!r}")
    ids = lm.encode(prompt)
    prov = Provenance.for_model(lm.facts, prompts="1 prompt", inputs=[prompt])
    return direct_logit_attribution(lm, ids, target_ids(lm, targets), positions=positions, top=top, name=name,
                                    provenance=prov)


def dla_of_capture(lm, capture, targets: Sequence[str | int] = (), *, positions: Sequence[int] = (-1,),
                   top: int = 5) -> DLAResult:
    """The attribution of ``capture``'s first prompt (its token ids) under ``lm``: a saved capture, an
    in-memory ``lens.Capture`` or a ``RunResult``. Show it with ``dashboards.show``."""
    from attnlens.analyses.dla import direct_logit_attribution

    capture = getattr(capture, "capture", capture)  # a RunResult's capture
    name = getattr(capture, "name", None) or "capture"
    ids = torch.tensor([capture.meta.token_ids[0]])
    prov = Provenance.for_model(lm.facts, prompts=f"capture {name}", inputs=[capture.meta.token_ids[0]])
    return direct_logit_attribution(lm, ids, target_ids(lm, targets), positions=positions, top=top,
                                    name=f"{name}.dla".replace("/", "_"), provenance=prov)
