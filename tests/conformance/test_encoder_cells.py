"""The conformance cells beyond facts and patterns for encoders and vision encoders: the same tiny
folders as test_folder_kinds.py, each capability against an independent reference on a second copy
of the folder loaded by transformers itself with ``attn_implementation="eager"``:

- logits: capturing every site leaves the model's outputs (masked-LM logits, the last block's output)
  as the reference computes them;
- sites: q/k/v/z, residual, attention and MLP outputs in their documented shapes, nothing empty;
  the residual entering each block equals the reference's hidden states, and the block's output, the
  attention's and the MLP's writes equal hand-written forward hooks on the modules named in
  ``WRITERS`` below (written out per family: the project finds them through :mod:`lens.adapters`);
- stats: stats mode's statistics equal those of the eager (bidirectional) patterns;
- head_edit: ``Edit(HeadRef, Zero())`` and ``lens.hooked`` at ``Where.Z`` equal zeroing the head's
  slice of the output projection's input with a hand-written pre-hook, and change the outputs.

A family that cannot give a capability asserts its one-line refusal (``REFUSED``).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import lens
from attnlens.formats import errors as project_errors
from lens import Edit, HeadRef, Site, Zero
from tests.conformance.test_folder_kinds import IMAGE, KINDS, folders  # noqa: F401

ATOL = 2e-5
#: kind -> (the output projection, the MLP's output module) of layer {layer}, by hand
WRITERS = {
    "bert": ("bert.encoder.layer.{layer}.attention.output.dense", "bert.encoder.layer.{layer}.output.dense"),
    "roberta": ("encoder.layer.{layer}.attention.output.dense", "encoder.layer.{layer}.output.dense"),
    "distilbert": ("distilbert.transformer.layer.{layer}.attention.out_lin", "distilbert.transformer.layer.{layer}.ffn"),
    "electra": ("electra.encoder.layer.{layer}.attention.output.dense", "electra.encoder.layer.{layer}.output.dense"),
    "deberta_v2": ("deberta.encoder.layer.{layer}.attention.output.dense", "deberta.encoder.layer.{layer}.output.dense"),
    "modernbert": ("model.layers.{layer}.attn.Wo", "model.layers.{layer}.mlp"),
    "xlm_roberta": ("roberta.encoder.layer.{layer}.attention.output.dense", "roberta.encoder.layer.{layer}.output.dense"),
    "vit": ("layers.{layer}.attention.o_proj", "layers.{layer}.mlp"),
    "clip": ("encoder.layers.{layer}.self_attn.out_proj", "encoder.layers.{layer}.mlp"),
    "siglip": ("encoder.layers.{layer}.self_attn.out_proj", "encoder.layers.{layer}.mlp"),
    "deit": ("layers.{layer}.attention.o_proj", "layers.{layer}.mlp"),
    "beit": ("layers.{layer}.attention.o_proj", "layers.{layer}.mlp"),
    "dinov2": ("encoder.layer.{layer}.attention.o_proj", "encoder.layer.{layer}.mlp"),
}
#: (kind, capability) -> words of its one-line refusal
_NO_INTERFACE = "without transformers' attention interface"  # DeBERTa-v2 computes its disentangled attention itself
REFUSED = {("deberta_v2", "stats"): _NO_INTERFACE}
SITES = (Site.PATTERN, Site.Q, Site.K, Site.V, Site.Z, Site.RESID_PRE, Site.RESID_POST, Site.ATTN_OUT, Site.MLP_OUT)
OUTSIDE = (Site.PATTERN, Site.Z, Site.RESID_PRE, Site.RESID_POST, Site.ATTN_OUT, Site.MLP_OUT)  # hooked outside attention
LAYERS = [0, 1]


class Encoder:
    """A kind's folder loaded through lens, its input, and the eager reference's outputs on that input."""

    def __init__(self, kind: str, folder):
        self.kind = kind
        self.lm = lens.load(str(folder))
        self.ref = type(self.lm.model).from_pretrained(folder, attn_implementation="eager").eval()
        if KINDS[kind][1] == "vision":
            self.x = IMAGE
            pixels = torch.from_numpy(np.asarray(self.lm.processor(IMAGE, return_tensors="np")["pixel_values"]))
            self.ref_kwargs = {"pixel_values": pixels}
        else:
            self.x = self.lm.encode("hello there")
            self.ref_kwargs = {"input_ids": self.x}
        self.want = self.reference()

    def reference(self, pre_hooks: dict | None = None) -> dict:
        """The reference's patterns, hidden states, logits (masked LMs) and the writers' outputs."""
        writes: dict = {}
        handles = []
        for layer in LAYERS:
            out_proj = WRITERS[self.kind][0].format(layer=layer)
            block = out_proj[:out_proj.index(f".{layer}.") + len(f".{layer}")]  # e.g. bert.encoder.layer.1
            for what, name in zip(("attn_out", "mlp_out", "block_out"), (*WRITERS[self.kind], block)):
                module = self.ref.get_submodule(name.format(layer=layer))
                handles.append(module.register_forward_hook(
                    lambda m, a, out, key=(what, layer): writes.__setitem__(key, out[0] if isinstance(out, tuple) else out)))
        for name, hook in (pre_hooks or {}).items():
            handles.append(self.ref.get_submodule(name).register_forward_pre_hook(hook))
        try:
            with torch.no_grad():
                out = self.ref(**self.ref_kwargs, output_attentions=True, output_hidden_states=True)
        finally:
            for h in handles:
                h.remove()
        return {"attentions": out.attentions, "hidden": out.hidden_states, "logits": getattr(out, "logits", None),
                "writes": writes}


@pytest.fixture(scope="module", params=list(WRITERS))
def enc(request, folders):  # noqa: F811
    return Encoder(request.param, folders(request.param))


def _close(got, want, what: str) -> None:
    assert tuple(got.shape) == tuple(want.shape), f"{what}: shape {tuple(got.shape)}, reference {tuple(want.shape)}"
    diff = (got.float() - want.float()).abs().max().item()
    assert diff < ATOL, f"{what}: off by {diff:.2e} from the reference"


def _cell(request, enc: Encoder, capability: str, run) -> None:
    words = REFUSED.get((enc.kind, capability))
    if words is None:
        run()
        return
    with pytest.raises(project_errors.AttnlensError) as info:
        run()
    message = str(info.value)
    assert "\n" not in message and words in message, message
    assert type(enc.lm.model).__name__ in message or enc.kind in message, message
    request.node.user_properties.append(("refusal", message))  # for the generated table (conftest.py)


def test_logits(request, enc):
    """Capturing every site of every layer (the sites it gives, for a family that refuses q/k/v) leaves
    the outputs as the reference computes them."""
    sites = OUTSIDE if (enc.kind, "sites") in REFUSED else SITES

    def run():
        res = lens.run(enc.lm, enc.x, sites=list(sites), layers=LAYERS)
        assert len(res.capture.steps[0]) == len(sites) * len(LAYERS), "a site came back empty"
        if enc.want["logits"] is not None:
            _close(res.logits, enc.want["logits"], "logits while capturing every site")
        _close(res.capture.get(Site.RESID_POST, LAYERS[-1]), enc.want["writes"][("block_out", LAYERS[-1])],
               "the last block's output while capturing every site")

    _cell(request, enc, "logits", run)


def test_sites(request, enc):
    """Every site in its documented shape, nothing empty; residuals and writes equal the reference's."""
    facts = enc.lm.facts

    def run():
        cap = lens.run(enc.lm, enc.x, sites=list(SITES), layers=LAYERS).capture
        pos = cap.get(Site.RESID_PRE, 0).shape[1]
        shapes = {Site.Q: (1, facts.n_heads, pos, facts.d_head), Site.K: (1, facts.n_kv_heads, pos, facts.d_head),
                  Site.V: (1, facts.n_kv_heads, pos, facts.d_value), Site.Z: (1, facts.n_heads, pos, facts.d_value),
                  Site.PATTERN: (1, facts.n_heads, pos, pos)}
        for layer in LAYERS:
            for site in SITES:
                got = cap.get(site, layer)
                assert tuple(got.shape) == shapes.get(site, (1, pos, facts.d_model)), \
                    f"{site.value}@{layer}: shape {tuple(got.shape)}"
                assert torch.isfinite(got).all() and got.abs().sum() > 0, f"{site.value}@{layer} is empty or zero"
            _close(cap.get(Site.RESID_PRE, layer), enc.want["hidden"][layer], f"resid_pre of layer {layer}")
            _close(cap.get(Site.RESID_POST, layer), enc.want["writes"][("block_out", layer)], f"resid_post of layer {layer}")
            _close(cap.get(Site.ATTN_OUT, layer), enc.want["writes"][("attn_out", layer)], f"attn_out of layer {layer}")
            _close(cap.get(Site.MLP_OUT, layer), enc.want["writes"][("mlp_out", layer)], f"mlp_out of layer {layer}")

    _cell(request, enc, "sites", run)


