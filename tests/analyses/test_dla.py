"""Direct logit attribution: the parts add up to the model's own logits on several families, the
heads' parts agree with the captured attention output, a hand-built model gives its closed form,
and the result file round-trips through its one writer and reader."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import lens
from attnlens.analyses.dla import direct_logit_attribution, readout_parts
from attnlens.formats import ResultsFolder, Site
from attnlens.formats.dla import DLAResult
from attnlens.pipelines.dla import dla_of_capture, run_dla
from lens.errors import BackendError, PromptError, ResultError, SelectionError
from lens.zoo.tiny import TINY_VOCAB
from tests.analyses.families import init, saved

PROMPT = "When Mary and John went to the store, John gave a drink to"


@pytest.mark.parametrize("family", ["tiny_lm", "tiny_gpt2", "tiny_qwen2"])
def test_parts_sum_to_the_models_logits(family, request):
    lm = request.getfixturevalue(family)
    res = run_dla(lm, PROMPT, ["M", "J"], positions=[-1, 5, 0], top=4)
    n = len(res.tokens)
    assert res.positions == [n - 1, 5, 0] and res.targets[:2] == ["M", "J"] and res.n_given == 2
    np.testing.assert_allclose(res.totals(), res.logits, atol=1e-4, rtol=0)
    assert res.heads.shape == (3, len(res.targets), lm.facts.n_layers, lm.facts.n_heads)
    # the logits are the model's own: compare with a plain forward
    with torch.no_grad():
        want = lm.model(input_ids=lm.encode(PROMPT)).logits[0].double()
    np.testing.assert_allclose(res.logits, want[res.positions][:, res.target_ids].numpy(), atol=1e-5, rtol=1e-5)
    # the model's top prediction at each position is among the targets
    for p in res.positions:
        assert int(want[p].argmax()) in res.target_ids
    gpt2 = family == "tiny_gpt2"
    assert res.tied == gpt2 and res.final_norm == ("LayerNorm" if gpt2 else "RMSNorm")
    assert (np.abs(res.pos_embed).max() > 1e-4) == gpt2 and (np.abs(res.out_bias).max() > 1e-4) == gpt2
    assert (np.abs(res.bias).max() > 1e-4) == gpt2  # LayerNorm's bias through the unembedding
    assert "frozen" in res.linearisation


@pytest.mark.parametrize("family", ["tiny_lm", "tiny_gpt2"])
def test_each_layers_heads_sum_to_its_attention_output(family, request):
    """Independent of the decomposition: the attention block's output (captured), minus its bias, on the
    target's direction over the frozen scale is the sum of that layer's head parts."""
    lm = request.getfixturevalue(family)
    res = run_dla(lm, PROMPT, ["M"], top=0)
    cap = lens.run(lm, PROMPT, sites=[Site.ATTN_OUT, Site.RESID_POST]).capture
    parts = readout_parts(lm)
    u = parts.unembed.weight.detach().double()[res.target_ids[0]]
    norm = parts.final_norm
    d = u * norm.weight.detach().double()
    if res.final_norm == "LayerNorm":
        d = d - d.mean()
    p = res.positions[0]
    for layer in range(lm.facts.n_layers):
        out = cap.get(Site.ATTN_OUT, layer)[0, p].double()
        b = parts.adapter.out_proj(layer).bias
        if b is not None:
            out = out - b.detach().double()
        want = float(out @ d) / float(res.sigma[0])
        assert float(res.heads[0, 0, layer].sum()) == pytest.approx(want, abs=1e-5)


def test_hand_built_model_only_the_embedding_and_one_head_write(tmp_path):
    """No MLP writes and only head L1H0 writes (the other heads' output slices zeroed): every other
    part is zero, and the embedding's part is the closed form U_t . (g * e / sigma)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=1, vocab_size=TINY_VOCAB, bos_token_id=0, eos_token_id=1,
                      tie_word_embeddings=False)
    m = init(LlamaForCausalLM, cfg, seed=5)
    with torch.no_grad():
        m.model.layers[0].self_attn.o_proj.weight.zero_()
        m.model.layers[1].self_attn.o_proj.weight[:, 16:].zero_()
        for layer in m.model.layers:
            layer.mlp.down_proj.weight.zero_()
        m.model.norm.weight.uniform_(0.5, 2.0)
    lm = saved(m, tmp_path)
    ids = lm.encode("abcdef")
    res = direct_logit_attribution(lm, ids, [70, 71], top=0)
    assert np.abs(res.mlps).max() == 0 and np.abs(res.heads[:, :, 0]).max() == 0
    assert np.abs(res.heads[:, :, 1, 1]).max() == 0 and np.abs(res.heads[:, :, 1, 0]).min() > 0
    e = m.model.embed_tokens.weight.detach().double()[ids[0, -1]]
    z = lens.run(lm, ids, sites=[Site.Z], layers=[1]).capture.get(Site.Z, 1)[0, 0, -1].double()  # [d_head], head 0
    out = m.model.layers[1].self_attn.o_proj.weight.detach().double()[:, :16] @ z
    resid = e + out  # all that reaches the final norm
    sigma = torch.sqrt(resid.pow(2).mean() + cfg.rms_norm_eps)
    d = m.lm_head.weight.detach().double()[[70, 71]] * m.model.norm.weight.detach().double()
    assert float(res.sigma[0]) == pytest.approx(float(sigma), rel=1e-6)
    np.testing.assert_allclose(res.embed[0], (d @ e / sigma).numpy(), atol=1e-5)
    np.testing.assert_allclose(res.heads[0, :, 1, 0], (d @ out / sigma).numpy(), atol=1e-5)
    np.testing.assert_allclose(res.embed[0] + res.heads[0, :, 1, 0], res.logits[0], atol=1e-5)


