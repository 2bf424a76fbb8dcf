"""The one hook engine (lens.hooked) over the site table (lens.adapters)."""

from __future__ import annotations

import pytest
import torch

import lens
from lens import Point, Where
from lens.errors import BackendError, SelectionError

IDS = torch.tensor([[0, 40, 77, 12, 99, 40, 77, 150]])


def _logits(lm):
    with torch.no_grad():
        return lm.model(IDS).logits


def _hook_count(model) -> int:
    """Hooks on ``model`` beyond the ones transformers keeps there itself (its output recorders, installed
    the first time a test asks the model for ``output_attentions``)."""
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()) - _BASELINE.get(id(model), 0)


_BASELINE: dict[int, int] = {}


@pytest.fixture(autouse=True)
def _hooks_before(tiny_lm):
    _BASELINE.pop(id(tiny_lm.model), None)
    _BASELINE[id(tiny_lm.model)] = _hook_count(tiny_lm.model)


def test_reading_every_point_changes_nothing_and_leaves_no_hook(tiny_lm):
    plain = _logits(tiny_lm)
    seen = {}
    points = {Point(w, None if not w.per_layer else 1): (lambda t, w=w: seen.__setitem__(w, t))
              for w in Where if w not in (Where.CALL, Where.POS_EMBED, Where.ROTARY, Where.QKV)}
    with lens.hooked(tiny_lm, points):
        got = _logits(tiny_lm)
    assert torch.equal(got, plain)
    assert _hook_count(tiny_lm.model) == 0
    f = tiny_lm.facts
    assert tuple(seen[Where.Z].shape) == (1, IDS.shape[1], f.n_heads, f.d_head)
    assert tuple(seen[Where.K].shape) == (1, IDS.shape[1], f.n_kv_heads * f.d_head)
    for w in (Where.EMBED, Where.BLOCK_IN, Where.RESID_PRE, Where.RESID_MID, Where.MLP_OUT, Where.BLOCK_OUT,
              Where.FINAL, Where.ATTN_OUT):
        assert tuple(seen[w].shape) == (1, IDS.shape[1], f.d_model), w
    # for a pre-norm block the attention norm's input is the block's input
    assert torch.equal(seen[Where.RESID_PRE], seen[Where.BLOCK_IN])


def test_zeroing_a_head_through_z_equals_a_hand_written_pre_hook(tiny_lm):
    layer, head, d = 2, 3, tiny_lm.facts.d_head

    def by_hand(module, args):
        x = args[0].clone()
        x[..., head * d:(head + 1) * d] = 0
        return (x,)

    handle = tiny_lm.model.model.layers[layer].self_attn.o_proj.register_forward_pre_hook(by_hand)
    try:
        want = _logits(tiny_lm)
    finally:
        handle.remove()

    def zero(z):
        z = z.clone()
        z[:, :, head] = 0
        return z

    with lens.hooked(tiny_lm, {Point(Where.Z, layer): zero}):
        got = _logits(tiny_lm)
    assert torch.equal(got, want)
    assert (got - _logits(tiny_lm)).abs().max() > 1e-4


def test_hooks_run_in_order_and_are_removed_on_error(tiny_lm):
    order = []
    points = [(Point(Where.MLP_OUT, 0), lambda t: order.append("a")),
              (Point(Where.MLP_OUT, 0), lambda t: order.append("b"))]
    with pytest.raises(RuntimeError, match="boom"):
        with lens.hooked(tiny_lm, points):
            _logits(tiny_lm)
            raise RuntimeError("boom")
    assert order == ["a", "b"]
    assert _hook_count(tiny_lm.model) == 0


def test_a_replacement_of_the_wrong_shape_is_refused_in_one_line(tiny_lm):
    with pytest.raises(BackendError, match=r"hook at mlp_out@1 returned shape \(3,\), expected"):
        with lens.hooked(tiny_lm, {Point(Where.MLP_OUT, 1): lambda t: torch.zeros(3)}):
            _logits(tiny_lm)
    assert _hook_count(tiny_lm.model) == 0


