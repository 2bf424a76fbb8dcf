"""Nothing silent: a capture or stats run that records nothing for a requested layer is an error.

MPT computes attention itself, without transformers' attention interface (and without an ``_attn``
method the stack can wrap, as it does for GPT-J, CodeGen and GPT-Neo). Its pattern is taken from the
weights its attention modules return (library and CLI, against its own eager ``output_attentions``),
q/k/v from its projections and stats beside its attention (test_projected_qkv.py); weight edits are
refused up front (one line naming the family). The check after the forward pass,
the safety net for any model that slips past a refusal or whose attention returns no weights, is
exercised by switching the refusal off and dropping the weights.
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


@pytest.fixture(scope="module")
def mpt_folder(tmp_path_factory):
    from transformers import MptConfig, MptForCausalLM

    from lens.zoo import tiny

    config = MptConfig(d_model=32, n_layers=2, n_heads=4, expansion_ratio=2, max_seq_len=64, vocab_size=259,
                       bos_token_id=0, eos_token_id=1, pad_token_id=2)
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("mpt")
    MptForCausalLM(config).eval().save_pretrained(folder)
    tiny.build_byte_tokenizer(folder)
    return folder


@pytest.fixture(scope="module")
def mpt(mpt_folder):
    return lens.load(str(mpt_folder))


def test_weight_edits_are_refused_up_front(mpt):
    from lens.attention import modifying_weights

    with pytest.raises(BackendError, match=r"MptForCausalLM \(mpt\) computes attention without transformers' "
                                           r"attention interface: attention-weight edits"):
        with modifying_weights(mpt, lambda layer, w: w, layers=[0]):
            pass


def test_pattern_is_the_models_own_and_logits_do_not_move(mpt, mpt_folder):
    from transformers import AutoModelForCausalLM

    ref = AutoModelForCausalLM.from_pretrained(mpt_folder, attn_implementation="eager").eval()
    with torch.no_grad():
        want = ref(IDS, output_attentions=True)
        plain = mpt.model(IDS).logits
    got = lens.run(mpt, IDS, sites=[Site.PATTERN], layers=[1], heads=[0, 2])
    assert [k.layer for k in got.capture.steps[0]] == [1]  # the other layer's weights are dropped
    assert torch.allclose(got.capture.pattern(1), want.attentions[1][:, [0, 2]], atol=1e-6)
    assert torch.equal(got.logits, plain)


def test_stats_come_from_beside_its_attention(mpt):
    """MPT's statistics are computed beside its own attention (test_projected_qkv.py checks their values); a
    bare transformers model, which has no facts to split its projections by, is refused in one line."""
    assert sorted(lens.run_stats(mpt, IDS).stats) == [0, 1]
    from attnlens.kernels import StatsSpec
    from lens.recording.stats import stats_mode

    with pytest.raises(BackendError, match="without transformers' attention interface") as info:
        with stats_mode(mpt.model, StatsSpec()):
            pass
    assert "\n" not in str(info.value)


def test_sites_outside_attention_still_work(mpt):
    cap = lens.run(mpt, IDS, sites=[Site.Z, Site.MLP_OUT], layers=[1]).capture
    assert cap.get(Site.Z, 1).shape == (1, 4, 5, 8)
    assert cap.get(Site.MLP_OUT, 1).abs().sum() > 0


def test_capture_that_records_nothing_raises(mpt, monkeypatch):
    """Taken for a model the attention stack reaches, with the up-front refusal switched off, the
    forward pass runs and the stack never sees a call: the capture must not come back empty."""
    monkeypatch.setattr("lens.recording.native.reaches_stack", lambda model: True)
    monkeypatch.setattr("lens.attention.check_interface", lambda model: None)
    with pytest.raises(BackendError, match=r"ran but recorded nothing at q@0, q@1"):
        lens.run(mpt, IDS, sites=[Site.Q], layers=[0, 1])


def test_attention_that_returns_no_weights_raises(mpt):
    """A module that computes attention in its own code but returns no weights for layer 1: the
    pattern capture must say so rather than come back without it."""
    attention = mpt.model.transformer.blocks[1].attn
    handle = attention.register_forward_hook(lambda m, a, out: (out[0], None))  # runs before the capture's hook
    try:
        with pytest.raises(BackendError, match=r"MptForCausalLM \(mpt\) ran but recorded nothing at pattern@1"):
            lens.run(mpt, IDS, sites=[Site.PATTERN], layers=[0, 1])
    finally:
        handle.remove()


def test_stats_that_record_nothing_raise(mpt, monkeypatch):
    """Taken for a model the stack reaches, with the refusal off: the stack never sees a call."""
    monkeypatch.setattr("lens.recording.stats.reaches_stack", lambda model: True)
    monkeypatch.setattr("lens.attention.check_interface", lambda model: None)
    with pytest.raises(BackendError, match=r"stats mode recorded nothing for layers \[0, 1\]"):
        lens.run_stats(mpt, IDS)


def test_a_capture_with_no_forward_pass_is_not_an_error(tiny_lm):
    with lens.capture(tiny_lm, sites=[Site.PATTERN], layers=[0]) as cap:
        pass
    assert cap.steps == []


def _error_lines(err: str) -> list[str]:
    """stderr without the progress lines (loading, capturing, stats over ...)."""
    return [line for line in err.splitlines()
            if line.strip() and not line.startswith(("Loading weights", "capturing", "stats over"))]


def test_cli_capture_writes_the_pattern(cli, mpt_folder, tmp_path):
    from transformers import AutoModelForCausalLM

    from lens.recording.record import Capture

    code, out, err = cli("capture", mpt_folder, "--prompt", "hello", "--sites", "pattern", "--out", tmp_path / "c")
    assert code == 0, err
    cap = Capture.load(tmp_path / "c" / "000")
    assert [(k.site, k.layer) for k in cap.steps[0]] == [(Site.PATTERN, 0), (Site.PATTERN, 1)]
    ids = torch.tensor(cap.meta.token_ids)
    ref = AutoModelForCausalLM.from_pretrained(mpt_folder, attn_implementation="eager").eval()
    with torch.no_grad():
        want = ref(ids, output_attentions=True).attentions
    for layer in (0, 1):
        assert torch.allclose(cap.pattern(layer), want[layer], atol=1e-6)


def test_cli_capture_writes_q_from_the_projections(cli, mpt_folder, tmp_path):
    from lens.recording.record import Capture

    code, out, err = cli("capture", mpt_folder, "--prompt", "hello", "--sites", "pattern,q", "--out", tmp_path / "c")
    assert code == 0, err
    cap = Capture.load(tmp_path / "c" / "000")
    assert cap.get(Site.Q, 1).shape[:2] == (1, 4) and cap.get(Site.Q, 1).abs().sum() > 0


def test_cli_stats_writes_the_run(cli, mpt_folder, tmp_path):
    from attnlens.formats.stats_run import StatsFile

    code, out, err = cli("stats", mpt_folder, "--prompt", "hello", "--out", tmp_path / "s")
    assert code == 0, err
    assert StatsFile.load(tmp_path / "s").layers == [0, 1]


def test_stats_beside_attention_refuse_triton_in_one_line(mpt):
    from attnlens.kernels import StatsSpec
    from lens.errors import KernelInputError
    from lens.recording.stats import stats_mode

    with pytest.raises(KernelInputError, match=r"backend='triton': MptForCausalLM \(mpt\) computes attention "
                                               "outside") as info:
        with stats_mode(mpt, StatsSpec(), backend="triton"):
            pass
    assert "\n" not in str(info.value)


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


def test_falcon_alibi_pattern_is_the_one_its_run_computes(tmp_path):
    """Falcon with ALiBi under SDPA: transformers 5.23's eager branch adds the bias a second time
    (its SDPA mask already holds it), so its ``output_attentions`` disagree with its own logits.
    The captured pattern is softmax((q k^T + alibi) / sqrt(d) + causal), written out here from the
    layer's projections, and capturing it leaves the logits as they were."""
    import math

    from transformers import FalconConfig, FalconForCausalLM
    from transformers.models.falcon.modeling_falcon import build_alibi_tensor

    from lens.zoo import tiny

    config = FalconConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, alibi=True, vocab_size=259,
                          bos_token_id=0, eos_token_id=1, pad_token_id=2)
    torch.manual_seed(0)
    FalconForCausalLM(config).eval().save_pretrained(tmp_path)
    tiny.build_byte_tokenizer(tmp_path)
    lm = lens.load(str(tmp_path))
    model, pos = lm.model, IDS.shape[1]
    attention = model.transformer.h[0].self_attention
    with torch.no_grad():
        plain = model(IDS).logits
        q, k, _ = attention._split_heads(attention.query_key_value(
            model.transformer.h[0].input_layernorm(model.transformer.word_embeddings(IDS))))
        scores = q.transpose(1, 2) @ k.transpose(1, 2).transpose(-1, -2)  # [1, head, q, k] (one shared k head)
        alibi = build_alibi_tensor(torch.ones(1, pos, dtype=torch.long), 4, torch.float32).view(1, 4, 1, pos)
        causal = torch.full((pos, pos), float("-inf")).triu(1)
        want = torch.softmax((scores + alibi) / math.sqrt(8) + causal, dim=-1)
    got = lens.run(lm, IDS, sites=[Site.PATTERN], layers=[0])
    assert torch.allclose(got.capture.pattern(0), want, atol=1e-6)
    assert torch.allclose(got.logits, plain, atol=1e-6)


