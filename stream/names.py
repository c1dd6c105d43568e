"""Names that came from outside (a client's ``?stream=``, a file name) made safe to show.

Stream names chosen by WebSocket clients are restricted where they enter (:func:`client_stream_name`);
every place that shows a name still treats it as plain text: the TUI never parses it as markup and the
text sink escapes control characters (:func:`printable`), since a local file name can hold anything too.
"""

from __future__ import annotations

import re
import unicodedata

MAX_NAME_CHARS = 64
"""Longest stream name a client may choose (longer ones are cut)."""

_UNSAFE = re.compile(r"[^\w.\-+@:# ]", re.UNICODE)


def client_stream_name(raw: str | None, default: str) -> str:
    """A client's requested name -> the name used: letters, digits and ``_ . - + @ : #`` and spaces, at most
    :data:`MAX_NAME_CHARS` characters; anything else becomes ``_``; empty -> ``default``."""
    if not isinstance(raw, str):
        return default
    name = unicodedata.normalize("NFKC", raw)
    name = _UNSAFE.sub("_", name).strip()[:MAX_NAME_CHARS].strip()
    return name or default


def printable(text: str) -> str:
    """``text`` with every non-printable character (ANSI escapes, newlines, bidi controls) written as a
    Python escape, so one value stays one line of plain text on a terminal."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)
