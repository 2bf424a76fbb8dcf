"""QK attribution: the terms add up to the model's own pre-softmax scores on several families,
and a hand-built model whose attribution is known in closed form."""

from __future__ import annotations

import pytest
import torch

from attnlens.analyses.qk_attribution import Contributor, Kind, head_loadings, qk_attribution
from lens.errors import BackendError, SelectionError
from lens.zoo.tiny import TINY_VOCAB
from tests.analyses.families import init as _init
from tests.analyses.families import saved as _saved

PROMPT = "When Mary and John went to the store, John gave a drink to"


def _log_pattern_check(a) -> None:
    """The model's own probabilities: log p_k - log p_j = score_k - score_j (independent of our scores)."""
    terms = a.terms.double().sum((1, 2))
    logp = a.pattern.double().log()
    torch.testing.assert_close(terms - terms[a.key_pos], logp - logp[a.key_pos], atol=1e-4, rtol=0)


@pytest.mark.parametrize("family", ["tiny_lm", "tiny_gpt2", "tiny_qwen2"])
def test_terms_sum_to_the_models_scores(family, request):
    lm = request.getfixturevalue(family)
    ids = lm.encode(PROMPT)
    for layer in range(lm.facts.n_layers):
        for head in (0, lm.facts.n_heads - 1):
            a = qk_attribution(lm, ids, layer, head)
            torch.testing.assert_close(a.terms.double().sum((1, 2)), a.scores.double(), atol=1e-4, rtol=0)
            _log_pattern_check(a)
            assert a.kv_head == head // (lm.facts.n_heads // lm.facts.n_kv_heads)
            heads = [c for c in a.components if c.kind is Kind.HEAD]
            assert len(heads) == layer * lm.facts.n_heads
    kinds = {c.kind for c in a.components}
    assert (Kind.POS in kinds) == (family == "tiny_gpt2")
    assert (Kind.OUT_BIAS in kinds) == (family == "tiny_gpt2")


def test_gpt2_position_terms_are_named_by_position(tiny_gpt2):
    a = qk_attribution(tiny_gpt2, tiny_gpt2.encode(PROMPT), 2, 1, key_pos=3)
    names = a.names(3)
    assert "pos[3]" in names and f"embed[{a.tokens[3]}]" in names and "L1H2" in names and "MLP0" in names
    assert a.key_pos == 3
    assert all(" x " in n for n, _ in a.top(5))
    assert abs(a.top(1)[0][1]) == pytest.approx(float(a.terms[3].abs().max()))


def test_hand_built_model_only_embeddings_contribute_in_closed_form(tmp_path):
    """Layer 0 writes nothing (output projection and MLP zeroed), so layer 1's score is embed x embed,
    and at q = k = p (one rotation on both sides cancels) it is scale * (W_Q n(e_p)) . (W_K n(e_p))."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=1, vocab_size=TINY_VOCAB, bos_token_id=0, eos_token_id=1,
                      tie_word_embeddings=False)
    m = _init(LlamaForCausalLM, cfg, seed=3)
    with torch.no_grad():
        m.model.layers[0].self_attn.o_proj.weight.zero_()
        m.model.layers[0].mlp.down_proj.weight.zero_()
        m.model.layers[1].input_layernorm.weight.uniform_(0.5, 2.0)
    lm = _saved(m, tmp_path)
    ids = lm.encode("abcdef")
    a = qk_attribution(lm, ids, 1, 1, query_pos=4, key_pos=4)
    embed = a.components.index(Contributor(Kind.EMBED))
    t = a.terms[4].double()
    assert t[embed, embed] == pytest.approx(float(t.sum()), abs=1e-6)
    assert float(t.abs().sum() - t[embed, embed].abs()) < 1e-6
    e = lm.model.model.embed_tokens.weight.detach()[ids[0, 4]].double()
    attn = lm.model.model.layers[1]
    n = e / torch.sqrt(e.pow(2).mean() + cfg.rms_norm_eps) * attn.input_layernorm.weight.detach().double()
    q = attn.self_attn.q_proj.weight.detach().double()[16:32] @ n
    k = attn.self_attn.k_proj.weight.detach().double()[0:16] @ n
    assert float(t[embed, embed]) == pytest.approx(float(q @ k) * 16 ** -0.5, abs=1e-5)


def test_hand_built_model_one_head_feeds_the_query(tmp_path):
    """Only head L0H0 writes (the others' output slices zeroed, no MLP), so only rows and columns
    embed and L0H0 are non-zero, and the four terms add up to the score."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=2, vocab_size=TINY_VOCAB, bos_token_id=0, eos_token_id=1,
                      tie_word_embeddings=False)
    m = _init(LlamaForCausalLM, cfg, seed=4)
    with torch.no_grad():
        m.model.layers[0].self_attn.o_proj.weight[:, 16:].zero_()
        m.model.layers[0].mlp.down_proj.weight.zero_()
    lm = _saved(m, tmp_path)
    a = qk_attribution(lm, lm.encode("abcabc"), 1, 0)
    live = [a.components.index(Contributor(Kind.EMBED)), a.components.index(Contributor(Kind.HEAD, 0, 0))]
    t = a.terms[a.key_pos].double()
    mask = torch.zeros_like(t, dtype=torch.bool)
    mask[torch.tensor(live)[:, None], torch.tensor(live)[None]] = True
    assert float(t[~mask].abs().max()) < 1e-6
    assert float(t[mask].abs().min()) > 0
    assert float(t[mask].sum()) == pytest.approx(float(a.scores[a.key_pos]), abs=1e-5)


