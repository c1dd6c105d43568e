"""How the engine sheds load before finals slow down: the interims' *pressure* and the *bulk gate*.

:class:`Pressure` is shared by every stream's pipeline: a slow final spaces every stream's interims out, fast ones
bring them back. :class:`BulkGate` is where streams with audio waiting at their source take their event-loop
turns, one chunk at a time between them, and only while the model keeps up.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import AsyncIterator, Callable

MAX_INTERIM_SCALE = 8
"""Under load a stream's interims come at most this many times further apart than ``interim_ms``: each one
superseded in the queue doubles its spacing, each one served halves it again."""

FINAL_TARGET_MS = 100.0
"""Finals first: a final that took longer than this from its segment's close doubles every stream's interim
spacing (the :class:`Pressure`, up to :data:`MAX_INTERIM_SCALE`), one back under half of it halves it again;
the interims' compute goes to the finals before the finals queue up (a stream's own superseded interims space
out that stream alone)."""

HELD_S = 5.0
"""A stream whose source is read as fast as it goes (``Source.paced`` False: a file with ``--fast``), or whose
pacing depends on its sender (stdin, a WebSocket client) and which was held back for the model within this many
seconds (its finals' audio reached ``max_pending_s``: a client sending faster than real time), takes its turns
on the event loop through the engine's one :class:`BulkGate`: such streams go one chunk at a time between them,
so however many there are, a paced stream (a microphone, a file on the clock) is served every round of the loop
and keeps its clock. A paced stream is never gated, even when the model holds it back (it is behind, not ahead).
(Running ahead of the wall clock is not the test: hundreds of fast streams sharing an overloaded model each
advance slower than real time.)"""

BULK_WAIT_S = 0.005
"""How often the bulk gate looks at the model's queue again while it is full."""

BULK_QUEUE_BATCHES = 1
"""The bulk gate also waits while this many model batches (``max_batch`` each) already wait for the model: streams
read as fast as they go otherwise spin the event loop, queue hundreds of finals ahead of a paced stream's and keep
the interpreter lock from the model's threads (200 fast files beside one paced: 312 finals waiting, passes of 4-6
finals taking 0.35-0.65 s, the paced stream's second final 3-8.8 s late; bounded: 0.46-1.6 s)."""


class Pressure:
    """Every stream's interims at least ``level`` times further apart (1: as configured)."""

    def __init__(self, level: int = 1) -> None:
        self.level = level

    def press(self, close_ms: float) -> None:
        """A final took ``close_ms`` from its segment's close: double the level when slow, halve it when fast."""
        if close_ms > FINAL_TARGET_MS:
            self.level = min(2 * self.level, MAX_INTERIM_SCALE)
        elif close_ms < FINAL_TARGET_MS / 2:
            self.level = max(1, self.level // 2)


class BulkGate:
    """One turn at a time for streams with audio waiting at their source (:data:`HELD_S`). ``depth`` tells how many
    requests wait for the model; a turn waits while they are ``bound`` or more (None: no bound, as in a cluster
    gateway, whose backlog waits in the broker's bulk lane)."""

    def __init__(self, depth: Callable[[], int], bound: int | None) -> None:
        self.depth, self.bound = depth, bound
        self._lock = asyncio.Lock()

    @contextlib.asynccontextmanager
    async def turn(self, stopping: Callable[[], bool]) -> AsyncIterator[None]:
        """Hold the gate for one chunk and the loop round after it (the other gated streams queue on the lock)."""
        async with self._lock:
            while self.bound is not None and self.depth() >= self.bound and not stopping():
                await asyncio.sleep(BULK_WAIT_S)  # and only while the model keeps up
            yield
            await asyncio.sleep(0)
