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
    to at most `limit` characters with a note of how much was left out."""
    line = " ".join(text.split())
    if len(line) <= limit:
        return line
    # Reserve room for the note; its length depends on the number it carries.
    note = f"... ({len(line)} characters in all)"
    return line[: max(0, limit - len(note))] + note
