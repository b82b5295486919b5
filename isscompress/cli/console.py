"""Consoles that print a file's own words safely: names a file chose (tensor keys, layer names, paths) may hold
terminal control sequences — ``ESC]0;title BEL`` retitles the window, ``ESC[2J`` clears it, a bidi override
reorders what is read — so every control character in printed text is shown escaped (``\\x1b``), never sent.
Rich's own styling is added after, so colours still work; ``--json`` output is escaped by the JSON encoder.
"""

from __future__ import annotations

import re
from typing import Any

from rich.console import Console
from rich.text import Text

# C0 controls except tab and newline, DEL, C1 controls, and the Unicode bidi embeddings, overrides and isolates
CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def printable(text: str) -> str:
    """``text`` with every control character written as its escape (``\\x1b``, ``\\u202e``)."""
    return CONTROL.sub(lambda match: match[0].encode("unicode_escape").decode("ascii"), text)


class SafeConsole(Console):
    """A Rich console whose printed strings pass through :func:`printable` before markup and styling (a ``Text``
    built by the caller is the caller's to make printable: its spans index the original string)."""

    def render_str(self, text: str, **kwargs: Any) -> Text:
        return super().render_str(printable(text), **kwargs)