def test_ov_sums_to_the_heads_direct_logit_attribution(tiny_lm):
    """Summed over keys, OV is the head's output at q (z W_O) on the answer direction over the final norm's scale."""
    from attnlens.analyses.circuits._hooks import CircuitModules, capture

    ids = tiny_lm.encode(PROMPT)
    answers = [ord("M") - 29, ord("J") - 29]
    a = qk_attribution(tiny_lm, ids, 3, 2, answers=answers)
    parts = CircuitModules(tiny_lm)
    acts = capture(parts, ids, residuals=True)
    z = acts.z[3][0, -1, 2].double()
    out = z @ parts.w_o(3)[2].double().T
    final = acts.final[0, -1].double()
    sigma = torch.sqrt(final.pow(2).mean() + parts.final_norm().variance_epsilon)
    u = tiny_lm.model.lm_head.weight.double()[answers] * parts.final_norm().weight.double()
    torch.testing.assert_close(a.ov.double().sum(1), u @ out / sigma, atol=1e-5, rtol=1e-4)
    assert a.ov.shape == (2, ids.shape[1])


def test_head_loadings_are_the_mean_row_and_column_sums(tiny_lm):
    prompts = [tiny_lm.encode(PROMPT), tiny_lm.encode("The cat sat on the mat and the dog")]
    load = head_loadings(tiny_lm, prompts, 2, 1, key_positions=[5, 7])
    assert torch.isnan(load["query"][2:]).all() and torch.isfinite(load["query"][:2]).all()
    a = qk_attribution(tiny_lm, prompts[0], 2, 1, key_pos=5)
    b = qk_attribution(tiny_lm, prompts[1], 2, 1, key_pos=7)
    j = a.components.index(Contributor(Kind.HEAD, 1, 3))
    want_q = (a.terms[5, j].sum() + b.terms[7, j].sum()) / 2
    want_k = (a.terms[5, :, j].sum() + b.terms[7, :, j].sum()) / 2
    assert float(load["query"][1, 3]) == pytest.approx(float(want_q), abs=1e-6)
    assert float(load["key"][1, 3]) == pytest.approx(float(want_k), abs=1e-6)


def test_bad_selections_are_one_line_errors(tiny_lm):
    ids = tiny_lm.encode("abc")
    with pytest.raises(SelectionError, match="layer 9 is out of range: tiny-llama has layers 0-3"):
        qk_attribution(tiny_lm, ids, 9, 0)
    with pytest.raises(SelectionError, match="head 4 is out of range"):
        qk_attribution(tiny_lm, ids, 1, 4)
    with pytest.raises(SelectionError, match="query position 7 is out of range: the prompt has positions 0-3"):
        qk_attribution(tiny_lm, ids, 1, 0, query_pos=7)
    with pytest.raises(SelectionError, match="key position 3 is out of range: query 2 attends to keys 0-2"):
        qk_attribution(tiny_lm, ids, 1, 0, query_pos=2, key_pos=3)
    with pytest.raises(SelectionError, match="answer token ids \\[99999\\] are out of range"):
        qk_attribution(tiny_lm, ids, 1, 0, answers=[99999])
    with pytest.raises(SelectionError, match="at least one prompt"):
        head_loadings(tiny_lm, [], 1, 0)


def test_soft_capped_post_norm_family_sums_to_its_scores(tiny_gemma2):
    """Gemma 2: soft-capped scores, post-norms, GQA, sliding windows. The terms sum to the score before
    the cap, and the model's probabilities follow the capped score: log p_k - log p_j = c(s_k) - c(s_j)."""
    lm, cap = tiny_gemma2, 0.5
    ids = lm.encode("abcdefabcdef")
    windowed, biggest = False, 0.0
    for layer in range(lm.facts.n_layers):
        for head in (0, lm.facts.n_heads - 1):
            a = qk_attribution(lm, ids, layer, head)
            raw = a.terms.double().sum((1, 2))
            torch.testing.assert_close(raw, a.scores.double(), atol=1e-4, rtol=0)
            capped = cap * torch.tanh(raw / cap)
            seen = a.pattern > 0  # keys outside the sliding window (alternate layers) get no attention
            logp, c, k = a.pattern.double()[seen].log(), capped[seen], a.key_pos
            torch.testing.assert_close(c - capped[k], logp - torch.log(a.pattern.double()[k]), atol=1e-4, rtol=0)
            windowed, biggest = windowed or bool((~seen).any()), max(biggest, float(raw.abs().max()))
    assert biggest > 2 * cap  # the cap binds on this model: the check above tells capped from raw
    assert windowed  # and a sliding-window layer was among those checked
    assert "before soft-capping" in a.linearisation and "0.5 * tanh" in a.to_result().linearisation


def test_query_key_norm_family_is_refused_in_one_line(tmp_path):
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    cfg = Gemma3TextConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           num_key_value_heads=1, head_dim=16, vocab_size=TINY_VOCAB, bos_token_id=0, eos_token_id=1,
                           pad_token_id=2)
    lm = _saved(_init(Gemma3ForCausalLM, cfg), tmp_path)
    with pytest.raises(BackendError, match="cannot decompose Gemma3ForCausalLM: it normalises each head's queries") as info:
        qk_attribution(lm, lm.encode("abc"), 1, 0)
    assert "\n" not in str(info.value)


@pytest.mark.slow
def test_smollm2_terms_sum_to_its_scores(smollm2):
    """The real model (30 layers, 9 heads, 3 KV heads, rotary): up to 292 components a side."""
    ids = smollm2.encode(PROMPT)
    for layer, head in ((0, 0), (20, 0), (29, 8)):
        a = qk_attribution(smollm2, ids, layer, head)
        torch.testing.assert_close(a.terms.double().sum((1, 2)), a.scores.double(), atol=1e-4, rtol=0)
        _log_pattern_check(a)
        assert a.terms.shape[1] == 1 + layer * (smollm2.facts.n_heads + 1) + 1
