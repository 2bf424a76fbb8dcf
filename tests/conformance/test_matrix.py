"""The conformance matrix: every family of the table below through the public API, each capability
against an independent reference.

A tiny random model of each family (2 layers, seed 0) is saved with ``save_pretrained`` next to
the byte tokenizer and loaded with ``lens.load(folder)``. References come from a second copy of
the folder loaded by transformers itself with ``attn_implementation="eager"``: its
``output_attentions`` patterns, ``output_hidden_states`` and logits, a head zeroed by a
pre-hook on the output projection written out in the family table, and EAP's attributions
computed by hand: autograd through hand-written hooks on that projection and the embeddings. A cell passes against its
reference, or asserts the one-line refusal the table names; nothing may come back empty.

The table:
Every config has 2 layers, hidden size 32 (4 heads of 8 unless a family needs other sizes), a
259-token vocabulary (the byte tokenizer of :mod:`lens.zoo.tiny`) and special tokens 0/1/2.
``out_proj`` is the module whose input is the per-head output ``z``, written out per family as
the reference for head edits and EAP (the project finds it through :mod:`lens.adapters`; the test must not).
``expect`` maps a capability to a :class:`Refusal` (a one-line error of the project's own type
whose message contains ``words``) or a :class:`Known` failure (an xfail with its reason, strict:
it must fail); capabilities not named must pass.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field

import pytest
import torch

import lens
from attnlens.formats import errors as project_errors
from lens import Edit, HeadRef, Site, Zero

COMMON = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
              vocab_size=259, max_position_embeddings=128, bos_token_id=0, eos_token_id=1, pad_token_id=2)

CAPABILITIES = ("pattern", "logits", "sites", "stats", "head_edit", "eap")


@dataclass(frozen=True)
class Refusal:
    """The capability must raise the project's error (``error`` a class name in formats.errors) in one line
    that contains every word of ``words``."""

    error: str
    words: tuple[str, ...]


@dataclass(frozen=True)
class Known:
    """A known failure, kept visible as a strict xfail until it is fixed."""

    reason: str


@dataclass(frozen=True)
class Family:
    name: str  # as the issue names it
    model_type: str
    config: dict = field(default_factory=dict)
    out_proj: str = "model.layers.{layer}.self_attn.o_proj"
    attention_layers: tuple[int, ...] = (0, 1)  # hybrids: the blocks that have attention
    window: tuple[int | None, tuple[int, ...]] = (None, ())  # the facts' (sliding_window, local_layers)
    expect: dict = field(default_factory=dict)

    @property
    def kwargs(self) -> dict:
        return {**COMMON, **self.config}


_NO_INTERFACE = Refusal("BackendError", ("without transformers' attention interface",))
# patterns come from their own attention modules, q/k/v from their projections, stats beside their attention
_BYPASS: dict = {}
# EAP's graph is linear in the senders' outputs: families that break that refuse in one line
_EAP_HYBRID = Refusal("BackendError", ("EAP cannot score", "have no attention"))
_EAP_MIXER = Refusal("BackendError", ("EAP cannot score", "another mixer"))
_NO_OUT_PROJ = Refusal("BackendError", ("no output projection",))
_NO_BLOCKS = Refusal("BackendError", ("cannot find 2 transformer blocks",))
_MLA = dict(num_key_value_heads=4, kv_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=12,
            n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, first_k_dense_replace=1)

FAMILIES = [
    Family("Llama", "llama"),
    Family("Mistral", "mistral", dict(sliding_window=4), window=(4, (0, 1))),
    Family("Qwen2", "qwen2"),
    Family("Qwen3", "qwen3", dict(head_dim=8)),
    Family("Gemma", "gemma", dict(head_dim=8)),
    Family("Gemma 2", "gemma2", dict(head_dim=8), window=(4096, (0,))),
    Family("Gemma 3", "gemma3_text", dict(head_dim=8, sliding_window=4, layer_types=["sliding_attention", "full_attention"]),
           window=(4, (0,))),
    Family("Phi", "phi", out_proj="model.layers.{layer}.self_attn.dense"),
    Family("Phi-3", "phi3"),
    Family("OLMo2", "olmo2"),
    Family("GPT-2", "gpt2", out_proj="transformer.h.{layer}.attn.c_proj"),
    Family("GPT-NeoX", "gpt_neox", out_proj="gpt_neox.layers.{layer}.attention.dense"),
    Family("Mixtral", "mixtral", dict(num_local_experts=4, num_experts_per_tok=2)),
    Family("Qwen3-MoE", "qwen3_moe", dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, head_dim=8)),
    Family("Cohere", "cohere"),
    Family("StableLM", "stablelm"),
    Family("StarCoder2", "starcoder2"),
    Family("Granite", "granite"),
    Family("SmolLM3", "smollm3"),
    Family("GPT-BigCode", "gpt_bigcode", out_proj="transformer.h.{layer}.attn.c_proj"),
    Family("GPT-J", "gptj", dict(rotary_dim=4), out_proj="transformer.h.{layer}.attn.out_proj"),  # its own _attn
    Family("Falcon", "falcon", out_proj="transformer.h.{layer}.self_attention.dense", expect=_BYPASS),
    Family("BLOOM", "bloom", out_proj="transformer.h.{layer}.self_attention.dense",
           expect=_BYPASS),  # EAP: the embeddings' write through their norm, linearised
    Family("MPT", "mpt", out_proj="transformer.blocks.{layer}.attn.out_proj", expect=_BYPASS),
    Family("gpt-oss", "gpt_oss", dict(num_local_experts=4, num_experts_per_tok=2, head_dim=8), window=(128, (0,))),
    Family("DeepSeek-V2", "deepseek_v2", dict(_MLA, q_lora_rank=None)),
    Family("DeepSeek-V3", "deepseek_v3", dict(_MLA, q_lora_rank=16, n_group=1, topk_group=1)),
    Family("Jamba", "jamba", dict(num_experts=2, attn_layer_period=2, attn_layer_offset=1, expert_layer_period=2,
                                   expert_layer_offset=1, mamba_d_state=8, mamba_dt_rank=4), attention_layers=(1,),
           expect={"eap": _EAP_HYBRID}),
    Family("Bamba", "bamba", dict(attn_layer_indices=[1], mamba_n_heads=4, mamba_d_head=16, mamba_d_state=8,
                                   mamba_n_groups=1, mamba_chunk_size=8), attention_layers=(1,),
           expect={"eap": _EAP_HYBRID}),
    Family("OPT", "opt", dict(ffn_dim=64, word_embed_proj_dim=32), out_proj="model.decoder.layers.{layer}.self_attn.out_proj"),
    # ---- beyond the 37: every other decoder family a tiny config builds quickly ----
    # (not here: Zamba and Zamba2, whose tiny hybrid configs fail inside transformers itself: tied shared
    # blocks, a hybrid head width)
    Family("Qwen2-MoE", "qwen2_moe", dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                                          shared_expert_intermediate_size=32)),
    Family("OLMo", "olmo"),
    Family("OLMo3", "olmo3", window=(4096, (0, 1))),
    Family("OLMoE", "olmoe", dict(num_experts=4, num_experts_per_tok=2)),
    Family("Phi-MoE", "phimoe", dict(num_local_experts=4, num_experts_per_tok=2)),
    Family("GLM", "glm", dict(head_dim=8)),
    Family("GLM4", "glm4", dict(head_dim=8)),
    Family("GLM4-MoE", "glm4_moe", dict(head_dim=8, n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                                        first_k_dense_replace=1, n_group=1, topk_group=1)),
    Family("Nemotron", "nemotron", dict(head_dim=8)),
    Family("Persimmon", "persimmon", out_proj="model.layers.{layer}.self_attn.dense"),
    Family("CodeGen", "codegen", dict(rotary_dim=4), out_proj="transformer.h.{layer}.attn.out_proj"),
    Family("GPT-Neo", "gpt_neo", dict(attention_types=[[["global", "local"], 1]], window_size=4),
           out_proj="transformer.h.{layer}.attn.attention.out_proj"),
    Family("XGLM", "xglm", out_proj="model.layers.{layer}.self_attn.out_proj", expect=_BYPASS),
    Family("BioGPT", "biogpt", out_proj="biogpt.layers.{layer}.self_attn.out_proj"),
    Family("Helium", "helium", dict(head_dim=8)),
    Family("EXAONE 4", "exaone4", dict(head_dim=8), window=(4096, (0, 1))),
    Family("Ministral", "ministral", dict(head_dim=8), window=(4096, (0, 1))),
    Family("Cohere2", "cohere2", dict(sliding_window=4, layer_types=["sliding_attention", "full_attention"]),
           window=(4, (0,))),
    Family("GraniteMoE", "granitemoe", dict(num_local_experts=4, num_experts_per_tok=2)),
    Family("DBRX", "dbrx", dict(d_model=32, n_heads=4, n_layers=2, max_seq_len=128,
                                attn_config=dict(kv_n_heads=2, rope_theta=10000.0, clip_qkv=8.0), ffn_config=dict(moe_num_experts=2, moe_top_k=1,
                                                                               ffn_hidden_size=64)),
           out_proj="transformer.blocks.{layer}.norm_attn_norm.attn.out_proj"),
    Family("JetMoe", "jetmoe", dict(num_local_experts=2, num_experts_per_tok=1, kv_channels=8),  # mixture of attention heads
           expect={c: _NO_OUT_PROJ for c in ("logits", "sites", "head_edit", "eap")}),
    Family("Arcee", "arcee"),
    Family("ERNIE 4.5", "ernie4_5", dict(head_dim=8)),
    Family("ERNIE 4.5 MoE", "ernie4_5_moe", dict(head_dim=8, moe_num_experts=4, moe_k=2, moe_intermediate_size=32)),
    Family("Hunyuan dense", "hunyuan_v1_dense", dict(head_dim=8)),
    Family("Hunyuan MoE", "hunyuan_v1_moe", dict(head_dim=8, num_experts=4, moe_topk=2)),
    Family("Seed-OSS", "seed_oss", dict(head_dim=8)),
    Family("Apertus", "apertus"),
    Family("dots1", "dots1", dict(n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                                  first_k_dense_replace=1, n_group=1, topk_group=1, n_shared_experts=1,
                                  routed_scaling_factor=1.0)),
    Family("BitNet", "bitnet"),
    Family("Doge", "doge"),  # a learned dynamic mask: its finite part goes to stats as a score bias
    Family("MiniMax", "minimax", dict(num_local_experts=2, num_experts_per_tok=1, head_dim=8,
                                      layer_types=["linear_attention", "full_attention"]), attention_layers=(1,),
           expect={"eap": _EAP_HYBRID}),
    Family("Falcon-H1", "falcon_h1", dict(head_dim=8, mamba_d_ssm=32, mamba_n_heads=4, mamba_d_head=8,
                                          mamba_d_state=8, mamba_chunk_size=8), expect={"eap": _EAP_MIXER}),
    Family("GraniteMoE-hybrid", "granitemoehybrid", dict(num_local_experts=2, num_experts_per_tok=1,
                                                         layer_types=["mamba", "attention"], mamba_d_state=8,
                                                         mamba_n_heads=4, mamba_d_head=16, mamba_chunk_size=8),
           attention_layers=(1,), expect={"eap": _EAP_HYBRID}),
    Family("LFM2", "lfm2", dict(layer_types=["conv", "full_attention"]), attention_layers=(1,),
           out_proj="model.layers.{layer}.self_attn.out_proj", expect={"eap": _EAP_HYBRID}),
    Family("Qwen3-Next", "qwen3_next", dict(head_dim=8, layer_types=["linear_attention", "full_attention"],
                                            num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                                            shared_expert_intermediate_size=32, linear_num_key_heads=2,
                                            linear_num_value_heads=4, linear_key_head_dim=8, linear_value_head_dim=8),
           attention_layers=(1,), expect={"eap": _EAP_HYBRID}),
    Family("RecurrentGemma", "recurrent_gemma", dict(head_dim=8, block_types=["recurrent", "attention"],
                                                     lru_width=32, attention_window_size=4), attention_layers=(1,),
           window=(4, (1,)), out_proj="model.layers.{layer}.temporal_block.o_proj",
           expect={**{c: _NO_BLOCKS for c in ("pattern", "logits", "sites", "head_edit", "eap")},
                   "stats": Refusal("KernelInputError", ("cannot find 2 transformer blocks",))}),
]


# ---- the cells ---------------------------------------------------------------------------
ATOL = 2e-5  # float32, two layers of width 32: matches are ~1e-7, real mismatches are > 1e-3
IDS = torch.tensor([[0, 40, 77, 12, 99, 40, 77, 150, 33, 8]])  # bos + 9 byte tokens, "40 77" repeated


class Built:
    """One family's folder loaded through lens, and the eager reference's outputs on ``IDS``."""

    def __init__(self, family: Family, folder, lm, ref):
        self.family, self.folder, self.lm, self.ref_model = family, folder, lm, ref
        with torch.no_grad():
            out = ref(IDS, output_attentions=True, output_hidden_states=True)
        self.attentions = out.attentions
        self.hidden = out.hidden_states
        self.logits = out.logits

    def pattern(self, layer: int) -> torch.Tensor:
        """The eager pattern of block ``layer`` (hybrids return one per attention block, in order)."""
        layers = self.family.attention_layers
        return self.attentions[layers.index(layer) if len(self.attentions) == len(layers) else layer]

    def out_proj(self, layer: int) -> torch.nn.Module:
        return self.ref_model.get_submodule(self.family.out_proj.format(layer=layer))


@pytest.fixture(scope="module", params=FAMILIES, ids=[f.model_type for f in FAMILIES])
def built(request, tmp_path_factory, tokenizer_folder):
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    family: Family = request.param
    hf_logging.set_verbosity_error()
    config = AutoConfig.for_model(family.model_type, **family.kwargs)
    if hasattr(config, "num_key_value_heads") and "num_key_value_heads" not in family.config:
        config.num_key_value_heads = 2  # grouped-query attention where the family has it (never on GPT-2)
    state = torch.random.get_rng_state()
    torch.manual_seed(0)
    try:
        model = AutoModelForCausalLM.from_config(config).eval()
    finally:
        torch.random.set_rng_state(state)
    folder = tmp_path_factory.mktemp(family.model_type)
    model.save_pretrained(folder)
    shutil.copytree(tokenizer_folder, folder, dirs_exist_ok=True)
    lm = lens.load(str(folder))
    ref = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
    return Built(family, folder, lm, ref)


def _cell(request, built: Built, capability: str, run) -> None:
    """Run ``run()`` as the family's table says: pass, the named refusal, or a strict xfail."""
    assert capability in CAPABILITIES
    expect = built.family.expect.get(capability)
    if isinstance(expect, Known):
        request.applymarker(pytest.mark.xfail(reason=expect.reason, strict=True))
    if not isinstance(expect, Refusal):
        run()
        return
    with pytest.raises(project_errors.AttnlensError) as info:
        run()
    message = str(info.value)
    assert type(info.value).__name__ == expect.error, message
    assert "\n" not in message, message
    assert all(w in message for w in expect.words), message
    assert type(built.lm.model).__name__ in message or built.family.model_type in message, message
    request.node.user_properties.append(("refusal", message))  # for the generated table (conftest.py)


