"""`lens heads vision-aware|visual-sinks` and `lens generate --image` on the tiny random LLaVA: files written
in the results format (the folder reader and the dashboard show them), one-line errors with nothing written."""

import json

import numpy as np
import pytest

from attnlens.analyses.scenes import make_scene
from attnlens.formats import HeadScores, ResultsFolder


def _one_line(code, err):
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("loading")]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def pngs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    for i in range(2):
        make_scene(1_000_000 + i).image.save(folder / f"scene{i}.png")
    (folder / "notes.txt").write_text("not an image, and not picked up: the suffix says so")
    return folder


def test_vision_aware_writes_head_scores_the_dashboard_shows(cli, tmp_path, pngs):
    from attnlens.dashboards.app import Dashboard

    out = tmp_path / "vhd"
    code, stdout, err = cli("heads", "vision-aware", "tiny-llava", "--images", pngs, "--question", "What colour?",
                            "--question", "What shape?", "--steps", "2", "--k", "4", "--out", out, "--json")
    assert code == 0, err
    doc = json.loads(stdout)
    assert [r["name"] for r in doc["results"]] == ["vision_aware.vhd"]
    r = HeadScores.load(out / "vision_aware.vhd.json")
    assert r.scores.shape == (4, 4) and np.isfinite(r.scores).all() and (r.scores > 0).any()
    assert r.arrays["t_vhd"].shape == (4, 2)  # 2 images x 2 questions, 2 steps
    assert r.provenance.model == "tiny-llava" and r.params["n_prompts"] == 4
    folder = ResultsFolder.load(out)
    assert folder.problems == {} and set(folder.results) == {"vision_aware.vhd"}
    dash = Dashboard(folder)
    assert dash.model == "tiny-llava" and "vision_aware.vhd" in dash.atlas.param.metric.objects
    dash.atlas.metric = "vision_aware.vhd"
    np.testing.assert_array_equal(np.asarray(dash.atlas.grid.source.data["value"]), r.scores.ravel())


def test_visual_sinks_on_scenes_and_on_one_image(cli, tmp_path, pngs):
    from attnlens.dashboards.app import Dashboard

    out = tmp_path / "var"
    code, _, err = cli("heads", "visual-sinks", "tiny-llava", "--scenes", "2", "--tau", "1", "--out", out)
    assert code == 0, err
    assert "sink dimensions:" in err
    r = HeadScores.load(out / "visual_sinks.image_centric.json")
    assert r.scores.shape == (4, 4) and r.params["tau"] == 1.0
    from attnlens.pipelines.vlm import scene_items

    assert r.params["n_prompts"] == len(scene_items(2)) >= 6  # each scene's direct questions (3, or 4 with one object)
    assert r.arrays["sink_position_counts"].shape == (4, 17)
    dash = Dashboard(ResultsFolder.load(out))
    assert "visual_sinks.image_centric" in dash.atlas.param.metric.objects
    code, _, err = cli("heads", "visual-sinks", "tiny-llava", "--image", pngs / "scene0.png", "--out", tmp_path / "one")
    assert code == 0, err
    assert HeadScores.load(tmp_path / "one" / "visual_sinks.image_centric.json").params["n_prompts"] == 1


def test_generate_with_an_image(cli, pngs):
    code, stdout, err = cli("generate", "tiny-llava", "--image", pngs / "scene0.png", "--prompt",
                            "<image>\nWhat colour is it?", "--max-new-tokens", "3", "--json")
    assert code == 0, err
    doc = json.loads(stdout)
    assert doc["images"] == [str(pngs / "scene0.png")] and isinstance(doc["answer"], str)


