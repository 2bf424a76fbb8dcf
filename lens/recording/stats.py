"""The "stats" capture mode: per-layer, per-head attention statistics without patterns.

The model runs with the fused statistics kernel as its attention (Triton on a GPU, a C++
kernel or the chunked PyTorch reference on CPU), so nothing N x N is ever built: long contexts cost
O(N) memory. :func:`stats_mode` is the switch (an entry on :mod:`lens.attention`'s stack,
so it nests with pattern capture and edits); :func:`run_stats` one forward pass of a
prompt. Analyses take these statistics where they would take patterns
(:func:`analyses.row_stats_from_kernel`). Saved runs use :mod:`formats.stats_run`'s format.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from attnlens.formats.capture import CaptureMeta
from attnlens.formats.errors import BackendError, KernelInputError
from attnlens.formats.facts import Modality
from attnlens.formats.output import output_folder
from attnlens.formats.sites import Part
from attnlens.formats.stats_run import StatsFile, write_stats
from attnlens.formats.vocab import KernelBackend
from lens import _checks, _exclusive
from lens.attention import (
    AttentionCompute,
    attention_mode,
    attention_modules,
    check_layers,
    model_attention,
    reaches_stack,
    weights_and_output,
)
from lens.hooks import Point, Where, hooked
from lens.loaded import LoadedModel


@dataclass
class StatsRecorder(AttentionCompute):
    """Stats mode on the attention stack: ``stats[layer]`` gets one CPU ``kernels.AttnStats`` per
    forward call of that layer (e.g. per generation step)."""

    spec: object  # kernels.StatsSpec
    layers: frozenset[int] | None = None
    backend: KernelBackend | str = "auto"
    stats: dict[int, list] = field(default_factory=dict)
    fallback_calls: int = 0  # calls that used the explicit-mask chunked path (mask not causal + padding)
    on_layer: Callable[[int], None] | None = None  # called after each recorded layer (progress bars)
    part: Part = Part.SELF
    name = "stats mode"

    def compute(self, module, layer, query, key, value, attention_mask, *, need_weights, modify, **kwargs):
        from attnlens.kernels.hf_attention import layer_sinks, stats_attention_call

        if modify is not None:
            raise KernelInputError(f"stats mode cannot record layer {layer} while an intervention modifies its "
                                   "attention weights: run them separately")
        try:
            out, stats, fallback = stats_attention_call(module, query, key, value, attention_mask, spec=self.spec,
                                                        backend=self.backend, **kwargs)
        except KernelInputError as err:  # name the family: the kernel's message names only the tensors
            kind = getattr(getattr(module, "config", None), "model_type", None)
            raise KernelInputError(f"{type(module).__name__}{f' ({kind})' if kind else ''} layer {layer}: stats "
                                   f"mode cannot run this attention: {err}") from None
        self.fallback_calls += int(fallback)
        self.stats.setdefault(layer, []).append(stats.to("cpu"))
        if self.on_layer is not None:
            self.on_layer(layer)
        weights = None
        if need_weights:  # an observer (pattern capture) wants probabilities as well: compute them too
            if (kwargs.get("softcap") is not None or layer_sinks(module, kwargs) is not None
                    or kwargs.get("position_bias") is not None):
                _, weights = model_attention(module, query, key, value, attention_mask, **kwargs)  # keeps them
            else:
                _, weights = weights_and_output(module, query, key, value, attention_mask,
                                                scaling=kwargs.get("scaling"))
        return out, weights

    def __getitem__(self, layer: int) -> list:
        return self.stats[layer]


@contextmanager
def stats_mode(model_or_lm, spec, layers: Sequence[int] | None = None, *, backend: KernelBackend | str = "auto",
               on_layer: Callable[[int], None] | None = None, part: Part = Part.SELF) -> Iterator[StatsRecorder]:
    """Record per-head ``kernels.AttnStats`` of every selected layer inside the block.

    Soft-capped logits (Gemma 2) and learned attention sinks (gpt-oss) are computed as the
    model's own eager attention does; with sinks the statistics are of the model's probabilities
    over the real keys, which sum to less than 1 (see :mod:`kernels.spec`).

    ``model_or_lm``: a :class:`LoadedModel` or a transformers model whose attention goes
    through ``AttentionInterface`` (or GPT-J's, CodeGen's, GPT-Neo's ``_attn``). A loaded causal
    decoder whose attention does not (Falcon, BLOOM, MPT, XGLM) gets statistics computed beside its
    own attention from its projections (see ``_beside``); other such models are refused in one line. ``part``: which attention (an encoder-decoder's encoder
    self-attention and cross-attention run non-causal, as the modules say). Yields the
    :class:`StatsRecorder`; ``rec.stats[layer][call]``.
    """
    from attnlens.kernels import StatsSpec

    if not isinstance(model_or_lm, (LoadedModel, torch.nn.Module)):
        raise KernelInputError(f"model_or_lm must be a lens.LoadedModel or a transformers model, got "
                               f"{type(model_or_lm).__name__}")
    if not isinstance(spec, StatsSpec):
        raise KernelInputError(f"spec must be a StatsSpec, got {type(spec).__name__}")
    if not isinstance(part, Part):
        raise KernelInputError(f"part must be a lens.Part, got {part!r}")
    if on_layer is not None and not callable(on_layer):
        raise KernelInputError(f"on_layer must be callable or None, got {type(on_layer).__name__}")
    _checks.stats_backend(backend)
    model = model_or_lm.model if isinstance(model_or_lm, LoadedModel) else model_or_lm
    try:
        if layers is not None:
            layers = _checks.index_list(layers, "layers")
        chosen = check_layers(attention_modules(model), layers, part)
    except Exception as err:
        raise KernelInputError(str(err)) from None
    rec = StatsRecorder(spec=spec, layers=chosen, backend=backend, on_layer=on_layer, part=part)
    wanted = chosen if chosen is not None else {layer for p, layer in attention_modules(model) if p is part}
    if reaches_stack(model):
        mode = attention_mode(model, rec)
    elif isinstance(model_or_lm, LoadedModel) and _beside_possible(model_or_lm, part):
        mode = _beside(model_or_lm, rec, sorted(wanted))
    else:
        mode = attention_mode(model, rec)  # refuses in one line
    calls = []
    with hooked(model, {Point(Where.CALL): lambda args, kwargs: calls.append(1)}), \
            _exclusive.recording(model, "stats mode"), mode:
        yield rec
    missing = sorted(set(wanted) - set(rec.stats))
    if calls and missing:  # the model ran, and some layer never reached the statistics kernel
        from lens.attention import family

        raise BackendError(f"{family(model)} ran but stats mode recorded nothing for layers {missing}: "
                           "their attention does not go through transformers' attention interface")


def _beside_possible(lm: LoadedModel, part: Part) -> bool:
    """Statistics beside the model's own attention: for causal self-attention (Falcon, BLOOM, MPT, XGLM, MVP's
    decoder); an encoder's own attention and cross-attention keep the one-line refusal."""
    return part is Part.SELF and lm.facts.causal