def _close(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)}, reference {tuple(want.shape)}"
    diff = (got.float() - want.float()).abs().max().item()
    assert diff < ATOL, f"{what}: off by {diff:.2e} from the reference"


_SELF_SITES = (Site.PATTERN, Site.Q, Site.K, Site.V, Site.Z, Site.RESID_PRE, Site.RESID_POST, Site.ATTN_OUT,
               Site.MLP_OUT)
_OUTSIDE_SITES = (Site.Z, Site.RESID_PRE, Site.RESID_POST, Site.ATTN_OUT, Site.MLP_OUT)  # hooked outside attention


def test_facts(built):
    """The facts come from the loaded model: layers, heads, widths, and the sliding window wherever it applies."""
    facts, family = built.lm.facts, built.family
    assert (facts.n_layers, facts.n_heads, facts.d_model, facts.vocab_size) == (2, 4, 32, 259)
    assert facts.causal
    assert (facts.sliding_window, tuple(facts.local_layers)) == family.window


def test_pattern(request, built):
    """Every attention layer's captured pattern equals the eager model's ``output_attentions``."""
    layers = list(built.family.attention_layers)

    def run():
        cap = lens.run(built.lm, IDS, sites=[Site.PATTERN], layers=layers).capture
        for layer in layers:
            assert cap.steps and Site.PATTERN in {k.site for k in cap.steps[0]}, "empty capture"
            _close(cap.pattern(layer), built.pattern(layer), f"pattern of layer {layer}")

    _cell(request, built, "pattern", run)


