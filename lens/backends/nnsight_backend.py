"""Capture and interventions through an nnsight trace of the same transformers model.

nnsight reads module inputs and outputs, so this backend gives every site that is a
module boundary (patterns as the attention module's second output under eager
attention, ``z`` as the output projection's input, residual stream, attention and MLP
outputs). Queries and keys after rotary embedding are not module outputs: ask the
``torch`` or ``transformer_lens`` backend for them.

Head indices go to each tensor's own device, so a model split over devices
(``lens.load(..., device_map=...)``) works. ``remote=True`` sends the same trace to NDIF
(the National Deep Inference Fabric) instead of running it here: it needs an NDIF API key
(``NDIF_API_KEY``), a network route to NDIF and a model NDIF hosts (a hub id). It is
untested in this project (no key or network here); without them it stops with one line.
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


def check_remote(lm: LoadedModel, *, timeout: float = 3.0) -> str:
    """The NDIF API key, after checking what a remote trace needs (one-line :class:`BackendError` otherwise)."""
    import os
    import socket
    from urllib.parse import urlparse

    try:
        from nnsight import CONFIG
    except ImportError as err:
        raise BackendError(f"`remote=True` needs nnsight: {err}") from None
    key = os.environ.get("NDIF_API_KEY") or CONFIG.API.APIKEY
    if not key:
        raise BackendError("`remote=True` runs the trace on NDIF and needs an API key: set NDIF_API_KEY "
                           "(get one at https://login.ndif.us); this project has not tested remote runs")
    if "/" not in lm.facts.name or lm.facts.name.startswith(("/", ".", "~")):
        raise BackendError(f"`remote=True` runs models NDIF hosts, named by hub id (org/name); {lm.facts.name!r} is not one")
    url = urlparse(CONFIG.API.HOST if "://" in CONFIG.API.HOST else f"https://{CONFIG.API.HOST}")
    try:
        with socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout):
            pass
    except OSError as err:
        raise BackendError(f"`remote=True`: NDIF at {CONFIG.API.HOST} cannot be reached from here "
                           f"({err.strerror or err}); run without `remote=True`") from None
    return key


def remote_model(lm: LoadedModel):
    """An nnsight ``LanguageModel`` of ``lm``'s hub id whose traces can run on NDIF (weights stay remote)."""
    if "nnsight_remote" not in lm.extras:
        from nnsight import LanguageModel

        lm.extras["nnsight_remote"] = LanguageModel(lm.facts.name)
    return lm.extras["nnsight_remote"]


def run(lm: LoadedModel, input_ids: torch.Tensor, spec: CaptureSpec, edits: Sequence[Edit] = (), *,
        remote: bool = False):
    """Logits ``[batch, pos, vocab]`` and one step of records, through an nnsight trace
    (on NDIF with ``remote``: see the module docstring)."""
    check_backend_sites("nnsight", spec.sites)
    check_edits(lm.facts, edits)
    if remote:
        if Site.PATTERN in spec.sites:
            raise BackendError("`remote=True` cannot capture patterns: NDIF runs the model with its own attention "
                               "implementation; capture z, resid_pre/post, attn_out or mlp_out remotely")
        check_remote(lm)
    # a remote LanguageModel of the same hub id has the same module names as lm.model
    nn_model = remote_model(lm) if remote else wrapped(lm)
    adapter = adapter_for(lm.model, lm.facts.n_layers)
    names = {m: n for n, m in lm.model.named_modules()}
    edits_at = {key: es for key, (es, _) in by_layer([list(edits)]).items()}
    head_idx = torch.tensor(spec.heads)  # moved to each tensor's device where it is used (split models)
    n_heads = lm.facts.n_heads
    saved: dict[SiteKey, object] = {}
    with ExitStack() as stack:
        if Site.PATTERN in spec.sites:
            stack.enter_context(attention_mode(lm.model, _WantWeights(spec.layers)))
        with torch.no_grad(), nn_model.trace(input_ids.to("cpu" if remote else lm.device),
                                              **({"remote": True} if remote else {})):
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
                        saved[SiteKey(Site.Z, layer)] = z.transpose(1, 2).index_select(1, head_idx.to(z.device)).save()
                writer = adapter.attention_output(layer)  # the attention module, or (BERT) its dense after it
                own = writer is adapter.attention(layer)
                if Site.PATTERN in wanted or (Site.ATTN_OUT in wanted and own):
                    out = _envoy(nn_model, names, adapter.attention(layer)).output
                    if Site.PATTERN in wanted:
                        saved[SiteKey(Site.PATTERN, layer)] = out[1].index_select(1, head_idx.to(out[1].device)).save()
                    if Site.ATTN_OUT in wanted and own:
                        saved[SiteKey(Site.ATTN_OUT, layer)] = out[0].save()
                if Site.ATTN_OUT in wanted and not own:
                    saved[SiteKey(Site.ATTN_OUT, layer)] = _envoy(nn_model, names, writer).output.save()
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
