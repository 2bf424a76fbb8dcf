"""The project's exception types (defined in :mod:`formats.errors`, re-exported here).

Every error a user can cause with bad input is one of these, with a one-line message
that names the argument, what was expected and what came. The CLI prints the message
alone (no traceback) and exits with status 2.
"""

from attnlens.formats.errors import *  # noqa: F403
from attnlens.formats.errors import __all__  # noqa: F401
