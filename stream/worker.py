"""The model owner: one worker thread does every forward pass, batching requests across streams.

The event loop calls :meth:`InferenceWorker.submit` and awaits the returned future; it never waits on a
forward pass. The thread takes the first waiting request, gathers more for at most ``max_wait_ms`` (up to
``max_batch``, finals before interims), computes each waveform's SAP mask with :meth:`Predictor.mask` (the function training
uses), groups requests of similar length so padding stays small, and runs them.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
import itertools
from dataclasses import dataclass, field

import numpy as np

from serlive.model import Prediction, Predictor

from .chunks import SAMPLE_RATE_HZ

log = logging.getLogger(__name__)

PAD_RATIO = 0.6
"""A batch holds only requests at least this fraction of its longest one (bounds padding waste)."""

@dataclass(order=True, slots=True)
class _Request:
    priority: int
    seq: int
    audio: np.ndarray = field(compare=False)
    future: asyncio.Future = field(compare=False)
    loop: asyncio.AbstractEventLoop = field(compare=False)


_STOP = _Request(2, 0, None, None, None)
"""Sorts after every request, so what is queued is finished first."""


class BadAudio(ValueError):
    """One request's audio cannot be predicted (NaN/inf samples, too short); the message is one sentence.
    Only that request fails: the rest of its batch runs without it."""


class InferenceWorker:
    """Runs ``predictor`` on a thread of its own. ``compute_s`` and ``audio_s`` accumulate forward time
    and the audio it covered (their ratio is the real-time factor); ``batches`` counts forward passes."""

    def __init__(self, predictor: Predictor, max_batch: int = 16, max_wait_ms: float = 10.0) -> None:
        self.predictor = predictor
        self.max_batch, self.max_wait_s = max_batch, max_wait_ms / 1000
        self._queue: queue.PriorityQueue = queue.PriorityQueue()
        self._seq = itertools.count(1)
        self._thread: threading.Thread | None = None
        self.compute_s = self.audio_s = 0.0
        self.batches = self.items = 0
        self.concurrent = True  # False: one stream only, nothing to wait for, so no batching delay

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    async def start(self, warm_up: bool = True) -> None:
        """Start the thread; with ``warm_up``, run a first forward pass before returning."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._serve, daemon=True, name="ser-live-model")
            self._thread.start()
        if warm_up:
            t0 = time.perf_counter()
            noise = (0.01 * np.random.default_rng(0).standard_normal(SAMPLE_RATE_HZ)).astype(np.float32)
            await asyncio.gather(*(self.submit(noise) for _ in range(min(2, self.max_batch))))
            log.info("model warm-up took %.2f s", time.perf_counter() - t0)
            self.compute_s = self.audio_s = 0.0
            self.batches = self.items = 0

    def submit(self, audio: np.ndarray, urgent: bool = True) -> asyncio.Future:
        """Queue a 16 kHz mono float32 waveform; the future resolves to its :class:`Prediction`.
        Urgent requests (final predictions) are served before the others (interims)."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.put(_Request(0 if urgent else 1, next(self._seq), audio, future, loop))
        return future

    async def stop(self) -> None:
        """Finish what is queued, then end the thread."""
        if self._thread is None:
            return
        self._queue.put(_STOP)
        await asyncio.to_thread(self._thread.join)
        self._thread = None

    def _serve(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is _STOP:
                break
            batch = [first]
            deadline = time.monotonic() + (self.max_wait_s if self.concurrent else 0.0)
            while len(batch) < self.max_batch:
                try:
                    item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if item is _STOP:
                    stopping = True
                    break
                batch.append(item)
            for group in group_by_length(batch, self.max_batch):
                self._run(group)

    def _run(self, batch: list[_Request]) -> None:
        """Prepare and mask each request on its own (a bad one fails alone), then one forward pass; if
        that fails for a batch of several, each request is retried alone so only the culprit fails."""
        t0 = time.perf_counter()
        ready: list[tuple[_Request, np.ndarray, np.ndarray]] = []
        for r in batch:
            try:
                wave = self.predictor.prepare(r.audio)
                ready.append((r, wave, self.predictor.mask(wave)))
            except Exception as exc:  # noqa: BLE001 - AudioError and anything else the audio provokes
                r.loop.call_soon_threadsafe(_resolve, r.future, None, BadAudio(str(exc)))
        if not ready:
            return
        try:
            preds = self.predictor.predict_prepared([w for _, w, _ in ready], [m for _, _, m in ready])
        except Exception as exc:  # noqa: BLE001 - isolate the culprit, or tell the one waiter
            if len(ready) > 1:
                for r, _, _ in ready:
                    self._run([r])
                return
            log.warning("forward pass failed: %s", exc)
            log.debug("forward pass failed", exc_info=True)
            ready[0][0].loop.call_soon_threadsafe(_resolve, ready[0][0].future, None, exc)
            return
        self.compute_s += time.perf_counter() - t0
        self.audio_s += sum(len(w) for _, w, _ in ready) / SAMPLE_RATE_HZ
        self.batches += 1
        self.items += len(ready)
        for (r, _, _), p in zip(ready, preds):
            r.loop.call_soon_threadsafe(_resolve, r.future, p, None)


def group_by_length(batch: list[_Request], max_batch: int) -> list[list[_Request]]:
    """Longest first, each group holding requests at least :data:`PAD_RATIO` of its first one's length."""
    groups: list[list[_Request]] = []
    for r in sorted(batch, key=lambda r: -len(r.audio)):
        if groups and len(groups[-1]) < max_batch and len(r.audio) >= PAD_RATIO * len(groups[-1][0].audio):
            groups[-1].append(r)
        else:
            groups.append([r])
    return groups


def _resolve(future: asyncio.Future, result: Prediction | None, exc: BaseException | None) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)
