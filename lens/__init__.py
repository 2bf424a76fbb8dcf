"""attnlens' model side: load models, capture attention and activations, intervene.

>>> import lens
>>> lm = lens.load("smollm2-135m")
>>> result = lens.run(lm, "The Eiffel Tower is in", sites=[lens.Site.PATTERN], layers=[3])
>>> result.capture.pattern(3).shape
torch.Size([1, 9, 7, 7])

Importing ``lens`` is cheap: torch and transformers load on first use of a name that needs
them (the CLI's ``--help`` and the errors never do).
"""

from __future__ import annotations

import importlib
import warnings

from attnlens.formats.errors import (
    AttnlensError,
    BackendError,
    CorruptCaptureError,
    InterventionError,
    MemoryBudgetError,
    ModelUnavailableError,
    OutputExistsError,
    PromptError,
    SelectionError,
    UnknownModelError,
)
from attnlens.formats.facts import Modality, ModelFacts
from attnlens.formats.sites import Part, Site, SiteKey
from lens.heads import HeadRef, MlpRef, ResidRef

# tqdm.auto (imported by the model libraries) warns once in a notebook kernel without ipywidgets;
# its progress bars then fall back to text, which is all attnlens needs
warnings.filterwarnings("ignore", message="IProgress not found")

_LAZY = {
    "Backend": "lens.backends", "Capture": "lens.recording", "CaptureSpec": "lens.recording", "RunResult": "lens.recording",
    "capture": "lens.recording", "run": "lens.recording", "LoadedModel": "lens.loaded",
    "DEFAULT_MODEL": "lens.zoo", "list_models": "lens.zoo", "load": "lens.zoo",
    "stats_mode": "lens.recording.stats", "run_stats": "lens.recording.stats", "StatsRun": "lens.recording.stats",
    "Edit": "lens.edits", "Zero": "lens.edits", "Replace": "lens.edits", "Scale": "lens.edits", "Over": "lens.edits",
    "Reference": "lens.edits", "editing": "lens.edits", "zero_ablation": "lens.edits", "mean_ablation": "lens.edits",
    "patch": "lens.edits", "resample_ablation": "lens.edits", "scale_heads": "lens.edits",
    "attention_mode": "lens.attention", "prepare": "lens.inputs", "ModelInput": "lens.inputs",
    "hooked": "lens.hooks", "Point": "lens.hooks", "Where": "lens.hooks",
}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if name == "show":
        raise AttributeError("lens.show moved to the dashboards: from attnlens.dashboards import show (lens imports no views)")
    if module is None:
        raise AttributeError(f"module 'lens' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "AttnlensError", "BackendError", "CorruptCaptureError", "HeadRef", "InterventionError", "MemoryBudgetError",
    "MlpRef", "Modality", "ModelFacts", "Part", "ModelUnavailableError", "OutputExistsError", "PromptError", "ResidRef",
    "SelectionError", "Site", "SiteKey", "UnknownModelError", *_LAZY,
]
