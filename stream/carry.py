"""The encoder states the model owner keeps between a growing segment's interims, keyed by (stream, segment).

A state lives from the segment's first interim to the submission of its final (or the stream's end, or a
newer segment of the stream, or eviction of the oldest past :data:`MAX_STATES`); a segment whose final was
submitted never gets one again, so a new segment never sees an old segment's state.
"""

from __future__ import annotations

import threading

from serlive.model.incremental import EncoderState

MAX_STATES = 512
"""Open segments whose encoder state is kept at most (the oldest is dropped first): a caller that never sends
a segment's final cannot grow the worker's memory without bound (a 7.5 s segment's state is about 1.3 MB)."""


class SegmentStates:
    """Thread-safe: the event loop closes and forgets, the model's thread claims."""

    def __init__(self, max_states: int = MAX_STATES) -> None:
        self.max_states = max_states
        self._lock = threading.Lock()
        self._states: dict[tuple[str, int], EncoderState] = {}  # oldest first
        self._closed: dict[str, int] = {}  # stream -> its last segment whose final was submitted

    def __len__(self) -> int:
        return len(self._states)

    def forget(self, stream: str) -> None:
        """Drop every state of ``stream`` (it ended or was reset; a new stream may reuse its name)."""
        with self._lock:
            self._closed.pop(stream, None)
            for key in [k for k in self._states if k[0] == stream]:
                del self._states[key]

    def close(self, stream: str, segment: int) -> None:
        """``segment``'s final is on its way: its state (and any older one's) goes; none comes back."""
        with self._lock:
            self._closed[stream] = max(segment, self._closed.get(stream, segment))
            for key in [k for k in self._states if k[0] == stream and k[1] <= segment]:
                del self._states[key]

    def claim(self, requests: list) -> list[EncoderState | None]:
        """Each interim's state (made at the segment's first interim), None for the rest: finals, requests
        without a segment, closed segments, one whose ``end_sample`` is not past the state's (out of order),
        or a second request of the same segment in one batch (``requests`` have ``stream``, ``final``,
        ``segment`` and ``end_sample``)."""
        out: list[EncoderState | None] = []
        with self._lock:
            claimed: set[int] = set()
            for r in requests:
                if r.final or r.segment is None or r.segment <= self._closed.get(r.stream, -1):
                    out.append(None)
                    continue
                for old in [k for k in self._states if k[0] == r.stream and k[1] < r.segment]:
                    del self._states[old]  # a stream grows one segment at a time: an older one is over
                state = self._states.get((r.stream, r.segment))
                if state is None:
                    state = self._states[(r.stream, r.segment)] = EncoderState()
                    while len(self._states) > self.max_states:
                        del self._states[next(iter(self._states))]
                if id(state) in claimed or (r.end_sample is not None and r.end_sample <= state.end_sample):
                    out.append(None)
                    continue
                claimed.add(id(state))
                if r.end_sample is not None:
                    state.end_sample = r.end_sample
                out.append(state)
        return out

    def get(self, stream: str, segment: int) -> EncoderState | None:
        with self._lock:
            return self._states.get((stream, segment))
