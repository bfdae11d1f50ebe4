"""Untrusted text (LLM answers, prompts) made safe for a Markdown table cell.

Terminal escape sequences (CSI/OSC, which recolour or retitle a terminal that `cat`s the file), other control and
invisible format characters (bidi overrides) are removed; HTML is escaped so a viewer renders it as text; the
characters that end a cell or start Markdown markup (`|`, backtick, `*`, `_`, `[`, `]`, `\\`) are escaped;
newlines become spaces; long text is cut.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence
from typing import Any

# ESC [ ... final byte (CSI), ESC ] ... BEL or ESC \ (OSC), and any other two-byte ESC sequence; 8-bit CSI too
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[@-_]|\x9b[0-?]*[ -/]*[@-~]")
_MARKUP = {"\\": "\\\\", "|": "\\|", "`": "\\`", "*": "\\*", "_": "\\_", "[": "\\[", "]": "\\]",
           "&": "&amp;", "<": "&lt;", ">": "&gt;"}


def plain_text(value: Any) -> str:
    """`value` as one line of visible text: escape sequences, control and format characters removed, whitespace
    runs collapsed to single spaces."""
    text = _ANSI.sub("", str(value))
    text = "".join(" " if ch in "\t\n\r\v\f\x85\u2028\u2029" else ch for ch in text
                   if unicodedata.category(ch) not in ("Cc", "Cf") or ch in "\t\n\r\v\f\x85")
    return " ".join(text.split())


def markdown_cell(value: Any, max_chars: int = 300) -> str:
    """`value` as the text of one Markdown table cell (see the module doc); at most `max_chars` visible
    characters before escaping ("..." marks a cut). Empty text becomes "-"."""
    text = plain_text(value)
    if len(text) > max_chars:
        text = text[: max(0, max_chars - 3)] + "..."
    if not text:
        return "-"
    return "".join(_MARKUP.get(ch, ch) for ch in text)


def markdown_table(columns: Sequence[str], rows: Iterable[Sequence[Any]], max_chars: int = 300) -> str:
    """A whole Markdown table, every header and cell through `markdown_cell`; ends with a newline."""
    lines = ["| " + " | ".join(markdown_cell(c, max_chars) for c in columns) + " |",
             "|" + "---|" * len(columns)]
    for row in rows:
        if len(row) != len(columns):
            raise ValueError(f"row has {len(row)} cells, the table {len(columns)} columns")
        lines.append("| " + " | ".join(markdown_cell(c, max_chars) for c in row) + " |")
    return "\n".join(lines) + "\n"
