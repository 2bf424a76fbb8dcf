"""Model-side collection for the vision-language analyses (the scoring functions are pure).

Everything here takes a :class:`lens.LoadedModel` of a LLaVA-style model and goes
through :func:`lens.vlm.prepare`, so it runs the same on tiny-vlm and on llava-hf models.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from attnlens.analyses.scenes import Question, Scene
from attnlens.analyses.vision_aware import HeadOutputPair, vhr_edits
from attnlens.analyses.visual_sinks import (
    SinkDimensions,
    VarInput,
    sink_dimensions,
    var_modifier,
    visual_sink_mask,
)
from attnlens.analyses.vqa import AnswerRecord
from lens import vlm
from lens.adapters import adapter_for
from lens.attention import AttentionObserver, attention_mode, modifying_weights
from lens.edits import editing
from lens.hooks import Point, Where, hooked

# An edit for one batch: given the batch about to run, a context manager active while it runs.
BatchEdit = Callable[[vlm.Batch], AbstractContextManager]


@dataclass(frozen=True)
class ImageQuestion:
    """One image (path, bytes or PIL image) and the question put with it; ``label`` names the
    prompt in results."""

    image: Any
    text: str
    label: str = ""


Item = ImageQuestion | tuple[Scene, Question]


def image_questions(items: Sequence[Item]) -> list[ImageQuestion]:
    """``items`` as :class:`ImageQuestion` s (a synthetic ``(scene, question)`` is labelled by its seed)."""
    return [it if isinstance(it, ImageQuestion) else ImageQuestion(it[0].image, it[1].text, f"scene {it[0].seed}: "
                                                                   f"{it[1].text}") for it in items]


def question_prompt(lm, question: str, *, with_image: bool) -> str:
    """``"<image>\\n" + question``, or the question alone for the text-only baseline."""
    return f"{vlm.placeholder(lm)}\n{question}" if with_image else f"\n{question}"


@torch.no_grad()
def ask(lm, items: Sequence[tuple[Scene, Question]], *, with_image: bool = True, batch_size: int = 32,
        max_new_tokens: int = 3, edit: BatchEdit | None = None,
        on_batch: Callable[[int], None] | None = None) -> list[AnswerRecord]:
    """Greedy answers (and forced choices) to each ``(scene, question)``, chat-formatted.

    With ``with_image=False`` the same question goes in without the image (the text-only
    baseline); identical prompts are then run once. ``edit(batch)`` (see :data:`BatchEdit`)
    is active while each batch generates: that is how interventions are measured.
    """
    tok = lm.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    keys = [(q.text, s.seed if with_image else None) for s, q in items]
    unique = list(dict.fromkeys(keys))
    first_item = {k: i for i, k in reversed(list(enumerate(keys)))}
    results: dict[tuple, tuple[str, torch.Tensor]] = {}
    for b in range(0, len(unique), batch_size):
        chunk = unique[b:b + batch_size]
        inputs = []
        for key in chunk:
            scene, question = items[first_item[key]]
            prompt = question_prompt(lm, question.text, with_image=with_image)
            inputs.append(vlm.prepare(lm, prompt, [scene.image] if with_image else [], chat=True))
        batch = vlm.collate(inputs, pad)
        with edit(batch) if edit is not None else nullcontext():
            out = lm.model.generate(**batch.model_kwargs(lm.device, _dtype(lm)), max_new_tokens=max_new_tokens,
                                    do_sample=False, pad_token_id=pad, output_logits=True,
                                    return_dict_in_generate=True)
        width = batch.input_ids.shape[1]
        for row, key in enumerate(chunk):
            text = tok.decode(out.sequences[row, width:], skip_special_tokens=True)
            results[key] = (text, out.logits[0][row].float().cpu())
        if on_batch:
            on_batch(len(chunk))
    records = []
    for (scene, q), key in zip(items, keys):
        text, logits = results[key]
        first = [tok(c, add_special_tokens=False).input_ids[0] for c in q.choices]
        choice = q.choices[int(torch.argmax(logits[first]))]
        records.append(AnswerRecord(scene=scene.seed, kind=q.kind, question=q.text, truth=q.answer, given=text,
                                    choice=choice, with_image=with_image, about=q.about))
    return records


def _dtype(lm) -> torch.dtype:
    return next(lm.model.parameters()).dtype


def _pad_id(lm) -> int:
    tok = lm.tokenizer
    return tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id


@contextmanager
def _record_head_outputs(model, last: int) -> Iterator[dict[int, Tensor]]:
    """Layer -> the output projection's input (z) of the last ``last`` positions ``[batch, last, head * d_head]``."""
    adapter = adapter_for(model)
    store: dict[int, Tensor] = {}

    def keep(i):
        def fn(z):  # [batch, pos, head, d_head]
            store[i] = z[:, -last:].flatten(-2).detach().float().cpu()
        return fn

    with hooked(model, {Point(Where.Z, i): keep(i) for i in range(adapter.n_layers)}, adapter=adapter):
        yield store


