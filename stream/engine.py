"""The engine: sources -> per-stream pipelines -> one model owner -> typed events fanned out to sinks.

A sink is any object with a non-blocking ``put(event)`` (and optionally ``close()``). ``await
engine.run()`` runs until every local source has ended (when a live microphone ends, e.g. unplugged, a
running WebSocket server keeps it serving until :meth:`Engine.stop`), flushes every segment and pending prediction, and returns an exit code.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from serlive.model import Predictor
from serlive.model.adapt import SpeakerAdapter, adapted

from .chunks import SAMPLE_RATE_HZ
from .config import EngineConfig
from .drain import Draining
from .events import PROTOCOL_VERSION, Error, Event, Hello, PredictionEvent, Stats, StreamStatus
from .pipeline import InferenceRequest, StreamPipeline
from .sources import Source
from .state import LatencyWindow
from .load import BULK_QUEUE_BATCHES, HELD_S, MAX_INTERIM_SCALE, BulkGate, Pressure
from .procworker import ProcessWorker
from .worker import BadAudio, InferenceWorker, Superseded

log = logging.getLogger(__name__)

@dataclass(eq=False)
class _Stream:
    source: Source
    pipeline: StreamPipeline
    remote: bool
    task: asyncio.Task | None = None
    pending: set = field(default_factory=set)
    skipped_interims: int = 0  # interims superseded in the queue by a newer one of this stream
    last_final: asyncio.Task | None = None
    finalized: int = -1
    owed_samples: int = 0  # audio of this stream's finals waiting for the model
    peak_owed_samples: int = 0
    owed_finals: int = 0  # final requests not yet emitted (or reported as failed)
    room: asyncio.Event = field(default_factory=asyncio.Event)
    stopping: bool = False  # the engine is stopping: the stream ends with reason "shutdown"
    ended: bool = False
    adapter: SpeakerAdapter | None = None  # per-speaker adaptation (None: off or the model cannot)
    adapted_until: int = 0  # end sample of the last final the adapter learnt from


class Engine(Draining):
    """Runs ``sources`` through VAD, segmenting and ``predictor`` (on its own worker thread)."""

    def __init__(self, predictor: Predictor, config: EngineConfig = EngineConfig(),
                 sources: list[Source] | tuple = (), model_name: str = "") -> None:
        self.predictor, self.config = predictor, config
        self.model_name = model_name or predictor.config.description or f"{predictor.config.encoder.kind} encoder"
        owner = ProcessWorker if config.inference.model_process else InferenceWorker
        self.worker = owner(predictor, config.inference.max_batch, config.inference.max_wait_ms)
        self._max_owed = int(config.inference.max_pending_s * SAMPLE_RATE_HZ)
        self.latency = LatencyWindow()
        self.close_latency = LatencyWindow()  # segment closed -> final emitted: the model's share
        self.ready = asyncio.Event()
        self.ws = None
        self.skipped_interims = 0
        self.interims_served = 0
        self.pressure = Pressure()  # shared by every stream's pipeline
        self.bulk = BulkGate(lambda: self.worker.queue_depth, BULK_QUEUE_BATCHES * config.inference.max_batch)
        self._sinks: list = []
        self._initial = list(sources)
        self._streams: dict[str, _Stream] = {}
        self._stop: asyncio.Event | None = None
        self._stop_requested = False
        self._exit_code = 0
        self.unpredicted = 0  # segments a drain that ran out of time could not predict

    @property
    def device(self) -> str:
        return str(self.predictor.device)

    def add_sink(self, sink) -> None:
        self._sinks.append(sink)

    def hello(self) -> Hello:
        cfg = self.predictor.config
        streams = tuple(self._streams) if self._stop is not None else tuple(s.name for s in self._initial)
        remote = tuple(name for name, s in self._streams.items() if s.remote and name in streams)
        return Hello(PROTOCOL_VERSION, tuple(cfg.labels), self.model_name, SAMPLE_RATE_HZ,
                     streams, cfg.dimensional, self.device, remote_streams=remote)

    def emit(self, event: Event) -> None:
        for sink in self._sinks:
            try:
                sink.put(event)
            except Exception:  # noqa: BLE001 - one broken sink must not take the others down
                log.exception("sink %r failed", sink)

    def stop(self) -> None:
        """Stop the sources and end :meth:`run` after flushing (safe to call from a signal handler)."""
        self._stop_requested = True
        if self._stop is not None:
            self._stop.set()

    async def run(self) -> int:
        """Start, run until the sources end or :meth:`stop`, flush, return an exit code."""
        await self.start()
        try:
            await self._wait_done()
        finally:
            await self._shutdown()
        return self._exit_code

    async def start(self) -> None:
        """Warm the model up, open the WebSocket server, start the sources; then ``ready`` is set."""
        self._stop = asyncio.Event()
        if self._stop_requested:  # stop() came before run()
            self._stop.set()
        await self.worker.start(self.config.inference.warm_up)
        if self.config.ws is not None:
            from .dashboard import http_handler
            from .ws import WsServer

            self.ws = WsServer(self, self.config.ws, http_handler=http_handler)
            await self.ws.start()
            self.add_sink(self.ws)
        self._stats_task = asyncio.create_task(self._stats_loop())
        for source in self._initial:
            self.add_source(source)
        self.ready.set()

    def source(self, name: str) -> Source | None:
        """The source of stream ``name`` while the engine holds it (None: no such stream, or a remote one that
        ended)."""
        stream = self._streams.get(name)
        return None if stream is None else stream.source

    def add_source(self, source: Source, remote: bool = False) -> str:
        """Start consuming ``source`` (at start or while running); returns its unique stream id."""
        name, n = source.name, 2
        while name in self._streams:
            name, n = f"{source.name}#{n}", n + 1
        source.name = name
        pipeline = StreamPipeline(name, self.predictor.labels, self.config, self.pressure)
        stream = _Stream(source, pipeline, remote)
        stream.adapter = self.predictor.new_adapter() if self.config.adapt else None
        self._streams[name] = stream
        self.worker.concurrent = len(self._streams) > 1 or self.ws is not None
        self.emit(StreamStatus(name, "started", getattr(source, "device_name", ""), None, remote=remote))
        stream.task = asyncio.create_task(self._consume(stream), name=f"stream-{name}")
        return name

    async def _consume(self, stream: _Stream) -> None:
        """Source -> pipeline -> requests; at the end of input, close the open segment, wait for every
        final, then ``ended``. Cancelled only when a drain runs out of time (see :meth:`_shutdown`)."""
        loop, source, pipeline = asyncio.get_running_loop(), stream.source, stream.pipeline
        paced, held_until = source.paced, -1.0
        try:
            async for chunk in source.chunks():
                if paced is False or (paced is None and loop.time() < held_until):
                    async with self.bulk.turn(lambda: stream.stopping):  # audio waiting at its source
                        self._dispatch(stream, pipeline.push(chunk, loop.time()))
                else:
                    self._dispatch(stream, pipeline.push(chunk, loop.time()))
                while stream.owed_samples >= self._max_owed and not stream.stopping:
                    stream.room.clear()  # back-pressure: the source is not read until the model catches up
                    await stream.room.wait()
                    held_until = loop.time() + HELD_S
                await asyncio.sleep(0)  # a source with audio ready never suspends: let the other streams in
        except Exception as exc:  # noqa: BLE001 - a failing source ends its stream, not the engine
            log.debug("source %s failed", source.name, exc_info=True)
            source.failed, source.detail = True, f"{source.name} failed: {exc}"
        self._dispatch(stream, pipeline.flush(loop.time()))
        source.close()
        while stream.pending:
            await asyncio.gather(*stream.pending, return_exceptions=True)
        self._end(stream)

    def _end(self, stream: _Stream) -> None:
        """Emit the stream's ``ended`` (once), with its real reason."""
        if stream.ended:
            return
        stream.ended, source = True, stream.source
        if source.failed:
            log.warning("%s", source.detail)
            self.emit(Error("source_ended", source.detail, source.name))
        reason = "source_failed" if source.failed else "shutdown" if stream.stopping else source.reason
        self.emit(StreamStatus(source.name, "ended", source.detail, reason, remote=stream.remote))
        self.worker.forget(source.name)  # its open segment's encoder state, if any
        if stream.remote:
            self._streams.pop(source.name, None)
            self.worker.concurrent = len(self._streams) > 1 or self.ws is not None

    def _dispatch(self, stream: _Stream, outputs: list) -> None:
        for item in outputs:
            if isinstance(item, InferenceRequest):
                self._request(stream, item)
            else:
                self.emit(item)

    def _request(self, stream: _Stream, req: InferenceRequest) -> None:
        future = self.worker.submit(req.audio, urgent=req.final, stream=stream.source.name, segment=req.segment,
                                    end_sample=req.end_sample)
        if req.final:
            stream.owed_finals += 1
            stream.owed_samples += len(req.audio)
            stream.peak_owed_samples = max(stream.peak_owed_samples, stream.owed_samples)
        previous = stream.last_final if req.final else None
        task = asyncio.create_task(self._finish(stream, req, future, previous))
        if req.final:
            stream.last_final = task
        stream.pending.add(task)
        task.add_done_callback(stream.pending.discard)

    async def _finish(self, stream: _Stream, req: InferenceRequest, future: asyncio.Future,
                      previous: asyncio.Task | None) -> None:
        try:
            pred, failure = await future, None
        except Exception as exc:  # noqa: BLE001 - reported as an event; the stream goes on
            pred, failure = None, exc
        finally:
            if req.final:  # the audio is no longer held for the model: the source may be read again
                stream.owed_samples -= len(req.audio)
                if stream.owed_samples < self._max_owed:
                    stream.room.set()
        if isinstance(failure, Superseded) and not req.final:  # the model is behind: interims further apart
            self.skipped_interims += 1
            stream.skipped_interims += 1
            stream.pipeline.interim_scale = min(2 * stream.pipeline.interim_scale, MAX_INTERIM_SCALE)
            return
        if previous is not None:
            await asyncio.wait([previous])  # finals (and their errors) of one stream go out in order
        if failure is not None:
            self._failed(req, failure)
            if req.final:
                for state in stream.pipeline.apply_final(None, req.segment):
                    self.emit(state)
        elif req.final or req.segment > stream.finalized:  # a late interim would only confuse
            self._predicted(stream, req, pred)
        if not req.final and stream.pipeline.interim_scale > 1:  # back towards the configured spacing
            stream.pipeline.interim_scale = max(1, stream.pipeline.interim_scale // 2)
        if req.final:
            stream.owed_finals -= 1

    def _predicted(self, stream: _Stream, req: InferenceRequest, pred) -> None:
        now = asyncio.get_running_loop().time()
        latency_ms = round((now - req.ref_time_s) * 1000, 1)
        raw, pred = pred, self._adapt(stream, req, pred)
        event = PredictionEvent(
            req.stream, req.segment, req.start_sample, req.end_sample, final=req.final, label=pred.label,
            probs=pred.prob_dict, confidence=pred.confidence, valence=pred.valence, arousal=pred.arousal,
            knn=pred.knn, latency_ms=latency_ms, speech_frames=pred.speech_frames,
            uncertain=pred.uncertain, ood=pred.ood, adapted=pred.adapted,
        )
        self.emit(event)
        if not req.final:
            self.interims_served += 1
        else:
            stream.finalized = req.segment
            self.latency.add(latency_ms)
            self.close_latency.add((now - req.decided_s) * 1000)
            self.pressure.press((now - req.decided_s) * 1000)
            for state in stream.pipeline.apply_final(event, req.segment):
                self.emit(state)
            if stream.adapter is not None and raw.speech_frames > 0 and not raw.far:  # a voice, sure or not
                stream.adapter.update(raw.embedding)  # later segments only: never its own prediction
                stream.adapted_until = req.end_sample

    def _adapt(self, stream: _Stream, req: InferenceRequest, pred):
        """``pred`` shifted by the stream's earlier finals (per-speaker adaptation), forgotten when the
        stream's state resets (``reset_after_s`` of silence: likely another speaker)."""
        if stream.adapter is None:
            return pred
        reset_samples = self.config.state.reset_after_s * SAMPLE_RATE_HZ
        if stream.adapter.count and req.start_sample - stream.adapted_until > reset_samples:
            stream.adapter.reset()
        return adapted(self.predictor, pred, stream.adapter)  # shifted, and flatter for an unfamiliar voice

    def _failed(self, req: InferenceRequest, exc: Exception) -> None:
        if isinstance(exc, BadAudio):  # that segment alone; interims of it fail quietly, its final says why
            if req.final:
                message = f"segment {req.segment} of {req.stream} was not predicted: {exc}"
                log.warning("%s", message)
                self.emit(Error("bad_audio", message, req.stream))
            return
        self.emit(Error("inference_failed", f"prediction for segment {req.segment} failed: {exc}", req.stream))

    async def _wait_done(self) -> None:
        local = [s for s in self._streams.values() if not s.remote]
        stop = asyncio.create_task(self._stop.wait())
        if local:
            ended = asyncio.create_task(asyncio.wait([s.task for s in local]))  # (no gather: a task a drain
            await asyncio.wait([stop, ended], return_when=asyncio.FIRST_COMPLETED)  # cancels is not an error)
            ended.cancel()
            if any(s.source.live for s in local) and self.ws is not None and not self._stop.is_set():
                log.warning("the microphone ended; still serving WebSocket clients until stopped")
                await stop
        else:
            await stop
        stop.cancel()
        if any(s.source.failed for s in local):
            self._exit_code = 1

    def stats(self, load: float = 0.0) -> Stats:
        worker = self.worker
        rtf = worker.compute_s / worker.audio_s if worker.audio_s else 0.0
        dropped = sum(s.source.dropped_samples for s in self._streams.values()) / SAMPLE_RATE_HZ
        return Stats(round(rtf, 4), self.latency.percentile(50), self.latency.percentile(95), worker.queue_depth,
                     round(dropped, 3), self.device, self.ws.client_count if self.ws else 0, len(self._streams),
                     round(load, 3), self.skipped_interims,
                     {name: s.skipped_interims for name, s in self._streams.items() if s.skipped_interims})

    async def _stats_loop(self) -> None:
        interval = self.config.stats_interval_s
        busy, t_last = self.worker.compute_s, time.perf_counter()
        while True:
            await asyncio.sleep(interval)
            now = time.perf_counter()
            load = (self.worker.compute_s - busy) / max(now - t_last, 1e-9)
            busy, t_last = self.worker.compute_s, now
            self.emit(self.stats(min(load, 1.0)))
