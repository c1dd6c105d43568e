"""The model owner in a process of its own (``--model-process``): the same :class:`InferenceWorker`, batching
and encoder states, run by a child process, so the event loop's Python (sources, conversion, VAD, segmenter,
sinks for every stream) and the model's Python (preparing, masking, heads) no longer take turns on one
interpreter lock.

On a CPU with many streams that lock, not the cores, is what bounds one process: at 128 streams the model
threads spent twice their CPU time inside their passes, waiting for the lock the event loop held, with three
quarters of a core idle (stream/BENCHMARKS.md). The child costs a second copy of the model in memory and a
second or two at start-up (it imports torch), so it is an option, not the default.

:class:`ProcessWorker` has :class:`InferenceWorker`'s interface (``submit``, ``forget``, ``abandon``,
``stop``, ``queue_depth``, ``concurrent`` and the compute counters), so the engine takes either. Requests and
answers travel over one pipe as pickles; the predictor is sent once, at start. The child ignores the terminal's
signals (a Ctrl-C reaches the whole process group): the parent drains and then stops it, and a child whose
parent is gone sees its pipe close and exits.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import multiprocessing
import pickle
import queue
import signal
import threading

import numpy as np

from .worker import MODEL_LANES, BadAudio, InferenceWorker, Superseded

log = logging.getLogger(__name__)

STOP_GRACE_S = 5.0
"""Past the stop's own timeout, how long the child has to finish its forward pass and exit before it is
terminated (a pass is bounded: :data:`serlive.stream.worker.PASS_AUDIO_S`)."""

_ERRORS = {"superseded": Superseded, "bad_audio": BadAudio}


class ModelProcessError(RuntimeError):
    """The model process could not start, or ended while requests were waiting; the message is one sentence."""


class ProcessWorker:
    """An :class:`InferenceWorker` for ``predictor`` run by a child process; ``threads`` is torch's thread pool
    there (per lane, as :func:`serlive.stream.worker.set_cpu_threads` shares it; None: the parent's)."""

    def __init__(self, predictor, max_batch: int = 16, max_wait_ms: float = 10.0, lanes: int = MODEL_LANES,
                 threads: int | None = None) -> None:
        self.predictor = predictor
        self.max_batch, self.max_wait_ms, self.lanes, self.threads = max_batch, max_wait_ms, lanes, threads
        self.compute_s = self.audio_s = 0.0
        self.batches = self.items = 0
        self.served = None  # the service order is the child's: not recorded here
        self.samples_sent = 0  # audio samples written to the pipe (an interim sends only what is new)
        self._concurrent = True
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future] = {}
        self._sent: dict[str, tuple[int, int, int | None]] = {}  # stream -> its last interim's (segment, samples, end)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._process = self._conn = self._reader = None
        self._stopping = False
        self._outbox: queue.SimpleQueue | None = None
        self._writer: threading.Thread | None = None
        self._broken = False
        self._dead = False  # the child ended without being told to stop

    @property
    def queue_depth(self) -> int:
        """Requests sent and not yet answered (queued in the child or in its forward pass)."""
        return len(self._pending)

    @property
    def concurrent(self) -> bool:
        return self._concurrent

    @concurrent.setter
    def concurrent(self, value: bool) -> None:
        if value != self._concurrent:
            self._concurrent = value
            self._send(("concurrent", value))

    async def start(self, warm_up: bool = True) -> None:
        """Start the child, send it the predictor and wait until it is ready (its warm-up pass included)."""
        if self._process is not None:
            return
        import torch

        self._loop = asyncio.get_running_loop()
        self._stopping = self._dead = False
        ctx = multiprocessing.get_context("spawn")  # a fork would copy the event loop's threads and locks
        self._conn, child_conn = ctx.Pipe()
        blob = pickle.dumps(self.predictor, protocol=pickle.HIGHEST_PROTOCOL)
        settings = (self.max_batch, self.max_wait_ms, self.lanes, self.threads or torch.get_num_threads(), warm_up)
        self._process = ctx.Process(target=_child_main, args=(child_conn, blob, settings), daemon=True,
                                    name="ser-live-model")
        self._process.start()
        child_conn.close()
        try:
            kind, detail = pickle.loads(await asyncio.to_thread(self._conn.recv_bytes))
        except (EOFError, OSError):
            kind, detail = "failed", f"it exited with code {self._process.exitcode}"
        if kind != "ready":
            await asyncio.to_thread(self._process.join, STOP_GRACE_S)
            self._process = None
            raise ModelProcessError(f"the model process could not start: {detail}")
        self._broken = False
        self._outbox = queue.SimpleQueue()
        self._writer = threading.Thread(target=self._write, daemon=True, name="ser-live-model-requests")
        self._reader = threading.Thread(target=self._read, daemon=True, name="ser-live-model-answers")
        self._writer.start()
        self._reader.start()

    def submit(self, audio: np.ndarray, urgent: bool = True, stream: str = "", *, segment: int | None = None,
               end_sample: int | None = None) -> asyncio.Future:
        """As :meth:`InferenceWorker.submit`: the future resolves to the child's :class:`Prediction`, or fails
        with :class:`Superseded`, :class:`BadAudio` or :class:`ModelProcessError`. An interim that extends
        its segment's previous one sends only the audio the child has not had."""
        future = asyncio.get_running_loop().create_future()
        request_id = next(self._ids)
        self._pending[request_id] = future
        audio = np.asarray(audio, np.float32)
        start = 0
        if segment is not None and not urgent:
            last = self._sent.get(stream)
            if (last is not None and last[0] == segment and len(audio) >= last[1]
                    and end_sample is not None and end_sample - last[2] == len(audio) - last[1]):
                start = last[1]
            self._sent[stream] = (segment, len(audio), end_sample)
        else:
            self._sent.pop(stream, None)
        self.samples_sent += len(audio) - start
        if self._dead or not self._send(("submit", request_id, audio[start:], start, urgent, stream, segment,
                                         end_sample)):
            self._pending.pop(request_id, None)
            future.set_exception(ModelProcessError("the model process has ended"))
        return future

    def forget(self, stream: str) -> None:
        """Drop every encoder state of ``stream`` in the child."""
        self._sent.pop(stream, None)
        self._send(("forget", stream))

    def abandon(self) -> int:
        """Cancel every request not yet answered and drop the child's queue; returns how many there were."""
        dropped = list(self._pending.values())
        self._pending.clear()
        for future in dropped:
            future.cancel()
        self._send(("abandon",))
        return len(dropped)

    async def stop(self, timeout_s: float | None = None) -> None:
        """The child finishes what is queued within ``timeout_s``, drops the rest and exits; it is terminated
        if it has not within :data:`STOP_GRACE_S` more. Requests still unanswered are cancelled."""
        process = self._process
        if process is None:
            return
        self._stopping = True
        self._send(("stop", timeout_s))
        self._outbox.put(None)
        await asyncio.to_thread(process.join, None if timeout_s is None else timeout_s + STOP_GRACE_S)
        if process.is_alive():
            log.warning("the model process did not stop in time; terminating it")
            process.terminate()
            await asyncio.to_thread(process.join, STOP_GRACE_S)
            if process.is_alive():
                process.kill()
                await asyncio.to_thread(process.join)
        await asyncio.to_thread(self._writer.join)
        await asyncio.to_thread(self._reader.join)
        await asyncio.sleep(0)  # answers the reader handed over are settled before what is left is cancelled
        self.abandon()
        self._conn.close()
        self._process = self._reader = self._writer = self._outbox = None

    def _send(self, message: tuple) -> bool:
        """Queue ``message`` for the sending thread (a full pipe then holds back that thread, not the event
        loop); False once the pipe is known to be broken."""
        if self._outbox is None or self._broken:
            return False
        self._outbox.put(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))
        return True

    def _write(self) -> None:
        """The requests' thread: writes what :meth:`_send` queued until it meets None."""
        while (data := self._outbox.get()) is not None:
            try:
                self._conn.send_bytes(data)
            except (BrokenPipeError, ConnectionResetError, OSError):
                self._broken = True

    def _read(self) -> None:
        """The answers' thread: hands each answer to the event loop, then tells it when the pipe closes."""
        while True:
            try:
                message = pickle.loads(self._conn.recv_bytes())
            except (EOFError, OSError):
                break
            self._loop.call_soon_threadsafe(self._settle, message)
        if not self._stopping:
            self._process.join(STOP_GRACE_S)  # reaped, so that its exit code can be told
        self._loop.call_soon_threadsafe(self._lost)

    def _settle(self, message: tuple) -> None:
        kind, request_id, value, counters = message
        self.compute_s, self.audio_s, self.batches, self.items = counters
        future = self._pending.pop(request_id, None)
        if future is None or future.done():
            return  # abandoned meanwhile
        if kind == "result":
            future.set_result(value)
        elif kind == "cancelled":
            future.cancel()
        else:
            future.set_exception(_ERRORS.get(kind, ModelProcessError)(value))

    def _lost(self) -> None:
        """The pipe closed: at a stop, nothing to say; otherwise the child died, and every request waiting or
        still to come fails."""
        if self._stopping or self._dead:
            return
        self._dead = True
        code = self._process.exitcode if self._process is not None else None
        log.error("the model process ended unexpectedly (exit code %s)", code)
        pending = list(self._pending.values())
        self._pending.clear()
        for future in pending:
            if not future.done():
                future.set_exception(ModelProcessError(f"the model process ended (exit code {code})"))


