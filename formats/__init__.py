"""The results contract: the schema of every file attnlens writes, with one writer and one
reader per kind, and the project's exception types.

Imports only numpy and the standard library (never torch), so dashboards and reports
read results without loading a model or a deep-learning framework.

Kinds: :class:`HeadScores` (``*.json`` + ``*.safetensors``), :class:`Curves`
(``*.curves.json``), :class:`Circuit` (``*.circuit.json``), :class:`AblationResult`
(``ablation.json``), QK attributions (:class:`QKResult`, ``*.qk.json``), direct logit attributions
(:class:`DLAResult`, ``*.dla.json``), QK head loadings (:class:`HeadLoadings`, ``*.loadings.json``), captures (:class:`CaptureFile`, :func:`write_capture`), stats runs
(:class:`StatsFile`, :func:`write_stats`), sweep logs (:func:`open_sweep`), and whole
folders (:class:`ResultsFolder`). Output folders are written with :func:`output_folder`.
"""

from attnlens.formats.ablation import AblationResult
from attnlens.formats.capture import (
    CaptureFile,
    CaptureMeta,
    Focus,
    TensorEntry,
    set_focus,
    write_capture,
)
from attnlens.formats.circuit import (
    Circuit,
    Edge,
    Input,
    Node,
    NodeKind,
    Receiver,
    faithfulness_warning,
)
from attnlens.formats.curves import Curves
from attnlens.formats.dla import DLAResult
from attnlens.formats.errors import *  # noqa: F403
from attnlens.formats.errors import __all__ as _errors
from attnlens.formats.facts import Modality, ModelFacts
from attnlens.formats.folder import ResultsFolder
from attnlens.formats.head_scores import HeadScores
from attnlens.formats.layouts import AudioLayout, ImageLayout, SourceLayout
from attnlens.formats.loadings import HeadLoadings
from attnlens.formats.output import output_folder
from attnlens.formats.provenance import Provenance, inputs_digest, package_versions
from attnlens.formats.qk import QKResult
from attnlens.formats.sites import HeadRef, MlpRef, ResidRef, Site, SiteKey
from attnlens.formats.stats_run import StatsFile, write_stats
from attnlens.formats.sweep import SweepLog, open_sweep
from attnlens.formats.token_maps import TokenMaps

__all__ = [
    "AblationResult", "AudioLayout", "CaptureFile", "CaptureMeta", "Circuit", "Curves", "DLAResult", "Edge", "HeadLoadings", "HeadScores",
    "ImageLayout", "Input", "HeadRef", "MlpRef", "ResidRef", "Modality", "ModelFacts", "Node", "NodeKind", "Provenance",
    "QKResult", "Receiver", "ResultsFolder", "Site", "SiteKey",
    "SourceLayout", "StatsFile", "SweepLog", "TokenMaps", "TensorEntry", "inputs_digest", "open_sweep", "output_folder", "package_versions",
    "faithfulness_warning", "write_capture", "Focus", "set_focus", "write_stats", *_errors,
]
