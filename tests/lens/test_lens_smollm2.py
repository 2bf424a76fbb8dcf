"""Golden behaviour of the embedded default model (slow tier; CI runs it too)."""

import json
import sys

import pytest
import torch

import lens
from lens import Site
from lens.cli import main

pytestmark = pytest.mark.slow

FILLER = ("The grass is green and the sky is blue. The sun is bright and the day is warm. "
          "Birds sing in the trees while people walk along the river. ")


def test_facts_match_the_published_architecture(smollm2):
    f = smollm2.facts
    assert (f.n_layers, f.n_heads, f.n_kv_heads, f.d_head, f.d_model, f.context_length) == (30, 9, 3, 64, 576, 8192)
    assert f.weights_sha256 and len(f.weights_sha256) == 64


def test_cli_answers_paris(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["lens", "generate", "smollm2-135m", "--prompt",
                                      "What is the capital of France?", "--max-new-tokens", "12", "--json"])
    with pytest.raises(SystemExit) as e:
        main()
    assert e.value.code in (0, None)
    answer = json.loads(capsys.readouterr().out)["answer"]
    assert "Paris" in answer


def test_copies_a_code_back_from_a_haystack(smollm2):
    prompt = FILLER * 6 + "The secret code is 48213. " + FILLER * 6 + "\nWhat is the secret code? Answer with the number only."
    assert 400 < smollm2.encode(prompt, chat=True).shape[1] < 500
    assert "48213" in smollm2.generate(prompt, max_new_tokens=12)


def test_patterns_equal_output_attentions(smollm2):
    ids = smollm2.encode("When Mary and John went to the store, John gave a drink to")
    smollm2.model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            ref = smollm2.model(ids, output_attentions=True)
    finally:
        smollm2.model.set_attn_implementation("sdpa")
    result = lens.run(smollm2, ids, sites=[Site.PATTERN])
    assert smollm2.tokenizer.decode(result.logits[0, -1].argmax()) == " Mary"
    for layer in range(30):
        torch.testing.assert_close(result.capture.pattern(layer), ref.attentions[layer], atol=1e-5, rtol=0)


@pytest.mark.parametrize("backend", ["transformer_lens", "nnsight"])
def test_backends_agree_on_smollm2(smollm2, backend):
    ids = smollm2.encode("The Eiffel Tower is located in the city of")
    layers = [0, 3, 15, 29]
    # A capture of some layers runs eager attention in those and SDPA in the others (whose logits differ
    # from eager by ~2e-5), as the nnsight backend does; the bridge runs eager everywhere, so its reference
    # captures every layer's pattern.
    ref = lens.run(smollm2, ids, sites=[Site.PATTERN, Site.Z], layers=None if backend == "transformer_lens" else layers)
    got = lens.run(smollm2, ids, sites=[Site.PATTERN, Site.Z], layers=layers, backend=backend)
    torch.testing.assert_close(got.logits, ref.logits, atol=1e-5, rtol=0)
    for key, t in got.capture.steps[0].items():
        torch.testing.assert_close(t, ref.capture.steps[0][key], atol=1e-5, rtol=0, msg=str(key))


def test_layer_3_has_first_token_sinks(smollm2):
    pattern = lens.run(smollm2, "When Mary and John went to the store, John gave a drink to",
                       layers=[3]).capture.pattern(3)[0]
    first_token_mass = pattern[:, 1:, 0].mean(-1)  # [head], queries after the first
    assert first_token_mass.max() > 0.5
    assert first_token_mass[5] > 0.45
