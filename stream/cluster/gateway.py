"""The gateway: the single-process engine, with its model owner replaced by :class:`RemoteWorker`.

Sources, VAD, segmenter, per-stream state and per-speaker adaptation stay here, next to the audio (the
gateway loads ``--model`` for its labels, heads and calibration, which adaptation re-applies; it runs no
forward pass). A final request is a JetStream publish to the work queue, de-duplicated by its id; its
prediction comes back on this gateway's own results subject through a durable consumer, so neither a
worker's death nor a broker restart loses it. Interims are plain publishes to the workers' queue group and
expire after :data:`INTERIM_TTL_S` (the engine skips the stream's interims meanwhile).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import logging
import time
from dataclasses import dataclass, field

import numpy as np

from .. import worker as _worker
from ..events import StreamStatus
from ..worker import BadAudio
from .broker import check_broker, connect, ensure_streams, fetch, retry
from .options import Names, connect_options, names_of, process_name
from .publish import ClusterSink, heartbeat, heartbeats
from .wire import WireError, WireRequest, chunk_bytes, decode_result

log = logging.getLogger(__name__)

INTERIM_TTL_S = 3.0
"""An interim not answered within this is given up (a worker may have dropped it under load)."""

RESULT_FETCH = 256
LIVE_OWED_S = 2.0
AHEAD_S = 1.0
HELD_MEMORY_S = 5.0
"""A final goes to the bulk lane when its stream has a backlog, that is audio waiting at its source: the
source is read as fast as possible (a file with ``--fast``), or the engine held it back (its unanswered
finals reached ``max_pending_s``) within the last ``HELD_MEMORY_S``, or its audio has run more than
``AHEAD_S`` ahead of the wall clock since it started (a client sending faster than real time; see
:meth:`RemoteWorker._ahead_s`), or it has ``LIVE_OWED_S`` of audio in finals still unanswered; otherwise to
the live lane. Workers keep room for live
finals, so a real-time stream's final does not queue behind another stream's backlog, nor behind an
overload of streams that each advance slower than real time only because the model cannot keep up."""
CHUNK_MAX_SAMPLES = 4 * 16_000
"""Audio chunks hold at most 4 s (256 kB of float32; NATS refuses messages over its max_payload, 1 MB by default)."""


Superseded = getattr(_worker, "Superseded", BadAudio)
"""How an interim fails quietly: replaced by a newer one, or not answered in time (the engine then spaces
the stream's interims further apart)."""


@dataclass(eq=False)
class _Segment:
    chunks: list[int] = field(default_factory=list)  # sequence numbers in the audio stream, in order
    sent: int = 0  # samples of the segment already queued as chunks
    last: float = 0.0  # the last sample sent: a request that does not extend the same audio starts afresh


class RemoteWorker:
    """The engine's model owner, over the broker: the same ``submit`` / ``start`` / ``stop`` /
    ``abandon`` as :class:`serlive.stream.worker.InferenceWorker`."""

    def __init__(self, options: dict, names: Names, gateway: str, prediction_type, sink: ClusterSink,
                 hello=None, max_pending_s: float = 4.0, unpaced=lambda stream: False) -> None:
        self.options, self.names, self.gateway = options, names, gateway
        self.prediction_type, self.sink, self.hello = prediction_type, sink, hello
        self.max_owed = int(max_pending_s * 16_000)  # the engine holds a stream back from here (its max_pending_s)
        self.unpaced = unpaced  # stream -> its source is read as fast as possible
        self.compute_s = self.audio_s = 0.0
        self.batches = self.items = 0
        self.concurrent = True
        self.served = None
        self.bytes_out = 0  # audio and request bytes published
        self.bytes_whole = 0  # what sending each request's whole audio would have published
        self.requests = 0
        self.lanes = {"live": 0, "bulk": 0}  # finals sent to each lane
        self.garbage = self.duplicates = 0
        self._waiting: dict[str, tuple[asyncio.Future, float]] = {}
        self._segments: dict[tuple[str, int], _Segment] = {}
        self._stream_numbers: dict[str, int] = {}
        self._interims: dict[str, str] = {}  # stream -> id of its interim still waiting
        self._owed: dict[str, int] = {}  # stream -> samples of its finals not answered yet
        self._pace: dict[str, tuple[float, int]] = {}  # stream -> (loop time, end sample) its clock starts from
        self._held: dict[str, float | None] = {}  # stream -> loop time the engine let it go (None: held now)
        self._anonymous = itertools.count(1)
        self._outbox: asyncio.Queue | None = None  # requests of streams paced by a clock (a microphone, a client)
        self._unpaced_outbox: asyncio.Queue | None = None  # of streams read as fast as possible: published apart
        self._tasks: list[asyncio.Task] = []
        self.nc = self.js = None

    @property
    def queue_depth(self) -> int:
        return len(self._waiting)

    async def start(self, warm_up: bool = True) -> None:
        """Connect, make sure the streams exist, start publishing and receiving (``warm_up``: workers warm
        themselves)."""
        self.nc = await connect(self.options, f"ser-live gateway {self.gateway}")
        self.js = self.nc.jetstream()
        await ensure_streams(self.js, self.names)
        self._outbox, self._unpaced_outbox = asyncio.Queue(), asyncio.Queue()
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

        durable = f"gw_{self.gateway}"
        self._results = await self.js.pull_subscribe(
            self.names.result_subject(self.gateway), durable=durable, stream=self.names.results,
            config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, deliver_policy=DeliverPolicy.NEW,
                                  ack_wait=30, inactive_threshold=3600))
        await self.nc.subscribe(self.names.interim_result_subject(self.gateway), cb=self._on_interim_result)
        self._tasks = [asyncio.create_task(self._publish_requests(), name="cluster-requests"),
                       asyncio.create_task(self._publish_requests(self._unpaced_outbox), name="cluster-fast-requests"),
                       asyncio.create_task(self._receive_results(), name="cluster-results"),
                       asyncio.create_task(self.sink.run(self.nc, self.js), name="cluster-events")]
        if self.hello is not None:
            self._tasks.append(asyncio.create_task(heartbeats(self.nc, self.names, self.gateway, self.hello, self.sink)))

    def submit(self, audio: np.ndarray, urgent: bool = True, stream: str = "", *, segment: int | None = None,
               end_sample: int | None = None) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        final = urgent
        if not final and self._interims.get(stream) in self._waiting:
            future.set_exception(Superseded("the stream's previous interim is still unanswered"))
            return future  # at most one interim per stream in flight: the model is behind, the engine backs off
        end = len(audio) if end_sample is None else end_sample
        key = (stream, -next(self._anonymous) if segment is None else segment)
        start = end - len(audio)  # a request's audio is its segment's, from the start
        segment = self._segments.setdefault(key, _Segment())
        n = len(audio)
        if not segment.sent:
            new = audio
        elif n < segment.sent:  # a final trimmed back over its trailing silence: already sent
            new = audio[:0]
        elif float(audio[segment.sent - 1]) == segment.last:  # the same audio, extended
            new = audio[segment.sent:]
        else:  # not the audio sent before: start the segment's chunks afresh
            segment = self._segments[key] = _Segment()
            new = audio
        if len(new):
            segment.sent, segment.last = n, float(audio[n - 1])
        if final:
            self._segments.pop(key, None)
        number = self._stream_numbers.setdefault(key[0], len(self._stream_numbers) + 1)
        request_id = f"{self.sink.incarnation}:{number}:{key[1]}:" + ("f" if final else f"i{end}")
        ahead_s = self._ahead_s(key[0], end, loop.time())
        lane = "live"
        if final:
            owed = self._owed.get(key[0], 0)
            lane = "bulk" if self._backlog(key[0], ahead_s, owed, loop.time()) else "live"
            self._owed[key[0]] = owed + n
            if owed + n >= self.max_owed:
                self._held[key[0]] = None  # the engine stops reading the source until answers come
            self.lanes[lane] += 1
        self._waiting[request_id] = (future, key[0] if final else None, n)
        self.audio_s += len(new) / 16_000
        self.bytes_whole += 4 * n
        self.requests += 1
        outbox = self._unpaced_outbox if self.unpaced(key[0]) else self._outbox  # (a stream's order is kept)
        outbox.put_nowait((segment, new, request_id, key, start, end, final, n, lane))
        if not final:
            self._interims[key[0]] = request_id
            loop.call_later(INTERIM_TTL_S, self._expire, request_id)
        return future

    def _backlog(self, stream: str, ahead_s: float, owed_samples: int, now_s: float) -> bool:
        """Whether ``stream`` has audio waiting at its source (see :data:`HELD_MEMORY_S`): its final goes to the
        bulk lane."""
        released_s = self._held.get(stream, -HELD_MEMORY_S)
        return (self.unpaced(stream) or released_s is None or now_s - released_s < HELD_MEMORY_S
                or ahead_s > AHEAD_S or owed_samples >= LIVE_OWED_S * 16_000)

    def _ahead_s(self, stream: str, end_sample: int, now_s: float) -> float:
        """How far the stream's audio has run ahead of the wall clock since the stream started (since its
        first request when its start was not seen): a source captured in real time never does, even when it
        catches up after this process lagged; a client sending faster than real time does."""
        ref_s, ref_end = self._pace.setdefault(stream, (now_s, end_sample))
        return (end_sample - ref_end) / 16_000 - (now_s - ref_s)

    def put(self, event) -> None:
        """The engine's events (this is also one of its sinks): a stream's start starts its clock."""
        if isinstance(event, StreamStatus) and event.state == "started":
            self._pace[event.stream] = (asyncio.get_running_loop().time(), 0)

    def forget(self, stream: str) -> None:
        """The stream ended: its open segments' bookkeeping goes."""
        for key in [k for k in self._segments if k[0] == stream]:
            del self._segments[key]
        self._interims.pop(stream, None)
        self._pace.pop(stream, None)
        self._held.pop(stream, None)

    def _answered(self, request_id: str):
        """The waiting future of ``request_id`` (None if it is not waited for), no longer owed."""
        waiting = self._waiting.pop(request_id, None)
        if waiting is None:
            return None
        future, stream, samples = waiting
        if stream is not None:
            self._owed[stream] = self._owed.get(stream, 0) - samples
            if self._owed[stream] < self.max_owed and stream in self._held and self._held[stream] is None:
                self._held[stream] = asyncio.get_running_loop().time()  # let go: still a backlog for a while
            if self._owed[stream] <= 0:
                del self._owed[stream]
        return future

    def _expire(self, request_id: str) -> None:
        future = self._answered(request_id)
        if future is not None and not future.done():
            future.set_exception(Superseded("no worker answered in time"))

    async def _publish_requests(self, outbox: asyncio.Queue | None = None) -> None:
        """Publish what is queued in ``outbox`` (the paced streams' by default), one request after another:
        the streams read as fast as possible have a publisher of their own, so a real-time stream's request
        never waits behind their chunks and requests in the same gateway."""
        names, outbox = self.names, self._outbox if outbox is None else outbox
        while True:
            segment, new, request_id, key, start, end, final, n, lane = await outbox.get()
            try:
                tail = b""
                if final and 0 < len(new) <= CHUNK_MAX_SAMPLES:  # the segment's last audio rides with its final
                    tail, new = chunk_bytes(new), new[:0]
                for i in range(0, len(new), CHUNK_MAX_SAMPLES):  # (a message stays far below max_payload)
                    data = chunk_bytes(new[i:i + CHUNK_MAX_SAMPLES])
                    ack = await retry(lambda: self.js.publish(names.audio_subject(self.gateway), data),
                                      what="audio publish")  # (a retried chunk may be stored twice: harmless)
                    segment.chunks.append(ack.seq)
                    self.bytes_out += len(data)
                wire = WireRequest(request_id, self.gateway, key[0], key[1], start, end, final,
                                   tuple(segment.chunks), n, self._reply(final), time.time(), tail).encode()
                self.bytes_out += len(wire)
                if final:
                    await retry(lambda: self.js.publish(names.final_subject(self.gateway, lane), wire,
                                                        headers={"Nats-Msg-Id": request_id}), what="request publish")
                else:
                    await self.nc.publish(names.interim_subject, wire)
            except Exception as exc:  # noqa: BLE001 - an interim that cannot go out now fails quietly
                log.debug("request %s not sent: %s", request_id, exc)
                self._expire(request_id)

    def _reply(self, final: bool) -> str:
        return (self.names.result_subject if final else self.names.interim_result_subject)(self.gateway)

    async def _receive_results(self) -> None:
        while True:
            for msg in await fetch(self._results, RESULT_FETCH, 1.0, "results"):
                self._resolve(msg.data)
                try:
                    await msg.ack()
                except Exception as exc:  # noqa: BLE001 - redelivered later: a duplicate, dropped by id
                    log.debug("result ack: %s", exc)

    async def _on_interim_result(self, msg) -> None:
        self._resolve(msg.data)

    def _resolve(self, data: bytes) -> None:
        try:
            request_id, prediction, failure = decode_result(data, self.prediction_type)
        except WireError as exc:
            self.garbage += 1
            log.warning("dropped a message on the results subject that is not a result (%d so far): %s",
                        self.garbage, exc)
            return
        future = self._answered(request_id)
        if future is None:
            self.duplicates += 1  # a redelivered final already answered, or an interim given up
            return
        if future.done():
            return
        if failure is None:
            self.items += 1
            future.set_result(prediction)
        else:
            code, message = failure
            kind = {"bad_audio": BadAudio, "superseded": Superseded}.get(code, RuntimeError)
            future.set_exception(kind(message))

    def abandon(self) -> int:
        """Give up every request still waiting (their futures are cancelled)."""
        waiting, self._waiting = self._waiting, {}
        self._owed.clear()
        self._held.clear()
        for future, _, _ in waiting.values():
            future.cancel()
        return len(waiting)

    async def stop(self, timeout_s: float | None = None) -> None:
        """Publish the events still queued, say goodbye, close the connection."""
        if self.nc is None:
            return
        if not await self.sink.flush(max(timeout_s or 0.0, 2.0)):
            log.warning("%d events could not be published before exit", self.sink._queue.qsize())
        if self.hello is not None:
            await heartbeat(self.nc, self.names.heartbeat_subject(self.gateway), self.gateway, self.hello,
                            self.sink, 0.0, bye=True)
        for task in self._tasks:
            task.cancel()
        try:
            await self.js.delete_consumer(self.names.results, f"gw_{self.gateway}")
        except Exception as exc:  # noqa: BLE001 - it expires by itself
            log.debug("delete consumer: %s", exc)
        await self.nc.close()  # (everything owed is published and acknowledged by now)
        self.nc = None


