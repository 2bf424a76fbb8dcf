"""Three backends, one meaning: the same patterns, z, activations and logits, and the same edits."""

import pytest
import torch

import lens
from lens import Site

SITES = [Site.PATTERN, Site.Z, Site.RESID_PRE, Site.RESID_POST, Site.ATTN_OUT, Site.MLP_OUT]
OTHERS = ["transformer_lens", "nnsight"]


@pytest.fixture(scope="module")
def reference(tiny_lm):
    ids = tiny_lm.encode("When Mary and John went to the store")
    return ids, lens.run(tiny_lm, ids, sites=SITES + [Site.Q, Site.K, Site.V], backend="torch")


@pytest.mark.parametrize("backend", OTHERS)
def test_backends_agree_with_plain_hooks(tiny_lm, reference, backend):
    ids, ref = reference
    sites = SITES + ([Site.Q, Site.K, Site.V] if backend == "transformer_lens" else [])
    got = lens.run(tiny_lm, ids, sites=sites, backend=backend)
    torch.testing.assert_close(got.logits, ref.logits, atol=1e-5, rtol=0)
    assert set(got.capture.steps[0]) == {k for k in ref.capture.steps[0] if k.site in sites}
    for key, tensor in got.capture.steps[0].items():
        torch.testing.assert_close(tensor, ref.capture.steps[0][key], atol=1e-5, rtol=0, msg=str(key))
    assert got.capture.meta.backend == backend


@pytest.mark.parametrize("backend", OTHERS)
def test_interventions_agree_across_backends(tiny_lm, reference, backend):
    ids, ref = reference
    reference_acts = lens.Reference.from_capture(ref.capture)
    noise = lens.Reference(z={0: torch.randn_like(reference_acts.z[0])},
                           mlp={1: torch.randn_like(reference_acts.mlp[1])})
    edits = (lens.zero_ablation([(1, 2), (3, 0)]) + lens.mean_ablation(reference_acts, [(2, 1), lens.MlpRef(2)])
             + lens.patch(noise, [(0, 3), lens.MlpRef(1)]) + lens.scale_heads({(3, 1): 2.0})
             + lens.zero_ablation([lens.ResidRef(0)]))
    want = lens.run(tiny_lm, ids, sites=[Site.Z], edits=edits, backend="torch")
    got = lens.run(tiny_lm, ids, sites=[Site.Z], edits=edits, backend=backend)
    assert (want.logits - ref.logits).abs().max() > 1e-3  # the edits do something
    torch.testing.assert_close(got.logits, want.logits, atol=1e-5, rtol=0)
    for layer in range(4):
        torch.testing.assert_close(got.capture.get(Site.Z, layer), want.capture.get(Site.Z, layer), atol=1e-5, rtol=0)


def test_nnsight_refuses_sites_inside_attention(tiny_lm):
    with pytest.raises(lens.BackendError, match="nnsight backend cannot capture q"):
        lens.run(tiny_lm, "hi", sites=[Site.Q], backend="nnsight")


def test_bridge_does_not_touch_the_users_model(tiny_lm, reference):
    ids, ref = reference
    lens.run(tiny_lm, ids, sites=[Site.PATTERN], backend="transformer_lens")
    assert type(tiny_lm.model.model.layers[0].self_attn).__module__.startswith("transformers.")
    with torch.no_grad():
        torch.testing.assert_close(tiny_lm.model(ids).logits, ref.logits, atol=1e-5, rtol=0)
