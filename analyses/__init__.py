"""Head analyses: pure functions from captured data to small typed results.

Importing this package registers the built-in analyses (see :func:`analyses.registry.analyses`).
"""

from analyses import attention_summary  # noqa: F401  (registers "summary")
from analyses.registry import AnalysisEntry, analyses, register_analysis
from analyses.result import HeadScores, Provenance, ResultError, load_results
from analyses.rows import RowStats, row_stats_from_kernel, row_stats_from_pattern

__all__ = [
    "AnalysisEntry", "HeadScores", "Provenance", "ResultError", "RowStats", "analyses", "load_results",
    "register_analysis", "row_stats_from_kernel", "row_stats_from_pattern",
]
