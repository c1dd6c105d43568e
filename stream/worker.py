"""The model owner: its two threads (one for finals only, one for finals and interims) do every forward pass, batching requests
across streams.

The event loop calls :meth:`InferenceWorker.submit` and awaits the returned future; it never waits on a
forward pass. Requests wait in per-stream queues; the thread waits at most ``max_wait_ms`` for a batch to
fill (up to ``max_batch``), takes requests in fair order over streams (equal shares of audio; each stream's
finals before its interims, see :class:`FairQueue`), computes each waveform's SAP mask with
:meth:`Predictor.mask` (the function training uses), groups requests of similar length so padding stays
small, and runs the groups in the fair queue's order.

Finals come before interims of every stream (an interim waits only for the short pass already running); a
stream's waiting interim is superseded by its next one (:class:`Superseded`). An interim naming its segment
(``submit(..., segment=, end_sample=)``) carries the segment's encoder state over (:mod:`serlive.model.incremental`)
and costs its new audio; the segment's final drops the state and recomputes the segment, as training did.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
import itertools

import numpy as np

from serlive.model import Prediction, Predictor

from .carry import SegmentStates
from .chunks import SAMPLE_RATE_HZ
from .fairqueue import FairQueue, QueuedRequest

log = logging.getLogger(__name__)

PAD_RATIO = 0.6
"""A batch holds only requests at least this fraction of its longest one (bounds padding waste)."""

PASS_AUDIO_S = 10.0
"""A forward pass holds at most this much padded audio (its longest request times its count). A pass is not
pre-empted, so this bounds how long a real-time stream's final can wait behind another stream's backlog of long
finals on a busy lane (about 0.1 s of compute on a CPU core), and the pass's tensors (32 finals of 7.5 s would
make 74 MB of 10 ms LSTM outputs alone); a CPU pass costs about the same per second of audio beyond a few items."""

MODEL_LANES = 2
"""Threads of the model owner (:class:`InferenceWorker`): one for finals, one for whatever waits."""


def set_cpu_threads(total: int | None) -> int:
    """Share ``total`` CPU threads (None: every core) among the model owner's lanes: torch's thread pool
    gets ``total // MODEL_LANES`` (at least 1), so two passes at once do not oversubscribe the cores.
    Returns the pool's size."""
    import torch

    per_lane = max(1, (total or os.cpu_count() or 1) // MODEL_LANES)
    torch.set_num_threads(per_lane)
    return per_lane


INTERIM_BATCH = 8
"""Interims per forward pass at most: a final that arrives while one runs waits for it (a pass is not
pre-empted), so the pass is kept short; more interims wait for the next, or are superseded."""


class Superseded(Exception):
    """An interim replaced, while still queued, by a newer one of the same stream (it was skipped)."""


class BadAudio(ValueError):
    """One request's audio cannot be predicted (NaN/inf samples, too short); the message is one sentence.
    Only that request fails: the rest of its batch runs without it."""


class InferenceWorker:
    """Runs ``predictor`` on threads of its own. ``compute_s`` and ``audio_s`` accumulate forward time
    and the audio it covered (their ratio is the real-time factor); ``batches`` counts forward passes.

    With ``lanes=2`` (the default) two threads share the one model: the first serves finals only, the
    second finals first and interims when no final waits. A final then never waits for an interims'
    pass to end (a pass is not pre-empted), and a backlog of finals gets both threads. The weights are
    read-only in inference and torch releases the GIL inside an op, so the two run in parallel on two
    cores. ``lanes=1``: one thread, finals before interims between passes."""

    def __init__(self, predictor: Predictor, max_batch: int = 16, max_wait_ms: float = 10.0,
                 lanes: int = MODEL_LANES) -> None:
        if lanes not in (1, 2):
            raise ValueError("lanes is 1 or 2")
        self.predictor = predictor
        self.max_batch, self.max_wait_s = max_batch, max_wait_ms / 1000
        self.lanes = lanes
        self._queue = FairQueue()
        self._cond = threading.Condition()
        self._stats_lock = threading.Lock()
        self._stopping = False
        self._seq = itertools.count(1)
        self._threads: list[threading.Thread] = []
        self.states = SegmentStates()
        self.compute_s = self.audio_s = 0.0
        self.batches = self.items = 0
        self.concurrent = True  # False: one stream only, nothing to wait for, so no batching delay
        self.served: list[tuple[str, bool, int]] | None = None
        """If a list: (stream, final, overtaken_by) per request served, where ``overtaken_by`` counts the
        requests of any stream served between its submission and its own (how long it queued, in requests)."""

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    async def start(self, warm_up: bool = True) -> None:
        """Start the thread; with ``warm_up``, run a first forward pass before returning."""
        if not self._threads:
            self._stopping = False
            lanes = ["any"] if self.lanes == 1 else ["finals", "any"]
            self._threads = [threading.Thread(target=self._serve, args=(lane,), daemon=True,
                                              name=f"ser-live-model-{lane}") for lane in lanes]
            for thread in self._threads:
                thread.start()
        if warm_up:
            t0 = time.perf_counter()
            noise = (0.01 * np.random.default_rng(0).standard_normal(SAMPLE_RATE_HZ)).astype(np.float32)
            await asyncio.gather(*(self.submit(noise, stream=f"warm-up{i}") for i in range(min(2, self.max_batch))))
            log.info("model warm-up took %.2f s", time.perf_counter() - t0)
            self.compute_s = self.audio_s = 0.0
            self.batches = self.items = 0

    def submit(self, audio: np.ndarray, urgent: bool = True, stream: str = "", *, segment: int | None = None,
               end_sample: int | None = None) -> asyncio.Future:
        """Queue a 16 kHz mono float32 waveform of ``stream``; the future resolves to its
        :class:`Prediction`. Urgent requests (final predictions) come before every interim. With ``segment``
        (the segment's id in ``stream``, increasing) and ``end_sample`` (where ``audio`` ends on the
        stream's sample clock), an interim's ``audio`` is the segment's audio from its start so far and its
        encoder state is carried over to the next interim; the final of ``segment`` drops it. A queued
        interim of ``stream`` is superseded by a newer one (its future fails with :class:`Superseded`)."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        with self._cond:
            if urgent and segment is not None:
                self.states.close(stream, segment)
            superseded = self._queue.put(QueuedRequest(stream, urgent, next(self._seq), audio, future, loop,
                                                  segment=segment, end_sample=end_sample))
            self._cond.notify_all()
        for r in superseded:
            r.loop.call_soon_threadsafe(_resolve, r.future, None, Superseded(f"a newer interim of {stream} replaced it"))
        return future

    def forget(self, stream: str) -> None:
        """Drop every encoder state of ``stream`` (it ended or was reset; a new one may reuse its name)."""
        self.states.forget(stream)

    def abandon(self) -> int:
        """Drop every queued request (their futures are cancelled); returns how many there were."""
        with self._cond:
            dropped = self._queue.clear()
        for r in dropped:
            r.loop.call_soon_threadsafe(r.future.cancel)
        return len(dropped)

    async def stop(self, timeout_s: float | None = None) -> None:
        """Finish what is queued within ``timeout_s``; then drop what is still queued (:meth:`abandon`) and
        wait for the forward pass in progress, which is bounded. The thread must be gone before the
        interpreter is: one left inside a native forward pass at exit crashes the process (SIGSEGV, or
        SIGABRT with "terminate called without an active exception")."""
        threads = self._threads
        if not threads:
            return
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        for thread in threads:
            await asyncio.to_thread(thread.join, None if deadline is None else max(0.0, deadline - time.monotonic()))
        if any(thread.is_alive() for thread in threads):
            dropped = self.abandon()
            log.debug("model owner: %d queued request(s) dropped at stop; waiting for its forward pass", dropped)
            for thread in threads:
                await asyncio.to_thread(thread.join)
        self._threads = []

    def _waiting(self, lane: str) -> int:
        """Requests the thread of ``lane`` may take now."""
        return self._queue.finals if lane == "finals" else len(self._queue)

    def _next_batch(self, lane: str) -> list[QueuedRequest] | None:
        with self._cond:
            while not self._waiting(lane) and not self._stopping:
                self._cond.wait()
            if not self._waiting(lane):
                return None if self._stopping else []
            deadline = time.monotonic() + (self.max_wait_s if self.concurrent else 0.0)
            while self._waiting(lane) < self.max_batch and not self._stopping:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            return self._queue.take(self.max_batch, INTERIM_BATCH, lane)

    def _serve(self, lane: str = "any") -> None:
        while (batch := self._next_batch(lane)) is not None:
            if not batch:
                continue  # the other lane took what woke this one
            if self.served is not None:
                with self._cond:
                    taken = self._queue.taken - len(batch)
                self.served.extend((r.stream, r.final, taken + i - r.taken_before) for i, r in enumerate(batch))
            if self.predictor.incremental and not any(r.final for r in batch):
                self._run(batch)  # interims carrying state cost their new frames, not their length: one pass
                continue
            order = {id(r): i for i, r in enumerate(batch)}  # the fair queue's service order
            for group in sorted(group_by_length(batch, self.max_batch), key=lambda g: min(order[id(r)] for r in g)):
                self._run(group)

    def _run(self, batch: list[QueuedRequest]) -> None:
        """Prepare and mask each request on its own (a bad one fails alone), then one forward pass; if
        that fails for a batch of several, each request is retried alone so only the culprit fails."""
        t0 = time.perf_counter()
        ready: list[tuple[QueuedRequest, np.ndarray, np.ndarray]] = []
        for r in batch:
            try:
                wave = self.predictor.prepare(r.audio)
                ready.append((r, wave, self.predictor.mask(wave)))
            except Exception as exc:  # noqa: BLE001 - AudioError and anything else the audio provokes
                r.loop.call_soon_threadsafe(_resolve, r.future, None, BadAudio(str(exc)))
        if not ready:
            return
        states = self.states.claim([r for r, _, _ in ready]) if self.predictor.incremental else None
        try:
            preds = self.predictor.predict_prepared([w for _, w, _ in ready], [m for _, _, m in ready], states)
        except Exception as exc:  # noqa: BLE001 - isolate the culprit, or tell the one waiter
            for state in states or []:
                if state is not None:  # it may be half updated: the segment's next interim starts afresh
                    state.reset()
                    state.end_sample = -1
            if len(ready) > 1:
                for r, _, _ in ready:
                    self._run([r])
                return
            log.warning("forward pass failed: %s", exc)
            log.debug("forward pass failed", exc_info=True)
            ready[0][0].loop.call_soon_threadsafe(_resolve, ready[0][0].future, None, exc)
            return
        with self._stats_lock:
            self.compute_s += time.perf_counter() - t0
            self.audio_s += sum(len(w) for _, w, _ in ready) / SAMPLE_RATE_HZ
            self.batches += 1
            self.items += len(ready)
        for (r, _, _), p in zip(ready, preds):
            r.loop.call_soon_threadsafe(_resolve, r.future, p, None)


def group_by_length(batch: list[QueuedRequest], max_batch: int) -> list[list[QueuedRequest]]:
    """Longest first, each group holding requests at least :data:`PAD_RATIO` of its first one's length, and at
    most :data:`PASS_AUDIO_S` of padded audio (a longer request goes alone)."""
    groups: list[list[QueuedRequest]] = []
    budget = PASS_AUDIO_S * SAMPLE_RATE_HZ
    for r in sorted(batch, key=lambda r: -len(r.audio)):
        if (groups and len(groups[-1]) < max_batch and len(r.audio) >= PAD_RATIO * len(groups[-1][0].audio)
                and (len(groups[-1]) + 1) * len(groups[-1][0].audio) <= budget):
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
