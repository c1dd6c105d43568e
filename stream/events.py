"""The typed events the engine emits and every sink (TUI, WebSocket, JSON lines) consumes.

Times are integer sample indices on the stream's capture clock (16 kHz); the ``*_s`` values in JSON are
derived from them. ``to_json()`` gives the wire form of protocol version :data:`PROTOCOL_VERSION`,
described by ``protocol.schema.json`` next to this file.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import ClassVar

PROTOCOL_VERSION = 2
"""Bumped on any change a client of the previous version could misread (2: access control, declared
audio formats, ``accepted``, ``stream.reason``)."""

SAMPLE_RATE_HZ = 16_000


def _s(samples: int) -> float:
    return round(samples / SAMPLE_RATE_HZ, 3)


def _finite(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


@dataclass(frozen=True, slots=True)
class Event:
    type: ClassVar[str] = "event"

    def to_dict(self) -> dict:
        return {"type": self.type, **dataclasses.asdict(self)}

    def to_json(self) -> str:
        """Strict JSON: a non-finite float (which ``json.dumps`` would write as ``NaN``, which JavaScript's
        ``JSON.parse`` rejects) goes out as null."""
        data = self.to_dict()
        try:
            return json.dumps(data, separators=(",", ":"), allow_nan=False)
        except ValueError:
            return json.dumps(_finite(data), separators=(",", ":"), allow_nan=False)


@dataclass(frozen=True, slots=True)
class Hello(Event):
    """Sent first on every connection."""

    type: ClassVar[str] = "hello"
    protocol: int
    labels: tuple[str, ...]
    model: str
    sample_rate_hz: int
    streams: tuple[str, ...]
    dimensional: bool
    device: str
    accepts_audio: bool = False
    max_message_bytes: int = 0
    remote_streams: tuple[str, ...] = ()
    """Those of ``streams`` whose audio comes from WebSocket clients (see :attr:`StreamStatus.remote`)."""


END_REASONS = ("end_of_input", "client_ended", "client_closed", "connection_lost", "source_failed", "shutdown")
"""Why a stream ended (the ``reason`` of a ``stream`` event with state "ended")."""


@dataclass(frozen=True, slots=True)
class StreamStatus(Event):
    """A stream (local source or remote client) started or ended (``state``: "started" | "ended");
    ``reason`` is None for "started", one of :data:`END_REASONS` for "ended". ``remote``: the audio comes
    from a WebSocket client, not from this engine's own input; a client picks its stream's name, so every
    view marks remote streams (a name can copy a local one letter for letter in another script)."""

    type: ClassVar[str] = "stream"
    stream: str
    state: str
    detail: str = ""
    reason: str | None = None
    remote: bool = False


@dataclass(frozen=True, slots=True)
class Accepted(Event):
    """To a WebSocket sender only: its audio opened stream ``stream`` (the id every other event uses)
    in ``format`` (``sample_rate_hz``, ``encoding``, ``channels``)."""

    type: ClassVar[str] = "accepted"
    stream: str
    format: dict


@dataclass(frozen=True, slots=True)
class _Span(Event):
    stream: str
    segment: int
    start_sample: int
    end_sample: int

    def to_dict(self) -> dict:
        d = Event.to_dict(self)
        d["start_s"], d["end_s"] = _s(self.start_sample), _s(self.end_sample)
        return d

    @property
    def start_s(self) -> float:
        return self.start_sample / SAMPLE_RATE_HZ

    @property
    def end_s(self) -> float:
        return self.end_sample / SAMPLE_RATE_HZ


@dataclass(frozen=True, slots=True)
class SegmentStart(_Span):
    """Speech started; ``end_sample`` is where the segmenter decided (start plus pre-roll window)."""

    type: ClassVar[str] = "segment_start"


@dataclass(frozen=True, slots=True)
class SegmentEnd(_Span):
    """Speech ended; ``reason``: "silence", "max_duration" or "end_of_input"; ``dropped`` if too short."""

    type: ClassVar[str] = "segment_end"
    reason: str = "silence"
    dropped: bool = False


@dataclass(frozen=True, slots=True)
class PredictionEvent(_Span):
    """A prediction for ``[start_sample, end_sample)``: interim while the segment is open, final after.
    ``uncertain``: do not trust the label (far out of distribution, low confidence or no speech);
    ``ood``: out-of-distribution score in [0, 1] (null: the model has no reference); ``adapted``: the
    stream's earlier finals shifted it (per-speaker adaptation)."""

    type: ClassVar[str] = "prediction"
    final: bool = False
    label: str = ""
    probs: dict[str, float] = field(default_factory=dict)
    confidence: float = 0.0
    valence: float | None = None
    arousal: float | None = None
    knn: bool = False
    latency_ms: float = 0.0
    speech_frames: int = 0
    uncertain: bool = False
    ood: float | None = None
    adapted: bool = False


@dataclass(frozen=True, slots=True)
class State(Event):
    """The stream's rolling current state: time-weighted smoothing of recent final predictions."""

    type: ClassVar[str] = "state"
    stream: str
    label: str | None
    probs: dict[str, float]
    valence: float | None
    arousal: float | None
    segments: int


@dataclass(frozen=True, slots=True)
class Level(Event):
    """Input level (dBFS) and whether the VAD hears speech, a few times a second per stream."""

    type: ClassVar[str] = "level"
    stream: str
    sample: int
    db: float
    speech: bool


@dataclass(frozen=True, slots=True)
class Stats(Event):
    """Engine health, about once a second.

    ``rtf``: model compute seconds per second of audio it predicted (finals and interims); ``load``: the
    fraction of the last interval the model thread was busy; latencies are end of audio -> final emitted
    over recent finals; ``dropped_audio_s``: audio the sources lost to overflow; ``skipped_interims``:
    interim predictions not run because a newer one of the same stream replaced them while they waited for
    the model (under load: finals go first), in all and, in ``skipped_interims_by_stream``, per stream
    (streams that skipped none are left out; None from an engine that does not count them).
    """

    type: ClassVar[str] = "stats"
    rtf: float
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    queue_depth: int
    dropped_audio_s: float
    device: str
    clients: int
    streams: int
    load: float = 0.0
    skipped_interims: int = 0
    skipped_interims_by_stream: dict[str, int] | None = None


@dataclass(frozen=True, slots=True)
class Error(Event):
    """Something went wrong that a client should know about (``code`` is a short identifier)."""

    type: ClassVar[str] = "error"
    code: str
    message: str
    stream: str | None = None


EVENT_TYPES: dict[str, type[Event]] = {
    cls.type: cls for cls in (Hello, StreamStatus, Accepted, SegmentStart, SegmentEnd, PredictionEvent, State, Level,
                              Stats, Error)
}


def from_dict(data: dict) -> Event:
    """Rebuild an event from its wire dict (the TUI's ``--connect`` mode uses this)."""
    cls = EVENT_TYPES[data["type"]]
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {k: v for k, v in data.items() if k in names}
    if cls is Hello:
        for key in ("labels", "streams", "remote_streams"):
            kwargs[key] = tuple(kwargs.get(key, ()))
    return cls(**kwargs)
