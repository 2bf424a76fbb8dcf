"""Encoder-decoders through the capture sites, stats mode and the CLI (tiny random Whisper)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import lens
from attnlens.formats import CaptureFile, ResultsFolder
from attnlens.formats.layouts import AudioLayout
from attnlens.kernels import StatsSpec
from lens import Part, Site
from lens.audio import save_wav


@pytest.fixture(scope="module")
def tiny():
    return lens.load("tiny-whisper")


@pytest.fixture(scope="module")
def tone(tmp_path_factory):
    path = tmp_path_factory.mktemp("audio") / "tone.wav"
    t = np.arange(24_000) / 16_000
    save_wav(path, (0.3 * np.sin(2 * np.pi * 440 * t) * (t < 1.0)).astype(np.float32), 16_000)
    return path


def test_encoder_decoder_sites_and_layout(tiny, tone, tmp_path):
    ids = [0, 100, 101, 102]
    r = lens.run(tiny, str(tone), sites=[Site.PATTERN, Site.ENC_PATTERN, Site.CROSS_PATTERN], decoder_ids=ids)
    cap = r.capture
    assert cap.get(Site.ENC_PATTERN, 1).shape == (1, 4, 100, 100)  # 2 s window: 100 encoder positions
    assert cap.get(Site.CROSS_PATTERN, 0).shape == (1, 4, 4, 100) and cap.get(Site.PATTERN, 0).shape == (1, 4, 4, 4)
    torch.testing.assert_close(cap.get(Site.CROSS_PATTERN, 1).sum(-1), torch.ones(1, 4, 4), atol=1e-5, rtol=0)
    enc = cap.get(Site.ENC_PATTERN, 0)[0, 0]
    assert float(enc.triu(1).sum()) > 0  # bidirectional
    layout = cap.meta.layout
    assert isinstance(layout, AudioLayout) and layout.duration == 1.5 and layout.n_valid_frames == 75
    assert layout.span_frames(0.5, 1.0) == (25, 50)
    cap.save(tmp_path / "c")
    f = CaptureFile.load(tmp_path / "c")
    assert f.audio_path().is_file() and f.layout == layout
    np.testing.assert_allclose(f.read(Site.CROSS_PATTERN, 0), cap.get(Site.CROSS_PATTERN, 0).numpy())


def test_the_capture_does_not_change_the_model(tiny, tone):
    from lens.speech import features

    ids = torch.tensor([[0, 100, 101]])
    from lens.audio import load_audio

    samples = load_audio(tone)
    with torch.no_grad():
        plain = tiny.model(input_features=features(tiny, samples), decoder_input_ids=ids).logits
    got = lens.run(tiny, samples, sites=[Site.CROSS_PATTERN, Site.ENC_PATTERN], decoder_ids=ids[0].tolist())
    torch.testing.assert_close(got.logits, plain, atol=1e-5, rtol=0)


def test_stats_mode_on_the_encoder_and_cross_attention_is_non_causal(tiny, tone):
    from lens.audio import load_audio

    samples = load_audio(tone)
    ids = [0, 100, 101, 102]
    cap = lens.run(tiny, samples, sites=[Site.ENC_PATTERN, Site.CROSS_PATTERN], decoder_ids=ids).capture
    for part, site in ((Part.ENCODER, Site.ENC_PATTERN), (Part.CROSS, Site.CROSS_PATTERN)):
        with torch.no_grad(), lens.stats_mode(tiny, StatsSpec(sink_tokens=1, window=0, spans=((25, 50),)),
                                              part=part) as rec:
            lens.run(tiny, samples, sites=[Site.Z], layers=[0], decoder_ids=ids)
        p = cap.get(site, 1).double()
        s = rec.stats[1][-1]
        entropy = -torch.special.xlogy(p, p).sum(-1)
        torch.testing.assert_close(s.entropy.double(), entropy, atol=1e-4, rtol=0)
        torch.testing.assert_close(s.span_mass[..., 0].double(), p[..., 25:50].sum(-1), atol=1e-5, rtol=0)


def test_sites_of_other_models_are_refused(tiny_lm):
    with pytest.raises(lens.SelectionError, match="need an encoder-decoder: tiny-llama has no encoder"):
        lens.run(tiny_lm, "hi", sites=[Site.CROSS_PATTERN])


def test_cli_audio_commands_write_what_the_dashboards_read(cli, tone, tmp_path):
    code, _, err = cli("capture", "tiny-whisper", "--audio", tone, "--sites", "pattern,cross_pattern,enc_pattern",
                       "--out", tmp_path / "caps")
    assert code == 0, err
    code, out, err = cli("generate", "tiny-whisper", "--audio", tone, "--max-new-tokens", "3", "--json")
    assert code == 0, err
    code, _, err = cli("heads", "cross-attention", "tiny-whisper", "--audio", tone, "--out", tmp_path / "xattn")
    assert code == 0, err
    folder = ResultsFolder.load(tmp_path)
    assert {"xattn/cross_attention.pearson", "xattn/cross_attention.saliency_share"} <= set(folder.results)
    assert isinstance(folder.captures["caps/000"].layout, AudioLayout) and not folder.problems
    for args, message in ((["capture", "tiny-whisper", "--prompt", "text", "--out", tmp_path / "n"], "give it --audio"),
                          (["capture", "tiny-llama", "--audio", tone, "--out", tmp_path / "n"], "needs a speech model"),
                          (["heads", "cross-attention", "tiny-llama", "--audio", tone, "--out", tmp_path / "n"],
                           "needs a speech model")):
        code, _, err = cli(*args)
        assert code == 2 and message in err, err
    assert not (tmp_path / "n").exists()
