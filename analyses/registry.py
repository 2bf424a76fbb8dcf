"""The registry of analyses: what ``lens scan``, the CLI and the dashboards enumerate.

An entry names an analysis, says what it measures, which metrics (result files
``ANALYSIS.METRIC``) it writes, which model modalities it applies to and whether ``lens
scan`` runs it, and how the scan runs it: its ``runner`` and the analyses whose output the
runner takes (``needs``). The built-in entries are declared here, as data, so that reading
the registry imports neither torch nor the analysis modules (the dashboards use it to
describe results); a scoring function or runner is imported on first use. A test runs every
scan entry on a tiny model and checks that what it writes is what it declares.

A runner is ``runner(lm, plan, progress, **needed) -> list[result] | pipelines.scan.ScanPart``:
``plan`` is the scan's :class:`pipelines.scan.Plan` (settings, NIAH trials, scenes),
``needed`` the output of each analysis in ``needs`` by name (None where it produced none).
Entries that name the same runner share one run of it (the ViT analyses share one pass over
the images). Third-party analyses register a function directly, and a runner to be scanned::

    def my_runner(lm, plan, progress):
        return [my_scores(...)]

    @register_analysis("my_heads", "what it measures", metrics=("score",), in_scan=True, runner=my_runner)
    def my_scores(...) -> HeadScores: ...
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

from attnlens.formats.facts import Modality

TEXT, VISION, SPEECH, VISION_TEXT = Modality.TEXT, Modality.VISION, Modality.SPEECH, Modality.VISION_TEXT


@dataclass(frozen=True)
class AnalysisEntry:
    name: str
    description: str
    metrics: tuple[str, ...]
    function: str | Callable  # "module:attribute" (imported on first use) or the function
    modalities: tuple[Modality, ...] = (TEXT,)
    in_scan: bool = True  # `lens scan` runs it by default on models of these modalities
    paper: str = ""
    causal_only: bool = False  # needs a causal (generating) model: not for bidirectional encoders
    runner: str | Callable | None = None  # how `lens scan` runs it (see the module docstring); None: not scannable
    needs: tuple[str, ...] = ()  # analyses whose scan output the runner takes, by name
    distributes: bool = False  # the runner spreads its own items over the scan's executor (it runs in this process)
    followup: str | Callable | None = None  # run after it, with its output (retrieval: needle example, ablation)

    def load(self) -> Callable:
        """The scoring function."""
        return _resolve(self.function)

    def load_runner(self) -> Callable | None:
        """The scan runner (None when ``lens scan`` cannot run this analysis)."""
        return None if self.runner is None else _resolve(self.runner)

    def load_followup(self) -> Callable | None:
        """What runs after the runner, with its output (None when nothing does)."""
        return None if self.followup is None else _resolve(self.followup)

    def result_names(self) -> list[str]:
        return [f"{self.name}.{m}" for m in self.metrics]


def _resolve(target: str | Callable) -> Callable:
    """``"module:attribute"`` imported (or a callable as it is)."""
    if callable(target):
        return target
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


_REGISTRY: dict[str, AnalysisEntry] = {}


def _declare(entry: AnalysisEntry) -> None:
    _REGISTRY[entry.name] = entry


def register_analysis(name: str, description: str, *, metrics: tuple[str, ...],
                      modalities: tuple[Modality, ...] = (TEXT,), in_scan: bool = False,
                      runner: str | Callable | None = None, needs: tuple[str, ...] = (), paper: str = "",
                      causal_only: bool = False):
    """Decorator adding a scoring function to the registry under ``name``; with ``in_scan`` and a
    ``runner`` (see the module docstring) ``lens scan`` runs it on models of ``modalities``."""
    from attnlens.formats.errors import SelectionError

    if in_scan and runner is None:
        raise SelectionError(f"`in_scan` analysis {name!r} needs a `runner`: the scan calls runner(lm, plan, progress)")
    unknown = [n for n in needs if n not in _REGISTRY]
    if unknown:
        raise SelectionError(f"`needs` of {name!r} names {', '.join(map(repr, unknown))}, which no registered analysis "
                             "is; register those first")

    def wrap(fn: Callable) -> Callable:
        _declare(AnalysisEntry(name, description, tuple(metrics), fn, tuple(modalities), in_scan, paper, causal_only,
                               runner, tuple(needs)))
        return fn

    return wrap


def analyses() -> dict[str, AnalysisEntry]:
    """All registered analyses, built-in and registered."""
    return dict(_REGISTRY)


def for_modality(modality: Modality, *, causal: bool = True, scan_only: bool = True) -> list[AnalysisEntry]:
    """The analyses that apply to models of ``modality`` (those ``lens scan`` runs, by default);
    ``causal=False`` (a bidirectional encoder) leaves out those that need generation."""
    return [e for e in _REGISTRY.values() if modality in e.modalities and (e.in_scan or not scan_only)
            and (causal or not e.causal_only)]


def describe(result_name: str) -> str:
    """The registry's description of the analysis a result (``ANALYSIS.METRIC``) belongs to ("" if unknown)."""
    entry = _REGISTRY.get(result_name.split(".", 1)[0])
    return entry.description if entry else ""


