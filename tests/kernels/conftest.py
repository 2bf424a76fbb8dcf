"""Kernels test configuration.

The triton kernels are tested on CPU through the triton interpreter.  ``TRITON_INTERPRET`` is read when a
``@triton.jit`` function is *decorated*, so it must be set before ``kernels._triton_*`` is imported; the kernels
package only imports those modules lazily, and nothing above this line imports them.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
