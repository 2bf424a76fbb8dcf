"""VHD, T-VHD, VHR, VAR and visual sinks beyond LLaVA: tiny random LLaVA-NeXT, Gemma 3, PaliGemma and
Idefics3 folders (:mod:`lens.zoo.tiny_image_text`, loaded through their own processors), and Mllama,
whose cross-attention layers get VHD while visual sinks are refused in one line; ``lens scan`` on each
(slow tier: about a minute per family on two cores)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import lens
from attnlens.analyses.vision_aware import head_divergence, token_divergence, vhr_scales
from attnlens.analyses.visual_sinks import SinkDimensions, VisualSinkError, image_centric
from attnlens.analyses.vlm_collect import head_output_pairs, var_edit, var_inputs, vhr_edit
from attnlens.pipelines.vlm import run_vision_aware, run_visual_sinks, scene_items
from lens import vlm
from lens.zoo import tiny_image_text

FAMILIES = ["llava_next", "gemma3", "paligemma", "idefics3"]
SINK_PROMPTS = ["The cat sat on the mat.", "Numbers: 1 2 3 4 5."]


@pytest.fixture(scope="module")
def items():
    return scene_items(2)[:3]  # three held-out scenes and questions


@pytest.fixture(scope="module", params=FAMILIES)
def family(request, tmp_path_factory):
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    folder = tiny_image_text.build(request.param, tmp_path_factory.mktemp(request.param))
    return folder, lens.load(str(folder))


def test_vhd_and_t_vhd(family, items):
    _, lm = family
    [vhd] = run_vision_aware(lm, items, steps=2, k=4)
    assert vhd.scores.shape == (lm.facts.n_layers, lm.facts.n_heads) and np.isfinite(vhd.scores).all()
    assert (vhd.scores > 1e-3).all(), "every head of a model whose image moves the text sees it"
    pairs = head_output_pairs(lm, items, steps=2)
    # T-VHD of each prompt and step is the mean of its top-4 head VHDs
    want = np.stack([token_divergence(head_divergence(p), 4).numpy() for p in pairs])
    np.testing.assert_allclose(vhd.arrays["t_vhd"], want, rtol=1e-5)


def test_vhr_scales_the_chosen_heads_and_nothing_else(family, items):
    _, lm = family
    [vhd] = run_vision_aware(lm, items, steps=1, k=4)
    scales = vhr_scales(vhd.scores)
    x = vlm.collate([vlm.prepare(lm, f"{vlm.placeholder(lm)}\n{q.text}", [s.image], chat=True)
                     for s, q in items[:1]], 2)
    kw = x.model_kwargs()
    with torch.no_grad():
        plain = lm.model(**kw).logits
        with vhr_edit(lm, np.ones_like(scales))(x):
            same = lm.model(**kw).logits
        with vhr_edit(lm, scales)(x):
            scaled = lm.model(**kw).logits
    torch.testing.assert_close(same, plain)
    assert (scales != 1).any() and (scaled - plain).abs().max() > 1e-4


def test_visual_sinks_and_var(family, items):
    _, lm = family
    [res] = run_visual_sinks(lm, items, sink_prompts=SINK_PROMPTS)
    assert res.scores.shape == (lm.facts.n_layers, lm.facts.n_heads)
    assert np.isfinite(res.scores).all() and ((res.scores >= 0) & (res.scores <= 1)).all()
    [one] = var_inputs(lm, items[:1])
    x = vlm.prepare(lm, f"{vlm.placeholder(lm)}\n{items[0][1].text}", [items[0][0].image], chat=True)
    assert torch.equal(one.image_mask, x.image_mask()) and int(one.image_mask.sum()) > 0
    assert one.queries == list(range(max(s.end for s in x.spans), x.n_tokens))
    # VAR with no sink dimension finds no sink and changes nothing; with a low tau on three dimensions
    # some image tokens are sinks (only image tokens) and, where they hold at most half of an
    # image-centric head's image attention, it moves to the other image tokens
    batch = vlm.collate([x], 2)
    kw = batch.model_kwargs()
    with torch.no_grad():
        plain = lm.model(**kw).logits
        with var_edit(lm, SinkDimensions(dims=(), prompt_share={}, max_abs={}), tau=20.0)(batch) as sinks:
            assert not any(s.any() for s in sinks.values())
            torch.testing.assert_close(lm.model(**kw).logits, plain)
        some = SinkDimensions(dims=(0, 1, 2), prompt_share={}, max_abs={})
        found = False
        for tau in (0.5, 1.0, 2.0, 3.0, 5.0):  # a random model has no massive activations: try thresholds
            with var_edit(lm, some, tau=tau)(batch) as sinks:
                assert all(not (s & ~x.image_mask()[None]).any() for s in sinks.values())  # only image tokens
                moved = (lm.model(**kw).logits - plain).abs().max().item()
            # the rows VAR edits: image-centric (head, text query) pairs of a layer with sinks
            centric = any(image_centric(one.attention[layer], one.image_mask, sinks[layer][0])[0].any()
                          and sinks[layer].any() for layer in sinks)
            assert (moved > 1e-5) == centric, (tau, moved)
            found |= centric
        assert found or lm.facts.architecture.startswith("Gemma3"), "no threshold gave an edit to check"


def test_mllama_vhd_covers_its_cross_attention_and_visual_sinks_refuse(tmp_path, items):
    lm = lens.load(str(tiny_image_text.build("mllama", tmp_path / "mllama")))
    [vhd] = run_vision_aware(lm, items, steps=1, k=4)
    assert vhd.scores.shape == (3, 4) and np.isfinite(vhd.scores).all()
    # layer 1 is the cross-attention over the image: without the image its heads output nothing
    assert (vhd.scores[1] > 1e-3).all()
    for call in (lambda: run_visual_sinks(lm, items, sink_prompts=SINK_PROMPTS),
                 lambda: var_edit(lm, SinkDimensions(dims=(0,), prompt_share={}, max_abs={}))):
        with pytest.raises(VisualSinkError, match=r"reads images through cross-attention layers \[1\]") as info:
            call()
        assert "\n" not in str(info.value)


@pytest.mark.slow
@pytest.mark.parametrize("name", FAMILIES)
def test_scan_runs_the_vision_text_analyses(name, cli, tmp_path):
    folder = tiny_image_text.build(name, tmp_path / name)
    out = tmp_path / "scan"
    code, stdout, err = cli("scan", str(folder), "--no-chat", "--captures", "1", "--out", out, "--json")
    assert code == 0, err
    written = {r["name"] for r in json.loads(stdout)["results"]}
    assert {"vision_aware.vhd", "visual_sinks.image_centric", "taxonomy.induction"} <= written
    from attnlens.dashboards.vision import VisionOverlay
    from attnlens.formats import ResultsFolder

    folder = ResultsFolder.load(out)
    cap = folder.captures["captures/image-000"]  # the Vision tab's capture: its tokens mapped onto the image
    assert cap.layout is not None and cap.image_path().is_file()
    note, row = VisionOverlay(folder).plot().objects  # the note, then the overlays beside the patch map
    assert type(note).__name__ == "HTML" and [type(o).__name__ for o in row.objects] == ["PNG", "Bokeh"]


def _one_line(code, err):
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("loading")]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def test_cli_refusals_are_one_line(cli, capsys, tmp_path):
    from attnlens.analyses.scenes import make_scene

    images = tmp_path / "images"
    images.mkdir()
    make_scene(1_000_000).image.save(images / "scene.png")
    import importlib.util

    if importlib.util.find_spec("torchvision") is None:  # else Qwen2-VL loads
        qwen = tiny_image_text.build("qwen2_vl", tmp_path / "qwen2_vl")
        capsys.readouterr()  # the folder's writing progress is not the command's output
        code, _, err = cli("heads", "vision-aware", str(qwen), "--images", images, "--out", tmp_path / "a")
        line = _one_line(code, err)
        assert "needs the package torchvision" in line and "pip install torchvision" in line
    mllama = tiny_image_text.build("mllama", tmp_path / "mllama")
    capsys.readouterr()
    code, _, err = cli("heads", "visual-sinks", str(mllama), "--images", images, "--out", tmp_path / "b")
    assert "reads images through cross-attention layers [1]" in _one_line(code, err)
    assert not (tmp_path / "b").exists() or not any((tmp_path / "b").iterdir())


@pytest.mark.parametrize("name", ["llava_next", "idefics3"])
def test_a_batch_of_images_with_different_tile_counts_equals_single_runs(name, tmp_path):
    """Tiled pixels are zero-padded to the most tiles in a batch, as the processors pad; each row's
    last-position logits equal its own run."""
    from PIL import Image

    lm = lens.load(str(tiny_image_text.build(name, tmp_path / name)))
    wide = Image.new("RGB", (64, 16), (200, 40, 40))
    square = Image.new("RGB", (16, 16), (40, 40, 200))
    xs = [vlm.prepare(lm, f"{vlm.placeholder(lm)}\nWhat?", [im]) for im in (wide, square)]
    assert xs[0].pixel_values.shape[1] != xs[1].pixel_values.shape[1], "the two images should tile differently"
    batch = vlm.collate(xs, 2)
    with torch.no_grad():
        both = lm.model(**batch.model_kwargs()).logits[:, -1]
        for row, x in enumerate(xs):
            torch.testing.assert_close(both[row], lm.model(**x.model_kwargs()).logits[0, -1], atol=1e-5, rtol=1e-5)


def test_the_vision_tab_places_pooled_tokens_on_the_image(cli, capsys, tmp_path):
    """Gemma 3 pools 4 x 4 patches of 4 px into 2 x 2 tokens: the capture's layout and the Vision tab say
    so, and each token covers 8 px of the 16-px input."""
    from attnlens.analyses.scenes import make_scene
    from attnlens.dashboards.vision import VisionOverlay
    from attnlens.formats import ResultsFolder

    folder = tiny_image_text.build("gemma3", tmp_path / "gemma3")
    make_scene(1_000_000).image.save(tmp_path / "scene.png")
    capsys.readouterr()
    code, _, err = cli("capture", str(folder), "--image", tmp_path / "scene.png", "--prompt",
                       "<start_of_image> what colour?", "--layers", "0", "--out", tmp_path / "cap")
    assert code == 0, err
    results = ResultsFolder.load(tmp_path / "cap")
    [cap] = results.captures.values()
    assert (cap.layout.grid, cap.layout.patch_size, cap.layout.pooled) == ((2, 2), 4, 2)
    note, row = VisionOverlay(results).plot().objects
    png = row.objects[0]  # the overlays (the patch map beside them)
    assert "2x2 patches of 8 px (2x2 patches pooled per token)" in note.object and png.object
