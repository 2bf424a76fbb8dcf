"""Training data for tiny-vlm's projector: cached vision features and answer-only token sequences.

The vision tower is frozen, so its features are computed once per split and cached as
safetensors (:func:`cached_features`); training then runs the projector and the frozen
language model only. A training sequence is exactly what :func:`lens.vlm.prepare`
builds for ``"<image>\\n" + question`` with the chat template, followed by the answer
and ``<|im_end|>``; the loss is on those answer tokens only.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from attnlens.analyses import scenes as sc
from lens.vlm import DEFAULT_PLACEHOLDER


@torch.no_grad()
def vision_features(model, processor, images: Sequence, *, batch_size: int = 64) -> Float[Tensor, "image token d_vision"]:
    """What a LLaVA's projector reads for each image: the selected vision layer, CLS kept or cropped
    as ``model.config`` says (the same selection as ``LlavaModel.get_image_features``)."""
    cfg = model.config
    tower = model.model.vision_tower
    out = []
    for i in range(0, len(images), batch_size):
        pixels = processor(images=list(images[i:i + batch_size]), return_tensors="pt").pixel_values
        hidden = tower(pixels.to(tower.dtype), output_hidden_states=True).hidden_states[cfg.vision_feature_layer]
        out.append(hidden if cfg.vision_feature_select_strategy == "full" else hidden[:, 1:])
    return torch.cat(out).float()


def cached_features(model, processor, split: sc.Split, n: int, cache: Path, *,
                    log=print) -> tuple[list[sc.Scene], Float[Tensor, "image token d_vision"]]:
    """The ``n`` scenes of ``split`` and their vision features, from ``cache`` when present."""
    from safetensors.torch import load_file, save_file

    cfg = model.config
    key = hashlib.sha256(repr((split.value, n, cfg.vision_feature_layer, cfg.vision_feature_select_strategy,
                               processor.to_json_string())).encode()).hexdigest()[:12]
    path = Path(cache) / f"features-{split.value}-{n}-{key}.safetensors"
    scenes = list(sc.scenes(split, n))
    if path.is_file():
        return scenes, load_file(str(path))["features"]
    log(f"computing vision features of {n} {split.value} scenes -> {path}")
    feats = vision_features(model, processor, [s.image for s in scenes])
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"features": feats.contiguous()}, str(path))
    return scenes, feats


@dataclass(frozen=True)
class Example:
    """One question about scene ``image`` (an index into the split's scenes and features)."""

    image: int
    question: sc.Question


def training_examples(scenes: Sequence[sc.Scene], seed: int) -> list[Example]:
    """Every scene's training questions (direct ones plus a balanced yes/no pair of each kind), shuffled."""
    rng = random.Random(seed)
    out = [Example(i, q) for i, s in enumerate(scenes) for q in sc.training_questions(s, rng)]
    rng.shuffle(out)
    return out


@dataclass(frozen=True)
class Template:
    """Token ids around the image for one question: ``before`` + image tokens + ``after`` (+ answer)."""

    before: list[int]
    after: list[int]


class Sequencer:
    """Builds right-padded batches of ``[before, image, after, answer, <|im_end|>]`` token ids."""

    def __init__(self, tokenizer, image_token_id: int, n_image_tokens: int):
        self.tok = tokenizer
        self.image_token_id = image_token_id
        self.n_image = n_image_tokens
        self.end = tokenizer.convert_tokens_to_ids("<|im_end|>")
        self._cache: dict[str, Template] = {}

    def template(self, question: str) -> Template:
        if question not in self._cache:
            mark = getattr(self.tok, "image_token", None) or DEFAULT_PLACEHOLDER
            text = self.tok.apply_chat_template([{"role": "user", "content": f"{mark}\n{question}"}],
                                                tokenize=False, add_generation_prompt=True)
            before, after = text.split(mark)
            self._cache[question] = Template(self.tok(before, add_special_tokens=False).input_ids,
                                             self.tok(after, add_special_tokens=False).input_ids)
        return self._cache[question]

    def answer_ids(self, answer: str) -> list[int]:
        return self.tok(answer, add_special_tokens=False).input_ids + [self.end]

    def batch(self, examples: Sequence[Example]) -> tuple[Int[Tensor, "batch pos"], Bool[Tensor, "batch pos"],
                                                          Bool[Tensor, "batch pos"], Int[Tensor, "batch pos"]]:
        """(input_ids, attention_mask, image_mask, labels): labels are -100 except where the
        next token is an answer token (so ``labels[:, t]`` is the target of position ``t``)."""
        rows = []
        for ex in examples:
            t = self.template(ex.question.text)
            ans = self.answer_ids(ex.question.answer)
            ids = t.before + [self.image_token_id] * self.n_image + t.after + ans
            first = len(ids) - len(ans)
            rows.append((ids, first))
        width = max(len(r[0]) for r in rows)
        ids = torch.zeros((len(rows), width), dtype=torch.long)
        attn = torch.zeros((len(rows), width), dtype=torch.bool)
        labels = torch.full((len(rows), width), -100, dtype=torch.long)
        for i, (row, first) in enumerate(rows):
            ids[i, :len(row)] = torch.tensor(row)
            attn[i, :len(row)] = True
            labels[i, first - 1:len(row) - 1] = torch.tensor(row[first:])  # position t predicts token t + 1
        return ids, attn, ids == self.image_token_id, labels


def sequencer_for(lm) -> Sequencer:
    cfg = lm.model.config
    return Sequencer(lm.tokenizer, int(cfg.image_token_id), int(cfg.image_seq_length))
