"""``lens scan``: every registered analysis that applies to the model, with sensible defaults.

The registry drives it: the analyses come from :func:`analyses.registry.for_modality`, and
each entry names its runner (``(lm, plan, progress, **needed) -> ScanPart``, the built-in ones
here, each collecting its inputs and calling its workflow in :mod:`pipelines.heads`) and the
analyses whose output that runner takes (``needs``: streaming takes the retrieval ranking).
Runners run in this process, or on Ray workers through an executor
(:mod:`pipelines.executors`); this process assembles the parts in registry order.
:func:`scan` returns a :class:`ScanResult`; :meth:`ScanResult.save` writes it (results,
example captures of each analysis' inputs) into a folder.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from attnlens.formats.errors import AnalysisError, SelectionError
from attnlens.formats.facts import Modality
from attnlens.formats.vocab import Source
from attnlens.pipelines import examples, heads
from attnlens.pipelines.executors import CALLS, Executor, call
from attnlens.pipelines.progress import SILENT, Progress


@dataclass(frozen=True)
class ScanSettings:
    """What ``lens scan`` runs. ``thorough`` raises every default (tens of minutes on a CPU)."""

    thorough: bool = False
    lengths: tuple[int, ...] | None = None  # NIAH prompt lengths (default 300, 600; thorough 512, 1024, 2048)
    depths: tuple[float, ...] | None = None  # NIAH depths (default 0.25, 0.75; thorough 0 .. 1 in quarters)
    ablate: tuple[int, ...] | None = None  # sizes k of the causal ablation test (default none; thorough 5, 10, 20)
    source: str = "pattern"  # "pattern" or "kernel" for retrieval, sinks and streaming
    chat: bool | None = None  # chat-format NIAH prompts (default: when the model has a template)
    captures: int = 2  # prose example captures (patterns, q, k) for the explorer and the Q/K map
    gate_steps: int | None = None  # DuoAttention gate steps at most (default 0: not run; thorough 300, early stop)

    def __post_init__(self) -> None:
        Source(self.source)  # `source` 'x' is not one of pattern, kernel
        for k in self.ablate or ():
            if k < 1:
                raise SelectionError(f"ablate sizes must be >= 1, got {k}")
        for n in self.lengths or ():
            if not 32 <= n <= 1_000_000:
                raise SelectionError(f"NIAH lengths must be 32-1000000 tokens, got {n}")
        for d in self.depths or ():
            if not 0.0 <= d <= 1.0:
                raise SelectionError(f"NIAH depths must be in [0, 1], got {d}")
        if not 0 <= self.captures <= 16:
            raise SelectionError(f"captures must be 0-16, got {self.captures}")

    @property
    def niah_lengths(self) -> tuple[int, ...]:
        return self.lengths or ((512, 1024, 2048) if self.thorough else (300, 600))

    @property
    def niah_depths(self) -> tuple[float, ...]:
        return self.depths or ((0.0, 0.25, 0.5, 0.75, 1.0) if self.thorough else (0.25, 0.75))

    @property
    def ablation_sizes(self) -> tuple[int, ...]:
        return self.ablate if self.ablate is not None else ((5, 10, 20) if self.thorough else ())

    @property
    def gates(self) -> int:
        return self.gate_steps if self.gate_steps is not None else (300 if self.thorough else 0)


@dataclass
class ScanResult:
    model: str
    results: list = field(default_factory=list)  # HeadScores and Curves
    examples: list[examples.Example] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # analyses skipped, and why
    maps: list = field(default_factory=list)  # formats.TokenMaps (speech: saliency per token)

    def save(self, folder: str | Path) -> list[Path]:
        """Write every result and example capture into ``folder`` (an empty output folder)."""
        folder = Path(folder)
        paths = [r.save(folder) for r in [*self.results, *self.maps]]
        for ex in self.examples:
            ex.capture.write_into(folder / ex.name)
        return paths


@dataclass
class ScanPart:
    """What one scan runner adds: results, example captures, notes, token maps, and the output
    the analyses that need this one take (retrieval: the ranking)."""

    results: list = field(default_factory=list)
    examples: list = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    maps: list = field(default_factory=list)  # formats.TokenMaps (speech: saliency per token)
    output: object = None

    def add(self, analysis: str, results) -> ScanPart:
        for r in results:
            r.params.setdefault("example_capture", examples.EXAMPLE_OF.get(analysis, examples.PROSE))
        self.results.extend(results)
        return self


@dataclass
class Plan:
    """What every unit of one scan needs, decided once by the driver: the settings, the NIAH
    lengths (shrunk to fit small contexts), chat formatting, the NIAH trials and, for
    vision-text models, the held-out scene questions."""

    settings: ScanSettings
    lengths: tuple[int, ...]
    chat: bool
    trials: list
    scenes: list = field(default_factory=list)  # (scene, question) items

    @classmethod
    def for_model(cls, lm, settings: ScanSettings) -> Plan:
        if lm.facts.modality not in (Modality.TEXT, Modality.VISION_TEXT):  # ViT and speech runners need none of it
            return cls(settings, (), False, [])
        chat = settings.chat
        chat = bool(getattr(lm.tokenizer, "chat_template", None)) if chat is None else chat
        lengths = settings.niah_lengths
        if settings.lengths is None:  # defaults shrink to fit small models' contexts (room left for the answer)
            lengths = tuple(sorted({min(n, lm.facts.context_length - 48) for n in lengths}))
        # NIAH needs a causal model with a tokenizer that can build prompts; encoders (BERT) skip it
        trials = heads.niah_trials(lm, lengths=lengths, depths=settings.niah_depths, seeds=[0],
                                   chat=chat) if lm.facts.causal else []
        scenes = []
        if lm.facts.modality is Modality.VISION_TEXT:
            from attnlens.pipelines import vlm

            scenes = vlm.scene_items(8 if settings.thorough else 2)
        return cls(settings, lengths, chat, trials, scenes)


# ---- runners: (lm, plan, progress, **needed) -> ScanPart; each runs wherever the executor puts it
def scan_summary(lm, plan: Plan, progress: Progress = SILENT) -> ScanPart:
    from attnlens.analyses.prompts import GENERAL_PROMPTS

    part = ScanPart().add("summary", heads.run_summary(lm, list(GENERAL_PROMPTS), progress=progress))
    part.examples += examples.prose_examples(lm, list(GENERAL_PROMPTS), plan.settings.captures)
    return part


def scan_sinks(lm, plan: Plan, progress: Progress = SILENT) -> ScanPart:
    from attnlens.analyses.prompts import GENERAL_PROMPTS

    return ScanPart().add("sinks", heads.run_sinks(lm, list(GENERAL_PROMPTS), source=plan.settings.source,
                                               progress=progress))


def scan_taxonomy(lm, plan: Plan, progress: Progress = SILENT) -> ScanPart:
    s = plan.settings
    repeat_len = min(100 if s.thorough else 50, (lm.facts.context_length - 1) // 2)
    part = ScanPart().add("taxonomy", heads.run_taxonomy(lm, repeat_len=repeat_len, batch=8 if s.thorough else 4,
                                                     progress=progress))
    part.examples.append(examples.repeated_example(lm, repeat_len=min(40, repeat_len)))
    return part


def scan_retrieval(lm, plan: Plan, progress: Progress = SILENT, executor: Executor | None = None) -> ScanPart:
    """Retrieval scores; the trials are decoded on ``executor`` (one item per trial) when given."""
    try:
        results = heads.run_retrieval(lm, plan.trials, source=plan.settings.source, progress=progress,
                                      executor=executor)
    except AnalysisError as err:
        return ScanPart(notes=[f"retrieval skipped: {err}"])
    part = ScanPart(output=results[0].scores)
    return part.add("retrieval", results)


def retrieval_followups(lm, plan: Plan, progress: Progress = SILENT, *, retrieval: np.ndarray) -> ScanPart:
    """The needle example capture and (``ablate`` sizes) the causal ablation of the top retrieval heads."""
    from attnlens.analyses.decode import greedy_decode

    s, part = plan.settings, ScanPart()
    short = heads.niah_trials(lm, lengths=[min(200, plan.lengths[0])], depths=[0.5], seeds=[0], chat=plan.chat)[0]
    answer, _ = greedy_decode(lm, short.input_ids, max_new_tokens=24, source="none")
    part.examples.append(examples.needle_example(lm, short, answer))
    if s.ablation_sizes:
        part.add("ablation", heads.run_needle_ablation(lm, plan.trials, retrieval, name="retrieval",
                                                       ks=s.ablation_sizes, seeds=[0, 1, 2] if s.thorough else [0],
                                                       progress=progress))
    return part


def scan_streaming(lm, plan: Plan, progress: Progress = SILENT, *, retrieval: np.ndarray | None = None) -> ScanPart:
    s, part = plan.settings, ScanPart()
    part.add("streaming", heads.run_streaming(lm, length=max(plan.lengths), n_prompts=2 if s.thorough else 1,
                                              source=s.source, retrieval=retrieval, chat=plan.chat,
                                              progress=progress))
    if s.gates:
        part.add("streaming", heads.run_gates(lm, steps=s.gates, length=1024 if s.thorough else 256,
                                              prompts=4 if s.thorough else 1, retrieval=retrieval,
                                              progress=progress))
    return part


def scan_vision_aware(lm, plan: Plan, progress: Progress = SILENT) -> ScanPart:
    from attnlens.pipelines import vlm

    items = plan.scenes
    k = min(20, lm.facts.n_layers * lm.facts.n_heads)  # T-VHD over the top-k heads (the paper's 20)
    part = ScanPart().add("vision_aware", vlm.run_vision_aware(lm, items, k=k, what=f"{len(items)} questions on held-out "
                                                           "synthetic scenes", progress=progress))
    scene, question = items[0]
    part.examples += examples.image_question_examples(lm, [(scene.image, question.text)])
    return part


def scan_visual_sinks(lm, plan: Plan, progress: Progress = SILENT) -> ScanPart:
    from attnlens.pipelines import vlm

    items = plan.scenes
    return ScanPart().add("visual_sinks", vlm.run_visual_sinks(lm, items, what=f"{len(items)} questions on held-out "
                                                           "synthetic scenes", progress=progress))


def scan_vit(lm, plan: Plan, progress: Progress = SILENT) -> ScanPart:
    """Every ViT analysis from one pass over three synthetic images."""
    from attnlens.analyses.vit_heads import (
        pruned_cls_embeddings,
        pruning_importance,
        vit_head_scores,
    )
    from attnlens.formats.provenance import Provenance
    from lens import vision

    f, part = lm.facts, ScanPart()
    images = [vision.synthetic_image(224, shape=shape, center=c, seed=i)
              for i, (shape, c) in enumerate([("disc", (0.4, 0.6)), ("square", (0.6, 0.3)), ("disc", (0.3, 0.3))])]
    task = progress.task("ViT heads: synthetic images", total=len(images) + 1)
    import lens

    patterns: dict[int, list] = {}
    layout = None
    for im in images:
        cap = lens.run(lm, im, sites=[lens.Site.PATTERN]).capture
        layout = cap.meta.layout
        for layer in range(f.n_layers):
            patterns.setdefault(layer, []).append(cap.pattern(layer))
        task.advance()
    import torch

    stacked = {layer: torch.cat(ps) for layer, ps in patterns.items()}
    prov = Provenance.for_model(f, prompts=f"{len(images)} synthetic images (disc, square)", inputs=[i.tobytes() for i in images])
    results = vit_head_scores(stacked, layout, n_layers=f.n_layers, n_heads=f.n_heads, provenance=prov)
    all_heads = [(la, h) for la in range(f.n_layers) for h in range(f.n_heads)]
    clean, pruned = pruned_cls_embeddings(lm, images, all_heads)
    results.append(pruning_importance(clean, pruned, n_layers=f.n_layers, n_heads=f.n_heads, provenance=prov))
    task.advance()
    for r in results:
        part.add(r.analysis, [r])
    part.examples += examples.image_examples(lm, images[:1])
    return part


def scan_speech(lm, plan: Plan, progress: Progress = SILENT) -> ScanPart:
    """Cross-attention agreement and alignment heads from one set of espeak-ng utterances."""
    from attnlens.pipelines import speech
    from lens.speech import encoder_of

    utterances = speech.espeak_utterances(speech.SENTENCES[: (3 if plan.settings.thorough else 2)],
                                          max_seconds=encoder_of(lm).chunk_seconds)
    study = speech.run_cross_attention(lm, utterances, progress=progress)
    part = ScanPart(maps=list(study.maps), examples=[examples.Example(name, cap) for name, cap in study.examples])
    for r in study.results:
        part.add(r.analysis, [r])
    return part


def _as_part(out, entry) -> ScanPart:
    """A runner's return: a :class:`ScanPart`, or a list of results of ``entry`` (a third-party runner)."""
    return out if isinstance(out, ScanPart) else ScanPart().add(entry.name, list(out))


