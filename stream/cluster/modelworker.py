"""A model worker: pulls requests from every gateway and runs them through the one model owner,
:class:`serlive.stream.worker.InferenceWorker` (so its fair queue orders them: each stream's finals before
its interims, equal shares of audio across streams).

Finals come from the JetStream work queue in batches no larger than what this worker can start soon, so
other workers take the rest, from two lanes: "live" (streams keeping up with real time) and "bulk" (streams
with a backlog), the bulk lane never filling the last ``max_batch`` places, so a real-time stream's final
does not wait in the broker behind another stream's backlog; each is acknowledged only after its prediction is stored in the results
stream (published with the request id as ``Nats-Msg-Id``, so a redelivered request's second answer is
dropped by the broker), and marked in progress while it waits, so only a dead worker's requests are
redelivered, after the consumer's ack deadline. Interims come through a core NATS queue group and are
dropped when they waited longer than :data:`INTERIM_MAX_AGE_S` or the model is behind.

The audio is fetched by sequence number from the audio stream and kept in a bounded cache, so the open
segment's earlier chunks are fetched once per worker, not once per interim.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections import OrderedDict

import numpy as np

from .. import worker as _worker
from ..worker import BadAudio, InferenceWorker
from .broker import connect, ensure_streams, fetch, retry
from .options import Names
from .wire import WireError, WireRequest, chunk_samples, encode_failure, encode_prediction

log = logging.getLogger(__name__)

INTERIM_MAX_AGE_S = 1.0
"""An interim that reaches a worker later than this after it was sent is dropped (a newer one follows)."""

CACHE_BYTES = 256 << 20
"""Audio chunks kept per worker (least recently used go first)."""


Superseded = getattr(_worker, "Superseded", type("Superseded", (Exception,), {}))
_WITH_SEGMENT = "segment" in inspect.signature(InferenceWorker.submit).parameters
"""The model owner keeps an open segment's encoder state across its interims when told the segment."""


class AudioCache:
    """Audio chunks by their sequence number in the audio stream, fetched when missing."""

    def __init__(self, js, names: Names, max_bytes: int = CACHE_BYTES) -> None:
        self.js, self.names, self.max_bytes = js, names, max_bytes
        self._chunks: OrderedDict[int, np.ndarray] = OrderedDict()
        self._bytes = 0
        self.fetched_bytes = self.hits = self.misses = 0

    async def audio(self, req: WireRequest) -> np.ndarray:
        missing = [s for s in dict.fromkeys(req.chunks) if s not in self._chunks]
        self.hits += len(req.chunks) - len(missing)
        self.misses += len(missing)
        found = await asyncio.gather(*(self._fetch(s, req.gateway) for s in missing))
        for seq, samples in zip(missing, found):
            self._put(seq, samples)
        parts = [self._chunks[s] for s in req.chunks] + ([req.tail_samples] if req.tail else [])
        for s in req.chunks:
            self._chunks.move_to_end(s)
        audio = np.concatenate(parts) if len(parts) > 1 else parts[0]
        if len(audio) < req.samples:
            raise WireError(f"the request covers {req.samples} samples but its chunks hold {len(audio)}")
        return audio[: req.samples]

    async def _fetch(self, seq: int, gateway: str) -> np.ndarray:
        try:
            msg = await self.js.get_msg(self.names.audio, seq=seq, direct=True)
        except Exception as exc:  # noqa: BLE001 - NotFoundError: aged out; or the broker is restarting
            raise LookupError(f"audio chunk {seq} is not in the broker ({exc or type(exc).__name__})") from exc
        if msg.subject != self.names.audio_subject(gateway):
            raise WireError(f"audio chunk {seq} is not from gateway {gateway}")
        self.fetched_bytes += len(msg.data)
        return chunk_samples(msg.data)

    def _put(self, seq: int, samples: np.ndarray) -> None:
        self._chunks[seq] = samples
        self._bytes += samples.nbytes
        while self._bytes > self.max_bytes and len(self._chunks) > 1:
            _, old = self._chunks.popitem(last=False)
            self._bytes -= old.nbytes

    def forget(self, seqs) -> None:
        for s in seqs:
            old = self._chunks.pop(s, None)
            if old is not None:
                self._bytes -= old.nbytes