@contextmanager
def _beside(lm: LoadedModel, rec: StatsRecorder, layers: list[int]) -> Iterator[None]:
    """Stats of a family whose attention the stack cannot reach, computed beside its own attention (which keeps
    computing the outputs): from the q/k/v of its projections (:mod:`lens.projected`), its scale, its ALiBi bias
    and the call's padding mask, by the statistics kernel (a per-key ``score_bias`` runs its torch path). The family's own code
    builds its N x N scores in any case, so this costs one more attention per recorded layer, not memory."""
    from attnlens.kernels import attention_with_stats
    from lens.adapters import adapter_for
    from lens.attention import family, score_scale
    from lens.projected import key_bias, projected_qkv_points, reads_cache

    if rec.backend == "triton":
        raise KernelInputError(f"backend='triton': {family(lm.model)} computes attention outside transformers' "
                               "attention interface, so its statistics run on the torch backend ('auto' or 'torch')")
    adapter = adapter_for(lm.model, lm.facts.n_layers)
    model_call: dict = {}

    def on_call(args, kwargs) -> None:
        if reads_cache(kwargs):
            raise KernelInputError(f"{family(lm.model)} computes attention outside transformers' attention interface:"
                                   " its statistics are computed beside it from the new positions' projections, "
                                   "which a KV cache leaves out; record them without generation (one forward pass)")
        # the decoder's own padding mask in an encoder-decoder (MVP), the model's in a decoder
        model_call["mask"] = kwargs.get("decoder_attention_mask" if lm.facts.encoder_layers else "attention_mask")

    def layer_stats(layer: int):
        scale = score_scale(adapter.attention(layer), lm.facts.d_head)

        def on_qkv(q, k, v, arguments) -> None:
            mask = model_call.get("mask")
            if isinstance(mask, torch.Tensor) and tuple(mask.shape) != (q.shape[0], k.shape[2]):
                raise KernelInputError(f"attention_mask of shape {tuple(mask.shape)}: stats beside the attention of "
                                       f"{family(lm.model)} take a [batch, pos] = [{q.shape[0]}, {k.shape[2]}] "
                                       "padding mask")
            kpm = mask.bool() if isinstance(mask, torch.Tensor) else None
            bias = key_bias(lm, arguments, scale, q.shape[0], q.shape[1], k.shape[2])
            res = attention_with_stats(q, k, v, causal=True, scale=scale, spec=rec.spec, key_padding_mask=kpm,
                                       backend=rec.backend, score_bias=bias)
            rec.stats.setdefault(layer, []).append(res.stats.to("cpu"))
            if rec.on_layer is not None:
                rec.on_layer(layer)
        return on_qkv

    points = [(Point(Where.CALL), on_call)]
    for layer in layers:
        points += projected_qkv_points(lm, adapter, layer, layer_stats(layer))
    with hooked(lm, points, adapter=adapter):
        yield