def _stages(entries) -> tuple[list, list, list, list[str]]:
    """The entries whose runners the scan runs, one per distinct runner, in registry order, in three
    stages: those that need nothing; those that spread their own items over the executor
    (retrieval); those that need another's output. Also the notes for entries without a runner."""
    first, own, later, notes, seen = [], [], [], [], set()
    for e in entries:
        if e.runner is None:
            notes.append(f"{e.name}: no scan runner for this analysis")
        elif e.runner not in seen:
            seen.add(e.runner)
            (later if e.needs else own if e.distributes else first).append(e)
    return first, own, later, notes


def scan(lm, settings: ScanSettings = ScanSettings(), *, progress: Progress = SILENT,
         executor: Executor | None = None) -> ScanResult:
    """Run every scan analysis of the registry that applies to ``lm``'s modality.

    With a distributed ``executor`` (Ray) the work is split three ways, in stages: the
    runners that need nothing (summary, sinks, taxonomy; the ViT or speech pass) one item
    each; then the runners that spread their own items (retrieval: one item per NIAH trial,
    length x depth x seed); then what needs their output (the retrieval followups: needle
    example and causal ablation; the streaming profile). The results are the same as a
    serial scan's; this process assembles and returns them in registry order.
    """
    from attnlens.analyses.registry import for_modality

    entries = for_modality(lm.facts.modality, causal=lm.facts.causal)
    if not entries:
        raise AnalysisError(f"no scan analyses apply to {lm.facts.name} ({lm.facts.modality.value} model)")
    remote = executor is not None and executor.distributed
    plan = Plan.for_model(lm, settings)
    first, own, later, notes = _stages(entries)
    parts: dict[str, ScanPart] = {}
    if remote and first:
        task = progress.task(f"scan: {', '.join(e.name for e in first)} on {executor.workers} Ray workers",
                             total=len(first))
        done = executor.map_ordered(CALLS, [call(e.load_runner(), plan) for e in first],
                                    on_result=lambda i: task.advance())
        parts.update((e.name, _as_part(p, e)) for e, p in zip(first, done))
    else:
        for e in first:
            parts[e.name] = _as_part(e.load_runner()(lm, plan, progress), e)
    for e in own:
        parts[e.name] = _as_part(e.load_runner()(lm, plan, progress, executor=executor if remote else None), e)
    outputs = {name: p.output for name, p in parts.items()}
    runners = [(f"{e.name}+", e.load_followup(), {e.name: outputs[e.name]}, e) for e in own
               if e.followup is not None and outputs[e.name] is not None]
    runners += [(e.name, e.load_runner(), {n: outputs.get(n) for n in e.needs}, e) for e in later]
    if remote and runners:
        task = progress.task(f"scan: {', '.join(key for key, *_ in runners)} on {executor.workers} Ray workers",
                             total=len(runners))
        done = executor.map_ordered(CALLS, [call(fn, plan, **needed) for _, fn, needed, _ in runners],
                                    on_result=lambda i: task.advance())
        parts.update((key, _as_part(p, e)) for (key, _, _, e), p in zip(runners, done))
    else:
        for key, fn, needed, e in runners:
            parts[key] = _as_part(fn(lm, plan, progress, **needed), e)
    out = ScanResult(model=lm.facts.name)
    for key in [k for e in entries for k in (e.name, f"{e.name}+")]:
        if key in parts:
            p = parts[key]
            out.results += p.results
            out.examples += p.examples
            out.notes += p.notes
            out.maps += p.maps
    out.notes += notes
    return out