@pytest.mark.parametrize("args, message", [
    (["heads", "vision-aware", "tiny-llava", "--image", "{junk}"], "cannot be decoded as an image"),
    (["heads", "visual-sinks", "tiny-llava", "--image", "{junk}"], "cannot be decoded as an image"),
    (["heads", "vision-aware", "tiny-llama", "--image", "{png}"], "tiny-llama is a text model: it takes no images"),
    (["heads", "vision-aware", "tiny-llava"], "give exactly one of --image FILE, --images FOLDER or --scenes N"),
    (["heads", "vision-aware", "tiny-llava", "--scenes", "2", "--image", "{png}"], "(got --image, --scenes)"),
    (["heads", "visual-sinks", "tiny-llava", "--image", "{png}", "--question", "<image> what?"], "holds <image>"),
    (["heads", "visual-sinks", "tiny-llava", "--images", "{empty}"], "holds no image files"),
    (["heads", "visual-sinks", "tiny-llava", "--image", "{missing}"], "does not exist"),
])
def test_bad_inputs_are_one_line_errors_and_write_nothing(cli, tmp_path, pngs, args, message):
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"\x89PNG\r\n\x1a\n but not really")
    (tmp_path / "empty").mkdir()
    names = {"junk": junk, "png": pngs / "scene0.png", "empty": tmp_path / "empty", "missing": tmp_path / "no.png"}
    out = tmp_path / "out"
    line = _one_line(*cli(*[a.format(**names) for a in args], "--out", out)[::2])
    assert message in line
    assert not out.exists()


@pytest.mark.parametrize("args, message", [
    (["generate", "tiny-llava", "--image", "{junk}", "--prompt", "<image> hi"], "cannot be decoded as an image"),
    (["generate", "tiny-llama", "--image", "{png}", "--prompt", "<image> hi"], "tiny-llama is a text model: it does not take --image"),
    (["generate", "tiny-llava", "--image", "{png}", "--prompt", "what is this?"], "prompt has no <image> placeholder"),
    (["generate", "tiny-llava", "--image", "{png}", "--image", "{png}", "--prompt", "<image> hi"],
     "more images than <image> placeholders: 2 image(s), 1 placeholder(s)"),
])
def test_generate_bad_inputs(cli, tmp_path, pngs, args, message):
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"GIF89a nope")
    names = {"junk": junk, "png": pngs / "scene0.png"}
    code, stdout, err = cli(*[a.format(**names) for a in args])
    assert message in _one_line(code, err) and stdout == ""


def test_capture_with_an_image_has_an_image_layout_the_overlay_uses(cli, tmp_path, pngs):
    from attnlens.dashboards.overlay import patch_attention
    from attnlens.dashboards.vision import VisionOverlay

    out = tmp_path / "cap"
    code, _, err = cli("capture", "tiny-llava", "--image", pngs / "scene0.png", "--prompt", "<image>\nWhat colour?",
                       "--chat", "--out", out)
    assert code == 0, err
    folder = ResultsFolder.load(out)
    assert folder.problems == {} and list(folder.captures) == ["000"]
    cap = folder.captures["000"]
    lay = cap.layout
    assert (lay.grid, lay.prefix, lay.patch_size) == ((4, 4), 1, 4) and lay.start > 0
    assert cap.tokens[lay.start] == "img0:CLS" and cap.tokens[lay.start + 1 + 4 + 2] == "img0:patch(1,2)"
    assert cap.image_path().is_file()
    # the overlay reads the patches at start + prefix ..: the last text token's attention on them
    q = len(cap.tokens) - 1
    grid = patch_attention(cap, 3, 0, q)
    a, b = lay.patch_span
    assert grid.shape == (4, 4) and a == lay.start + 1 and b == a + 16
    np.testing.assert_allclose(grid.ravel(), cap.pattern(3, 0)[q, a:b], rtol=1e-5)
    view = VisionOverlay(folder)
    assert view.capture == "000" and view.query_position() == q
    note, row = view.plot().objects  # the note, then the overlays and the patch map side by side
    assert type(note).__name__ == "HTML" and [type(o).__name__ for o in row.objects][0] == "PNG"


