"""The TransformerLens and nnsight backends on families beyond Llama: availability is asked from
TransformerLens' own bridge registry, and every failure is one line naming the family."""

from __future__ import annotations

import dataclasses
import shutil

import pytest
import torch

import lens
from lens import Site
from lens.backends import check_backend_model
from lens.errors import BackendError

IDS = torch.tensor([[0, 40, 77, 12, 99, 40]])


@pytest.fixture(scope="module")
def folder_of(tmp_path_factory):
    from transformers import AutoConfig, AutoModelForCausalLM

    from lens.zoo import tiny

    tok = tmp_path_factory.mktemp("tok")
    tiny.build_byte_tokenizer(tok)

    def make(model_type: str) -> lens.LoadedModel:
        config = AutoConfig.for_model(model_type, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                      intermediate_size=64, vocab_size=259, bos_token_id=0, eos_token_id=1,
                                      pad_token_id=2)
        torch.manual_seed(0)
        folder = tmp_path_factory.mktemp(model_type)
        AutoModelForCausalLM.from_config(config).eval().save_pretrained(folder)
        shutil.copytree(tok, folder, dirs_exist_ok=True)
        return lens.load(str(folder))

    return make


@pytest.mark.parametrize("backend", ["transformer_lens", "nnsight"])
def test_gpt2_through_every_backend_matches_torch(folder_of, backend):
    """GPT-2 (GPT2LMHeadModel, once refused for TransformerLens by its class name) gives torch's numbers."""
    lm = folder_of("gpt2")
    want = lens.run(lm, IDS, sites=[Site.PATTERN, Site.Z], layers=[1])
    got = lens.run(lm, IDS, sites=[Site.PATTERN, Site.Z], layers=[1], backend=backend)
    assert (got.logits - want.logits).abs().max() < 1e-5
    for site in (Site.PATTERN, Site.Z):
        assert (got.capture.get(site, 1) - want.capture.get(site, 1)).abs().max() < 1e-5


def test_transformer_lens_availability_comes_from_its_registry(folder_of):
    lm = folder_of("gpt2")
    check_backend_model("transformer_lens", lm.facts)  # GPT2LMHeadModel is in the registry
    other = dataclasses.replace(lm.facts, architecture="NoSuchArchForCausalLM")
    with pytest.raises(BackendError, match=r"TransformerLens has no bridge for NoSuchArchForCausalLM \(.*\) in its "
                                           r"registry: use backend torch or nnsight"):
        check_backend_model("transformer_lens", other)


@pytest.mark.parametrize("backend", ["transformer_lens", "nnsight"])
def test_falcon_pattern_matches_or_refuses_in_one_line(folder_of, backend):
    """Falcon computes attention itself: through a backend its pattern matches the eager model's own
    ``output_attentions``, or the run is refused in one line naming the family."""
    lm = folder_of("falcon")
    try:
        got = lens.run(lm, IDS, sites=[Site.PATTERN], layers=[1], backend=backend)
    except BackendError as err:
        assert "\n" not in str(err) and "FalconForCausalLM" in str(err), str(err)
        return
    from transformers import AutoModelForCausalLM

    ref = AutoModelForCausalLM.from_pretrained(lm.facts.name, attn_implementation="eager").eval()
    with torch.no_grad():
        want = ref(IDS, output_attentions=True).attentions[1]
    assert (got.capture.pattern(1) - want).abs().max() < 1e-5
