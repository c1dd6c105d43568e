"""Secrets kept out of every log line: the WebSocket token, wherever a record would carry it.

``--log-level debug`` makes websockets log each request line (``GET /?token=...``) and header
(``Authorization: Bearer ...``); an exception's text can quote a URL. :func:`install` wraps the logging
record factory, so every record of every logger (websockets' own included) is redacted once, when it is
made, before any handler (stderr, the TUI's toasts, pytest's capture) sees it: ``?token=`` values,
``Authorization`` header values and each registered secret written literally become ``[redacted]``.
"""

from __future__ import annotations

import logging
import re
from urllib.parse import quote

REDACTED = "[redacted]"

MIN_SECRET_CHARS = 3
"""Shorter secrets are not replaced literally (a one-letter token would blank every such letter); the
``?token=`` and ``Authorization`` patterns still hide them."""

_PATTERNS = (
    re.compile(r"([?&;]token=)[^&#\s'\"]*", re.IGNORECASE),
    re.compile(r"(authorization['\"]?\s*[:=,]\s*['\"]?)[^\r\n'\"]*", re.IGNORECASE),
)

_secrets: set[str] = set()
_previous_factory = None


def redact(text: str) -> str:
    """``text`` with every known secret, ``?token=`` value and ``Authorization`` value replaced."""
    for secret in sorted(_secrets, key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    for pattern in _PATTERNS:
        text = pattern.sub(lambda m: m.group(1) + REDACTED, text)
    return text


def _redact_record(record: logging.LogRecord) -> None:
    try:
        message = record.getMessage()
    except Exception:  # noqa: BLE001 - a broken format string: the handler reports it, the text is redacted
        message = str(record.msg)
    clean = redact(message)
    if clean != message or record.args:
        record.msg, record.args = clean, ()
    if record.exc_info and not record.exc_text:
        record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
    if record.stack_info:
        record.stack_info = redact(record.stack_info)


def install(secrets=()) -> None:
    """Redact every log record from now on; ``secrets`` (None entries are skipped) are also hidden
    wherever they appear, URL-quoted or not. Calling it again adds secrets."""
    global _previous_factory
    for secret in secrets:
        if secret and len(secret) >= MIN_SECRET_CHARS:
            _secrets.update({secret, quote(secret, safe=""), quote(secret)})
    if _previous_factory is not None:
        return
    _previous_factory = previous = logging.getLogRecordFactory()

    def factory(*args, **kwargs) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        _redact_record(record)
        return record

    logging.setLogRecordFactory(factory)
