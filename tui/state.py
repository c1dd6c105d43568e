"""What the monitor shows, as plain Python: per-stream view state folded from engine events.

Widgets render from :class:`MonitorState`; nothing here imports Textual, so every rule about what the
screen should say is testable without a terminal. Times are seconds on each stream's capture clock.
"""

from __future__ import annotations

import csv
import dataclasses
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from serlive.stream import events as ev

TRAIL_POINTS = 12
"""How many recent final (valence, arousal) points the circumplex keeps as a trail."""

TIMELINE_WINDOW_S = 120.0
"""How far back the timeline reaches at most."""

TIMELINE_MIN_WINDOW_S = 30.0
"""The timeline's shortest span, so the first seconds of a stream are not drawn as slivers."""

MAX_LOG_ROWS = 1000
"""Segment-log rows kept per stream; the oldest go first (the CSV holds what is kept)."""

MAX_STREAMS = 256
"""Streams the monitor keeps at once: a feed that names a new stream in every message must not grow the
list without bound. Past it the oldest ended stream makes room; with none ended, new streams are not shown."""

CSV_COLUMNS = ("stream", "segment", "start_s", "duration_s", "label", "confidence", "latency_ms", "knn", "uncertain")


@dataclass(frozen=True, slots=True)
class Current:
    """The latest prediction for a stream, interim or final."""

    label: str
    confidence: float
    probs: dict[str, float]
    final: bool
    segment: int
    valence: float | None = None
    arousal: float | None = None
    uncertain: bool = False


@dataclass(frozen=True, slots=True)
class LogRow:
    """One finished segment, as the log and the CSV show it."""

    stream: str
    segment: int
    start_s: float
    duration_s: float
    label: str
    confidence: float
    latency_ms: float
    knn: bool
    uncertain: bool = False


@dataclass(slots=True)
class Block:
    """A timeline block: a segment's span and, once it has one, its final label (None while open)."""

    segment: int
    start_s: float
    end_s: float
    label: str | None = None
    open: bool = True


@dataclass(slots=True)
class StreamView:
    """Everything the screen shows about one stream."""

    name: str
    active: bool = True
    remote: bool = False
    """The audio (and the name) come from a WebSocket client: drawn with :data:`render.REMOTE_MARK`."""
    current: Current | None = None
    rolling: ev.State | None = None
    trail: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=TRAIL_POINTS))
    log: deque[LogRow] = field(default_factory=lambda: deque(maxlen=MAX_LOG_ROWS))
    blocks: deque[Block] = field(default_factory=deque)
    level_db: float | None = None
    speech: bool = False
    now_s: float = 0.0
    log_version: int = 0
    """Bumped whenever rows are removed or rewritten, so a table knows to rebuild instead of append."""

    @property
    def window_s(self) -> float:
        """The span the timeline shows: the stream so far, between the minimum and maximum windows."""
        return min(TIMELINE_WINDOW_S, max(TIMELINE_MIN_WINDOW_S, self.now_s))

    def reset(self) -> None:
        """Forget the rolling display state (prediction, trail, timeline, log); keep the live level."""
        self.current, self.rolling = None, None
        self.trail.clear()
        self.log.clear()
        self.blocks.clear()
        self.log_version += 1

    def _advance(self, t_s: float) -> None:
        self.now_s = max(self.now_s, t_s)
        while self.blocks and not self.blocks[0].open and self.blocks[0].end_s < self.now_s - TIMELINE_WINDOW_S:
            self.blocks.popleft()

    def _block(self, segment: int) -> Block | None:
        for block in reversed(self.blocks):
            if block.segment == segment:
                return block
        return None

    def on_segment_start(self, e: ev.SegmentStart) -> None:
        self._advance(e.end_s)
        self.blocks.append(Block(e.segment, e.start_s, e.end_s))

    def on_segment_end(self, e: ev.SegmentEnd) -> None:
        self._advance(e.end_s)
        block = self._block(e.segment)
        if block is None:
            block = Block(e.segment, e.start_s, e.end_s)
            self.blocks.append(block)
        block.start_s, block.end_s, block.open = e.start_s, e.end_s, False
        if e.dropped:
            self.blocks.remove(block)

    def on_prediction(self, e: ev.PredictionEvent) -> None:
        self._advance(e.end_s)
        self.current = Current(e.label, e.confidence, dict(e.probs), e.final, e.segment, e.valence, e.arousal,
                               e.uncertain)
        block = self._block(e.segment)
        if block is not None:
            block.end_s = max(block.end_s, e.end_s)
        if not e.final:
            return
        if block is not None:
            block.label = e.label
        if e.valence is not None and e.arousal is not None:
            self.trail.append((e.valence, e.arousal))
        if len(self.log) == self.log.maxlen:
            self.log_version += 1
        self.log.append(
            LogRow(self.name, e.segment, e.start_s, e.end_s - e.start_s, e.label, e.confidence, e.latency_ms, e.knn,
                   e.uncertain)
        )

    def on_level(self, e: ev.Level) -> None:
        self._advance(e.sample / ev.SAMPLE_RATE_HZ)
        self.level_db, self.speech = e.db, e.speech


