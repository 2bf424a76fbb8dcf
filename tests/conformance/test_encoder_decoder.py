"""Text encoder-decoders (T5, BART and their relatives) in the conformance matrix: the encoder, the
decoder and the cross-attention, each against the eager model's own outputs.

A tiny random model of each family (2 encoder and 2 decoder layers, width 32, 4 heads, seed 0) is
saved with the byte tokenizer and loaded with ``lens.load(folder)``; the reference is a second copy
loaded by transformers with ``attn_implementation="eager"``, run on the same source and decoder ids.
Cells use the capability names of test_matrix.py, so the generated table (conftest.py) lists these
families too. ``out_proj`` is the decoder self-attention's output projection, written out per family
for the hand-written head edit.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass, field

import pytest
import torch

import lens
from attnlens.formats import CaptureFile, SourceLayout
from attnlens.formats import errors as project_errors
from lens import Edit, HeadRef, Site, Zero, seq2seq

from .test_matrix import Refusal, _close

SOURCE = torch.tensor([[0, 40, 77, 12, 99, 40, 77, 150, 1]])  # bos + 7 byte tokens + eos
TARGET = [40, 77, 12, 99, 8]  # after the decoder's start token
_BART = dict(d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4,
             encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64, vocab_size=259, bos_token_id=0,
             eos_token_id=1, pad_token_id=2, decoder_start_token_id=1, forced_eos_token_id=None)
_T5 = dict(d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4, vocab_size=259,
           decoder_start_token_id=0, pad_token_id=2, eos_token_id=1)
_BART_PROJ = "model.decoder.layers.{layer}.self_attn.out_proj"
_T5_PROJ = "decoder.block.{layer}.layer.0.SelfAttention.o"


@dataclass(frozen=True)
class Family:
    name: str
    model_type: str
    config: dict
    out_proj: str = _BART_PROJ
    expect: dict = field(default_factory=dict)


FAMILIES = [
    Family("T5", "t5", _T5, _T5_PROJ),
    Family("mT5", "mt5", _T5, _T5_PROJ),
    Family("UMT5", "umt5", _T5, _T5_PROJ),
    Family("BART", "bart", _BART),
    Family("mBART", "mbart", _BART),
    Family("PLBart", "plbart", _BART),
    Family("Pegasus", "pegasus", _BART),
    Family("Marian", "marian", dict(_BART, decoder_vocab_size=259)),
    Family("Blenderbot", "blenderbot", _BART),
    Family("Blenderbot-small", "blenderbot-small", _BART),
    Family("M2M100", "m2m_100", _BART),
    Family("MVP", "mvp", _BART),  # patterns: its own weights; q/k/v: its projections; stats beside its attention
]


class Built:
    def __init__(self, family: Family, lm, ref):
        self.family, self.lm, self.ref_model = family, lm, ref
        self.decoder = torch.tensor([seq2seq.start_ids(lm) + TARGET])
        with torch.no_grad():
            self.out = ref(input_ids=SOURCE, decoder_input_ids=self.decoder, output_attentions=True,
                           output_hidden_states=True)

    def run(self, **kw):
        return lens.run(self.lm, SOURCE, decoder_ids=self.decoder[0].tolist(), **kw)


@pytest.fixture(scope="module", params=FAMILIES, ids=[f.model_type.replace("-", "_") for f in FAMILIES])
def built(request, tmp_path_factory, tokenizer_folder):
    from transformers import AutoConfig, AutoModelForSeq2SeqLM
    from transformers.utils import logging as hf_logging

    family: Family = request.param
    hf_logging.set_verbosity_error()
    config = AutoConfig.for_model(family.model_type, **family.config)
    state = torch.random.get_rng_state()
    torch.manual_seed(0)
    try:
        model = AutoModelForSeq2SeqLM.from_config(config).eval()
    finally:
        torch.random.set_rng_state(state)
    folder = tmp_path_factory.mktemp(family.model_type)
    model.save_pretrained(folder)
    shutil.copytree(tokenizer_folder, folder, dirs_exist_ok=True)
    lm = lens.load(str(folder))
    ref = AutoModelForSeq2SeqLM.from_pretrained(folder, attn_implementation="eager").eval()
    b = Built(family, lm, ref)
    b.folder = folder
    return b


def _cell(request, built: Built, capability: str, run) -> None:
    expect = built.family.expect.get(capability)
    if not isinstance(expect, Refusal):
        run()
        return
    with pytest.raises(project_errors.AttnlensError) as info:
        run()
    message = str(info.value)
    assert type(info.value).__name__ == expect.error, message
    assert "\n" not in message and all(w in message for w in expect.words), message
    assert built.family.model_type in message, message
    request.node.user_properties.append(("refusal", message))


_PATTERNS = (Site.PATTERN, Site.ENC_PATTERN, Site.CROSS_PATTERN)
_OTHER = (Site.Q, Site.K, Site.V, Site.Z, Site.RESID_PRE, Site.RESID_POST, Site.ATTN_OUT, Site.MLP_OUT)
_OUTSIDE = _OTHER[3:]  # hooked outside the attention function


def test_facts(built):
    """Decoder facts (what selections refer to) and the encoder's, from the loaded model."""
    facts, enc = built.lm.facts, built.lm.extras["encoder"]
    assert type(built.lm.model).__name__ == type(built.ref_model).__name__
    assert (facts.n_layers, facts.encoder_layers, facts.n_heads, facts.d_head, facts.d_model, facts.vocab_size) == \
        (2, 2, 4, 8, 32, 259)
    assert facts.causal and not enc.causal and (enc.n_layers, enc.n_heads, enc.d_head) == (2, 4, 8)