def test_logits(request, built):
    """Capturing (one layer's pattern, or every site of every layer) leaves the logits as they were."""
    layers = list(built.family.attention_layers)
    with torch.no_grad():
        plain = built.lm.model(IDS).logits
    _close(plain, built.logits, "logits of the loaded model")

    # a family that refuses q/k/v is checked with the sites it gives
    sites = (Site.PATTERN, *_OUTSIDE_SITES) if isinstance(built.family.expect.get("sites"), Refusal) else _SELF_SITES

    def run():
        if not isinstance(built.family.expect.get("pattern"), Refusal):
            one = lens.run(built.lm, IDS, sites=[Site.PATTERN], layers=layers[:1])
            _close(one.logits, plain, f"logits while capturing layer {layers[0]}'s pattern")
        every = lens.run(built.lm, IDS, sites=list(sites), layers=layers)
        assert len(every.capture.steps[0]) == len(sites) * len(layers), "a site came back empty"
        _close(every.logits, plain, f"logits while capturing {', '.join(s.value for s in sites)}")

    _cell(request, built, "logits", run)


def test_sites(request, built):
    """q/k/v/z, residual, attention and MLP outputs are all there in their documented shapes; the
    residual entering each block is the eager model's hidden state."""
    facts = built.lm.facts
    layers = list(built.family.attention_layers)
    pos = IDS.shape[1]
    shapes = {Site.Q: (1, facts.n_heads, pos, facts.d_head), Site.K: (1, facts.n_kv_heads, pos, facts.d_head),
              Site.V: (1, facts.n_kv_heads, pos, facts.d_value), Site.Z: (1, facts.n_heads, pos, facts.d_value),
              Site.PATTERN: (1, facts.n_heads, pos, pos)}

    def run():
        cap = lens.run(built.lm, IDS, sites=list(_SELF_SITES), layers=layers).capture
        for layer in layers:
            for site in _SELF_SITES:
                got = cap.get(site, layer)
                assert tuple(got.shape) == shapes.get(site, (1, pos, facts.d_model)), \
                    f"{site.value}@{layer}: shape {tuple(got.shape)}"
                assert torch.isfinite(got).all() and got.abs().sum() > 0, f"{site.value}@{layer} is empty or zero"
            _close(cap.get(Site.RESID_PRE, layer), built.hidden[layer], f"resid_pre of layer {layer}")

    _cell(request, built, "sites", run)