def _child_main(conn, blob: bytes, settings: tuple) -> None:
    """The child: an :class:`InferenceWorker` serving the pipe until told to stop or the pipe closes."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)  # the parent stops this process; a terminal's signals go to it
    import torch

    max_batch, max_wait_ms, lanes, threads, warm_up = settings
    torch.set_num_threads(threads)
    try:
        worker = InferenceWorker(pickle.loads(blob), max_batch, max_wait_ms, lanes)
    except Exception as exc:  # noqa: BLE001 - the parent says it in one sentence
        conn.send_bytes(pickle.dumps(("failed", str(exc))))
        return
    asyncio.run(_child_serve(conn, worker, warm_up))


async def _child_serve(conn, worker: InferenceWorker, warm_up: bool) -> None:
    loop = asyncio.get_running_loop()
    await worker.start(warm_up)
    conn.send_bytes(pickle.dumps(("ready", None)))
    inbox: asyncio.Queue = asyncio.Queue()

    def read() -> None:
        while True:
            try:
                message = pickle.loads(conn.recv_bytes())
            except (EOFError, OSError):
                message = ("stop", 0.0)  # the parent is gone: nobody waits for the answers
            loop.call_soon_threadsafe(inbox.put_nowait, message)
            if message[0] == "stop":
                return

    def answer(request_id: int, future: asyncio.Future) -> None:
        if future.cancelled():
            kind, value = "cancelled", None
        elif future.exception() is not None:
            exc = future.exception()
            kind = "superseded" if isinstance(exc, Superseded) else "bad_audio" if isinstance(exc, BadAudio) else "error"
            value = str(exc)
        else:
            kind, value = "result", future.result()
        counters = (worker.compute_s, worker.audio_s, worker.batches, worker.items)
        try:
            conn.send_bytes(pickle.dumps((kind, request_id, value, counters), protocol=pickle.HIGHEST_PROTOCOL))
        except (BrokenPipeError, ConnectionResetError, OSError):
            pass  # the parent is gone

    threading.Thread(target=read, daemon=True, name="ser-live-model-requests").start()
    interims: dict[str, tuple[int, np.ndarray]] = {}  # stream -> its open segment's audio, as last sent
    while True:
        message = await inbox.get()
        kind = message[0]
        if kind == "submit":
            request_id, audio, start, urgent, stream, segment, end_sample = message[1:]
            if start:  # the segment's previous interim's audio, then what is new
                audio = np.concatenate([interims[stream][1][:start], audio])
            if segment is not None and not urgent:
                interims[stream] = (segment, audio)
            else:
                interims.pop(stream, None)
            future = worker.submit(audio, urgent, stream, segment=segment, end_sample=end_sample)
            future.add_done_callback(lambda f, rid=request_id: answer(rid, f))
        elif kind == "forget":
            interims.pop(message[1], None)
            worker.forget(message[1])
        elif kind == "concurrent":
            worker.concurrent = message[1]
        elif kind == "abandon":
            worker.abandon()
        elif kind == "stop":
            await worker.stop(message[1])
            await asyncio.sleep(0)  # the last answers' callbacks run before the pipe closes
            conn.close()
            return
