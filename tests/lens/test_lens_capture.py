import pytest
import torch

import lens
from attnlens.formats.capture import TENSORS_FILE
from lens import Site
from lens.recording.record import Capture

DECODER_SITES = [s for s in Site if s.part is lens.Part.SELF]


def eager_reference(lm, ids):
    impl = lm.model.config._attn_implementation
    lm.model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            return lm.model(ids, output_attentions=True)
    finally:
        lm.model.set_attn_implementation(impl)


def test_patterns_equal_output_attentions(tiny_lm):
    ids = tiny_lm.encode("patterns must match transformers exactly")
    ref = eager_reference(tiny_lm, ids)
    result = lens.run(tiny_lm, ids, sites=[Site.PATTERN])
    for layer in range(4):
        torch.testing.assert_close(result.capture.pattern(layer), ref.attentions[layer], atol=1e-6, rtol=0)
    torch.testing.assert_close(result.logits, ref.logits, atol=1e-5, rtol=0)


def test_capture_leaves_the_model_as_it_was(tiny_lm):
    model = tiny_lm.model
    impl = model.config._attn_implementation
    ids = tiny_lm.encode("no hooks left behind")

    def hooks():  # other backends (nnsight) may have wrapped the model earlier; compare before/after
        return [(n, list(m._forward_hooks), list(m._forward_pre_hooks)) for n, m in model.named_modules()]

    before = hooks()
    with pytest.raises(RuntimeError, match="boom"):
        with lens.capture(tiny_lm, sites=DECODER_SITES):
            model(ids)
            raise RuntimeError("boom")
    assert model.config._attn_implementation == impl
    assert hooks() == before
    assert not any(hasattr(m, "_attnlens_session") for m in model.modules())


def test_batch_of_two_equals_two_single_runs(tiny_lm):
    a, b = tiny_lm.encode("first prompt here"), tiny_lm.encode("other prompt here")
    both = lens.run(tiny_lm, torch.cat([a, b]), sites=[Site.PATTERN, Site.Z]).capture
    for i, ids in enumerate((a, b)):
        single = lens.run(tiny_lm, ids, sites=[Site.PATTERN, Site.Z]).capture
        for layer in (0, 3):
            torch.testing.assert_close(both.pattern(layer)[i], single.pattern(layer)[0], atol=1e-6, rtol=0)
            torch.testing.assert_close(both.get(Site.Z, layer)[i], single.get(Site.Z, layer)[0], atol=1e-6, rtol=0)


def test_head_selection_keeps_only_those_heads_and_their_kv_heads(tiny_lm):
    ids = tiny_lm.encode("select heads")
    full = lens.run(tiny_lm, ids, sites=[Site.PATTERN, Site.K, Site.Z]).capture
    part = lens.run(tiny_lm, ids, sites=[Site.PATTERN, Site.K, Site.Z], layers=[2], heads=[3, 1]).capture
    assert part.meta.heads == [3, 1] and part.meta.kv_heads == [1, 0]
    torch.testing.assert_close(part.pattern(2, head=3), full.pattern(2)[:, 3])
    torch.testing.assert_close(part.get(Site.K, 2), full.get(Site.K, 2)[:, [1, 0]])
    assert part.get(Site.Z, 2).shape == (1, 2, ids.shape[1], 16)
    with pytest.raises(lens.SelectionError, match="was not captured"):
        part.pattern(1)


def test_every_site_has_its_documented_shape(tiny_lm):
    ids = tiny_lm.encode("shapes")
    cap = lens.run(tiny_lm, ids, sites=DECODER_SITES, layers=[1]).capture
    n = ids.shape[1]
    expected = {Site.PATTERN: (1, 4, n, n), Site.Q: (1, 4, n, 16), Site.K: (1, 2, n, 16), Site.V: (1, 2, n, 16),
                Site.Z: (1, 4, n, 16), Site.RESID_PRE: (1, n, 64), Site.RESID_POST: (1, n, 64),
                Site.ATTN_OUT: (1, n, 64), Site.MLP_OUT: (1, n, 64)}
    for site, shape in expected.items():
        assert tuple(cap.get(site, 1).shape) == shape, site
    # the residual stream adds up: post = pre + attn_out + mlp_out
    torch.testing.assert_close(cap.get(Site.RESID_POST, 1),
                               cap.get(Site.RESID_PRE, 1) + cap.get(Site.ATTN_OUT, 1) + cap.get(Site.MLP_OUT, 1))


def test_q_and_k_reproduce_the_pattern(tiny_lm):
    ids = tiny_lm.encode("queries and keys after rotary")
    cap = lens.run(tiny_lm, ids, sites=[Site.PATTERN, Site.Q, Site.K], layers=[2]).capture
    q, k = cap.get(Site.Q, 2), cap.get(Site.K, 2).repeat_interleave(2, dim=1)
    scores = q @ k.transpose(-1, -2) / 16**0.5
    n = ids.shape[1]
    scores = scores.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
    torch.testing.assert_close(scores.softmax(-1), cap.pattern(2), atol=1e-5, rtol=0)