class ModelWorker:
    """Serves requests with ``inference`` until :meth:`stop`."""

    def __init__(self, inference: InferenceWorker, options: dict, names: Names, name: str,
                 ack_wait_s: float = 30.0) -> None:
        self.inference, self.options, self.names, self.name = inference, options, names, name
        self.ack_wait_s = ack_wait_s
        self.max_inflight = 2 * inference.max_batch
        self.garbage = self.finals = self.interims = self.shed = 0
        self._interims_inflight = 0  # interims taken and not answered (fetching audio or queued for the model)
        self._inflight: dict[str, object] = {}  # ack subject -> message, of the finals being served
        self._room = asyncio.Event()
        self._stop = asyncio.Event()
        self.ready = asyncio.Event()
        self.nc = self.js = self.cache = None

    def stop(self) -> None:
        self._stop.set()
        self._room.set()

    async def run(self) -> int:
        self.nc = await connect(self.options, f"ser-live worker {self.name}")
        self.js = self.nc.jetstream()
        self.cache = AudioCache(self.js, self.names)
        await ensure_streams(self.js, self.names)
        await self.inference.start(warm_up=True)
        self.inference.concurrent = True
        from nats.js.api import AckPolicy, ConsumerConfig

        lanes = [await self.js.pull_subscribe(
            f"{self.names.prefix}.req.final.{lane}.>", durable=f"workers_{lane}", stream=self.names.requests,
            config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, ack_wait=self.ack_wait_s, max_deliver=-1,
                                  max_ack_pending=-1)) for lane in ("live", "bulk")]
        await self.nc.subscribe(self.names.interim_subject, queue="workers", cb=self._on_interim)
        keepalive = asyncio.create_task(self._keep_alive())
        self.ready.set()
        log.warning("worker %s ready", self.name)
        try:
            await asyncio.gather(self._pull(lanes[0], 0), self._pull(lanes[1], self.inference.max_batch))
        finally:
            keepalive.cancel()
            if self._inflight:
                await asyncio.wait([asyncio.create_task(self._until_idle())], timeout=10)
            await self.inference.stop(5.0)
            await self.nc.close()
        return 0

    async def _until_idle(self) -> None:
        while self._inflight:
            await asyncio.sleep(0.05)

    async def _pull(self, finals, reserve: int) -> None:
        """Take finals from one lane while fewer than ``max_inflight - reserve`` are being served (the bulk
        lane leaves ``max_batch`` of room to the live one)."""
        while not self._stop.is_set():
            room = self.max_inflight - reserve - len(self._inflight)
            if room <= 0:
                self._room.clear()
                await self._room.wait()
                continue
            for msg in await fetch(finals, room, 0.5, "requests"):
                self._inflight[msg.reply] = msg
                asyncio.create_task(self._serve_final(msg))

    async def _keep_alive(self) -> None:
        """Requests still waiting for the model are in progress, not lost: no redelivery for them."""
        while True:
            await asyncio.sleep(max(self.ack_wait_s / 3, 0.2))
            for msg in list(self._inflight.values()):
                try:
                    await msg.in_progress()
                except Exception:  # noqa: BLE001
                    pass

    def _garbage(self, what: str, exc: Exception) -> None:
        self.garbage += 1
        log.warning("dropped a message on the %s subject that is not a request (%d so far): %s",
                    what, self.garbage, exc)

    async def _serve_final(self, msg) -> None:
        try:
            try:
                req = WireRequest.decode(msg.data)
                if not req.reply.startswith(f"{self.names.prefix}.res.") or not req.final:
                    raise WireError("a final request must be answered on the results subjects")
            except WireError as exc:
                self._garbage("requests", exc)
                await msg.term()
                return
            data = await self._predict(req)
            await retry(lambda: self.js.publish(req.reply, data, headers={"Nats-Msg-Id": req.id}),
                        self._stop.is_set, "result publish")
            await retry(msg.ack, self._stop.is_set, "ack")
            self.finals += 1
            self.cache.forget(req.chunks)
        except Exception as exc:  # noqa: BLE001 - not acknowledged: redelivered to a worker later
            log.warning("request not answered (it will be redelivered): %s", exc)
        finally:
            self._inflight.pop(msg.reply, None)
            self._room.set()

    async def _predict(self, req: WireRequest) -> bytes:
        try:
            audio = await self.cache.audio(req)
        except (LookupError, WireError) as exc:  # (an interim's failure stays quiet, as "bad_audio" does)
            return encode_failure(req.id, "inference_failed" if req.final else "bad_audio",
                                  f"segment {req.segment}: {exc}")
        try:
            prediction = await self.inference.submit(audio, urgent=req.final, stream=f"{req.gateway}/{req.stream}",
                                                     **self._segment_of(req))
        except Superseded as exc:
            return encode_failure(req.id, "superseded", str(exc) or "a newer interim replaced it")
        except BadAudio as exc:
            return encode_failure(req.id, "bad_audio", str(exc))
        except Exception as exc:  # noqa: BLE001 - reported to the gateway, which emits an error event
            return encode_failure(req.id, "inference_failed", str(exc))
        return encode_prediction(req.id, prediction)

    @staticmethod
    def _segment_of(req: WireRequest) -> dict:
        return {"segment": req.segment, "end_sample": req.end_sample} if _WITH_SEGMENT else {}

    async def _on_interim(self, msg) -> None:
        try:
            req = WireRequest.decode(msg.data)
            if not req.reply.startswith(f"{self.names.prefix}.ires."):
                raise WireError("an interim must be answered on the interim results subjects")
        except WireError as exc:
            self._garbage("interim requests", exc)
            return
        if time.time() - req.sent_s > INTERIM_MAX_AGE_S or self._interims_inflight >= self.inference.max_batch:
            self.shed += 1  # late, or the model is behind: the gateway gives it up after INTERIM_TTL_S
            return
        self._interims_inflight += 1
        asyncio.create_task(self._serve_interim(req))

    async def _serve_interim(self, req: WireRequest) -> None:
        try:
            data = await self._predict(req)
            await self.nc.publish(req.reply, data)
            self.interims += 1
        except Exception as exc:  # noqa: BLE001 - an interim may be lost
            log.debug("interim result not sent: %s", exc)
        finally:
            self._interims_inflight -= 1
