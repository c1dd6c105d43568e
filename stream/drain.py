"""Stopping the engine without losing what it heard: the drain on SIGINT/SIGTERM/SIGHUP, and what is
reported when its grace period runs out. A mixin of :class:`serlive.stream.engine.Engine` (its streams,
worker, sinks and WebSocket server)."""

from __future__ import annotations

import asyncio
import logging

from .events import Error
from .pipeline import InferenceRequest

log = logging.getLogger("serlive.stream.engine")


class Draining:
    """:meth:`_shutdown` and :meth:`_give_up` of the engine."""

    async def _shutdown(self) -> None:
        """Drain within ``config.drain_s``: stop taking audio, close open segments, wait for their finals
        and emit ``ended`` for every stream; what the grace period did not cover is counted and reported
        (``drain_timeout``), never dropped silently. Then flush the sinks and clients."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.drain_s
        streams = list(self._streams.values())
        for stream in streams:
            if stream.task is not None and not stream.task.done():
                stream.stopping = True
                stream.source.close()
                stream.room.set()
        tasks = [s.task for s in streams if s.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=max(0.0, deadline - loop.time()))
        stuck = [s for s in streams if s.task is not None and not s.task.done()]
        if stuck:
            await self._give_up(stuck)
        self._stats_task.cancel()
        self.emit(self.stats())
        if self.ws is not None:
            await self.ws.close(max(0.2, min(1.0, deadline - loop.time())))
        await self.worker.stop(max(0.1, deadline - loop.time()))
        for sink in self._sinks:
            close = getattr(sink, "close", None)
            if close is not None and sink is not self.ws:
                close()

    async def _give_up(self, stuck: list) -> None:
        """The grace period ran out: count the segments left unpredicted (queued or still open), report
        them in one ``drain_timeout`` error and one log line, and end the streams."""
        for stream in stuck:
            stream.task.cancel()
        await asyncio.gather(*(s.task for s in stuck), return_exceptions=True)
        lost = 0
        for stream in stuck:
            for item in stream.pipeline.flush(asyncio.get_running_loop().time()):
                if isinstance(item, InferenceRequest):
                    lost += item.final
                else:
                    self.emit(item)
            lost += stream.owed_finals
        self.worker.abandon()
        pending = [t for s in stuck for t in s.pending]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        if lost:
            message = (f"{lost} segment{'s' if lost != 1 else ''} not predicted: the {self.config.drain_s:g} s "
                       f"grace period for stopping ran out")
            log.warning("%s", message)
            self.emit(Error("drain_timeout", message))
            self.unpredicted += lost
            self._exit_code = self._exit_code or 1
        for stream in stuck:
            self._end(stream)
