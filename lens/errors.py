"""The project's exception types.

Every error a user can cause with bad input is one of these, with a one-line message
that names the argument, what was expected and what came. The CLI prints the message
alone (no traceback) and exits with status 2.
"""

from __future__ import annotations


class AttnlensError(Exception):
    """Base class of every error attnlens raises on purpose."""


class UnknownModelError(AttnlensError, LookupError):
    """A model name that is neither a zoo entry, a local folder nor a reachable hub id."""


class ModelUnavailableError(AttnlensError, OSError):
    """A hub model that cannot be loaded here (offline and not cached, say)."""


class SelectionError(AttnlensError, ValueError):
    """A layer, head or site selection outside what the model has."""


class PromptError(AttnlensError, ValueError):
    """An empty prompt, or one longer than the model's context."""


class MemoryBudgetError(AttnlensError, MemoryError):
    """A capture whose estimated size exceeds the memory budget."""


class CorruptCaptureError(AttnlensError, ValueError):
    """A capture folder that is missing files, truncated or inconsistent."""


class OutputExistsError(AttnlensError, FileExistsError):
    """An output path that already holds results and `force` was not given."""


class InterventionError(AttnlensError, ValueError):
    """An intervention whose replacement does not fit the site it edits."""


class BackendError(AttnlensError, RuntimeError):
    """A backend (TransformerLens, nnsight) that is missing or cannot wrap this model."""
