"""Where the monitor's events come from: the local engine, a remote WebSocket feed, or a recording.

Each source is run by the app as ``await source.run(emit)``; it calls ``emit`` with engine events and
:class:`FeedStatus` notes, returns an exit code when its input ends, and ends early on ``stop()``.
Textual is not imported here.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Protocol

from serlive.stream import events as ev
from serlive.stream.redact import redact

from . import feed
from .state import FeedStatus

log = logging.getLogger(__name__)

Emit = Callable[[ev.Event | FeedStatus], None]

BACKOFF_START_S = 0.5
"""First wait before reconnecting a dropped feed; doubled per failure up to :data:`BACKOFF_MAX_S`."""

BACKOFF_MAX_S = 10.0


class ReplayError(ValueError):
    """A recording that cannot be replayed; the message is one sentence."""


class EventSource(Protocol):
    async def run(self, emit: Emit) -> int: ...

    def stop(self) -> None: ...


class _Sink:
    """An engine sink: ``put`` never blocks and is safe from any thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop, emit: Emit) -> None:
        self._loop, self._emit = loop, emit

    def put(self, event: ev.Event) -> None:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            self._emit(event)
        else:
            self._loop.call_soon_threadsafe(self._emit, event)


class EngineSource:
    """The in-process engine (``serlive.stream``'s ``Engine``: ``add_sink``, ``run``, ``stop``, ``hello``)."""

    def __init__(self, engine) -> None:
        self.engine = engine

    async def run(self, emit: Emit) -> int:
        self.engine.add_sink(_Sink(asyncio.get_running_loop(), emit))
        emit(FeedStatus(True, "local engine"))
        hello = self.engine.hello()
        if hello is not None:
            emit(hello)
        code = await self.engine.run()
        emit(FeedStatus(False, "input ended — q quits"))
        return int(code or 0)

    def stop(self) -> None:
        self.engine.stop()


class ReplaySource:
    """Replays a recorded event list, ``delay_s`` apart (0: as fast as the loop allows)."""

    def __init__(self, events: Iterable[ev.Event], delay_s: float = 0.0, hold: bool = False) -> None:
        self.events, self.delay_s, self.hold = list(events), delay_s, hold
        self._stopped = asyncio.Event()

    @classmethod
    def from_jsonl(cls, path: str | Path, **kwargs) -> ReplaySource:
        """The events of a JSON-lines file, each checked as a feed message is (unknown types skipped);
        raises :class:`ReplayError` naming the first line that is not an event."""
        try:
            lines = Path(path).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise ReplayError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
        events = []
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                events.append(feed.parse(line))
            except feed.Unknown:
                continue
            except feed.BadMessage as exc:
                raise ReplayError(f"{path}, line {number}: {exc}") from None
        return cls(events, **kwargs)

    async def run(self, emit: Emit) -> int:
        emit(FeedStatus(True, "replay"))
        for event in self.events:
            if self._stopped.is_set():
                return 0
            emit(event)
            await asyncio.sleep(self.delay_s)
        if self.hold:
            await self._stopped.wait()
        emit(FeedStatus(False, "input ended"))
        return 0

    def stop(self) -> None:
        self._stopped.set()


class WebSocketSource:
    """A remote engine's JSON feed; says when it drops and reconnects with exponential backoff.

    Every message is checked by :func:`.feed.parse` before the screen sees it: a malformed one is dropped
    and counted (``dropped``), the count and the last problem shown with the feed's status; the first
    is also logged as a warning (a toast on the screen), the rest at debug level, so a flood of bad
    messages cannot flood the screen."""

    def __init__(self, url: str, token: str | None = None, open_timeout_s: float = 5.0) -> None:
        self.url, self.token, self.open_timeout_s = url, token, open_timeout_s
        self._stopped = asyncio.Event()
        self.dropped = self.ignored = 0
        self._status = FeedStatus(False)

    async def run(self, emit: Emit) -> int:
        from websockets.asyncio.client import connect

        headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
        backoff_s = BACKOFF_START_S
        while not self._stopped.is_set():
            try:
                ws = await self._unless_stopped(connect(self.url, additional_headers=headers, max_size=2**22,
                                                        open_timeout=self.open_timeout_s))
            except Exception as exc:  # OSError, TimeoutError, websockets' InvalidStatus, InvalidURI, ...
                reason = _why(exc)
            else:
                if ws is None:  # stopped while connecting (a server that never answers must not hold up q)
                    break
                self._note(emit, FeedStatus(True, f"connected to {self.url}"))
                backoff_s = BACKOFF_START_S
                try:
                    await self._pump(ws, emit)
                    reason = "feed closed"
                except Exception as exc:  # ConnectionClosed: the server went away
                    reason = _why(exc)
                finally:
                    # A plain close (1000), also when the app cancels this task on its way out: leaving
                    # through ``async with`` on an exception would send 1011 and leave an unread error.
                    await asyncio.shield(ws.close())
            if self._stopped.is_set():
                break
            log.info("feed %s lost (%s); retrying in %.1f s", self.url, reason, backoff_s)
            self._note(emit, FeedStatus(False, f"feed lost — reconnecting in {backoff_s:g} s ({reason})"))
            try:
                await asyncio.wait_for(self._stopped.wait(), backoff_s)
            except asyncio.TimeoutError:
                pass
            backoff_s = min(backoff_s * 2, BACKOFF_MAX_S)
        return 0

    async def _unless_stopped(self, awaitable):
        """``await awaitable``, or None as soon as :meth:`stop` is called."""
        task, stop = asyncio.ensure_future(awaitable), asyncio.ensure_future(self._stopped.wait())
        try:
            await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            if not task.done():
                task.cancel()
                task.add_done_callback(_reap)
        return task.result() if task.done() and not task.cancelled() else None

    def _note(self, emit: Emit, status: FeedStatus) -> None:
        # The screen is seen by others than the user: a ?token= in the URL (or quoted in an error) is hidden.
        self._status = dataclasses.replace(status, message=redact(status.message), dropped=self.dropped,
                                           problem=self._status.problem)
        emit(self._status)

    def _take(self, message, emit: Emit) -> None:
        try:
            emit(feed.parse(message))
        except feed.Unknown as exc:  # a newer server's message type: ignored, as the protocol asks
            self.ignored += 1
            log.debug("ignoring a feed message of unknown type %r", str(exc))
        except feed.BadMessage as exc:
            self.dropped += 1
            log.log(logging.WARNING if self.dropped == 1 else logging.DEBUG,
                    "dropped a malformed message from %s: %s", self.url, exc)
            self._status = dataclasses.replace(self._status, dropped=self.dropped, problem=str(exc))
            emit(self._status)

    async def _pump(self, ws, emit: Emit) -> None:
        while (message := await self._unless_stopped(ws.recv())) is not None:
            self._take(message, emit)

    def stop(self) -> None:
        self._stopped.set()


def _why(exc: BaseException) -> str:
    if isinstance(exc, (OSError, asyncio.TimeoutError)):
        return str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {exc}"


def _reap(future: asyncio.Future) -> None:
    """Retrieve a cancelled receive's outcome, so asyncio does not report it as never retrieved."""
    if not future.cancelled():
        future.exception()
