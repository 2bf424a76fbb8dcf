"""Text for the terminal: user-controlled strings with their control characters escaped.

A file name, model name or prompt can carry escape sequences (``ESC]0;title BEL`` sets the
window title, ``ESC[2J`` clears the screen), newlines that forge a second message, Unicode
marks that reverse the text around them, or lone surrogates (an undecodable file name)
that stop the print with an encoding error. :func:`printable` writes each such character
the way ``repr`` does (``\\x1b``, ``\\n``, ``\\u202e``, ``\\udcff``); everything else is left
as it is. No dependencies: ``lens --help`` imports this.
"""

from __future__ import annotations

import re

# C0 controls (newline and tab too: one message stays one line), DEL, C1 controls, the marks
# that reorder or hide text (bidi embeddings, overrides, isolates, LRM/RLM/ALM), line and
# paragraph separators, and surrogates (left by undecodable bytes in a file name).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    return {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(char) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


def printable(text: object, keep: str = "") -> str:
    """``str(text)`` with every terminal control character escaped (``'a\\x1b[2Jb'`` prints as
    ``a\\x1b[2Jb``, literally), except those in ``keep`` (``"\\n\\t"`` for multi-line text)."""
    return _UNSAFE.sub(lambda m: m.group() if m.group() in keep else _escape(m), str(text))