def test_stats(request, enc):
    """Stats mode's per-head statistics equal those of the eager patterns (all keys visible)."""
    from attnlens.kernels import StatsSpec

    def run():
        got = lens.run_stats(enc.lm, enc.x, spec=StatsSpec(sink_tokens=1), layers=LAYERS)
        assert sorted(got.stats) == LAYERS, f"stats for layers {sorted(got.stats)}"
        for layer in LAYERS:
            p = enc.want["attentions"][layer].float()
            s = got.stats[layer]
            _close(s.max_weight, p.amax(-1), f"max_weight of layer {layer}")
            _close(s.sink_mass, p[..., 0], f"sink_mass of layer {layer}")
            _close(s.entropy, -(p * p.clamp_min(1e-30).log()).sum(-1), f"entropy of layer {layer}")
            _close(s.received_sum, p.sum(-2), f"received_sum of layer {layer}")

    _cell(request, enc, "stats", run)


def test_head_edit(request, enc):
    """Zeroing L1H1 through ``Edit`` and through ``lens.hooked`` equals the hand-written pre-hook."""
    layer, head = LAYERS[-1], 1
    n_heads = enc.lm.facts.n_heads

    def zero_head(module, args):
        x = args[0].clone()
        width = x.shape[-1] // n_heads
        x[..., head * width:(head + 1) * width] = 0
        return (x, *args[1:])

    want = enc.reference({WRITERS[enc.kind][0].format(layer=layer): zero_head})
    after = want["writes"][("block_out", layer)]
    assert (after - enc.want["writes"][("block_out", layer)]).abs().max() > 1e-4, "the reference edit changes nothing"

    def zero(z):  # [batch, pos, head, d_head]
        z = z.clone()
        z[:, :, head] = 0
        return z

    def run():
        got = lens.run(enc.lm, enc.x, sites=[Site.RESID_POST], layers=[layer], edits=[Edit(HeadRef(layer, head), Zero())])
        _close(got.capture.get(Site.RESID_POST, layer), after, f"resid_post with L{layer}H{head} zeroed")
        if want["logits"] is not None:
            _close(got.logits, want["logits"], f"logits with L{layer}H{head} zeroed")
        engine = []
        with lens.hooked(enc.lm, {lens.Point(lens.Where.Z, layer): zero,
                                  lens.Point(lens.Where.BLOCK_OUT, layer): lambda t: engine.append(t)}):
            with torch.no_grad():
                enc.lm.model(**enc.ref_kwargs)
        _close(engine[0], after, f"resid_post with L{layer}H{head} zeroed through lens.hooked")

    _cell(request, enc, "head_edit", run)