def test_pattern(request, built):
    """Decoder self-attention, encoder self-attention and cross-attention equal the eager model's, with the
    encoder positions labelled by the source tokens and the decoder's by the target tokens."""
    def run():
        cap = built.run(sites=list(_PATTERNS)).capture
        want = {Site.PATTERN: built.out.decoder_attentions, Site.ENC_PATTERN: built.out.encoder_attentions,
                Site.CROSS_PATTERN: built.out.cross_attentions}
        for site, ref in want.items():
            for layer in (0, 1):
                _close(cap.get(site, layer), ref[layer], f"{site.value} of layer {layer}")
        assert isinstance(cap.meta.layout, SourceLayout)
        assert list(cap.meta.layout.token_ids) == SOURCE[0].tolist()
        assert cap.meta.token_ids == built.decoder.tolist()
        assert cap.meta.layout.tokens[1] == built.lm.tokenizer.decode([40])

    _cell(request, built, "pattern", run)


def test_logits(request, built):
    """Capturing one part of one layer, or every site, leaves the logits as the eager model's."""
    # a family that refuses q/k/v is checked with the sites it gives
    other = _OUTSIDE if isinstance(built.family.expect.get("sites"), Refusal) else _OTHER

    def run():
        for sites, layers in (([Site.CROSS_PATTERN], [1]), ([Site.ENC_PATTERN], [0]), ([Site.PATTERN], [0]),
                              ([*_PATTERNS, *other], [0, 1])):
            result = built.run(sites=sites, layers=layers)
            assert len(result.capture.steps[0]) == len(sites) * len(layers), "a site came back empty"
            _close(result.logits, built.out.logits, f"logits while capturing {[s.value for s in sites]} at {layers}")

    _cell(request, built, "logits", run)


def test_sites(request, built):
    """q/k/v/z and the decoder's residual, attention and MLP outputs in their documented shapes; the
    residual entering each decoder block is the eager decoder's hidden state; a saved capture reads back."""
    facts = built.lm.facts
    tgt, src = built.decoder.shape[1], SOURCE.shape[1]
    shapes = {Site.Q: (1, 4, tgt, 8), Site.K: (1, 4, tgt, 8), Site.V: (1, 4, tgt, 8), Site.Z: (1, 4, tgt, 8),
              Site.PATTERN: (1, 4, tgt, tgt), Site.ENC_PATTERN: (1, 4, src, src), Site.CROSS_PATTERN: (1, 4, tgt, src)}

    def run():
        cap = built.run(sites=[*_PATTERNS, *_OTHER]).capture
        for layer in (0, 1):
            for site in (*_PATTERNS, *_OTHER):
                got = cap.get(site, layer)
                assert tuple(got.shape) == shapes.get(site, (1, tgt, facts.d_model)), f"{site.value}@{layer}"
                assert torch.isfinite(got).all() and got.abs().sum() > 0, f"{site.value}@{layer} is empty or zero"
            _close(cap.get(Site.RESID_PRE, layer), built.out.decoder_hidden_states[layer], f"resid_pre of {layer}")
        back = CaptureFile.load(cap.save(built.folder / "capture", force=True))
        assert isinstance(back.layout, SourceLayout) and back.layout.n_frames == src
        _close(torch.from_numpy(back.read(Site.CROSS_PATTERN, 1)), cap.get(Site.CROSS_PATTERN, 1), "cross_pattern read back")

    _cell(request, built, "sites", run)


