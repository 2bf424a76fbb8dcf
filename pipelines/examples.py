"""Example captures saved with a scan: each analysis' own inputs, so that views and report
thumbnails show a head on the input that makes it what it is (an induction head on repeated
tokens, a retrieval head on a needle prompt with its answer, a sink head on prose).

Each capture's folder name says what it is; :data:`EXAMPLE_OF` maps an analysis to the
capture that shows its inputs (results carry it in ``params["example_capture"]``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from attnlens.formats import set_focus

PROSE, REPEATED, NEEDLE, IMAGE, AUDIO = ("captures/prose", "captures/repeated-tokens", "captures/needle",
                                         "captures/image", "captures/audio")
EXAMPLE_OF = {"summary": PROSE, "sinks": PROSE, "streaming": NEEDLE, "retrieval": NEEDLE, "taxonomy": REPEATED,
              "ablation": NEEDLE, "vit_distance": IMAGE, "vit_cls": IMAGE, "vit_families": IMAGE,
              "vit_pruning": IMAGE, "cross_attention": AUDIO, "alignment_heads": AUDIO,
              "vision_aware": IMAGE, "visual_sinks": IMAGE}


@dataclass
class Example:
    name: str  # folder under the results folder, e.g. "captures/repeated-tokens"
    capture: object  # lens.Capture


def prose_examples(lm, prompts, n: int) -> list[Example]:
    """Patterns, queries and keys of the first ``n`` prompts (for the explorer and the Q/K map)."""
    import lens

    sites = [lens.Site.PATTERN, lens.Site.Q, lens.Site.K]
    return [Example(f"{PROSE}-{i:03d}", lens.run(lm, p, sites=sites).capture) for i, p in enumerate(prompts[:n])]


def repeated_example(lm, *, repeat_len: int = 40, seed: int = 0) -> Example:
    """Every pattern on one random sequence repeated once (the taxonomy's input), stored as float16."""
    import lens
    from attnlens.analyses.collect import repeated_tokens

    ids, _ = repeated_tokens(lm, repeat_len=repeat_len, batch=1, seed=seed)
    return Example(REPEATED, lens.run(lm, ids, sites=[lens.Site.PATTERN], dtype=torch.float16).capture)


def needle_example(lm, trial, answer_ids: torch.Tensor) -> Example:
    """Every pattern over a needle prompt followed by the model's own answer (teacher-forced),
    so the answer's rows show where the retrieval heads read; stored as float16."""
    import lens

    ids = torch.cat([trial.input_ids.reshape(-1), answer_ids.reshape(-1)]).reshape(1, -1)
    cap = lens.run(lm, ids, sites=[lens.Site.PATTERN], dtype=torch.float16).capture
    n_prompt = int(trial.input_ids.numel())
    set_focus(cap.meta, rows=(n_prompt - 1, ids.shape[1]), keys=tuple(trial.needle_span),
              why="the answer's rows (from the last prompt token); keys: the needle")
    return Example(NEEDLE, cap)


def image_examples(lm, images) -> list[Example]:
    import lens

    return [Example(f"{IMAGE}-{i:03d}", lens.run(lm, im, sites=[lens.Site.PATTERN]).capture) for i, im in enumerate(images)]


def image_question_examples(lm, items) -> list[Example]:
    """Captures of a vision-text model on ``(image, question)`` items: patterns and z, with
    the image layout (where the patch tokens sit) and the image, for the dashboard's overlay."""
    import lens
    from lens import vlm

    return [Example(f"{IMAGE}-{i:03d}", lens.run(lm, f"{vlm.placeholder(lm)}\n{question}", image=image, chat=True,
                                                 sites=[lens.Site.PATTERN, lens.Site.Z]).capture)
            for i, (image, question) in enumerate(items)]
