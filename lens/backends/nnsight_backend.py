"""Capture and interventions through an nnsight trace of the same transformers model.

nnsight reads module inputs and outputs, so this backend gives every site that is a
module boundary (patterns as the attention module's second output under eager
attention, ``z`` as the output projection's input, residual stream, attention and MLP
outputs). Queries and keys after rotary embedding are not module outputs: ask the
``torch`` or ``transformer_lens`` backend for them.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import ExitStack

import torch

from lens.adapters import adapter_for
from lens.attention import AttentionObserver, attention_mode
from lens.backends import check_backend_sites
from lens.edits import Edit, apply_edits, by_layer, check_edits
from lens.errors import BackendError
from lens.heads import HeadRef, MlpRef, ResidRef
from lens.loaded import LoadedModel
from lens.recording.spec import CaptureSpec
from lens.sites import Site, SiteKey

_UNSUPPORTED = (Site.Q, Site.K, Site.V)


def wrapped(lm: LoadedModel):
    if "nnsight" not in lm.extras:
        try:
            from nnsight import NNsight
        except ImportError as err:
            raise BackendError(f"the nnsight backend needs nnsight: {err}") from None
        lm.extras["nnsight"] = NNsight(lm.model)
    return lm.extras["nnsight"]


def _envoy(root, module_names: dict, module):
    envoy = root
    for part in module_names[module].split("."):
        envoy = envoy[int(part)] if part.isdigit() else getattr(envoy, part)
    return envoy


class _WantWeights(AttentionObserver):
    """Makes the pattern layers return their probabilities (the attention module's second output)."""

    needs_weights = True

    def __init__(self, layers):
        self.layers = frozenset(layers)


def run(lm: LoadedModel, input_ids: torch.Tensor, spec: CaptureSpec, edits: Sequence[Edit] = ()):
    """Logits ``[batch, pos, vocab]`` and one step of records, through an nnsight trace."""
    check_backend_sites("nnsight", spec.sites)
    check_edits(lm.facts, edits)
    nn_model = wrapped(lm)
    adapter = adapter_for(lm.model, lm.facts.n_layers)
    names = {m: n for n, m in lm.model.named_modules()}
    edits_at = {key: es for key, (es, _) in by_layer([list(edits)]).items()}
    head_idx = torch.tensor(spec.heads, device=lm.device)
    n_heads = lm.facts.n_heads
    saved: dict[SiteKey, object] = {}
    with ExitStack() as stack:
        if Site.PATTERN in spec.sites:
            stack.enter_context(attention_mode(lm.model, _WantWeights(spec.layers)))
        with torch.no_grad(), nn_model.trace(input_ids.to(lm.device)):
            for layer in range(lm.facts.n_layers):
                wanted = set(spec.sites) if layer in spec.layers else set()
                z_edits, mlp_edits = edits_at.get((layer, HeadRef), []), edits_at.get((layer, MlpRef), [])
                resid_edits = edits_at.get((layer, ResidRef), [])
                block = _envoy(nn_model, names, adapter.block(layer))
                # nnsight requires reading in execution order within the pass.
                if Site.RESID_PRE in wanted:
                    saved[SiteKey(Site.RESID_PRE, layer)] = block.input.save()
                if Site.Z in wanted or z_edits:
                    proj = _envoy(nn_model, names, adapter.out_proj(layer))
                    x = proj.input
                    batch, pos, width = x.shape
                    z = x.view(batch, pos, n_heads, width // n_heads)
                    if z_edits:
                        z = apply_edits(z, z_edits, n_heads=n_heads)
                        proj.input = z.reshape(batch, pos, width)
                    if Site.Z in wanted:
                        saved[SiteKey(Site.Z, layer)] = z.transpose(1, 2).index_select(1, head_idx).save()
                if Site.PATTERN in wanted or Site.ATTN_OUT in wanted:
                    out = _envoy(nn_model, names, adapter.attention(layer)).output
                    if Site.ATTN_OUT in wanted:
                        saved[SiteKey(Site.ATTN_OUT, layer)] = out[0].save()
                    if Site.PATTERN in wanted:
                        saved[SiteKey(Site.PATTERN, layer)] = out[1].index_select(1, head_idx).save()
                if Site.MLP_OUT in wanted or mlp_edits:
                    mlp = _envoy(nn_model, names, adapter.mlp(layer))
                    if mlp_edits:
                        mlp.output = apply_edits(mlp.output, mlp_edits)
                    if Site.MLP_OUT in wanted:
                        saved[SiteKey(Site.MLP_OUT, layer)] = mlp.output.save()
                if Site.RESID_POST in wanted or resid_edits:
                    out = block.output
                    first = out[0] if isinstance(out, tuple) else out
                    if resid_edits:
                        first = apply_edits(first, resid_edits)
                        block.output = (first, *out[1:]) if isinstance(out, tuple) else first
                    if Site.RESID_POST in wanted:
                        saved[SiteKey(Site.RESID_POST, layer)] = first.save()
            logits = nn_model.output.logits.save()
    record = {k: _value(v).detach().to(spec.device, spec.dtype or _value(v).dtype).clone() for k, v in saved.items()}
    return _value(logits), [record]


def _value(x):
    return getattr(x, "value", x)