for _entry in (
    AnalysisEntry("summary", "per-head first-token (sink) mass and attention entropy", ("sink_mass", "entropy"),
                  "attnlens.analyses.attention_summary:attention_summary", (TEXT, VISION_TEXT), paper="StreamingLLM (Xiao et al. 2023)",
                  runner="attnlens.pipelines.scan:scan_summary"),
    AnalysisEntry("sinks", "first-token sinks, hidden sinks (ACT) and massive activations",
                  ("first_token_mass", "hidden_sinks"), "attnlens.analyses.sinks:sink_scores", (TEXT, VISION_TEXT),
                  paper="StreamingLLM; ACT (Yu et al. 2024); Sun et al. 2024",
                  runner="attnlens.pipelines.scan:scan_sinks"),
    AnalysisEntry("taxonomy", "sink, previous-token, positional (fixed relative offsets, the same on original, "
                  "repeated and shuffled tokens), duplicate-token, induction and local head scores, and a type per head",
                  ("sink", "previous_token", "positional", "duplicate_token", "induction", "local",
                   "content_independence", "head_type"),
                  "attnlens.analyses.taxonomy:taxonomy_scores", (TEXT, VISION_TEXT),
                  runner="attnlens.pipelines.scan:scan_taxonomy"),
    AnalysisEntry("retrieval", "retrieval score per head on needle-in-a-haystack decoding",
                  ("retrieval_score",), "attnlens.analyses.retrieval:retrieval_scores", (TEXT, VISION_TEXT),
                  paper="Wu et al. 2024, Retrieval Head", causal_only=True,
                  runner="attnlens.pipelines.scan:scan_retrieval", distributes=True, followup="attnlens.pipelines.scan:retrieval_followups"),
    AnalysisEntry("streaming", "streaming-vs-retrieval heads: attention mass on sink + recent keys, and trained "
                  "DuoAttention gates", ("streaming_mass", "duo_gate"), "attnlens.analyses.streaming:streaming_profile",
                  (TEXT, VISION_TEXT), paper="DuoAttention (Xiao et al. 2024)", causal_only=True,
                  runner="attnlens.pipelines.scan:scan_streaming", needs=("retrieval",)),
    AnalysisEntry("ablation", "needle accuracy with the top-k heads of a ranking ablated vs k random heads",
                  ("retrieval_ablation",), "attnlens.analyses.causal:ablation_scores", (TEXT,), in_scan=False,
                  paper="Wu et al. 2024 (causal test)", causal_only=True),
    AnalysisEntry("circuit", "circuits: EAP, EAP-IG and per-head patching scores, and faithfulness against circuit "
                  "size under the published ablation settings (edge-level for edge circuits, Wang et al.'s for heads)",
                  ("TASK_METHOD_METRIC", "TASK_faithfulness_edges", "TASK_faithfulness_heads"),
                  "attnlens.analyses.circuits.curves:faithfulness_curves", (TEXT,), in_scan=False, causal_only=True,
                  paper="Wang et al. 2022; Syed et al. 2023 (EAP); Hanna et al. 2024 (EAP-IG)"),
    AnalysisEntry("calibration", "ACT attention calibration: task accuracy without it, with sink columns x 0.4 on the "
                  "chosen heads, and with as many random columns (control); ACT's per-head search",
                  ("TASK_act", "TASK_head_search"), "attnlens.analyses.calibration:calibrate", (TEXT,), in_scan=False, causal_only=True,
                  paper="ACT (Yu et al. 2024)"),
    AnalysisEntry("cross_attention", "decoder cross-attention over encoder frames against gradient x input saliency "
                  "(Pearson, Spearman, saliency share) per head, layer and aggregated",
                  ("pearson", "spearman", "saliency_share", "saliency_in_focus"),
                  "attnlens.analyses.cross_attention:cross_attention_agreement", (SPEECH,),
                  paper="Cross-Attention is Half Explanation in Speech-to-Text Models",
                  runner="attnlens.pipelines.scan:scan_speech"),
    AnalysisEntry("alignment_heads", "how well each cross-attention head's peaks follow word timing",
                  ("hit_rate",), "attnlens.analyses.cross_attention:alignment_head_scores", (SPEECH,),
                  paper="Whisper word timestamps (alignment heads + DTW)",
                  runner="attnlens.pipelines.scan:scan_speech"),
    AnalysisEntry("vit_distance", "ViT mean attention distance (patches) and distance profile per head",
                  ("mean_distance",), "attnlens.analyses.vit_heads:attention_distance", (VISION,),
                  runner="attnlens.pipelines.scan:scan_vit"),
    AnalysisEntry("vit_cls", "entropy of the CLS token's attention over the patches (low = concentrated)",
                  ("cls_entropy",), "attnlens.analyses.vit_heads:cls_concentration", (VISION,),
                  runner="attnlens.pipelines.scan:scan_vit"),
    AnalysisEntry("vit_families", "families of heads by k-means over their attention distance profiles",
                  ("family",), "attnlens.analyses.vit_heads:pattern_families", (VISION,),
                  runner="attnlens.pipelines.scan:scan_vit"),
    AnalysisEntry("vision_aware", "vision-aware heads: distance between each head's output with and without the "
                  "image for the same text (VHD), T-VHD per position", ("vhd",),
                  "attnlens.analyses.vision_aware:vision_aware_scores", (VISION_TEXT,),
                  paper="He et al. 2025, Cracking the Code of Hallucination in LVLMs (VHD, VHR)", causal_only=True,
                  runner="attnlens.pipelines.scan:scan_vision_aware"),
    AnalysisEntry("visual_sinks", "VAR: visual sink tokens and image-centric heads (image attention >= 0.2, "
                  "sink share <= 0.5)", ("image_centric",), "attnlens.analyses.visual_sinks:visual_sink_scores",
                  (VISION_TEXT,), paper="Kang et al. 2025, See What You Are Told (VAR)",
                  causal_only=True,
                  runner="attnlens.pipelines.scan:scan_visual_sinks"),
    AnalysisEntry("vit_pruning", "ViT head importance: 1 - cosine of the CLS embedding when the head is zeroed",
                  ("cls_cosine_drop",), "attnlens.analyses.vit_heads:pruning_importance", (VISION,),
                  runner="attnlens.pipelines.scan:scan_vit"),
):
    _declare(_entry)