def test_post_norm_soft_capped_family_sums_to_its_logits_before_the_cap(tiny_gemma2):
    """Gemma 2: post-norms (frozen like the final norm), tied unembedding, Gemma's (1 + w) norms and
    final logit soft-capping: the parts sum to the logits before the cap, and capping those gives the
    model's own logits."""
    res = run_dla(tiny_gemma2, "abcdefabcdef", ["a"], positions=[-1, 3])
    np.testing.assert_allclose(res.totals(), res.logits, atol=1e-4, rtol=0)
    with torch.no_grad():
        want = tiny_gemma2.model(input_ids=tiny_gemma2.encode("abcdefabcdef")).logits[0].double()
    cap = 3.0
    np.testing.assert_allclose(cap * np.tanh(res.logits.astype(np.float64) / cap),
                               want[res.positions][:, res.target_ids].numpy(), atol=1e-5)
    assert res.tied and "before soft-capping" in res.linearisation and "3 * tanh" in res.linearisation
    assert np.abs(res.heads).max() > 1e-3 and np.abs(res.mlps).max() > 1e-3


def test_a_logit_transform_it_does_not_model_is_refused_in_one_line(tiny_gpt2, monkeypatch):
    """A logit transform the decomposition does not model is caught by the check against the model's logits."""
    head = tiny_gpt2.model.lm_head
    monkeypatch.setattr(head, "forward", lambda x: torch.nn.functional.linear(x, head.weight) * 2.0)
    with pytest.raises(BackendError, match="its logits are not the final norm's linear image") as info:
        run_dla(tiny_gpt2, "abcdef")
    assert "\n" not in str(info.value)


def test_bad_selections_are_one_line_errors(tiny_lm):
    ids = tiny_lm.encode("abc")
    with pytest.raises(SelectionError, match="position 7 is out of range: the prompt has positions 0-3"):
        direct_logit_attribution(tiny_lm, ids, positions=[7])
    with pytest.raises(SelectionError, match="position -5 is out of range"):
        direct_logit_attribution(tiny_lm, ids, positions=[-5])
    with pytest.raises(SelectionError, match="target token ids \\[99999\\] are out of range"):
        direct_logit_attribution(tiny_lm, ids, [99999])
    with pytest.raises(SelectionError, match="positions must name at least one position"):
        direct_logit_attribution(tiny_lm, ids, positions=[])
    with pytest.raises(PromptError, match="target 'ab' is 2 tokens"):
        run_dla(tiny_lm, "abc", ["ab"])
    with pytest.raises(PromptError, match="prompt must be non-empty text"):
        run_dla(tiny_lm, "", ["a"])


