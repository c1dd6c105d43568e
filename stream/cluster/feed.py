"""The feed: every gateway's events from the broker, served with the same WebSocket protocol and
dashboard as a single process (:class:`serlive.stream.ws.WsServer` and :mod:`serlive.stream.dashboard`).

Events come from a durable consumer of the events stream (so a broker restart resumes where it stopped);
a final prediction is passed on once per (stream, segment) and a message seen before (by its stream
sequence) is skipped, so finals reach clients exactly once and in each stream's order. A client that
connects late gets the last :attr:`Feed.replay_s` seconds of everything but levels, interims and stats.
A gateway whose heartbeats stop for ``ttl_s`` has its open streams ended with reason "connection_lost".
Messages that are not events (a foreign publisher, garbage) are dropped and counted.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import json
import logging
import time
from collections import OrderedDict, deque

from ..events import (EVENT_TYPES, PROTOCOL_VERSION, Event, Hello, Level, PredictionEvent, SegmentEnd, Stats,
                      StreamStatus, from_dict)
from .broker import connect, ensure_streams, fetch
from .options import Names
from .publish import HEARTBEAT_S

log = logging.getLogger(__name__)

MAX_EVENT_BYTES = 1 << 20
REPLAY_EVENTS = 5000
"""At most this many events are replayed to a late client (the oldest go first)."""
SEEN_FINALS = 100_000


_KINDS = {"int": int, "float": (int, float), "str": str, "bool": bool, "dict": dict, "tuple": list, "list": list}


def _fits(value, annotation: str) -> bool:
    """Whether a JSON value fits a field annotated ``annotation`` (e.g. ``int``, ``str | None``)."""
    if value is None:
        return "None" in annotation
    for part in annotation.split("|"):
        kind = _KINDS.get(part.strip().split("[")[0])
        if kind is not None and isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
            return True
    return False


class Feed:
    """The engine-like object a :class:`WsServer` serves (``hello``; it takes no audio)."""

    def __init__(self, options: dict, names: Names, name: str, replay_s: float = 60.0, ttl_s: float = 5.0) -> None:
        self.options, self.names, self.name = options, names, name
        self.replay_s, self.ttl_s = replay_s, ttl_s
        self.garbage = self.duplicates = 0
        self.ws = None
        self._sinks: list = []
        self._recent: deque[tuple[float, str]] = deque(maxlen=REPLAY_EVENTS)
        self._finals: OrderedDict[tuple[str, int], None] = OrderedDict()
        self._closed: dict[str, int] = {}  # stream -> last segment ended (later interims of it are stale)
        self._active: dict[str, str] = {}  # stream -> its gateway
        self._gateways: dict[str, tuple[float, dict]] = {}  # gateway -> (last heartbeat, its hello)
        self._last_seq = 0
        self._stop = asyncio.Event()
        self._heard = asyncio.Event()  # a heartbeat came
        self.ready = asyncio.Event()

    def add_sink(self, sink) -> None:
        self._sinks.append(sink)

    def hello(self) -> Hello:
        hellos = [h for _, h in self._gateways.values() if h]
        h = hellos[-1] if hellos else {}
        return Hello(PROTOCOL_VERSION, tuple(h.get("labels", ())), h.get("model", "cluster"), 16_000,
                     tuple(self._active), bool(h.get("dimensional", False)), "cluster")

    def add_source(self, source, remote: bool = False) -> str:
        raise RuntimeError("the feed takes no audio: send it to a gateway")

    def recent(self) -> list[str]:
        """The replay window's events as JSON, oldest first (:class:`WsServer` offers them to each new client)."""
        horizon = time.monotonic() - self.replay_s
        return [m for t, m in self._recent if t >= horizon]

    def stop(self) -> None:
        self._stop.set()

    def emit(self, event: Event) -> None:
        if not isinstance(event, (Level, Stats)) and not (isinstance(event, PredictionEvent) and not event.final):
            self._recent.append((time.monotonic(), event.to_json()))
        for sink in self._sinks:
            try:
                sink.put(event)
            except Exception:  # noqa: BLE001 - one broken sink must not take the others down
                log.exception("sink %r failed", sink)

    async def run(self, ws_config=None) -> int:
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

        nc = await connect(self.options, f"ser-live feed {self.name}")
        js = nc.jetstream()
        await ensure_streams(js, self.names)
        await nc.subscribe(self.names.heartbeat_subject("*"), cb=self._on_heartbeat)
        try:  # a gateway's hello (labels, model) for the first clients' hello, if one is running
            await asyncio.wait_for(self._heard.wait(), 1.5 * HEARTBEAT_S)
        except asyncio.TimeoutError:
            pass
        if ws_config is not None:
            from ..dashboard import http_handler
            from ..ws import WsServer

            self.ws = WsServer(self, ws_config, http_handler=http_handler)
            await self.ws.start()
            self.add_sink(self.ws)
        start = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=self.replay_s)
        durable = f"feed_{self.name}"
        sub = await js.pull_subscribe(
            f"{self.names.prefix}.ev.>", durable=durable, stream=self.names.events,
            config=ConsumerConfig(ack_policy=AckPolicy.ALL, deliver_policy=DeliverPolicy.BY_START_TIME,
                                  opt_start_time=start.isoformat(), ack_wait=30, inactive_threshold=3600))
        tasks = [asyncio.create_task(self._consume(sub)), asyncio.create_task(self._watch_gateways())]
        self.ready.set()
        await self._stop.wait()
        for task in tasks:
            task.cancel()
        if self.ws is not None:
            await self.ws.close(1.0)
        try:
            await js.delete_consumer(self.names.events, durable)
        except Exception as exc:  # noqa: BLE001 - it expires by itself
            log.debug("delete consumer: %s", exc)
        await nc.close()
        for sink in self._sinks:
            if sink is not self.ws and hasattr(sink, "close"):
                sink.close()
        return 0

    async def _consume(self, sub) -> None:
        while True:
            msgs = await fetch(sub, 512, 1.0, "events")
            for msg in msgs:
                seq = msg.metadata.sequence.stream
                if seq <= self._last_seq:
                    self.duplicates += 1
                    continue
                self._last_seq = seq
                self._receive(msg.subject, msg.data)
            try:
                if msgs:
                    await msgs[-1].ack()
            except Exception as exc:  # noqa: BLE001 - redelivered: skipped by sequence
                log.debug("events ack: %s", exc)

    def _parse(self, data: bytes) -> Event:
        if len(data) > MAX_EVENT_BYTES:
            raise ValueError(f"{len(data)} bytes")
        raw = json.loads(data)
        if not isinstance(raw, dict) or raw.get("type") not in EVENT_TYPES:
            raise ValueError("no event type")
        cls = EVENT_TYPES[raw["type"]]
        for f in dataclasses.fields(cls):
            if f.name not in raw:
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                    raise ValueError(f"a {raw['type']} event without {f.name}")
            elif not _fits(raw[f.name], str(f.type)):
                raise ValueError(f"{f.name} of a {raw['type']} event is {type(raw[f.name]).__name__}")
        return from_dict(raw)

    def _receive(self, subject: str, data: bytes) -> None:
        try:
            event = self._parse(data)
        except Exception as exc:  # noqa: BLE001 - anything a foreign publisher sends
            self.garbage += 1
            log.warning("dropped a message on %s that is not an event (%d so far): %s", subject, self.garbage,
                        str(exc)[:200])
            return
        stream = getattr(event, "stream", None)
        if isinstance(event, PredictionEvent):
            key = (event.stream, event.segment)
            if event.final:
                if key in self._finals:
                    self.duplicates += 1
                    return
                self._finals[key] = None
                if len(self._finals) > SEEN_FINALS:
                    self._finals.popitem(last=False)
            elif event.segment <= self._closed.get(event.stream, -1):
                return
        elif isinstance(event, SegmentEnd):
            self._closed[event.stream] = max(event.segment, self._closed.get(event.stream, -1))
        elif isinstance(event, StreamStatus):
            if event.state == "started":
                self._active[stream] = subject.rsplit(".", 1)[-1]
            elif self._active.pop(stream, None) is None:
                return  # already ended (its gateway went silent before this arrived)
        self.emit(event)

    async def _on_heartbeat(self, msg) -> None:
        try:
            body = json.loads(msg.data)
            gateway = str(body["gateway"])
            hello = body.get("hello") or {}
            if not isinstance(hello, dict):
                raise ValueError("hello is not an object")
        except Exception as exc:  # noqa: BLE001
            self.garbage += 1
            log.warning("dropped a heartbeat that does not parse (%d so far): %s", self.garbage, str(exc)[:200])
            return
        # (a goodbye counts as one more heartbeat: the gateway's last events may still be on their way)
        self._gateways[gateway] = (time.monotonic(), hello)
        self._heard.set()

    async def _watch_gateways(self) -> None:
        started = time.monotonic()
        while True:
            await asyncio.sleep(min(0.5, self.ttl_s / 4))
            now = time.monotonic()
            for gateway, (seen, _) in list(self._gateways.items()):
                if now - seen >= self.ttl_s:
                    del self._gateways[gateway]
            if now - started < self.ttl_s:
                continue  # a gateway heard of only through replayed events has had no chance to beat yet
            for stream, gateway in list(self._active.items()):
                if gateway not in self._gateways:
                    del self._active[stream]
                    detail = f"gateway {gateway} sent no heartbeat for {self.ttl_s:g} s"
                    log.warning("%s: %s", stream, detail)
                    self.emit(StreamStatus(stream, "ended", detail, "connection_lost"))