def test_stats(request, built):
    """Stats of the decoder's self-attention equal those of the eager patterns (over the greedy output), T5's
    relative position bias included (the kernel's score_bias)."""
    from attnlens.kernels import StatsSpec

    def run():
        got = lens.run_stats(built.lm, SOURCE, spec=StatsSpec(sink_tokens=1))
        assert sorted(got.stats) == [0, 1]
        decoder = torch.tensor(got.meta.token_ids)
        with torch.no_grad():
            ref = built.ref_model(input_ids=SOURCE, decoder_input_ids=decoder, output_attentions=True)
        _close(got.logits, ref.logits, "logits in stats mode")
        for layer in (0, 1):
            p = ref.decoder_attentions[layer].float()
            s = got.stats[layer]
            _close(s.max_weight, p.amax(-1), f"max_weight of layer {layer}")
            _close(s.sink_mass, p[..., 0], f"sink_mass of layer {layer}")
            _close(s.entropy, -(p * p.clamp_min(1e-30).log()).sum(-1), f"entropy of layer {layer}")

    _cell(request, built, "stats", run)


def test_head_edit(request, built):
    """Zeroing a decoder head equals zeroing its slice of the output projection's input by hand."""
    layer, head = 1, 1

    def zero_head(module, args):
        x = args[0].clone()
        x[..., head * 8:(head + 1) * 8] = 0
        return (x, *args[1:])

    handle = built.ref_model.get_submodule(built.family.out_proj.format(layer=layer)).register_forward_pre_hook(zero_head)
    try:
        with torch.no_grad():
            want = built.ref_model(input_ids=SOURCE, decoder_input_ids=built.decoder).logits
    finally:
        handle.remove()
    assert (want - built.out.logits).abs().max() > 1e-4, "the reference edit changes nothing: a test that cannot fail"

    def run():
        got = built.run(sites=[Site.RESID_POST], layers=[layer], edits=[Edit(HeadRef(layer, head), Zero())])
        _close(got.logits, want, f"logits with L{layer}H{head} zeroed")

    _cell(request, built, "head_edit", run)


# ---- the CLI, once per layout (T5 and BART) ---------------------------------------------------
def _cli(*args):
    return subprocess.run([sys.executable, "-m", "lens.cli", *args], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("built", [FAMILIES[0], FAMILIES[3]], ids=["t5", "bart"], indirect=True)
def test_cli_capture_with_source_and_target(built, tmp_path):
    """``lens capture FOLDER --prompt SOURCE --target TARGET``: the decoder reads the target, the encoder
    positions are the source's tokens; ``lens info`` names the source."""
    out = tmp_path / "caps"
    r = _cli("capture", str(built.folder), "--prompt", "ab cd", "--target", "xy", "--sites",
             "pattern,enc_pattern,cross_pattern", "--out", str(out))
    assert r.returncode == 0, r.stderr
    cap = CaptureFile.load(out / "000")
    want = seq2seq.start_ids(built.lm) + built.lm.tokenizer("xy", add_special_tokens=False).input_ids
    assert cap.meta.token_ids == [want] and len(want) == 3 and cap.layout.text == "ab cd"
    source = built.lm.encode("ab cd")[0].tolist()
    assert list(cap.layout.token_ids) == source
    assert cap.read(Site.CROSS_PATTERN, 0).shape == (1, 4, 3, len(source))
    info = _cli("info", str(out / "000"))
    said = info.stdout + info.stderr
    assert info.returncode == 0 and f"source ({len(source)} encoder positions): 'ab cd'" in said, said


@pytest.mark.parametrize("built", [FAMILIES[3]], ids=["bart"], indirect=True)
def test_generate_returns_the_decoders_text(built):
    """``lm.generate(source)`` decodes the decoder's greedy ids (an encoder-decoder returns no copy of the source)."""
    ids = built.lm.encode("ab cd")
    for model in (built.lm.model, built.ref_model):  # a random model emits end-of-sequence at once: make it say "K"
        model.final_logits_bias[0, built.lm.tokenizer.convert_tokens_to_ids("K")] = 100.0
    want = built.ref_model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, do_sample=False,
                                    num_beams=1)
    text = built.lm.tokenizer.decode(want[0], skip_special_tokens=True).strip()
    assert text, "the greedy output is all special tokens: a check that cannot fail"
    try:
        assert built.lm.generate("ab cd", max_new_tokens=4, chat=False) == text == "KKKK"
    finally:
        for model in (built.lm.model, built.ref_model):
            model.final_logits_bias.zero_()