def test_result_round_trips_and_a_folder_finds_it(tiny_lm, tmp_path):
    res = run_dla(tiny_lm, PROMPT, ["M", 74], positions=[-1, 2], top=3)
    assert res.targets[1] == tiny_lm.tokens(torch.tensor([74]))[0]
    path = res.save(tmp_path)
    back = DLAResult.load(path)
    for k in ("heads", "mlps", "embed", "pos_embed", "out_bias", "bias", "logits", "sigma"):
        np.testing.assert_array_equal(getattr(back, k), getattr(res, k))
    assert (back.tokens, back.positions, back.targets, back.target_ids, back.n_given) == \
        (res.tokens, res.positions, res.targets, res.target_ids, 2)
    assert back.top(3, res.positions[1], "M") == res.top(3, res.positions[1], "M")
    assert ResultsFolder.load(tmp_path).dla["dla"].provenance.model == "tiny-llama"
    with pytest.raises(SelectionError, match="position 4 was not attributed: this result has positions"):
        back.index(4)
    with pytest.raises(SelectionError, match="target 'zz' was not attributed"):
        back.index(None, "zz")
    doc = json.loads(path.read_text())
    doc["positions"] = [999]
    path.write_text(json.dumps(doc))
    with pytest.raises(ResultError, match="positions holds 999"):
        DLAResult.load(path)
    assert "positions holds 999" in ResultsFolder.load(tmp_path).problems["dla.dla.json"]  # the rest still loads


def test_a_capture_is_attributed_on_its_saved_tokens(tiny_lm, tmp_path):
    run = lens.run(tiny_lm, PROMPT, sites=[Site.PATTERN], layers=[0])
    run.capture.write_into(tmp_path / "cap")
    from attnlens.formats import CaptureFile

    cap = CaptureFile.load(tmp_path / "cap")
    res = dla_of_capture(tiny_lm, cap, ["M"])
    want = run_dla(tiny_lm, PROMPT, ["M"])
    np.testing.assert_allclose(res.heads, want.heads, atol=1e-6)
    assert res.tokens == cap.tokens


@pytest.mark.slow
def test_smollm2_parts_sum_to_its_logits(smollm2):
    res = run_dla(smollm2, PROMPT, [" Mary", " John"], positions=[-1, 6])
    np.testing.assert_allclose(res.totals(), res.logits, atol=1e-4, rtol=0)
    assert res.tied and res.heads.shape[2:] == (30, 9)


def test_cli_writes_a_result_the_folder_finds(tmp_path, cli):
    from tests.analyses.dla_folder import write_dla_folder

    code, out, err = cli("heads", "dla", "tiny-llama", "--prompt", "abcabc", "--target", "a", "--out", tmp_path / "o")
    assert code == 0, err
    assert "parts sum" in err and "'a'" in err and "frozen" in err  # the table goes to stderr (stdout: --json)
    folder = ResultsFolder.load(write_dla_folder(tmp_path))
    (label, res), = folder.dla.items()
    assert label == "dla" and res.targets[:2] == ["M", "J"] and res.positions == [58, 5]
    np.testing.assert_allclose(res.totals(), res.logits, atol=1e-4)


def test_a_result_without_its_tensors_or_of_another_version_is_named(tiny_lm, tmp_path):
    path = run_dla(tiny_lm, "abcabc", ["a"], top=1).save(tmp_path)
    doc = json.loads(path.read_text())
    doc["format_version"] = 99
    (tmp_path / "v.dla.json").write_text(json.dumps(doc))
    with pytest.raises(ResultError, match="v.dla.json"):
        DLAResult.load(tmp_path / "v.dla.json")
    (tmp_path / "dla.dla.safetensors").unlink()
    with pytest.raises(ResultError, match="dla.dla.safetensors"):
        DLAResult.load(path)
    problems = ResultsFolder.load(tmp_path).problems
    assert "dla.dla.json" in problems and "v.dla.json" in problems
