"""Error text people read: one line, of bounded length, whatever the input was.

A hostile or careless input must not make its own error enormous (a 10 KB name echoed
whole, a 3,000-VNode cycle spelled out), and a message must not break the one-line-per-
problem promise of every tool. Every boundary that shows an error (manifest checks, the
gRPC error mapping, dcnctl) passes it through `clip`.
"""

from __future__ import annotations

#: The longest line an error may take; longer ones keep their head and say what was cut.
MAX_LINE_CHARS = 500


def clip(text: str, limit: int = MAX_LINE_CHARS) -> str:
    """`text` on one line (runs of white space, newlines included, become one space), cut
    to at most `limit` characters. The middle goes, not the end: a long field path or value
    comes first in a message, and what is wrong with it comes last."""
    line = " ".join(text.split())
    if len(line) <= limit:
        return line
    # The note's length depends on the number it carries: size it for the largest.
    room = max(0, limit - len(_note(len(line))))
    tail = room // 3
    head = room - tail
    return line[:head] + _note(len(line) - head - tail) + (line[-tail:] if tail else "")


def _note(cut: int) -> str:
    return f" ...({cut} characters left out)... "