def test_cli_target_on_a_decoder_only_model_is_refused(tmp_path):
    r = _cli("capture", "tiny-llama", "--prompt", "hi", "--target", "x", "--out", str(tmp_path / "c"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "error: --target is for text encoder-decoders (T5, BART), not tiny-llama (LlamaForCausalLM)" in r.stderr


# ---- families refused at load, each in one line naming it and why -----------------------------------
_LOCAL = dict(_BART, max_encoder_position_embeddings=64, max_decoder_position_embeddings=64)
REFUSED = {
    "led": (dict(_LOCAL, attention_window=[8, 8]), "Longformer's local and global attention"),
    "longt5": (_T5, "local or transient-global attention"),
    "pegasus_x": (dict(_BART, num_global_tokens=2, block_size=4), "block-local attention with global tokens"),
    "bigbird_pegasus": (dict(_BART, attention_type="original_full"), "BigBird's block-sparse attention"),
    "fsmt": (dict(_BART, src_vocab_size=259, tgt_vocab_size=259, langs=["en", "de"]), "time-major"),
    "prophetnet": (dict(hidden_size=32, encoder_ffn_dim=64, decoder_ffn_dim=64, num_encoder_layers=2,
                        num_decoder_layers=2, num_encoder_attention_heads=4, num_decoder_attention_heads=4,
                        vocab_size=259, decoder_start_token_id=0, pad_token_id=2, eos_token_id=1, ngram=1),
                   "n-gram streams"),
    "switch_transformers": (dict(_T5, num_experts=2, num_sparse_encoder_layers=1, num_sparse_decoder_layers=1),
                            "sparse experts"),
    "nllb-moe": (dict(_BART, num_experts=2), "expert feed-forward layers"),
}


@pytest.mark.parametrize("model_type", list(REFUSED), ids=[t.replace("-", "_") for t in REFUSED])
def test_load(request, model_type, tmp_path, tokenizer_folder):
    """Encoder-decoders whose attention attnlens cannot capture faithfully are refused when they load, in one
    line that names the family and the reason (no capture that would come back empty or wrong)."""
    from transformers import AutoConfig, AutoModelForSeq2SeqLM
    from transformers.utils import logging as hf_logging

    from lens.errors import ModelUnavailableError

    hf_logging.set_verbosity_error()
    config, why = REFUSED[model_type]
    torch.manual_seed(0)
    AutoModelForSeq2SeqLM.from_config(AutoConfig.for_model(model_type, **config)).save_pretrained(tmp_path)
    shutil.copytree(tokenizer_folder, tmp_path, dirs_exist_ok=True)
    with pytest.raises(ModelUnavailableError) as info:
        lens.load(str(tmp_path))
    message = str(info.value)
    assert "\n" not in message and f"is a {model_type} model: " in message and why in message, message
    assert "attnlens does not support it (T5- and BART-style encoder-decoders are)" in message
    request.node.user_properties.append(("refusal", message))