@pytest.mark.parametrize("point, words", [
    (lambda: Point(Where.Z), "needs a layer >= 0"),
    (lambda: Point(Where.FINAL, 2), "is model-level: give no layer"),
    (lambda: Point("z", 1), "must be a lens.Where"),
    (lambda: Point(Where.Z, True), "needs a layer >= 0"),
])
def test_points_are_checked(point, words):
    with pytest.raises(SelectionError, match=words):
        point()


def test_the_table_names_the_family_and_part_it_lacks(tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM

    from lens.adapters import adapter_for

    cfg = AutoConfig.for_model("gpt2", n_embd=32, n_layer=2, n_head=4, vocab_size=64, n_positions=32)
    model = AutoModelForCausalLM.from_config(cfg)
    table = adapter_for(model)
    with pytest.raises(BackendError, match=r"GPT2LMHeadModel \(gpt2\) has no query projection .* in layer 1"):
        table.q(1)
    assert table.fused_qkv(1) is model.transformer.h[1].attn.c_attn
    assert table.final_norm() is model.transformer.ln_f
    assert table.position_embed() is model.transformer.wpe
    assert table.attn_norm(0) is model.transformer.h[0].ln_1 and table.mlp_norm(0) is model.transformer.h[0].ln_2


def test_flattened_mlp_rows_come_in_the_documented_shape(tmp_path):
    """OPT's MLP output (fc2) is [batch * pos, d]: the engine hands it over as [batch, pos, d], and a
    replacement goes back in the model's own shape."""
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model("opt", hidden_size=32, num_hidden_layers=2, num_attention_heads=4, ffn_dim=64,
                               word_embed_proj_dim=32, vocab_size=259, max_position_embeddings=64)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    seen = []
    with lens.hooked(model, {Point(Where.MLP_OUT, 1): lambda t: (seen.append(t.shape), torch.zeros_like(t))[1]}):
        with torch.no_grad():
            zeroed = model(IDS).logits
    assert seen == [torch.Size([1, IDS.shape[1], 32])]

    def by_hand(module, args, out):
        return torch.zeros_like(out)
    handle = model.model.decoder.layers[1].fc2.register_forward_hook(by_hand)
    try:
        with torch.no_grad():
            want = model(IDS).logits
    finally:
        handle.remove()
    assert torch.equal(zeroed, want)


def test_a_point_the_model_lacks_is_refused_in_one_line(tiny_lm):
    with pytest.raises(BackendError, match=r"LlamaForCausalLM \(llama\) has no fused q/k/v projection in layer 1"):
        with lens.hooked(tiny_lm, {Point(Where.QKV, 1): lambda t: None}):
            pass
    assert _hook_count(tiny_lm.model) == 0


def test_fused_projections_give_each_heads_rows():
    """The table's q/k/v rows of GPT-NeoX's fused projection (per head [q k v]) are what its attention uses."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from lens.adapters import adapter_for

    cfg = AutoConfig.for_model("gpt_neox", hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                               intermediate_size=64, vocab_size=64)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    x = torch.randn(1, 5, 32)
    attn = model.gpt_neox.layers[0].attention
    qkv = attn.query_key_value(x).view(1, 5, 4, 3 * 8)
    proj = adapter_for(model).projections(0, 4, 4, 8)
    for i, which in enumerate("qkv"):
        want = qkv[..., i * 8:(i + 1) * 8].reshape(1, 5, 32)  # head-major, as the model splits it
        got = x @ proj[which].weight().T + proj[which].bias()
        assert torch.allclose(got, want, atol=1e-6), which


def test_a_layer_out_of_range_is_refused_in_one_line(tiny_lm):
    with pytest.raises(SelectionError, match=r"hook point z@9 is out of range: LlamaForCausalLM has layers 0-3"):
        with lens.hooked(tiny_lm, {Point(Where.Z, 9): lambda t: None}):
            pass
    assert _hook_count(tiny_lm.model) == 0