def test_edge_level_evaluation_refuses_parallel_blocks(gptj):
    """GPT-J runs attention and MLP side by side: EAP scores it (the matrix checks it), but edge patching,
    which has each MLP read its layer's heads, refuses in one line instead of patching the wrong stream."""
    import numpy as np

    from attnlens.analyses.circuits.ablation import prepare
    from attnlens.analyses.circuits.evaluation import edge_level_logits
    from attnlens.analyses.circuits.tasks import EncodedTask, TaskBatch, TaskError

    corrupted = IDS.clone()
    corrupted[0, 2] = 120
    enc = EncodedTask("toy", [TaskBatch(IDS, corrupted, torch.tensor([40]), torch.tensor([77]), [])], [])
    ctx = prepare(gptj, enc, "patch", "logit-diff", residuals=True)
    with pytest.raises(TaskError, match="edge-level evaluation cannot run on GPTJForCausalLM: its blocks run "
                                        "attention and MLP side by side") as info:
        edge_level_logits(ctx, 0, np.ones((1, 11, 27), dtype=bool))
    assert "\n" not in str(info.value)


def test_gptj_qkv_and_stats_come_through_its_own_attn(gptj, gptj_folder):
    """GPT-J computes attention in its ``_attn``: the stack wraps that method, so q/k (after its rotary),
    the pattern and stats come from the same call, and the method is the class's own again afterwards."""
    from transformers import AutoModelForCausalLM

    ref = AutoModelForCausalLM.from_pretrained(gptj_folder, attn_implementation="eager").eval()
    with torch.no_grad():
        want = ref(IDS, output_attentions=True).attentions[1]
    cap = lens.run(gptj, IDS, sites=[Site.Q, Site.K, Site.PATTERN], layers=[1]).capture
    scores = cap.get(Site.Q, 1) @ cap.get(Site.K, 1).transpose(-1, -2) / 8 ** 0.5
    causal = torch.full((5, 5), float("-inf")).triu(1)
    assert torch.allclose(torch.softmax(scores + causal, -1), want, atol=1e-5)  # q and k are the ones it scores
    assert torch.allclose(cap.pattern(1), want, atol=1e-6)
    stats = lens.run_stats(gptj, IDS, layers=[1]).stats[1]
    assert torch.allclose(stats.max_weight, want.amax(-1), atol=1e-5)
    assert all("_attn" not in vars(block.attn) for block in gptj.model.transformer.h)
