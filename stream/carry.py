"""The encoder states the model owner keeps between a growing segment's interims, keyed by (stream, segment).

A state lives from the segment's first interim until its final takes it (or the stream's end, or a newer
segment of the stream, or eviction of the oldest past :data:`MAX_STATES`); a segment whose final was submitted
gets no interim's state again, so a new segment never sees an old segment's state. A state is used by one
forward pass at a time: a final whose state an interim's pass still holds takes the whole-segment path.
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
        self._busy: set[int] = set()  # ids of the states a forward pass holds

    def __len__(self) -> int:
        return len(self._states)

    def forget(self, stream: str) -> None:
        """Drop every state of ``stream`` (it ended or was reset; a new stream may reuse its name)."""
        with self._lock:
            self._closed.pop(stream, None)
            for key in [k for k in self._states if k[0] == stream]:
                del self._states[key]

    def close(self, stream: str, segment: int) -> None:
        """``segment``'s final is on its way: older segments' states go, its own waits for the final to take
        it, and no interim of it gets one again."""
        with self._lock:
            self._closed[stream] = max(segment, self._closed.get(stream, segment))
            for key in [k for k in self._states if k[0] == stream and k[1] < segment]:
                del self._states[key]

    def release(self, states: list[EncoderState | None]) -> None:
        """The forward pass that :meth:`claim` gave ``states`` to is over."""
        with self._lock:
            self._busy.difference_update(id(s) for s in states if s is not None)

    def claim(self, requests: list) -> list[EncoderState | None]:
        """Each request's state, marked busy until :meth:`release`: an interim's (made at its segment's first
        interim), a final's (taken: its segment's interims are over); None for requests without a segment,
        interims of closed segments, one whose ``end_sample`` is not past the state's (out of order), a state
        that another pass holds or that a request before it in ``requests`` took (``requests`` have ``stream``,
        ``final``, ``segment`` and ``end_sample``)."""
        out: list[EncoderState | None] = []
        with self._lock:
            for r in requests:
                out.append(self._claim_one(r))
                if out[-1] is not None:
                    self._busy.add(id(out[-1]))
        return out

    def _claim_one(self, r) -> EncoderState | None:
        if r.segment is None:
            return None
        key = (r.stream, r.segment)
        if r.final:
            state = self._states.get(key)
            if state is None or id(state) in self._busy or (r.end_sample is not None and r.end_sample < state.end_sample):
                return None
            return self._states.pop(key)
        if r.segment <= self._closed.get(r.stream, -1):
            return None
        for old in [k for k in self._states if k[0] == r.stream and k[1] < r.segment]:
            del self._states[old]  # a stream grows one segment at a time: an older one is over
        state = self._states.get(key)
        if state is None:
            state = self._states[key] = EncoderState()
            while len(self._states) > self.max_states:
                del self._states[next(iter(self._states))]
        if id(state) in self._busy or (r.end_sample is not None and r.end_sample <= state.end_sample):
            return None
        if r.end_sample is not None:
            state.end_sample = r.end_sample
        return state

    def get(self, stream: str, segment: int) -> EncoderState | None:
        with self._lock:
            return self._states.get((stream, segment))