@torch.no_grad()
def head_output_pairs(lm, items: Sequence[Item], *, steps: int = 2, batch_size: int = 16,
                      on_batch: Callable[[int], None] | None = None) -> list[HeadOutputPair]:
    """Per image and question (:data:`Item`): every head's output with and without the image at the same text.

    The with-image run decodes ``steps`` tokens greedily; both runs are then fed the
    prompt plus the first ``steps - 1`` of those tokens, and the head outputs of the last
    ``steps`` positions are kept (step 0: the prompt's last position).
    """
    pad = _pad_id(lm)
    n_heads = lm.facts.n_heads
    out = []
    items = image_questions(items)
    for b in range(0, len(items), batch_size):
        chunk = items[b:b + batch_size]
        with_img = [vlm.prepare(lm, question_prompt(lm, q.text, with_image=True), [q.image], chat=True)
                    for q in chunk]
        text = [vlm.prepare(lm, question_prompt(lm, q.text, with_image=False), [], chat=True) for q in chunk]
        batch = vlm.collate(with_img, pad)
        gen = lm.model.generate(**batch.model_kwargs(lm.device, _dtype(lm)), max_new_tokens=steps,
                                min_new_tokens=steps, do_sample=False, pad_token_id=pad)
        fed = gen[:, batch.input_ids.shape[1]:][:, : steps - 1].cpu()
        z = {}
        for name, inputs in (("image", with_img), ("text", text)):
            extended = [x.extended(fed[i:i + 1]) for i, x in enumerate(inputs)]
            eb = vlm.collate(extended, pad)
            with _record_head_outputs(lm.model, steps) as store:
                lm.model(**eb.model_kwargs(lm.device, _dtype(lm)))
            # a cross-attention layer over the image (Mllama) does not run without one: its heads output 0
            blank = torch.zeros_like(next(iter(store.values())))
            z[name] = torch.stack([store.get(i, blank) for i in range(lm.facts.n_layers)], dim=2)  # [batch, step, layer, head*d]
        for i, q in enumerate(chunk):
            zi, zt = (z[k][i].unflatten(-1, (n_heads, -1)) for k in ("image", "text"))
            out.append(HeadOutputPair(z_image=zi, z_text=zt, label=q.label))
        if on_batch:
            on_batch(len(chunk))
    return out


@torch.no_grad()
def layer_inputs(lm, x: vlm.VlmInput) -> dict[int, Tensor]:
    """Layer -> the residual stream entering it ``[pos, d_model]`` (one prompt)."""
    out = lm.model(**x.model_kwargs(lm.device, _dtype(lm)), output_hidden_states=True)
    hs = out.hidden_states
    return {layer: hs[layer][0].float().cpu() for layer in range(lm.facts.n_layers)}


@torch.no_grad()
def base_lm_sink_dimensions(lm, prompts: Sequence[str], **kw) -> SinkDimensions:
    """Sink dimensions from the language model's massive activations on text-only ``prompts``
    (the outputs of every layer); for a LLaVA this is its base LM, untouched by the image path."""
    hidden = []
    for prompt in prompts:
        x = vlm.prepare(lm, prompt)
        out = lm.model(**x.model_kwargs(lm.device, _dtype(lm)), output_hidden_states=True)
        hidden.append({layer: out.hidden_states[layer + 1][0].float().cpu() for layer in range(lm.facts.n_layers)})
    return sink_dimensions(hidden, **kw)


