"""Head analyses: pure functions from captured data to small typed results.

The registry (:mod:`analyses.registry`) lists every analysis and is cheap to import; the
analysis modules (which use torch) load on first use of one of their names here.
Model-side collection of their inputs (decoding NIAH trials, collecting patterns or
kernel statistics) lives in :mod:`analyses.decode` and :mod:`analyses.collect`; the
scoring functions never load or run a model.
"""

from __future__ import annotations

import importlib

from attnlens.analyses.registry import AnalysisEntry, analyses, register_analysis
from attnlens.formats.curves import Curves
from attnlens.formats.errors import ResultError
from attnlens.formats.head_scores import HeadScores
from attnlens.formats.provenance import Provenance

_LAZY = {
    "AblationError": "attnlens.analyses.causal", "ablation_plan": "attnlens.analyses.causal", "ablation_scores": "attnlens.analyses.causal",
    "Needle": "attnlens.analyses.niah", "NiahError": "attnlens.analyses.niah", "NiahTrial": "attnlens.analyses.niah", "make_trial": "attnlens.analyses.niah",
    "make_trials": "attnlens.analyses.niah", "rouge1_recall": "attnlens.analyses.niah", "load_results": "attnlens.analyses.result",
    "DecodeTrace": "attnlens.analyses.retrieval", "RetrievalError": "attnlens.analyses.retrieval", "retrieval_scores": "attnlens.analyses.retrieval",
    "RowStats": "attnlens.analyses.rows", "row_stats_from_kernel": "attnlens.analyses.rows", "row_stats_from_pattern": "attnlens.analyses.rows",
    "KeyStats": "attnlens.analyses.sinks", "SinkInput": "attnlens.analyses.sinks", "key_stats_from_kernel": "attnlens.analyses.sinks",
    "key_stats_from_pattern": "attnlens.analyses.sinks", "sink_scores": "attnlens.analyses.sinks",
    "gate_scores": "attnlens.analyses.streaming", "masses_from_pattern": "attnlens.analyses.streaming", "scaled_window": "attnlens.analyses.streaming",
    "streaming_profile": "attnlens.analyses.streaming", "TaxonomyError": "attnlens.analyses.taxonomy",
    "head_type_scores": "attnlens.analyses.taxonomy", "taxonomy_scores": "attnlens.analyses.taxonomy",
    "attention_summary": "attnlens.analyses.attention_summary",
}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'analyses' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = ["AnalysisEntry", "Curves", "HeadScores", "Provenance", "ResultError", "analyses", "register_analysis",
           *_LAZY]
