"""Workflows that drive models: what the ``lens`` commands do, as plain functions a notebook can call.

Layering: ``lens.cli`` (options, printing) -> ``pipelines`` (workflows) -> ``analyses`` and
``lens`` (scoring, models, capture) -> ``kernels`` and ``formats`` (computation, files).
Workflows return result objects; writing them goes through :mod:`formats`.

- :mod:`pipelines.heads`: one head analysis at a time (``run_sinks``, ``run_retrieval``, ...).
- :mod:`pipelines.scan`: ``scan(lm, ScanSettings())``, every analysis of the registry.
- :mod:`pipelines.sweeps`: ablation studies (one set against random sets; resumable sweeps).
- :mod:`pipelines.circuits`: circuit discovery with faithfulness, patching comparison and overlap.
"""

from attnlens.pipelines.progress import SILENT, Progress

__all__ = ["SILENT", "Progress"]
