"""A gateway's events to the cluster: :class:`ClusterSink` (a sink like any other) publishes every event
to the deployment's event stream, its streams named ``gateway/stream`` so that names from different
gateways never collide, and a heartbeat tells feeds the gateway is alive and what it serves.

Events a feed must not lose or repeat (stream start/end, segment boundaries, final predictions, states,
errors) are JetStream publishes, acknowledged, retried through a broker restart and de-duplicated by their
``Nats-Msg-Id``; levels, interims and stats are plain publishes on the same subject (in order behind them,
but lost if the connection drops at that moment).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import secrets
import time

from ..events import Event, Hello, Level, PredictionEvent, Stats
from .broker import retry
from .options import Names

log = logging.getLogger(__name__)

HEARTBEAT_S = 1.0
"""Gateways announce themselves this often; a feed ends the streams of one silent for its ``--gateway-ttl-s``."""

MAX_QUEUED_EVENTS = 100_000
"""Events waiting for the broker (it may be restarting); past this, levels, interims and stats are dropped."""


def durable(event: Event) -> bool:
    if isinstance(event, PredictionEvent):
        return event.final
    return not isinstance(event, (Level, Stats))


def renamed(event: Event, gateway: str) -> Event:
    """``event`` with its stream names as the cluster knows them (``gateway/stream``)."""
    if isinstance(event, Hello):
        return dataclasses.replace(event, streams=tuple(f"{gateway}/{s}" for s in event.streams))
    stream = getattr(event, "stream", None)
    return dataclasses.replace(event, stream=f"{gateway}/{stream}") if stream else event


class ClusterSink:
    """Queues events (``put`` never blocks) for :meth:`run` to publish in order."""

    def __init__(self, names: Names, gateway: str) -> None:
        self.names, self.gateway = names, gateway
        self.subject = names.event_subject(gateway)
        self.incarnation = f"{gateway}:{secrets.token_hex(4)}"  # message ids stay unique across restarts
        self.dropped = 0
        self.published = 0
        self._queue: asyncio.Queue | None = None
        self._early: list[tuple[Event, str | None]] = []  # put before the event loop ran (build_engine)
        self._count = 0
        self._stopping = False
        self.active: set[str] = set()  # this gateway's streams that have started and not ended

    def put(self, event: Event) -> None:
        event = renamed(event, self.gateway)
        if getattr(event, "type", "") == "stream":
            (self.active.add if event.state == "started" else self.active.discard)(event.stream)
        msg_id = None
        if durable(event):
            self._count += 1
            msg_id = f"{self.incarnation}:{self._count}"
        if self._queue is None:
            self._early.append((event, msg_id))
        elif msg_id is None and self._queue.qsize() >= MAX_QUEUED_EVENTS:
            self.dropped += 1
        else:
            self._queue.put_nowait((event, msg_id))

    async def run(self, nc, js) -> None:
        """Publish until cancelled (called once the connection is up)."""
        self._queue = asyncio.Queue()
        for item in self._early:
            self._queue.put_nowait(item)
        self._early.clear()
        while True:
            event, msg_id = await self._queue.get()
            data = event.to_json().encode()
            try:
                if msg_id is None:
                    await nc.publish(self.subject, data)
                else:
                    await retry(lambda: js.publish(self.subject, data, headers={"Nats-Msg-Id": msg_id}),
                                lambda: self._stopping, "event publish")
                self.published += 1
            except Exception as exc:  # noqa: BLE001 - a plain publish while the buffer is full: that event only
                self.dropped += 1
                log.debug("event not published: %s", exc)
            finally:
                self._queue.task_done()

    async def flush(self, timeout_s: float) -> bool:
        """Wait until everything queued is published (False if ``timeout_s`` ran out first)."""
        if self._queue is None:
            return not self._early
        try:
            await asyncio.wait_for(self._queue.join(), timeout_s)
            return True
        except asyncio.TimeoutError:
            self._stopping = True
            return False


async def heartbeats(nc, names: Names, gateway: str, hello, sink: ClusterSink, interval_s: float = HEARTBEAT_S):
    """Announce ``gateway`` every ``interval_s`` until cancelled (``hello()`` gives the current Hello)."""
    subject = names.heartbeat_subject(gateway)
    while True:
        await heartbeat(nc, subject, gateway, hello, sink, interval_s)
        await asyncio.sleep(interval_s)


async def heartbeat(nc, subject: str, gateway: str, hello, sink: ClusterSink, interval_s: float,
                    bye: bool = False) -> None:
    body = {"gateway": gateway, "hello": renamed(hello(), gateway).to_dict(), "streams": sorted(sink.active),
            "interval_s": interval_s, "time_s": time.time(), "bye": bye}
    try:
        await nc.publish(subject, json.dumps(body).encode())
    except Exception as exc:  # noqa: BLE001 - reconnecting: the next one will do
        log.debug("heartbeat not sent: %s", exc)
