"""The model owner's queue: per-stream requests served by weighted fair queuing on audio length, each
stream's finals before its interims (:class:`FairQueue`). Not thread-safe on its own: the worker holds its lock."""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass

import numpy as np


@dataclass(slots=True)
class QueuedRequest:
    """One request waiting for the model: its audio and the future its caller awaits."""

    stream: str
    final: bool
    seq: int
    audio: np.ndarray
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    taken_before: int = 0  # requests taken for a forward pass before this one was submitted
    segment: int | None = None  # the segment an interim grows (its encoder state is kept), or None
    end_sample: int | None = None  # where its audio ends on the stream's sample clock


class FairQueue:
    """Per-stream queues, served by weighted fair queuing on audio length (each stream's finals before
    its interims). A stream's next request gets the start tag ``max(V, the stream's last finish)`` when it
    comes to the head of its queue, and the finish tag ``start + its length in samples``; the smallest
    finish tag is served next and ``V`` becomes its start tag. So every waiting stream gets the model's
    time in equal shares of audio, a stream that was idle re-enters at the present (no credit saved up),
    and a real-time stream's short final comes before a backlog's next item instead of behind it. Ties go
    round-robin, in the order streams began waiting. Not thread-safe on its own."""

    def __init__(self) -> None:
        self._queues: dict[str, tuple[deque, deque]] = {}  # stream -> (finals, interims)
        self._start: dict[str, float] = {}  # waiting stream -> start tag of its next request, in turn order
        self._finish: dict[str, float] = {}  # stream -> finish tag of its last served request
        self._virtual = 0.0
        self._size = 0
        self.taken = 0  # requests taken so far

    def __len__(self) -> int:
        return self._size

    def put(self, request: QueuedRequest) -> list[QueuedRequest]:
        """Queue ``request``; returns the interims of its stream it supersedes (an interim replaces them)."""
        request.taken_before = self.taken
        finals, interims = self._queues.setdefault(request.stream, (deque(), deque()))
        if not finals and not interims:
            self._start[request.stream] = max(self._virtual, self._finish.get(request.stream, 0.0))
        superseded = [] if request.final else list(interims)
        if superseded:
            interims.clear()
            self._size -= len(superseded)
        (finals if request.final else interims).append(request)
        self._size += 1
        return superseded

    @property
    def finals(self) -> int:
        """Finals waiting."""
        return sum(len(finals) for finals, _ in self._queues.values())

    def take(self, n: int, interims: int | None = None, lane: str = "any") -> list[QueuedRequest]:
        """Up to ``n`` requests in service order (one stream alone may fill the batch); a batch of interims
        holds at most ``interims`` (None: ``n``). ``lane`` "any": finals before any interim; "finals": finals
        only."""
        out: list[QueuedRequest] = []
        while self._start and len(out) < n:
            if out and not out[0].final and len(out) >= (interims or n):
                break  # a batch of interims is full
            finals = [name for name in self._start if self._queues[name][0]]
            final = lane == "finals" or bool(finals)  # finals before any interim
            names = finals if final else [name for name in self._start if self._queues[name][1]]
            if not names or (out and out[-1].final != final):
                break  # a batch holds finals or interims, never both: interims never slow a final's pass
            finish, stream = None, ""
            for name in names:  # in turn order: the first of equal finish tags wins
                tag = self._start[name] + max(len(self._queues[name][0 if final else 1][0].audio), 1)
                if finish is None or tag < finish:
                    finish, stream = tag, name
            out.append(self._queues[stream][0 if final else 1].popleft())
            self._virtual = self._start.pop(stream)
            self._finish[stream] = finish
            self.taken += 1
            if any(self._queues[stream]):
                self._start[stream] = finish  # back at the end of the turn order
            else:
                del self._queues[stream]
        # a finish tag at or below V is worth no more than none: forget it (streams come and go)
        self._finish = {k: v for k, v in self._finish.items() if v > self._virtual}
        self._size -= len(out)
        return out

    def clear(self) -> list[QueuedRequest]:
        return self.take(self._size)