def test_stats(request, built):
    """Stats mode's per-head statistics equal those of the eager patterns, and the logits do not move."""
    from attnlens.kernels import StatsSpec

    layers = list(built.family.attention_layers)

    def run():
        got = lens.run_stats(built.lm, IDS, spec=StatsSpec(sink_tokens=1), layers=layers)
        assert sorted(got.stats) == layers, f"stats for layers {sorted(got.stats)}, asked for {layers}"
        _close(got.logits, built.logits, "logits in stats mode")
        for layer in layers:
            p = built.pattern(layer).float()
            s = got.stats[layer]
            _close(s.max_weight, p.amax(-1), f"max_weight of layer {layer}")
            _close(s.sink_mass, p[..., 0], f"sink_mass of layer {layer}")
            entropy = -(p * p.clamp_min(1e-30).log()).sum(-1)
            _close(s.entropy, entropy, f"entropy of layer {layer}")

    _cell(request, built, "stats", run)


def test_head_edit(request, built):
    """Zeroing a head with ``Edit(HeadRef, Zero())``, and through the hook engine at ``Where.Z``, equals
    zeroing its slice of the output projection's input with a hand-written pre-hook on the reference model;
    and it does change the logits."""
    layer = built.family.attention_layers[-1]
    head = 1

    def zero_head(module, args):
        x = args[0].clone()
        width = x.shape[-1] // built.lm.facts.n_heads
        x[..., head * width:(head + 1) * width] = 0
        return (x, *args[1:])

    want = None
    if not isinstance(built.family.expect.get("head_edit"), Refusal):
        handle = built.out_proj(layer).register_forward_pre_hook(zero_head)
        try:
            with torch.no_grad():
                want = built.ref_model(IDS).logits
        finally:
            handle.remove()
        assert (want - built.logits).abs().max() > 1e-4, "the reference edit changes nothing: a test that cannot fail"

    def zero(z):  # [batch, pos, head, d_head], as the hook engine hands z over
        z = z.clone()
        z[:, :, head] = 0
        return z

    def run():
        got = lens.run(built.lm, IDS, sites=[Site.RESID_POST], layers=[layer],
                       edits=[Edit(HeadRef(layer, head), Zero())])
        _close(got.logits, want, f"logits with L{layer}H{head} zeroed")
        with torch.no_grad(), lens.hooked(built.lm, {lens.Point(lens.Where.Z, layer): zero}):
            engine = built.lm.model(IDS).logits
        _close(engine, want, f"logits with L{layer}H{head} zeroed through lens.hooked")

    _cell(request, built, "head_edit", run)


