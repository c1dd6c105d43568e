"""Sinks: objects with a non-blocking ``put(event)`` (and optionally ``close()``) that the engine fans out to."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from typing import TextIO

from .events import Event, PredictionEvent, StreamStatus
from .names import printable

log = logging.getLogger(__name__)


def _write_line(fh: TextIO, line: str, what: str) -> bool:
    """Write and flush one line; False (after one warning) once the reader has gone, e.g. ``| head``."""
    try:
        fh.write(line + "\n")
        fh.flush()
        return True
    except OSError as exc:
        log.warning("%s stopped: %s", what, exc.strerror or exc)
        if fh is sys.stdout:  # the interpreter's final flush of stdout would fail again, with a traceback
            try:
                os.dup2(os.open(os.devnull, os.O_WRONLY), fh.fileno())
            except (OSError, ValueError):
                pass
        return False


REMOTE_MARK = "[remote] "
"""Written before a remote stream's name (ASCII: the text output may go to any terminal or file)."""


class JsonlSink:
    """One JSON object per line, flushed per line, to ``path`` ("-" for stdout). ``types`` (event type
    names) keeps only those events; None keeps all."""

    def __init__(self, path: str = "-", types: set[str] | None = None) -> None:
        self._own = path != "-"
        self._fh: TextIO | None = open(path, "w", encoding="utf-8") if self._own else sys.stdout
        self.types = types

    def put(self, event: Event) -> None:
        if self._fh is None or (self.types is not None and event.type not in self.types):
            return
        if not _write_line(self._fh, event.to_json(), "JSON lines output"):
            self._fh = None  # e.g. `| head` closed the pipe: stop writing, keep the engine going

    def close(self) -> None:
        if self._fh is None:
            return
        try:
            if self._own:
                self._fh.close()
            else:
                self._fh.flush()
        except OSError:
            pass


class TextSink:
    """A line per final prediction and per stream start or end, for a headless run without ``--jsonl``.

    Names and details are written through :func:`~serlive.stream.names.printable`: a client or file name
    with escape sequences or newlines cannot drive the terminal or fake lines. A remote stream's name is
    written after :data:`REMOTE_MARK`, which a client's name cannot contain, so a client that names its
    stream like a local one (``ѕpeech.wav`` with a Cyrillic ``ѕ``) still reads as remote."""

    def __init__(self, fh: TextIO | None = None) -> None:
        self._fh: TextIO | None = fh or sys.stdout
        self._remote: set[str] = set()

    def _name(self, stream: str) -> str:
        return (REMOTE_MARK if stream in self._remote else "") + printable(stream)

    def put(self, event: Event) -> None:
        if self._fh is None:
            return
        if isinstance(event, PredictionEvent) and event.final:
            probs = " ".join(f"{printable(k)}={v:.2f}" for k, v in event.probs.items())
            dims = "" if event.valence is None else f"  valence={event.valence:+.2f} arousal={event.arousal:+.2f}"
            line = (f"{self._name(event.stream)} #{event.segment} {event.start_s:7.2f}-{event.end_s:7.2f} s  "
                    f"{printable(event.label):<8} {event.confidence:.2f}  [{probs}]{dims}  ({event.latency_ms:.0f} ms)"
                    + ("  uncertain" if event.uncertain else ""))
        elif isinstance(event, StreamStatus):
            if event.remote:
                self._remote.add(event.stream)
            line = f"{self._name(event.stream)}: {event.state}" + (f" ({printable(event.detail)})" if event.detail else "")
            if event.state == "ended":
                self._remote.discard(event.stream)
        else:
            return
        if not _write_line(self._fh, line, "text output"):
            self._fh = None

    def close(self) -> None:
        if self._fh is not None:
            try:
                self._fh.flush()
            except OSError:
                pass


class QueueSink:
    """Puts events on an asyncio queue (e.g. for a UI); a full queue drops the event and counts it."""

    def __init__(self, queue: asyncio.Queue) -> None:
        self.queue = queue
        self.dropped = 0

    def put(self, event: Event) -> None:
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self.dropped += 1


class ListSink:
    """Keeps every event in ``events`` (tests, the benchmark)."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def put(self, event: Event) -> None:
        self.events.append(event)

    def of(self, kind: type) -> list:
        return [e for e in self.events if isinstance(e, kind)]