@dataclass
class StatsRun:
    """Logits ``[batch, pos, vocab]`` and ``stats[layer]`` (a :class:`kernels.AttnStats`) of one forward pass."""

    logits: torch.Tensor | None
    stats: dict[int, object]
    spec: object  # kernels.StatsSpec
    meta: CaptureMeta

    def save(self, folder: str | Path, *, force: bool = False) -> Path:
        """Write the run (see :mod:`formats.stats_run`); a non-empty ``folder`` needs ``force``."""
        folder = Path(folder)
        with output_folder(folder, force=force) as tmp:
            self.write_into(tmp)
        return folder

    def write_into(self, folder: Path) -> Path:
        arrays = {layer: {name: getattr(s, name).contiguous().numpy() for name in type(s)._fields}
                  for layer, s in self.stats.items()}
        settings = {"sink_tokens": self.spec.sink_tokens, "window": self.spec.window, "spans": self.spec.spans,
                    "topk": self.spec.topk, "key_stats": self.spec.key_stats}
        return write_stats(folder, self.meta, settings, arrays)

    @classmethod
    def load(cls, folder: str | Path) -> StatsRun:
        from attnlens.kernels import AttnStats, StatsSpec

        f = StatsFile.load(folder)
        stats = {layer: AttnStats(**{name: torch.from_numpy(f.read(layer, name)) for name in AttnStats._fields})
                 for layer in f.layers}
        return cls(logits=None, stats=stats, spec=StatsSpec(**f.settings), meta=f.meta)


def run_stats(lm: LoadedModel, prompt, *, spec=None, layers=None, backend: KernelBackend | str = "auto", chat: bool = False,
              image=None, on_layer: Callable[[int], None] | None = None) -> StatsRun:
    """One forward pass of ``lm`` over ``prompt`` recording kernel statistics at ``layers`` (all by default).

    ``prompt`` is what :func:`lens.run` takes (or a :class:`lens.inputs.ModelInput` already
    prepared). ``image``: for a vision-text model, the image of the prompt's ``<image>``
    placeholder; the image's token span is appended to ``spec.spans`` (the mass each query puts
    on the image) and its tokens are labelled ``img0:CLS``, ``img0:patch(r,c)``.
    ``on_layer(layer)`` is called as each layer's statistics are done (for a progress bar).
    """
    from dataclasses import replace

    from attnlens.kernels import StatsSpec
    from lens.inputs import ModelInput, prepare
    from lens.recording.native import build_capture
    from lens.recording.spec import CaptureSpec

    _checks.model(lm)
    if spec is not None and not isinstance(spec, StatsSpec):
        raise KernelInputError(f"spec must be a StatsSpec or None, got {type(spec).__name__}")
    _checks.stats_backend(backend)
    _checks.flag(chat, "chat")
    if lm.facts.modality in (Modality.TEXT, Modality.VISION_TEXT) and not _checks.prepared(prompt):
        _checks.text_prompt(prompt)
    spec = spec or StatsSpec()
    layers = _checks.index_list(layers, "layers")
    if layers is None:  # every layer with attention (a hybrid's other blocks have none)
        layers = sorted(layer for part, layer in attention_modules(lm.model) if part is Part.SELF)
    selection = CaptureSpec.resolve(lm.facts, layers=layers)  # validates the layers
    x = prompt if isinstance(prompt, ModelInput) else prepare(lm, prompt, image=image, chat=chat)
    if x.spans:
        spec = replace(spec, spans=(*spec.spans, *x.spans))
    with torch.no_grad(), stats_mode(lm, spec, layers=selection.layers, backend=backend, on_layer=on_layer) as rec:
        logits = getattr(lm.model(**x.model_kwargs(lm)), "logits", None)
    stats = {layer: calls[0] for layer, calls in rec.stats.items()}
    meta = replace(build_capture(lm, selection, [], x, backend=f"stats-{backend}").meta, sites=[], layout=None)
    return StatsRun(logits=logits, stats=stats, spec=spec, meta=meta)