@dataclass(frozen=True, slots=True)
class FeedStatus:
    """Whether the event feed is flowing; sources report it alongside engine events."""

    connected: bool
    message: str = ""
    dropped: int = 0
    """Malformed messages a remote feed sent that were dropped (see :mod:`.feed`)."""
    problem: str = ""
    """What was wrong with the last of them."""


class MonitorState:
    """All streams plus engine-wide facts (hello, stats, feed status, last error) and the selection."""

    def __init__(self) -> None:
        self.streams: dict[str, StreamView] = {}
        self.selected: str | None = None
        self.hello: ev.Hello | None = None
        self.stats: ev.Stats | None = None
        self.feed = FeedStatus(connected=False, message="waiting for the engine")
        self.error: ev.Error | None = None
        self.finished: int | None = None
        """The source's exit code once it has ended (a file fully processed), else None."""
        self.unshown = 0
        """Events of streams past :data:`MAX_STREAMS` that were not shown."""

    @property
    def labels(self) -> tuple[str, ...]:
        return self.hello.labels if self.hello else ()

    @property
    def dimensional(self) -> bool | None:
        return self.hello.dimensional if self.hello else None

    @property
    def view(self) -> StreamView | None:
        return self.streams.get(self.selected) if self.selected is not None else None

    def stream(self, name: str) -> StreamView | None:
        """The view of stream ``name``, made on first sight; None when :data:`MAX_STREAMS` are shown and
        none of them has ended (the oldest ended one makes room)."""
        if name not in self.streams:
            if len(self.streams) >= MAX_STREAMS and not self._forget_an_ended_stream():
                self.unshown += 1
                return None
            self.streams[name] = StreamView(name)
            if self.selected is None:
                self.selected = name
        return self.streams[name]

    def _forget_an_ended_stream(self) -> bool:
        ended = next((name for name, view in self.streams.items() if not view.active and name != self.selected), None)
        if ended is not None:
            del self.streams[ended]
        return ended is not None

    def apply(self, event: ev.Event | FeedStatus) -> None:
        """Fold one event into the view state."""
        match event:
            case FeedStatus():
                self.feed = event
            case ev.Hello():
                self.hello = event
                for name in event.streams:
                    if view := self.stream(name):
                        view.remote = name in event.remote_streams
            case ev.Stats():
                self.stats = event
            case ev.Error():
                self.error = event
            case ev.StreamStatus() | ev.SegmentStart() | ev.SegmentEnd() | ev.PredictionEvent() | ev.State() | ev.Level():
                if view := self.stream(event.stream):
                    self._apply_to(view, event)

    @staticmethod
    def _apply_to(view: StreamView, event: ev.Event) -> None:
        match event:
            case ev.StreamStatus():
                view.active, view.remote = event.state != "ended", event.remote
            case ev.SegmentStart():
                view.on_segment_start(event)
            case ev.SegmentEnd():
                view.on_segment_end(event)
            case ev.PredictionEvent():
                view.on_prediction(event)
            case ev.State():
                view.rolling = event
            case ev.Level():
                view.on_level(event)

    def select_next(self) -> str | None:
        """Move the selection to the next stream (wrapping) and return it."""
        names = list(self.streams)
        if names:
            i = names.index(self.selected) if self.selected in names else -1
            self.selected = names[(i + 1) % len(names)]
        return self.selected

    def reset_selected(self) -> None:
        if self.view is not None:
            self.view.reset()

    def save_csv(self, path: Path) -> int:
        """Write every stream's segment log to ``path``; returns the number of rows written."""
        rows = [row for view in self.streams.values() for row in view.log]
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(CSV_COLUMNS)
            for row in rows:
                d = dataclasses.asdict(row)
                d["start_s"], d["duration_s"] = round(row.start_s, 3), round(row.duration_s, 3)
                d["confidence"], d["latency_ms"] = round(row.confidence, 4), round(row.latency_ms, 1)
                writer.writerow([d[c] for c in CSV_COLUMNS])
        return len(rows)