def _eap_reference(built: Built, corrupted: torch.Tensor, answer: int, distractor: int):
    """By hand on the eager reference: per attention layer ``[head]`` the first-order effect
    sum_pos (z_corrupted - z_clean) . d metric / d z (metric: logit(answer) - logit(distractor) at the
    last position, gradient on the clean run), and the same for the embeddings' output."""
    model, layers = built.ref_model, built.family.attention_layers
    n_heads = built.lm.facts.n_heads
    runs: dict[str, dict] = {"clean": {}, "corrupted": {}}

    def keep(run: dict, key):
        def hook(module, args, out=None):
            t = args[0] if out is None else out
            if t.requires_grad:
                t.retain_grad()
            run[key] = t
        return hook

    for name, ids in (("clean", IDS), ("corrupted", corrupted)):
        run = runs[name]
        handles = [built.out_proj(layer).register_forward_pre_hook(keep(run, layer)) for layer in layers]
        handles.append(model.get_input_embeddings().register_forward_hook(keep(run, "embed")))
        try:
            with torch.enable_grad():
                logits = model(ids).logits[0, -1]
                if name == "clean":
                    (logits[answer] - logits[distractor]).backward()
        finally:
            for h in handles:
                h.remove()
            model.zero_grad(set_to_none=True)
    clean, corr = runs["clean"], runs["corrupted"]
    heads = {}
    for layer in layers:
        per = ((corr[layer] - clean[layer]).detach() * clean[layer].grad)  # [1, pos, head * d_head]
        heads[layer] = per.view(*per.shape[:2], n_heads, -1).sum((0, 1, 3))
    embed = ((corr["embed"] - clean["embed"]).detach() * clean["embed"].grad).sum()
    return heads, embed