def test_generate_records_one_step_per_forward(tiny_lm):
    ids = tiny_lm.encode("generation")
    with lens.capture(tiny_lm, sites=[Site.PATTERN, Site.K], layers=[1]) as cap:
        out = tiny_lm.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=3,
                                     do_sample=False, pad_token_id=2)
    n = ids.shape[1]
    assert len(cap.steps) == 3  # the prompt's pass and two more (the third token needs no pass)
    assert cap.pattern(1, step=0).shape == (1, 4, n, n)
    assert cap.pattern(1, step=2).shape == (1, 4, 1, n + 2)
    assert cap.get(Site.K, 1, step=2).shape == (1, 2, n + 2, 16)
    assert cap.meta.token_ids == ids.tolist()
    assert cap.meta.generated == [out[0, n:n + 2].tolist()]


def test_memory_budget_is_checked_before_running(tiny_lm):
    ids = tiny_lm.encode("a" * 200)
    with pytest.raises(lens.MemoryBudgetError, match=r"would need about .* over the budget of 1.0 KiB"):
        lens.run(tiny_lm, ids, sites=[Site.PATTERN], budget_bytes=1024)


def test_memory_budget_stops_a_running_capture(tiny_lm):
    ids = tiny_lm.encode("abc")
    with pytest.raises(lens.MemoryBudgetError, match="exceeded its memory budget"):
        with lens.capture(tiny_lm, sites=[Site.PATTERN], budget_bytes=4096):
            tiny_lm.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=50,
                                   do_sample=False, pad_token_id=2)


def test_storage_dtype_and_estimate_agree(tiny_lm):
    ids = tiny_lm.encode("sized")
    spec = lens.CaptureSpec.resolve(tiny_lm.facts, sites=DECODER_SITES, dtype=torch.bfloat16)
    cap = lens.run(tiny_lm, ids, sites=DECODER_SITES, dtype=torch.bfloat16).capture
    assert cap.pattern(0).dtype == torch.bfloat16
    assert cap.n_bytes == spec.stored_bytes(tiny_lm.facts, batch=1, q_len=ids.shape[1], k_len=ids.shape[1])


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"layers": [4]}, "layer 4 is out of range: tiny-llama has layers 0-3"),
    ({"heads": [4]}, "head 4 is out of range: tiny-llama has heads 0-3 in each layer"),
    ({"layers": [-1]}, "layer -1 is out of range"),
    ({"sites": []}, "sites is empty"),
])
def test_bad_selection_is_refused(tiny_lm, kwargs, message):
    with pytest.raises(lens.SelectionError, match=message):
        lens.run(tiny_lm, "hello", **kwargs)


def test_save_and_load_round_trip(tiny_lm, tmp_path):
    cap = lens.run(tiny_lm, "round trip", sites=[Site.PATTERN, Site.Z], layers=[0, 2]).capture
    cap.save(tmp_path / "cap")
    back = Capture.load(tmp_path / "cap")
    assert back.meta.tokens == cap.meta.tokens and back.meta.facts == cap.meta.facts
    assert back.meta.versions["torch"] == torch.__version__
    for key, t in cap.steps[0].items():
        assert torch.equal(back.steps[0][key], t)
    with pytest.raises(lens.OutputExistsError, match="already exists"):
        cap.save(tmp_path / "cap")
    assert not list((tmp_path / "cap").glob("*.tmp"))


def test_truncated_or_incomplete_capture_is_reported(tiny_lm, tmp_path):
    folder = lens.run(tiny_lm, "to be damaged", layers=[0]).capture.save(tmp_path / "cap")
    data = (folder / TENSORS_FILE).read_bytes()
    (folder / TENSORS_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(lens.CorruptCaptureError, match="tensors.safetensors is truncated"):
        Capture.load(folder)
    altered = bytearray(data)
    altered[-1] ^= 0xFF  # same size, one bit pattern changed
    (folder / TENSORS_FILE).write_bytes(bytes(altered))
    with pytest.raises(lens.CorruptCaptureError, match="does not match its recorded SHA-256"):
        Capture.load(folder)
    (folder / TENSORS_FILE).unlink()
    with pytest.raises(lens.CorruptCaptureError, match="tensors.safetensors is missing"):
        Capture.load(folder)
    (folder / "capture.json").write_text("{not json")
    (folder / TENSORS_FILE).write_bytes(data)
    with pytest.raises(lens.CorruptCaptureError, match="capture.json is not valid JSON"):
        Capture.load(folder)
