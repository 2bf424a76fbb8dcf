"""Whisper's conformance cells: the tiny folder of test_folder_kinds.py (2 encoder and 2 decoder layers),
a second copy loaded by transformers itself with ``attn_implementation="eager"`` as the reference, one
second of a tone as the audio and a fixed decoder prefix:

- pattern: the decoder's self-attention, the encoder's and the cross-attention patterns equal the eager
  ``decoder_attentions``, ``encoder_attentions`` and ``cross_attentions``;
- logits: capturing every site leaves the logits as the reference computes them;
- sites: q/k/v/z, residual, attention and MLP outputs of the decoder in their documented shapes, nothing
  empty; the residual entering each decoder block equals the reference's decoder hidden states;
- stats: the decoder's self-attention statistics equal those of the eager patterns;
- head_edit: zeroing a decoder head equals a hand-written pre-hook on its output projection.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import lens
from lens import Edit, HeadRef, Site, Zero
from tests.conformance.test_folder_kinds import folders  # noqa: F401

IDS = [0, 100, 101, 102, 103]
SITES = (Site.PATTERN, Site.Q, Site.K, Site.V, Site.Z, Site.RESID_PRE, Site.RESID_POST, Site.ATTN_OUT, Site.MLP_OUT)
ATOL = 2e-5


class Whisper:
    def __init__(self, folder):
        from lens.speech import features

        self.lm = lens.load(str(folder))
        self.ref = type(self.lm.model).from_pretrained(folder, attn_implementation="eager").eval()
        t = np.arange(16_000) / 16_000
        self.audio = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
        self.kwargs = {"input_features": features(self.lm, self.audio), "decoder_input_ids": torch.tensor([IDS])}
        self.want = self.reference()

    def reference(self, pre_hooks: dict | None = None):
        handles = [self.ref.get_submodule(n).register_forward_pre_hook(h) for n, h in (pre_hooks or {}).items()]
        try:
            with torch.no_grad():
                return self.ref(**self.kwargs, output_attentions=True, output_hidden_states=True)
        finally:
            for h in handles:
                h.remove()

    def run(self, sites, layers=(0, 1), **kw):
        return lens.run(self.lm, self.audio, sites=list(sites), layers=list(layers), decoder_ids=IDS, **kw)


@pytest.fixture(scope="module", params=["whisper"])
def whisper(request, folders):  # noqa: F811
    return Whisper(folders(request.param))


def _close(got, want, what: str) -> None:
    assert tuple(got.shape) == tuple(want.shape), f"{what}: shape {tuple(got.shape)}, reference {tuple(want.shape)}"
    diff = (got.float() - want.float()).abs().max().item()
    assert diff < ATOL, f"{what}: off by {diff:.2e} from the reference"


def test_pattern(whisper):
    cap = whisper.run([Site.PATTERN, Site.ENC_PATTERN, Site.CROSS_PATTERN]).capture
    for layer in (0, 1):
        _close(cap.get(Site.PATTERN, layer), whisper.want.decoder_attentions[layer], f"pattern@{layer}")
        _close(cap.get(Site.ENC_PATTERN, layer), whisper.want.encoder_attentions[layer], f"enc_pattern@{layer}")
        _close(cap.get(Site.CROSS_PATTERN, layer), whisper.want.cross_attentions[layer], f"cross_pattern@{layer}")


def test_logits(whisper):
    res = whisper.run(SITES)
    assert len(res.capture.steps[0]) == len(SITES) * 2, "a site came back empty"
    _close(res.logits, whisper.want.logits, "logits while capturing every site")


def test_sites(whisper):
    f = whisper.lm.facts
    cap = whisper.run(SITES).capture
    pos = len(IDS)
    shapes = {Site.Q: (1, f.n_heads, pos, f.d_head), Site.K: (1, f.n_kv_heads, pos, f.d_head),
              Site.V: (1, f.n_kv_heads, pos, f.d_value), Site.Z: (1, f.n_heads, pos, f.d_value),
              Site.PATTERN: (1, f.n_heads, pos, pos)}
    for layer in (0, 1):
        for site in SITES:
            got = cap.get(site, layer)
            assert tuple(got.shape) == shapes.get(site, (1, pos, f.d_model)), f"{site.value}@{layer}: {tuple(got.shape)}"
            assert torch.isfinite(got).all() and got.abs().sum() > 0, f"{site.value}@{layer} is empty or zero"
        _close(cap.get(Site.RESID_PRE, layer), whisper.want.decoder_hidden_states[layer], f"resid_pre@{layer}")


def test_stats(whisper):
    from attnlens.kernels import StatsSpec

    with torch.no_grad(), lens.stats_mode(whisper.lm, StatsSpec(sink_tokens=1)) as rec:
        whisper.run([Site.Z], layers=[0])
    for layer in (0, 1):
        p, s = whisper.want.decoder_attentions[layer].float(), rec.stats[layer][-1]
        _close(s.max_weight, p.amax(-1), f"max_weight@{layer}")
        _close(s.sink_mass, p[..., 0], f"sink_mass@{layer}")
        _close(s.entropy, -(p * p.clamp_min(1e-30).log()).sum(-1), f"entropy@{layer}")


def test_head_edit(whisper):
    layer, head, n_heads = 1, 1, whisper.lm.facts.n_heads

    def zero_head(module, args):
        x = args[0].clone()
        width = x.shape[-1] // n_heads
        x[..., head * width:(head + 1) * width] = 0
        return (x, *args[1:])

    want = whisper.reference({f"model.decoder.layers.{layer}.self_attn.out_proj": zero_head}).logits
    assert (want - whisper.want.logits).abs().max() > 1e-4, "the reference edit changes nothing"
    got = whisper.run([Site.RESID_POST], layers=[layer], edits=[Edit(HeadRef(layer, head), Zero())])
    _close(got.logits, want, f"logits with L{layer}H{head} zeroed")