class _QueryWeights(AttentionObserver):
    """Records layer -> the attention probabilities ``[head, q, k]`` of the queries from ``start``
    on (row 0), for every language-model layer."""

    needs_weights = True

    def __init__(self, start: int) -> None:
        self.start, self.weights = start, {}

    def on_outputs(self, module, layer, query, key, value, out, weights) -> None:
        self.weights[layer] = weights[0, :, self.start:].float().cpu()


@torch.no_grad()
def var_inputs(lm, items: Sequence[Item], *, on_item: Callable[[], None] | None = None) -> list[VarInput]:
    """Per image and question (:data:`Item`) with the image: each layer's input hidden state and the
    attention of the text queries after the image (all keys)."""
    check_image_tokens(lm)
    out = []
    for q in image_questions(items):
        x = vlm.prepare(lm, question_prompt(lm, q.text, with_image=True), [q.image], chat=True)
        start = max(s.end for s in x.spans)
        recorder = _QueryWeights(start)
        with attention_mode(lm, recorder):
            res = lm.model(**x.model_kwargs(lm.device, _dtype(lm)), output_hidden_states=True)
        hidden = {layer: res.hidden_states[layer][0].float().cpu() for layer in range(lm.facts.n_layers)}
        labels = [""] * x.n_tokens
        for s in x.spans:
            labels[s.start:s.end] = s.labels()
        out.append(VarInput(hidden=hidden, attention=recorder.weights, image_mask=x.image_mask(),
                            queries=list(range(start, x.n_tokens)), labels=labels))
        if on_item:
            on_item()
    return out


def check_image_tokens(lm) -> None:
    """Visual sinks live among the image's tokens in the language model's sequence: a one-line refusal
    for a model that reads its images through cross-attention instead (Mllama)."""
    from lens.adapters import adapter_for

    cross = getattr(adapter_for(lm.model), "cross_layers", list)()
    if cross:
        from attnlens.analyses.visual_sinks import VisualSinkError

        raise VisualSinkError(f"{lm.facts.architecture} has no image tokens in its text sequence: it reads images "
                              f"through cross-attention layers {cross}, so visual sinks and VAR (defined on image "
                              "tokens) do not apply; VHD does")


def var_edit(lm, dims: SinkDimensions, *, tau: float = 20.0, factor: float = 0.6,
             layers: Sequence[int] | None = None, random_heads_seed: int | None = None) -> BatchEdit:
    """A :data:`BatchEdit` applying VAR's redistribution: a clean forward of the batch finds each
    layer's visual sinks, then the generation runs with them redistributed, on the text queries
    (every position after the first image token that is not an image token).

    With ``random_heads_seed``, the random-head control: each layer's image-centric
    (head, query) pattern is moved onto a random permutation of the heads.
    """
    check_image_tokens(lm)

    @contextmanager
    def edit(batch: vlm.Batch):
        image_mask = torch.zeros_like(batch.input_ids, dtype=torch.bool)
        after = torch.zeros_like(image_mask)
        for row, spans in enumerate(batch.spans):
            for s in spans:
                image_mask[row, s.start:s.end] = True
            if spans:
                after[row, spans[0].start:] = True
        with torch.no_grad():
            res = lm.model(**batch.model_kwargs(lm.device, _dtype(lm)), output_hidden_states=True)
        sinks = {}
        for layer in range(lm.facts.n_layers):
            h = res.hidden_states[layer].float().cpu()
            sinks[layer] = torch.stack([visual_sink_mask(h[r], image_mask[r], dims.dims, tau=tau)
                                        for r in range(h.shape[0])])
        perm = None
        if random_heads_seed is not None:
            g = torch.Generator().manual_seed(random_heads_seed)
            perm = {layer: torch.randperm(lm.facts.n_heads, generator=g) for layer in range(lm.facts.n_layers)}
        modifier = var_modifier(image_mask, sinks, query_mask=after & ~image_mask, layers=layers, factor=factor,
                                head_permutation=perm)
        with modifying_weights(lm, modifier):
            yield sinks

    return edit


def vhr_edit(lm, scales) -> BatchEdit:
    """A :data:`BatchEdit` scaling head outputs by ``scales [layer, head]`` (VHR or its control),
    through :func:`lens.edits.editing`."""
    edits = vhr_edits(scales, n_layers=lm.facts.n_layers, n_heads=lm.facts.n_heads)
    return lambda batch: editing(lm, edits)
