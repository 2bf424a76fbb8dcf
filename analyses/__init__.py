"""Head analyses: pure functions from captured data to small typed results.

The registry (:mod:`analyses.registry`) lists every analysis and is cheap to import; the
analysis modules (which use torch) load on first use of one of their names here.
Model-side collection of their inputs (decoding NIAH trials, collecting patterns or
kernel statistics) lives in :mod:`analyses.decode` and :mod:`analyses.collect`; the
scoring functions never load or run a model.
"""

from __future__ import annotations

import importlib

from analyses.registry import AnalysisEntry, analyses, register_analysis
from formats.curves import Curves
from formats.errors import ResultError
from formats.head_scores import HeadScores
from formats.provenance import Provenance

_LAZY = {
    "AblationError": "analyses.causal", "ablation_plan": "analyses.causal", "ablation_scores": "analyses.causal",
    "Needle": "analyses.niah", "NiahError": "analyses.niah", "NiahTrial": "analyses.niah", "make_trial": "analyses.niah",
    "make_trials": "analyses.niah", "rouge1_recall": "analyses.niah", "load_results": "analyses.result",
    "DecodeTrace": "analyses.retrieval", "RetrievalError": "analyses.retrieval", "retrieval_scores": "analyses.retrieval",
    "RowStats": "analyses.rows", "row_stats_from_kernel": "analyses.rows", "row_stats_from_pattern": "analyses.rows",
    "KeyStats": "analyses.sinks", "SinkInput": "analyses.sinks", "key_stats_from_kernel": "analyses.sinks",
    "key_stats_from_pattern": "analyses.sinks", "sink_scores": "analyses.sinks",
    "gate_scores": "analyses.streaming", "masses_from_pattern": "analyses.streaming", "scaled_window": "analyses.streaming",
    "streaming_profile": "analyses.streaming", "TaxonomyError": "analyses.taxonomy",
    "head_type_scores": "analyses.taxonomy", "taxonomy_scores": "analyses.taxonomy",
    "attention_summary": "analyses.attention_summary",
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