def _close_rel(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    got, want = torch.as_tensor(got, dtype=torch.float64), torch.as_tensor(want, dtype=torch.float64)
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)}, reference {tuple(want.shape)}"
    scale = max(1.0, want.abs().max().item())
    diff = (got - want).abs().max().item()
    assert diff < 1e-4 * scale, f"{what}: off by {diff:.2e} from the reference (scale {scale:.2g})"


def test_eap(request, built):
    """EAP on a toy metric (the logit difference of two fixed tokens at the last position, one token of the
    prompt corrupted): every head's node score equals the hand-computed gradient . (corrupted - clean) at
    its output projection's input; the embeddings' edges add up to the same estimate at the embeddings, and
    each head's outgoing edges add up to its node score (its write to the residual stream is linear)."""
    import numpy as np

    from attnlens.analyses.circuits.eap import edge_attribution
    from attnlens.analyses.circuits.tasks import EncodedTask, TaskBatch
    from attnlens.formats.circuit import Node, NodeKind

    corrupted = IDS.clone()
    corrupted[0, 3] = 120
    answer, distractor = 40, 77
    if not isinstance(built.family.expect.get("eap"), Refusal):  # a refused family may have no out_proj to hook
        heads, embed = _eap_reference(built, corrupted, answer, distractor)
        assert max(h.abs().max().item() for h in heads.values()) > 1e-5, "the reference attributes nothing"

    def run():
        batch = TaskBatch(IDS, corrupted, torch.tensor([answer]), torch.tensor([distractor]), [])
        got = edge_attribution(built.lm, EncodedTask("toy", [batch], []), "logit-diff")
        rows = {n: i for i, n in enumerate(got.senders)}
        for layer in built.family.attention_layers:
            _close_rel(got.head_scores[layer], heads[layer], f"EAP head scores of layer {layer}")
            for h in range(built.lm.facts.n_heads):
                edges = np.nansum(got.scores[rows[Node.of(HeadRef(layer, h))]])
                _close_rel(edges, got.head_scores[layer, h], f"L{layer}H{h}'s outgoing edges against its node score")
        _close_rel(np.nansum(got.scores[rows[Node(NodeKind.EMBED)]]), embed, "the embeddings' edges")

    _cell(request, built, "eap", run)
