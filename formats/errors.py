"""The project's exception types, shared by every package (no dependencies).

Every error a user can cause with bad input, and every unreadable file, is one of these,
with a one-line message that names the argument or file, what was expected and what
came. The CLI prints such a message alone (no traceback) and exits with status 2.
``lens.errors`` re-exports everything here.
"""

from __future__ import annotations


class AttnlensError(Exception):
    """Base class of every error attnlens raises on purpose."""


class UnknownModelError(AttnlensError, LookupError):
    """A model name that is neither a zoo entry, a local folder nor a reachable hub id."""


class ModelUnavailableError(AttnlensError, OSError):
    """A model that cannot be loaded here (offline and not cached, a wheel missing, not a model folder)."""


class SelectionError(AttnlensError, ValueError):
    """A layer, head, site or option value outside what is valid."""


class PromptError(AttnlensError, ValueError):
    """An input that cannot be run: empty, too long, an image for a text model, undecodable."""


class MemoryBudgetError(AttnlensError, MemoryError):
    """A capture whose estimated or measured size exceeds the memory budget."""


class InterventionError(AttnlensError, ValueError):
    """An edit whose value does not fit the site it edits."""


class BackendError(AttnlensError, RuntimeError):
    """A backend (TransformerLens, nnsight) that is missing or cannot run this model or site."""


class AnalysisError(AttnlensError, ValueError):
    """An analysis that cannot run on its inputs (no passing trial, wrong layout, bad task)."""


class KernelInputError(AttnlensError, ValueError):
    """Tensors or options the stats attention cannot accept (raised before any kernel launch)."""


class OutputExistsError(AttnlensError, FileExistsError):
    """An output path that already holds results and ``force`` was not given."""


class OutputLockedError(AttnlensError, FileExistsError):
    """An output folder another running command is writing to."""


class OutputPathError(AttnlensError, OSError):
    """An output path the file system refuses: permission denied, a name too long, a read-only disk."""


class CorruptFileError(AttnlensError, ValueError):
    """A file the project wrote (or should have) that is missing, truncated, inconsistent or crafted."""


class FormatVersionError(CorruptFileError):
    """A file written by a format version this version cannot read."""


class CorruptCaptureError(CorruptFileError):
    """A capture folder that is missing files, truncated or inconsistent."""


class ResultError(CorruptFileError):
    """A results file that is missing, unreadable or inconsistent (or a result that cannot be built)."""


class ResultsFolderError(CorruptFileError):
    """A results folder that does not exist or is not a folder."""


__all__ = [
    "AnalysisError", "AttnlensError", "BackendError", "CorruptCaptureError", "CorruptFileError",
    "FormatVersionError", "InterventionError", "KernelInputError", "MemoryBudgetError", "ModelUnavailableError",
    "OutputExistsError", "OutputLockedError", "OutputPathError", "PromptError", "ResultError", "ResultsFolderError", "SelectionError",
    "UnknownModelError",
]
