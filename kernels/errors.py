"""Exception types raised by :mod:`kernels`."""

from __future__ import annotations


class KernelInputError(ValueError):
    """A caller passed tensors or options the stats attention cannot accept.

    Raised before any kernel launch, with a one-line message that names the argument and the offending
    values, e.g. ``span (10, 400) is out of range: keys are 0-299``.
    """
