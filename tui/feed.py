"""A remote feed's messages, checked where they enter: text in, a typed event out, or :class:`BadMessage`.

``ser-live --connect`` shows whatever a server sends, and the server may be another version, another
program, or hostile. Every field the screen formats is checked against the event class's own type
hints here (a ``"confidence": "high"`` would otherwise raise inside a format string while drawing), so
the panels only ever see well-typed, finite, bounded values. Unknown message types and unknown fields
are ignored, as the protocol asks of clients. Textual is not imported here.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import types
import typing

from serlive.stream import events as ev

MAX_TEXT_CHARS = 4096
"""Longest string field taken (a model description is a few hundred characters)."""

MAX_ITEMS = 1024
"""Most entries in a list or mapping field (labels, streams, probabilities)."""

MAX_ABS_INT = 2**53
"""Integers beyond this would lose precision as floats (sample counts become seconds)."""

STATES = {"stream": ("state", ("started", "ended"))}
"""Enumerated fields the view branches on."""


class BadMessage(ValueError):
    """A message that is not a usable event; the text says what is wrong, in a few words."""


class Unknown(Exception):
    """A message of a type this client does not know: ignored, not an error (newer servers add types)."""


@functools.cache
def _hints(cls: type) -> dict[str, object]:
    return typing.get_type_hints(cls)


def _number(value, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadMessage(f"{where} is not a number")
    if isinstance(value, int) and abs(value) > MAX_ABS_INT or not math.isfinite(value):
        raise BadMessage(f"{where} is out of range")
    return float(value)


def _text(value, where: str) -> str:
    if not isinstance(value, str):
        raise BadMessage(f"{where} is not a string")
    if len(value) > MAX_TEXT_CHARS:
        raise BadMessage(f"{where} is longer than {MAX_TEXT_CHARS} characters")
    return value


def _coerce(value, hint, where: str):
    """``value`` as ``hint`` (int, float, bool, str, X | None, tuple[str, ...], dict[str, float], dict)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(value, inner, where)
    if hint is bool:
        if not isinstance(value, bool):
            raise BadMessage(f"{where} is not true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int) or abs(value) > MAX_ABS_INT:
            raise BadMessage(f"{where} is not an integer in range")
        return value
    if hint is float:
        return _number(value, where)
    if hint is str:
        return _text(value, where)
    if origin is tuple:
        if not isinstance(value, list) or len(value) > MAX_ITEMS:
            raise BadMessage(f"{where} is not a list of at most {MAX_ITEMS} items")
        return tuple(_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict or hint is dict:
        if not isinstance(value, dict) or len(value) > MAX_ITEMS:
            raise BadMessage(f"{where} is not an object of at most {MAX_ITEMS} entries")
        if not args:
            return value
        return {_text(k, f"{where} key"): _coerce(v, args[1], f"{where}.{k}") for k, v in value.items()}
    raise BadMessage(f"{where} has a type this client cannot check")  # a field added without a rule here


def parse(message: str | bytes) -> ev.Event:
    """One feed message -> its typed event. Raises :class:`BadMessage` (malformed) or :class:`Unknown`."""
    if not isinstance(message, str):
        raise BadMessage("a binary frame, not a JSON text message")
    try:
        data = json.loads(message, parse_constant=lambda name: float("nan"))
    except RecursionError:
        raise BadMessage("JSON nested too deeply") from None
    except ValueError:
        raise BadMessage("not JSON") from None
    if not isinstance(data, dict):
        raise BadMessage("not a JSON object")
    kind = data.get("type")
    if not isinstance(kind, str):
        raise BadMessage("no 'type'")
    cls = ev.EVENT_TYPES.get(kind)
    if cls is None:
        raise Unknown(kind[:40])
    hints, kwargs = _hints(cls), {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise BadMessage(f"{kind} without '{f.name}'")
            continue
        kwargs[f.name] = _coerce(data[f.name], hints[f.name], f"{kind}.{f.name}")
    field_name, allowed = STATES.get(kind, (None, ()))
    if field_name is not None and kwargs[field_name] not in allowed:
        raise BadMessage(f"{kind}.{field_name} is not one of {', '.join(allowed)}")
    return cls(**kwargs)
