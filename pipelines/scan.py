"""``lens scan``: every registered analysis that applies to the model, with sensible defaults.

The analyses come from the registry (:func:`analyses.registry.for_modality`); each has a
runner here that collects its inputs and calls its workflow in :mod:`pipelines.heads`.
:func:`scan` returns a :class:`ScanResult`; :meth:`ScanResult.save` writes it (results,
example captures of each analysis' inputs) into a folder.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from formats.errors import AnalysisError, SelectionError
from formats.facts import Modality
from pipelines import examples, heads
from pipelines.progress import SILENT, Progress


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
        if self.source not in ("pattern", "kernel"):
            raise SelectionError(f"source {self.source!r} is not one of pattern, kernel")
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

    def save(self, folder: str | Path) -> list[Path]:
        """Write every result and example capture into ``folder`` (an empty output folder)."""
        folder = Path(folder)
        paths = [r.save(folder) for r in self.results]
        for ex in self.examples:
            ex.capture.write_into(folder / ex.name)
        return paths


class _Scan:
    """The state one scan's runners share (NIAH trials, the retrieval ranking)."""

    def __init__(self, lm, settings: ScanSettings, progress: Progress):
        self.lm, self.s, self.progress = lm, settings, progress
        self.out = ScanResult(model=lm.facts.name)
        self.retrieval = None
        chat = settings.chat
        self.chat = bool(getattr(lm.tokenizer, "chat_template", None)) if chat is None else chat
        lengths = settings.niah_lengths
        if settings.lengths is None:  # defaults shrink to fit small models' contexts (room left for the answer)
            lengths = tuple(sorted({min(n, lm.facts.context_length - 48) for n in lengths}))
        self.lengths = lengths
        self.trials = heads.niah_trials(lm, lengths=lengths, depths=settings.niah_depths, seeds=[0], chat=self.chat)

    def add(self, analysis: str, results) -> None:
        for r in results:
            r.params.setdefault("example_capture", examples.EXAMPLE_OF.get(analysis, examples.PROSE))
        self.out.results.extend(results)


def _summary(sc: _Scan) -> None:
    from analyses.prompts import GENERAL_PROMPTS

    sc.add("summary", heads.run_summary(sc.lm, list(GENERAL_PROMPTS), progress=sc.progress))
    sc.out.examples += examples.prose_examples(sc.lm, list(GENERAL_PROMPTS), sc.s.captures)


def _sinks(sc: _Scan) -> None:
    from analyses.prompts import GENERAL_PROMPTS

    sc.add("sinks", heads.run_sinks(sc.lm, list(GENERAL_PROMPTS), source=sc.s.source, progress=sc.progress))


def _taxonomy(sc: _Scan) -> None:
    repeat_len = min(100 if sc.s.thorough else 50, (sc.lm.facts.context_length - 1) // 2)
    sc.add("taxonomy", heads.run_taxonomy(sc.lm, repeat_len=repeat_len, batch=8 if sc.s.thorough else 4,
                                          progress=sc.progress))
    sc.out.examples.append(examples.repeated_example(sc.lm, repeat_len=min(40, repeat_len)))


def _retrieval(sc: _Scan) -> None:
    from analyses.decode import greedy_decode

    try:
        results = heads.run_retrieval(sc.lm, sc.trials, source=sc.s.source, progress=sc.progress)
    except AnalysisError as err:
        sc.out.notes.append(f"retrieval skipped: {err}")
        return
    sc.retrieval = results[0].scores
    sc.add("retrieval", results)
    short = heads.niah_trials(sc.lm, lengths=[min(200, sc.lengths[0])], depths=[0.5], seeds=[0], chat=sc.chat)[0]
    answer, _ = greedy_decode(sc.lm, short.input_ids, max_new_tokens=24, source="none")
    sc.out.examples.append(examples.needle_example(sc.lm, short, answer))
    if sc.s.ablation_sizes:
        sc.add("ablation", heads.run_needle_ablation(sc.lm, sc.trials, sc.retrieval, name="retrieval",
                                                     ks=sc.s.ablation_sizes, seeds=[0, 1, 2] if sc.s.thorough else [0],
                                                     progress=sc.progress))


def _streaming(sc: _Scan) -> None:
    sc.add("streaming", heads.run_streaming(sc.lm, length=max(sc.lengths), n_prompts=2 if sc.s.thorough else 1,
                                            source=sc.s.source, retrieval=sc.retrieval, chat=sc.chat,
                                            progress=sc.progress))
    if sc.s.gates:
        sc.add("streaming", heads.run_gates(sc.lm, steps=sc.s.gates, length=1024 if sc.s.thorough else 256,
                                            prompts=4 if sc.s.thorough else 1, retrieval=sc.retrieval,
                                            progress=sc.progress))


def _vision(sc: _Scan) -> None:
    from analyses.vit_heads import pruned_cls_embeddings, pruning_importance, vit_head_scores
    from formats.provenance import Provenance
    from lens import vision

    lm, f = sc.lm, sc.lm.facts
    images = [vision.synthetic_image(224, shape=shape, center=c, seed=i)
              for i, (shape, c) in enumerate([("disc", (0.4, 0.6)), ("square", (0.6, 0.3)), ("disc", (0.3, 0.3))])]
    task = sc.progress.task("ViT heads: synthetic images", total=len(images) + 1)
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
        sc.add(r.analysis, [r])
    sc.out.examples += examples.image_examples(lm, images[:1])


RUNNERS: dict[str, Callable[[_Scan], None]] = {
    "summary": _summary, "sinks": _sinks, "taxonomy": _taxonomy, "retrieval": _retrieval, "streaming": _streaming,
}
VISION_RUNNER = _vision  # the four vit_* analyses share one pass over the images


def scan(lm, settings: ScanSettings = ScanSettings(), *, progress: Progress = SILENT) -> ScanResult:
    """Run every scan analysis of the registry that applies to ``lm``'s modality."""
    from analyses.registry import for_modality

    entries = for_modality(lm.facts.modality)
    if not entries:
        raise AnalysisError(f"no scan analyses apply to {lm.facts.name} ({lm.facts.modality.value} model)")
    if lm.facts.modality is Modality.VISION:
        sc = _Scan.__new__(_Scan)
        sc.lm, sc.s, sc.progress, sc.out = lm, settings, progress, ScanResult(model=lm.facts.name)
        VISION_RUNNER(sc)
        return sc.out
    sc = _Scan(lm, settings, progress)
    for entry in entries:
        runner = RUNNERS.get(entry.name)
        if runner is None:
            sc.out.notes.append(f"{entry.name}: no scan runner for this analysis")
            continue
        runner(sc)
    return sc.out