@pytest.mark.parametrize("args, message", [
    (["--image", "{png}"], "give --prompt with <image> where the image goes"),
    (["--image", "{png}", "--prompt", "no placeholder here"], "prompt has no <image> placeholder"),
    (["--image", "{png}", "--image", "{png}", "--prompt", "<image> hi"], "takes one --image and one --prompt"),
])
def test_capture_bad_image_inputs(cli, tmp_path, pngs, args, message):
    out = tmp_path / "out"
    line = _one_line(*cli("capture", "tiny-llava", *[a.format(png=pngs / "scene0.png") for a in args], "--out", out)[::2])
    assert message in line and not out.exists()
    line = _one_line(*cli("capture", "tiny-llama", "--image", pngs / "scene0.png", "--prompt", "<image> hi", "--out",
                          out)[::2])
    assert "tiny-llama is a text model: it takes no images (--image with --prompt needs a vision-language model" in line
    assert not out.exists()


def test_stats_with_an_image_measure_the_mass_on_the_image_span(cli, tmp_path, pngs):
    """`lens stats --image`: the image's token span is the last span; each query's mass on it is
    what the captured pattern puts on those keys."""
    import lens
    from attnlens.formats import StatsFile
    from lens.vlm import read_image

    out = tmp_path / "stats"
    code, _, err = cli("stats", "tiny-llava", "--image", pngs / "scene0.png", "--prompt", "<image>\nWhat colour?",
                       "--chat", "--span", "0:2", "--layers", "1,3", "--out", out)
    assert code == 0, err
    run = StatsFile.load(out)
    start, end = run.settings["spans"][-1]
    assert [list(s) for s in run.settings["spans"][:-1]] == [[0, 2]] and end - start == 17
    assert run.tokens[start] == "img0:CLS" and run.tokens[end - 1] == "img0:patch(3,3)"
    lm = lens.load("tiny-llava")
    cap = lens.run(lm, "<image>\nWhat colour?", image=read_image(pngs / "scene0.png"), chat=True,
                   sites=[lens.Site.PATTERN], layers=[1, 3]).capture
    assert cap.meta.layout.start == start
    for layer in (1, 3):
        p = cap.pattern(layer)[0].numpy()
        np.testing.assert_allclose(run.read(layer, "span_mass")[0, :, :, -1], p[:, :, start:end].sum(-1), atol=1e-5)
    line = _one_line(*cli("stats", "tiny-llama", "--image", pngs / "scene0.png", "--prompt", "<image> hi",
                          "--out", tmp_path / "x")[::2])
    assert "takes no image" in line and not (tmp_path / "x").exists()


@pytest.mark.slow
def test_the_vision_tab_outlines_visual_sinks_from_a_visual_sinks_run(cli, tmp_path, pngs):
    """One folder with a tiny-vlm capture on an image and a `lens heads visual-sinks` run (the
    random LLaVA has no massive activations, so no sink dimensions: the real model): the Vision
    tab names and outlines the patches that are sinks in at least half the prompts."""
    from attnlens.dashboards.overlay import overlay_png
    from attnlens.dashboards.vision import VisionOverlay

    root = tmp_path / "results"
    code, _, err = cli("heads", "visual-sinks", "tiny-vlm", "--scenes", "2", "--out", root / "var")
    assert code == 0, err
    code, _, err = cli("capture", "tiny-vlm", "--image", pngs / "scene0.png", "--prompt", "<image>\nWhat colour?",
                       "--chat", "--out", root / "cap")
    assert code == 0, err
    folder = ResultsFolder.load(root)
    r = folder.results["var/visual_sinks.image_centric"]
    counts = r.arrays["sink_position_counts"]
    layer = int(np.argmax((counts[:, 1:] >= 0.5).sum(1)))  # shares of prompts; the layer with most sink patches
    expected = [(int(i) // 4, int(i) % 4) for i in np.flatnonzero(counts[layer, 1:] >= 0.5)]
    assert expected, counts
    view = VisionOverlay(folder, layer=layer)
    label, sinks = view.sink_patches()
    assert label == "var/visual_sinks.image_centric" and sinks == expected
    note, row = view.plot().objects
    image = row.objects[0]  # the overlays, beside the patch map
    assert type(image).__name__ == "PNG" and "Visual sinks" in note.object and f"({expected[0][0]},{expected[0][1]})" in note.object
    cap = folder.captures["cap/000"]
    plain = overlay_png(cap, layer, cap.heads, view.query_position(), view.alpha)
    assert image.object != plain  # the outlines are drawn