def check_gateway_args(args: argparse.Namespace) -> tuple[dict, Names, str]:
    """The connection options, names and gateway name; the broker is asked now (one sentence if it is down
    or refuses us), before the model loads."""
    options, names = connect_options(args), names_of(args)
    gateway = process_name(args, "gateway")
    check_broker(options, names)
    return options, names, gateway


def attach_gateway(engine, checked: tuple[dict, Names, str]) -> RemoteWorker:
    """Make ``engine`` a gateway: requests go to the cluster's workers, events also to the cluster."""
    from serlive.model import Prediction

    options, names, gateway = checked
    sink = ClusterSink(names, gateway)
    worker = RemoteWorker(options, names, gateway, Prediction, sink, hello=engine.hello,
                          max_pending_s=engine.config.inference.max_pending_s, unpaced=lambda s: _unpaced(engine, s))
    engine.worker = worker
    engine.bulk.bound = None  # fast streams' finals wait in the broker's bulk lane, not in this process
    engine.add_sink(worker)
    engine.add_sink(sink)
    return worker


def _unpaced(engine, stream: str) -> bool:
    """Whether ``engine`` reads ``stream``'s source as fast as it can (a file or array without real-time
    pacing). Other sources (a microphone, stdin, a WebSocket client) are judged by how they behave."""
    source = engine.source(stream)
    return source is not None and source.paced is False
