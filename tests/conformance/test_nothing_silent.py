"""Nothing silent: a capture or stats run that records nothing for a requested layer is an error.

GPT-J computes attention itself, without transformers' attention interface. It is refused up front
(library and CLI, one line naming the family); and the check after the forward pass, the safety
net for any model that slips past that refusal, is exercised by switching the refusal off.
"""

from __future__ import annotations

import shutil

import pytest
import torch

import lens
from lens import Site
from lens.errors import BackendError

IDS = torch.tensor([[0, 40, 77, 12, 99]])


@pytest.fixture(scope="module")
def gptj_folder(tmp_path_factory):
    from transformers import GPTJConfig, GPTJForCausalLM

    from lens.zoo import tiny

    config = GPTJConfig(n_embd=32, n_layer=2, n_head=4, rotary_dim=4, vocab_size=259, n_positions=64,
                        bos_token_id=0, eos_token_id=1, pad_token_id=2)
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("gptj")
    GPTJForCausalLM(config).eval().save_pretrained(folder)
    tok = tmp_path_factory.mktemp("tok")
    tiny.build_byte_tokenizer(tok)
    shutil.copytree(tok, folder, dirs_exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def gptj(gptj_folder):
    return lens.load(str(gptj_folder))


def test_pattern_capture_is_refused_up_front(gptj):
    with pytest.raises(BackendError, match=r"GPTJForCausalLM \(gptj\) computes attention without transformers' "
                                           r"attention interface"):
        lens.run(gptj, IDS, sites=[Site.PATTERN], layers=[0])


def test_stats_are_refused_up_front(gptj):
    with pytest.raises(BackendError, match="without transformers' attention interface"):
        lens.run_stats(gptj, IDS)


def test_sites_outside_attention_still_work(gptj):
    cap = lens.run(gptj, IDS, sites=[Site.Z, Site.MLP_OUT], layers=[1]).capture
    assert cap.get(Site.Z, 1).shape == (1, 4, 5, 8)
    assert cap.get(Site.MLP_OUT, 1).abs().sum() > 0


def test_capture_that_records_nothing_raises(gptj, monkeypatch):
    """With the up-front refusal switched off, the forward pass runs and the attention stack never
    sees a call: the capture must not come back empty."""
    monkeypatch.setattr("lens.attention.check_interface", lambda model: None)
    with pytest.raises(BackendError, match=r"ran but recorded nothing at pattern@0, pattern@1"):
        lens.run(gptj, IDS, sites=[Site.PATTERN], layers=[0, 1])


def test_stats_that_record_nothing_raise(gptj, monkeypatch):
    monkeypatch.setattr("lens.attention.check_interface", lambda model: None)
    with pytest.raises(BackendError, match=r"stats mode recorded nothing for layers \[0, 1\]"):
        lens.run_stats(gptj, IDS)


def test_a_capture_with_no_forward_pass_is_not_an_error(tiny_lm):
    with lens.capture(tiny_lm, sites=[Site.PATTERN], layers=[0]) as cap:
        pass
    assert cap.steps == []


def _error_lines(err: str) -> list[str]:
    """stderr without the progress lines (loading, capturing, stats over ...)."""
    return [line for line in err.splitlines()
            if line.strip() and not line.startswith(("Loading weights", "capturing", "stats over"))]


def test_cli_capture_refuses_in_one_line(cli, gptj_folder, tmp_path):
    code, out, err = cli("capture", gptj_folder, "--prompt", "hello", "--sites", "pattern", "--out", tmp_path / "c")
    assert code == 2, err
    lines = _error_lines(err)
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "GPTJForCausalLM (gptj)" in lines[0] and "attention interface" in lines[0]
    assert "a bug in attnlens" not in err
    assert not (tmp_path / "c").exists() or not any((tmp_path / "c").iterdir())


def test_cli_stats_refuses_in_one_line(cli, gptj_folder, tmp_path):
    code, out, err = cli("stats", gptj_folder, "--prompt", "hello", "--out", tmp_path / "s")
    assert code == 2, err
    lines = _error_lines(err)
    assert len(lines) == 1 and lines[0].startswith("error: ") and "GPTJForCausalLM (gptj)" in lines[0], err


@pytest.fixture(scope="module")
def jamba(tmp_path_factory):
    """A hybrid whose block 0 is a Mamba block and block 1 attention."""
    from transformers import JambaConfig, JambaForCausalLM

    from lens.zoo import tiny

    config = JambaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         intermediate_size=64, vocab_size=259, num_experts=2, attn_layer_period=2, attn_layer_offset=1,
                         expert_layer_period=2, expert_layer_offset=1, mamba_d_state=8, mamba_dt_rank=4,
                         bos_token_id=0, eos_token_id=1, pad_token_id=2)
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("jamba")
    JambaForCausalLM(config).eval().save_pretrained(folder)
    tiny.build_byte_tokenizer(folder)
    return lens.load(str(folder))


def test_hybrid_block_without_attention_is_refused_for_attention_sites(jamba):
    from lens.errors import KernelInputError, SelectionError

    with pytest.raises(SelectionError, match=r"layers \[0\] of .* have no attention: sites pattern need one of layers \[1\]"):
        lens.run(jamba, IDS, sites=[Site.PATTERN], layers=[0])
    with pytest.raises(KernelInputError, match=r"layers \[0\] have no self attention: the model has it in layers \[1\]"):
        lens.run_stats(jamba, IDS, layers=[0])


def test_hybrid_stats_default_to_the_attention_blocks(jamba):
    assert sorted(lens.run_stats(jamba, IDS).stats) == [1]


def test_hybrid_block_without_attention_gives_residual_and_mlp(jamba):
    cap = lens.run(jamba, IDS, sites=[Site.RESID_POST, Site.MLP_OUT], layers=[0, 1]).capture
    assert all(cap.get(s, layer).shape == (1, 5, 32) for s in (Site.RESID_POST, Site.MLP_OUT) for layer in (0, 1))


def test_weight_interventions_refuse_learned_sinks(tmp_path):
    """gpt-oss adds learned sinks to the softmax; a weight modifier's plain softmax would drop them."""
    from transformers import GptOssConfig, GptOssForCausalLM

    from lens.attention import modifying_weights
    from lens.zoo import tiny

    config = GptOssConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                          head_dim=8, intermediate_size=64, vocab_size=259, num_local_experts=4,
                          num_experts_per_tok=2, bos_token_id=0, eos_token_id=1, pad_token_id=2)
    torch.manual_seed(0)
    GptOssForCausalLM(config).eval().save_pretrained(tmp_path)
    tiny.build_byte_tokenizer(tmp_path)
    lm = lens.load(str(tmp_path))
    with pytest.raises(BackendError, match=r"GptOssAttention has learned attention sinks \(module.sinks\): "
                                           r"attention-weight interventions"):
        with torch.no_grad(), modifying_weights(lm, lambda layer, w: w, layers=[0]):
            lm.model(IDS)
