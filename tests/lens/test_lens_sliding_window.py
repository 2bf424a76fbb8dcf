"""Sliding-window layers (Gemma 3): facts say which layers are local; captured patterns and stats mode
(which runs them through its explicit-mask fallback) agree, and no local query sees past its window."""

from __future__ import annotations

import pytest
import torch

import lens
from attnlens.kernels import StatsSpec
from lens import Site
from lens.loaded import LoadedModel
from lens.zoo._facts import text_facts


@pytest.fixture(scope="module")
def tiny_gemma():
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    cfg = Gemma3TextConfig(vocab_size=259, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                           num_attention_heads=4, num_key_value_heads=1, head_dim=16, sliding_window=4,
                           layer_types=["sliding_attention", "sliding_attention", "full_attention"],
                           max_position_embeddings=256)
    torch.manual_seed(0)
    model = Gemma3ForCausalLM(cfg).eval()
    return LoadedModel(model=model, tokenizer=lens.load("tiny-llama").tokenizer,
                       facts=text_facts(model.config, name="tiny-gemma3", architecture="Gemma3ForCausalLM"))


def test_facts_name_the_local_layers(tiny_gemma):
    f = tiny_gemma.facts
    assert f.local_layers == (0, 1) and f.sliding_window == 4 and f.window_of(0) == 4 and f.window_of(2) is None


def test_patterns_and_stats_agree_on_local_and_global_layers(tiny_gemma):
    ids = torch.randint(3, 250, (1, 12), generator=torch.Generator().manual_seed(1))
    cap = lens.run(tiny_gemma, ids, sites=[Site.PATTERN]).capture
    p0 = cap.pattern(0)[0]
    keys, q = torch.arange(12), torch.arange(12)[:, None]
    outside = keys[None] <= q - 4  # a local query sees its 4 most recent keys only
    assert float(p0[:, outside].abs().max()) == 0 and float(cap.pattern(2)[0][:, outside].sum()) > 0
    with torch.no_grad(), lens.stats_mode(tiny_gemma, StatsSpec(sink_tokens=1, window=4)) as rec:
        logits = tiny_gemma.model(ids).logits
    assert rec.fallback_calls == 2  # the two sliding-window layers ran the explicit-mask path
    for layer in range(3):
        p = cap.pattern(layer).double()
        entropy = -torch.special.xlogy(p, p).sum(-1)
        torch.testing.assert_close(rec.stats[layer][0].entropy.double(), entropy, atol=1e-4, rtol=0)
    torch.testing.assert_close(logits, lens.run(tiny_gemma, ids, sites=[Site.Z], layers=[0]).logits, atol=1e-4, rtol=0)


@pytest.mark.slow
def test_minilm_scan_runs_offline(cli, tmp_path):
    code, _, err = cli("scan", "minilm-l6", "--captures", "1", "--out", tmp_path / "s")
    assert code == 0, err
    from attnlens.formats import ResultsFolder

    f = ResultsFolder.load(tmp_path / "s")
    assert {"sinks.first_token_mass", "taxonomy.previous_token", "summary.entropy"} <= set(f.results)
    assert "retrieval.retrieval_score" not in f.results and not f.problems  # NIAH needs a causal model
