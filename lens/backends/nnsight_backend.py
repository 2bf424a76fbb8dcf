"""Capture and interventions through an nnsight trace of the same transformers model.

nnsight reads module inputs and outputs, so this backend gives every site that is a
module boundary (patterns as the attention module's second output under eager
attention, ``z`` as the output projection's input, residual stream, attention and MLP
outputs). Queries and keys after rotary embedding are not module outputs: ask the
``torch`` or ``transformer_lens`` backend for them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lens.adapters import DecoderAdapter
from lens.capture.spec import CaptureSpec
from lens.errors import BackendError
from lens.interventions import HeadEdit, edit_z, edits_by_layer
from lens.loaded import LoadedModel
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


def run(lm: LoadedModel, input_ids: torch.Tensor, spec: CaptureSpec, edits: Sequence[HeadEdit] = ()):
    """Logits ``[batch, pos, vocab]`` and one step of records, through an nnsight trace."""
    bad = [s.value for s in spec.sites if s in _UNSUPPORTED]
    if bad:
        raise BackendError(f"the nnsight backend cannot capture {', '.join(bad)}: use backend torch or transformer_lens")
    nn_model = wrapped(lm)
    adapter = DecoderAdapter(lm.model, lm.facts.n_layers)
    names = {m: n for n, m in lm.model.named_modules()}
    by_layer = edits_by_layer(edits)
    head_idx = torch.tensor(spec.heads)
    saved: dict[SiteKey, object] = {}
    previous_impl = lm.model.config._attn_implementation
    if Site.PATTERN in spec.sites:
        lm.model.set_attn_implementation("eager")
    try:
        with torch.no_grad(), nn_model.trace(input_ids.to(lm.device)):
            for layer in range(lm.facts.n_layers):
                wanted = set(spec.sites) if layer in spec.layers else set()
                block = _envoy(nn_model, names, adapter.block(layer))
                # nnsight requires reading in execution order within the pass.
                if Site.RESID_PRE in wanted:
                    saved[SiteKey(Site.RESID_PRE, layer)] = block.input.save()
                if Site.Z in wanted or layer in by_layer:
                    proj = _envoy(nn_model, names, adapter.out_proj(layer))
                    x = proj.input
                    batch, pos, width = x.shape
                    z = x.view(batch, pos, lm.facts.n_heads, width // lm.facts.n_heads)
                    if layer in by_layer:
                        z = edit_z(z, by_layer[layer])
                        proj.input = z.reshape(batch, pos, width)
                    if Site.Z in wanted:
                        saved[SiteKey(Site.Z, layer)] = z.transpose(1, 2).index_select(1, head_idx).save()
                if Site.PATTERN in wanted or Site.ATTN_OUT in wanted:
                    out = _envoy(nn_model, names, adapter.attention(layer)).output
                    if Site.ATTN_OUT in wanted:
                        saved[SiteKey(Site.ATTN_OUT, layer)] = out[0].save()
                    if Site.PATTERN in wanted:
                        saved[SiteKey(Site.PATTERN, layer)] = out[1].index_select(1, head_idx).save()
                if Site.MLP_OUT in wanted:
                    saved[SiteKey(Site.MLP_OUT, layer)] = _envoy(nn_model, names, adapter.mlp(layer)).output.save()
                if Site.RESID_POST in wanted:
                    out = block.output
                    saved[SiteKey(Site.RESID_POST, layer)] = (out[0] if isinstance(out, tuple) else out).save()
            logits = nn_model.output.logits.save()
    finally:
        if lm.model.config._attn_implementation != previous_impl:
            lm.model.set_attn_implementation(previous_impl)
    record = {k: _value(v).detach().to(spec.device, spec.dtype or _value(v).dtype).clone() for k, v in saved.items()}
    return _value(logits), [record]


def _value(x):
    return getattr(x, "value", x)
