"""Exception types raised by :mod:`kernels` (the project's, from :mod:`formats.errors`).

:class:`KernelInputError` is raised before any kernel launch, with a one-line message that
names the argument and the offending values, e.g. ``span (10, 400) is out of range: keys are 0-299``.
"""

from attnlens.formats.errors import KernelInputError

__all__ = ["KernelInputError"]
