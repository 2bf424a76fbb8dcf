"""Model-side speech collection on a tiny random Whisper (2 s windows)."""

import numpy as np
import pytest
import torch

from attnlens.analyses.cross_attention import cross_attention_agreement
from attnlens.analyses.result import Provenance
from attnlens.analyses.speech_collect import (
    cross_attentions,
    features,
    gradient_saliency,
    occlusion_saliency,
    pool_to_encoder,
    pool_to_windows,
    prompt_ids,
    text_ids,
    timed_tokens,
    transcribe,
    utterance_maps,
    word_token_spans,
)
from lens.audio import AudioError, layout_for
from lens.espeak import TimedWord


@pytest.fixture(scope="module")
def samples():
    rng = np.random.default_rng(0)
    t = np.arange(int(1.2 * 16_000)) / 16_000
    return (0.3 * np.sin(2 * np.pi * 300 * t) * (1 + np.sin(2 * np.pi * 3 * t)) + 0.01 * rng.normal(size=t.size)
            ).astype(np.float32)


def test_transcribe_is_greedy_and_obeys_suppression(tiny_whisper, samples):
    t = transcribe(tiny_whisper, samples, max_new_tokens=12)
    assert t.ids[: t.n_prompt] == (0,) and t.n_prompt == 1
    assert not {3, 4} & set(t.generated)  # suppressed at every step
    assert len(t.log_probs) in (len(t.generated), len(t.generated) + 1)
    assert all(lp <= 0 for lp in t.log_probs)
    # greedy: each generated token is the arg max of the teacher-forced logits (with suppression)
    feats = features(tiny_whisper, samples)
    with torch.no_grad():
        logits = tiny_whisper.model(input_features=feats, decoder_input_ids=torch.tensor([list(t.ids)])).logits[0]
    logits[:, [3, 4]] = -torch.inf
    logits[0, 1] = -torch.inf  # begin-suppressed
    assert logits[:-1].argmax(-1).tolist() == list(t.generated)


def test_cross_attentions_shape_and_rows(tiny_whisper, samples):
    ids = [0, 70, 71, 72]
    att = cross_attentions(tiny_whisper, samples, ids, n_prompt=1)
    assert sorted(att) == [0, 1]
    assert tuple(att[0].shape) == (4, 3, 100)  # head token frame
    torch.testing.assert_close(att[1].sum(-1), torch.ones(4, 3))
    with pytest.raises(ValueError, match="nothing after"):
        cross_attentions(tiny_whisper, samples, [0], n_prompt=1)


def test_gradient_saliency_shape_batching_and_value(tiny_whisper, samples):
    ids = [0, 70, 71, 72, 73, 74]
    s4 = gradient_saliency(tiny_whisper, samples, ids, 1, batch=4)
    s1 = gradient_saliency(tiny_whisper, samples, ids, 1, batch=1)
    assert tuple(s4.shape) == (5, 100) and bool((s4 >= 0).all()) and bool(torch.isfinite(s4).all())
    torch.testing.assert_close(s4, s1, rtol=1e-4, atol=1e-7)  # batching does not mix tokens' gradients
    # token 2 (id 72, predicted at position 2) by hand: |d log p / d x * x| summed over mels, pooled in pairs
    x = features(tiny_whisper, samples).clone().requires_grad_(True)
    lp = torch.log_softmax(tiny_whisper.model(input_features=x, decoder_input_ids=torch.tensor([ids])).logits, -1)
    lp[0, 2, 72].backward()
    by_hand = (x.grad * x.detach()).abs().sum(1)[0].reshape(100, 2).sum(-1)
    torch.testing.assert_close(s4[2], by_hand, rtol=1e-4, atol=1e-7)


def test_pooling_helpers():
    m = torch.arange(12.0).reshape(2, 6)
    torch.testing.assert_close(pool_to_encoder(m, 3), torch.tensor([[1.0, 5.0, 9.0], [13.0, 17.0, 21.0]]))
    with pytest.raises(ValueError, match="do not pool evenly"):
        pool_to_encoder(m, 4)
    torch.testing.assert_close(pool_to_windows(m, [(0, 2), (2, 6)]), torch.tensor([[1.0, 14.0], [13.0, 38.0]]))


def test_occlusion_saliency_windows_cover_the_audio(tiny_whisper, samples):
    ids = [0, 70, 71, 72]
    drops, spans = occlusion_saliency(tiny_whisper, samples, ids, 1, window=10)
    n_valid = layout_for(samples, tiny_whisper.extras["encoder"]).n_valid_frames
    assert n_valid == 60 and spans[0] == (0, 10) and spans[-1] == (50, 60) and len(spans) == 6
    assert tuple(drops.shape) == (3, 6) and bool(torch.isfinite(drops).all())
    assert float(drops.abs().max()) > 0  # occluding audio changes the random model's predictions


def test_utterance_maps_feed_the_agreement_analysis(tiny_whisper, samples):
    t = transcribe(tiny_whisper, samples, max_new_tokens=5)
    if len(t.generated) < 2:  # a random model may stop early; force a few tokens then
        from attnlens.analyses.speech_collect import Transcript

        t = Transcript(ids=(0, 70, 71, 72), n_prompt=1, text="", log_probs=())
    maps = utterance_maps(tiny_whisper, samples, t)
    assert maps.n_valid == 60 and len(maps.tokens) == len(t.generated)
    res = cross_attention_agreement([maps], n_layers=2, n_heads=4, provenance=Provenance(model="tiny-whisper"))
    assert all(r.shape == (2, 4) for r in res)
    assert all(np.isfinite(r.scores).all() for r in res)


def test_word_spans_and_timed_tokens(tiny_whisper, samples):
    words = [TimedWord("hi", 0.0, 0.3), TimedWord("there.", 0.3, 1.1)]
    layout = layout_for(samples, tiny_whisper.extras["encoder"])
    ids, spans = word_token_spans(tiny_whisper, words, layout)
    assert len(ids) == len(" hi there.")  # byte tokenizer: one token per byte
    assert spans[0] is None  # the space
    assert spans[1] == (0, 15) and spans[4] == (15, 55) and spans[-1] is None  # "." has no letter
    tt = timed_tokens(tiny_whisper, samples, words)
    assert len(tt.tokens) == len(ids) and tuple(tt.cross_attention[0].shape) == (4, len(ids), 100)
    assert text_ids(tiny_whisper, "hi there.") == prompt_ids(tiny_whisper) + ids


def test_audio_to_a_text_model_is_refused(tiny_lm, samples):
    with pytest.raises(AudioError, match="tiny-llama is a text model"):
        transcribe(tiny_lm, samples)
