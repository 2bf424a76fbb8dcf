"""The attention-implementation stack: modes nest and compose, and the model is restored."""

import pytest
import torch

import lens
from attnlens.analyses.duo_gates import DuoGating
from attnlens.kernels import StatsSpec
from lens import Site
from lens.attention import AttentionObserver, active_entries, attention_mode


def test_stats_mode_nested_in_a_pattern_capture_gives_both(tiny_lm):
    ids = tiny_lm.encode("Stats mode and patterns, nested.")
    plain = lens.run(tiny_lm, ids, sites=[Site.PATTERN])
    with torch.no_grad(), lens.capture(tiny_lm, sites=[Site.PATTERN]) as cap, \
            lens.stats_mode(tiny_lm, StatsSpec(sink_tokens=1, window=4)) as rec:
        logits = tiny_lm.model(ids).logits
    torch.testing.assert_close(logits, plain.logits, atol=1e-5, rtol=0)
    for layer in range(4):
        p = cap.pattern(layer)
        torch.testing.assert_close(p, plain.capture.pattern(layer), atol=1e-6, rtol=0)
        entropy = -torch.special.xlogy(p.double(), p.double()).sum(-1)
        torch.testing.assert_close(rec.stats[layer][0].entropy.double(), entropy, atol=1e-5, rtol=0)
        torch.testing.assert_close(rec.stats[layer][0].sink_mass, p[..., 0], atol=1e-6, rtol=0)
    assert tiny_lm.model.config._attn_implementation not in ("attnlens_eager", "attnlens_fast")
    assert not active_entries(tiny_lm)


def test_capture_under_duo_gating_sees_the_mixed_attention(tiny_lm):
    ids = tiny_lm.encode("x" * 40)
    n = ids.shape[1]
    full = lens.run(tiny_lm, ids, sites=[Site.PATTERN]).capture
    for value, check in ((1.0, "full"), (0.0, "streaming")):
        gates = torch.full((4, 2), value)
        with attention_mode(tiny_lm, DuoGating(gates, sink=2, recent=4)):
            cap = lens.run(tiny_lm, ids, sites=[Site.PATTERN], layers=[0]).capture
        p = cap.pattern(0)[0]
        if check == "full":
            torch.testing.assert_close(p, full.pattern(0)[0], atol=1e-5, rtol=0)
        else:
            keys, pos = torch.arange(n), torch.arange(n)
            far = (keys[None] >= 2) & (keys[None] <= pos[:, None] - 4)
            assert float(p[:, far].abs().max()) < 1e-6 and torch.allclose(p.sum(-1), torch.ones(4, n), atol=1e-5)


def test_two_computes_on_one_layer_are_refused_and_everything_is_restored(tiny_lm):
    before = tiny_lm.model.config._attn_implementation
    with pytest.raises(lens.BackendError, match="cannot be nested"):
        with torch.no_grad(), lens.stats_mode(tiny_lm, StatsSpec()), \
                attention_mode(tiny_lm, DuoGating(torch.ones(4, 2), 1, 4)):
            tiny_lm.model(tiny_lm.encode("boom"))
    assert tiny_lm.model.config._attn_implementation == before and not active_entries(tiny_lm)
    assert not any(hasattr(m, "_attnlens_stack") for m in tiny_lm.model.modules())


class _Halve(AttentionObserver):
    """A weights modifier: moves half of every row's mass to the first key."""

    modifies_weights = True

    def modify(self, layer, w):
        out = w * 0.5
        out[..., 0] += 0.5
        return out


def test_weight_modifiers_reach_observers_and_the_output(tiny_lm):
    ids = tiny_lm.encode("modify the weights")
    with attention_mode(tiny_lm, _Halve()):
        cap = lens.run(tiny_lm, ids, sites=[Site.PATTERN]).capture
    clean = lens.run(tiny_lm, ids, sites=[Site.PATTERN]).capture
    torch.testing.assert_close(cap.pattern(0)[..., 1:], 0.5 * clean.pattern(0)[..., 1:], atol=1e-6, rtol=0)
    torch.testing.assert_close(cap.pattern(0).sum(-1), torch.ones_like(cap.pattern(0).sum(-1)), atol=1e-5, rtol=0)


def test_stats_mode_refuses_a_weights_modifier_on_its_layers(tiny_lm):
    with pytest.raises(lens.AttnlensError, match="intervention modifies its attention weights"):
        with torch.no_grad(), attention_mode(tiny_lm, _Halve()), lens.stats_mode(tiny_lm, StatsSpec()):
            tiny_lm.model(tiny_lm.encode("no"))
