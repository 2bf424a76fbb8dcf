"""Head analyses: pure functions from captured data to small typed results.

Importing this package registers the built-in analyses (see :func:`analyses.registry.analyses`).
Model-driving helpers (decoding NIAH trials, collecting patterns or kernel statistics)
live in :mod:`analyses.decode` and :mod:`analyses.collect`; the scoring functions never
load or run a model.
"""

from analyses import (  # noqa: F401  (register theirs)
    attention_summary,  # noqa: F401  (registers "summary")
    causal,
    cross_attention,
    retrieval,
    sinks,
    streaming,
    taxonomy,
    vit_heads,
)
from analyses.causal import AblationError, ablation_plan, ablation_scores
from analyses.niah import Needle, NiahError, NiahTrial, make_trial, make_trials, rouge1_recall
from analyses.registry import AnalysisEntry, analyses, register_analysis
from analyses.result import HeadScores, Provenance, ResultError, load_results
from analyses.retrieval import DecodeTrace, RetrievalError, retrieval_scores
from analyses.rows import RowStats, row_stats_from_kernel, row_stats_from_pattern
from analyses.sinks import (
    KeyStats,
    SinkInput,
    key_stats_from_kernel,
    key_stats_from_pattern,
    sink_scores,
)
from analyses.streaming import gate_scores, masses_from_pattern, scaled_window, streaming_profile
from analyses.taxonomy import TaxonomyError, head_type_scores, taxonomy_scores

__all__ = [
    "AblationError", "AnalysisEntry", "DecodeTrace", "HeadScores", "KeyStats", "Needle", "NiahError", "NiahTrial",
    "Provenance", "ResultError", "RetrievalError", "RowStats", "SinkInput", "TaxonomyError", "ablation_plan",
    "ablation_scores", "analyses", "gate_scores", "head_type_scores", "key_stats_from_kernel",
    "key_stats_from_pattern", "load_results", "make_trial", "make_trials", "masses_from_pattern",
    "register_analysis", "retrieval_scores", "rouge1_recall", "row_stats_from_kernel", "row_stats_from_pattern",
    "scaled_window", "sink_scores", "streaming_profile", "taxonomy_scores",
]
