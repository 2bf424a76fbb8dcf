"""Vision-language workflows: images in, :class:`~formats.HeadScores` out (``lens heads vision-aware``,
``lens heads visual-sinks``).

Each ``run_*`` function takes a LLaVA-style :class:`lens.LoadedModel` and image questions
(:class:`analyses.vlm_collect.ImageQuestion`: the user's image files, or synthetic scenes
from :func:`scene_items`), collects through :mod:`analyses.vlm_collect`, scores with the
pure functions of :mod:`analyses.vision_aware` / :mod:`analyses.visual_sinks` and returns
the results without writing anything.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from attnlens.formats.errors import PromptError
from attnlens.formats.provenance import Provenance
from attnlens.pipelines.progress import SILENT, Progress

DEFAULT_QUESTION = "What colour is the shape?"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
MAX_IMAGES = 10_000


def image_files(folder: Path) -> list[Path]:
    """The image files directly in ``folder`` (by suffix, sorted); a one-line error when there are none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PromptError(f"`images` {folder} is not a folder")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise PromptError(f"`images` {folder} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
    if len(files) > MAX_IMAGES:
        raise PromptError(f"`images` {folder} holds {len(files)} images: at most {MAX_IMAGES}")
    return files


def file_items(files: Sequence[Path], questions: Sequence[str]):
    """One :class:`ImageQuestion` per file x question; every file is decoded first, so an
    undecodable one fails (one line, naming it) before any model runs."""
    from attnlens.analyses.vlm_collect import ImageQuestion
    from lens.vlm import read_image

    images = [(f, read_image(f)) for f in files]
    return [ImageQuestion(image, q, f"{f.name}: {q}") for f, image in images for q in questions]


def scene_items(n: int, *, start: int = 1000):
    """Held-out synthetic scenes ``start..start+n`` (never trained on) with their direct questions."""
    from attnlens.analyses import scenes as sc

    seeds = sc.split_seeds(sc.Split.HELD_OUT, start + n)[start:]
    return [(scene, q) for scene in (sc.make_scene(s) for s in seeds) for q in sc.questions(scene)]


def check_vision_text(lm) -> None:
    """A one-line error unless ``lm`` takes images."""
    from attnlens.formats.facts import Modality

    if lm.facts.modality is not Modality.VISION_TEXT:
        raise PromptError(f"{lm.facts.name} is a {lm.facts.modality.value} model: it takes no images; "
                          "use a vision-text model such as tiny-vlm")


def _provenance(lm, items, what: str, seeds=()):
    from attnlens.analyses.vlm_collect import image_questions

    labels = [q.label for q in image_questions(items)]
    return Provenance.for_model(lm.facts, seeds=tuple(seeds), prompts=f"{len(labels)} image questions ({what})",
                                inputs=labels)


def run_vision_aware(lm, items, *, steps: int = 2, k: int = 20, what: str = "images",
                     progress: Progress = SILENT) -> list:
    """VHD of every head (with vs without the image, same text) over ``items``: one HeadScores
    (``vision_aware.vhd``) whose arrays hold T-VHD per prompt and step."""
    from attnlens.analyses.vision_aware import vision_aware_scores
    from attnlens.analyses.vlm_collect import head_output_pairs

    check_vision_text(lm)
    task = progress.task(f"vision-aware heads: {len(items)} image questions", total=len(items))
    pairs = head_output_pairs(lm, items, steps=steps, on_batch=task.advance)
    return [vision_aware_scores(pairs, provenance=_provenance(lm, items, what), k=k)]


def run_visual_sinks(lm, items, *, sink_prompts: Sequence[str] | None = None, tau: float = 20.0,
                     what: str = "images", progress: Progress = SILENT) -> list:
    """VAR's analysis over ``items``: the base LM's sink dimensions (from text-only ``sink_prompts``,
    default the built-in general prompts), visual sinks, and the image-centric share per head
    (``visual_sinks.image_centric``)."""
    from attnlens.analyses.prompts import GENERAL_PROMPTS
    from attnlens.analyses.visual_sinks import visual_sink_scores
    from attnlens.analyses.vlm_collect import (
        base_lm_sink_dimensions,
        check_image_tokens,
        var_inputs,
    )

    check_vision_text(lm)
    check_image_tokens(lm)
    prompts = list(sink_prompts or GENERAL_PROMPTS)
    task = progress.task(f"sink dimensions: {len(prompts)} text prompts", total=1)
    dims = base_lm_sink_dimensions(lm, prompts)
    task.advance()
    task = progress.task(f"visual sinks: {len(items)} image questions", total=len(items))
    inputs = var_inputs(lm, items, on_item=task.advance)
    result = visual_sink_scores(inputs, dims, n_layers=lm.facts.n_layers, n_heads=lm.facts.n_heads,
                                provenance=_provenance(lm, items, what), tau=tau)
    return [result]
