"""attnlens' model side: load models, capture attention and activations, intervene.

>>> import lens
>>> lm = lens.load("smollm2-135m")
>>> result = lens.run(lm, "The Eiffel Tower is in", sites=[lens.Site.PATTERN], layers=[3])
>>> result.capture.pattern(3).shape
torch.Size([1, 9, 7, 7])
"""

from lens.backends import Backend
from lens.capture import Capture, CaptureSpec, RunResult, capture, run
from lens.errors import (
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
from lens.interventions import (
    HeadEdit,
    mean_ablation,
    patch_heads,
    resample_ablation,
    zero_ablation,
)
from lens.loaded import LoadedModel, Modality, ModelFacts
from lens.sites import Site, SiteKey
from lens.zoo import DEFAULT_MODEL, list_models, load

__all__ = [
    "DEFAULT_MODEL", "AttnlensError", "Backend", "BackendError", "Capture", "CaptureSpec",
    "CorruptCaptureError", "HeadEdit", "InterventionError", "LoadedModel", "MemoryBudgetError",
    "Modality", "ModelFacts", "ModelUnavailableError", "OutputExistsError", "PromptError",
    "RunResult", "SelectionError", "Site", "SiteKey", "UnknownModelError", "capture", "list_models",
    "load", "mean_ablation", "patch_heads", "resample_ablation", "run", "zero_ablation",
]
