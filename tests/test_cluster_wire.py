"""What crosses the broker, without a broker: request and result encoding, garbage refused, and the
gateway's chunking (each sample of a segment published once, whatever the interims)."""

from __future__ import annotations

import asyncio
import dataclasses
import json

import numpy as np
import pytest

pytest.importorskip("nats")

from serlive.model import Prediction  # noqa: E402
from serlive.stream.cluster.gateway import CHUNK_MAX_SAMPLES, RemoteWorker  # noqa: E402
from serlive.stream.cluster.options import Names  # noqa: E402
from serlive.stream.cluster.publish import ClusterSink  # noqa: E402
from serlive.stream.cluster.wire import (WireError, WireRequest, chunk_bytes, decode_result,  # noqa: E402
                                         encode_failure, encode_prediction)


def request(**kw) -> WireRequest:
    base = dict(id="g:1:0:f", gateway="g", stream="a.flac", segment=0, start_sample=10, end_sample=20, final=True,
                chunks=(3, 4), samples=9, reply="serlive.res.g", sent_s=1.5, tail=chunk_bytes(np.ones(2, np.float32)))
    return WireRequest(**{**base, **kw})


def test_a_request_round_trips_with_its_tail():
    req = request()
    back = WireRequest.decode(req.encode())
    assert back == req and back.tail_samples.tolist() == [1.0, 1.0]
    assert WireRequest.decode(request(tail=b"", final=False).encode()).tail == b""


@pytest.mark.parametrize("data", [b"", b"\xff\xfe", b"[]", b'{"id": 1}', b"null\n",
                                  request(chunks=(), tail=b"").encode(), request(samples=0).encode(),
                                  request(reply="a b").encode(), request(chunks=(0,)).encode(),
                                  request().encode() + b"x"])  # a tail that is not float32
def test_garbage_is_not_a_request(data):
    with pytest.raises(WireError):
        WireRequest.decode(data)


def prediction() -> Prediction:
    return Prediction("sad", ("angry", "sad"), (0.25, 0.75), 0.75, None, None, np.arange(4, dtype=np.float32), True,
                      12, 15, ood=0.5, uncertain=False, atypicality=1.25, voiced=0.5)


def test_a_prediction_round_trips_exactly():
    request_id, back, failure = decode_result(encode_prediction("r1", prediction()), Prediction)
    assert request_id == "r1" and failure is None
    for f in dataclasses.fields(Prediction):
        a, b = getattr(prediction(), f.name), getattr(back, f.name)
        assert np.array_equal(a, b) if isinstance(a, np.ndarray) else a == b, f.name
    assert decode_result(encode_failure("r2", "bad_audio", "NaN samples"), Prediction) == \
        ("r2", None, ("bad_audio", "NaN samples"))
    for bad in (b"{", json.dumps({"id": "x", "prediction": {"label": "sad"}}).encode()):
        with pytest.raises(WireError):
            decode_result(bad, Prediction)


def published(audio_requests) -> tuple[list, list]:
    """Submit (audio, final, segment) through a RemoteWorker without a broker: what its publisher would send."""
    async def run():
        names = Names()
        worker = RemoteWorker({}, names, "g", Prediction, ClusterSink(names, "g"))
        worker._outbox = asyncio.Queue()
        for audio, final, segment in audio_requests:
            worker.submit(audio, urgent=final, stream="s", segment=segment, end_sample=len(audio))
            if not final:  # answered before the next one (an unanswered interim makes the next one skipped)
                worker._answered(worker._interims["s"])
        items = [worker._outbox.get_nowait() for _ in range(worker._outbox.qsize())]
        return [len(item[1]) for item in items], [item[7] for item in items]
    return asyncio.run(run())


def test_each_sample_of_a_segment_is_published_once():
    audio = np.random.default_rng(0).standard_normal(40_000).astype(np.float32)
    # interims at 8000, 16000, 24000 samples, then the final trimmed back to 22000 (its trailing silence)
    new, total = published([(audio[:8000], False, 0), (audio[:16000], False, 0), (audio[:24000], False, 0),
                            (audio[:22000], True, 0), (audio[:5000], True, 1)])
    assert new == [8000, 8000, 8000, 0, 5000]  # the next segment starts afresh
    assert total == [8000, 16000, 24000, 22000, 5000]


def test_audio_that_does_not_extend_the_segment_is_sent_whole():
    audio = np.random.default_rng(1).standard_normal(20_000).astype(np.float32)
    other = audio.copy()
    other[7999] += 1.0
    new, _ = published([(audio[:8000], False, 0), (other[:16000], False, 0)])
    assert new == [8000, 16000]


def test_an_interim_is_skipped_while_the_streams_previous_one_is_unanswered():
    async def run():
        names = Names()
        worker = RemoteWorker({}, names, "g", Prediction, ClusterSink(names, "g"))
        worker._outbox = asyncio.Queue()
        audio = np.ones(16_000, np.float32)
        futures = []
        for end in (8_000, 16_000):
            futures.append(worker.submit(audio[:end], urgent=False, stream="s", segment=0, end_sample=end))
        return futures, worker._outbox.qsize()

    (first, second), queued = asyncio.run(run())
    assert queued == 1 and not first.done()
    assert type(second.exception()).__name__ == "Superseded"


class FakeBroker:
    """Records publishes; JetStream acks count sequence numbers up."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes]] = []

    async def publish(self, subject, data, headers=None):
        self.messages.append((subject, data))
        return type("Ack", (), {"seq": len(self.messages)})()


def test_a_long_final_goes_out_in_chunks_under_the_payload_limit_and_a_short_tail_inline():
    async def run(requests):
        names = Names()
        worker = RemoteWorker({}, names, "g", Prediction, ClusterSink(names, "g"))
        worker._outbox, worker.js = asyncio.Queue(), FakeBroker()
        worker.nc = worker.js
        for audio, final in requests:
            worker.submit(audio, urgent=final, stream="s", segment=0, end_sample=len(audio))
        task = asyncio.create_task(worker._publish_requests())
        while not worker._outbox.empty():
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.01)
        task.cancel()
        return worker.js.messages

    audio = np.random.default_rng(2).standard_normal(19 * 16_000).astype(np.float32)
    messages = asyncio.run(run([(audio, True)]))
    chunks = [d for s, d in messages if s == "serlive.audio.g"]
    assert [len(d) for d in chunks] == [CHUNK_MAX_SAMPLES * 4] * 4 + [(len(audio) - 4 * CHUNK_MAX_SAMPLES) * 4]
    req = WireRequest.decode(messages[-1][1])
    assert messages[-1][0] == "serlive.req.final.live.g" and req.chunks == (1, 2, 3, 4, 5) and req.tail == b""
    assert np.array_equal(np.concatenate([np.frombuffer(d, "<f4") for d in chunks]), audio)

    messages = asyncio.run(run([(audio[:16_000], False), (audio[:40_000], True)]))
    assert [s for s, _ in messages] == ["serlive.audio.g", "serlive.req.interim", "serlive.req.final.bulk.g"]
    req = WireRequest.decode(messages[-1][1])
    assert req.chunks == (1,) and np.array_equal(req.tail_samples, audio[16_000:40_000])


def test_a_stream_with_a_backlog_sends_its_finals_to_the_bulk_lane():
    async def run():
        names = Names()
        worker = RemoteWorker({}, names, "g", Prediction, ClusterSink(names, "g"))
        worker._outbox, worker.js = asyncio.Queue(), FakeBroker()
        worker.nc = worker.js
        audio = np.zeros(24_000, np.float32)  # 1.5 s
        futures = []
        for stream, segment in (("fast", 0), ("fast", 1), ("fast", 2), ("live", 0)):  # (all at sample 24000)
            futures.append(worker.submit(audio, urgent=True, stream=stream, segment=segment, end_sample=len(audio)))
        task = asyncio.create_task(worker._publish_requests())
        while not worker._outbox.empty():
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.01)
        lanes = [s.split(".")[3] for s, _ in worker.js.messages if ".req.final." in s]
        first = WireRequest.decode(worker.js.messages[0][1])
        worker._resolve(encode_failure(first.id, "bad_audio", "answered"))  # the first final is answered
        worker.submit(audio, urgent=True, stream="fast", segment=3, end_sample=len(audio))
        await asyncio.sleep(0.05)
        after_answer = worker.js.messages[-1][0]
        # a stream read faster than real time: 10 s of audio at once, nothing owed yet
        for end in (8_000, 160_000):
            worker.submit(audio, urgent=end > 8_000, stream="file", segment=0, end_sample=end)
        await asyncio.sleep(0.05)
        task.cancel()
        return lanes, after_answer, futures[0], worker.js.messages[-1][0]

    lanes, last, answered, ahead = asyncio.run(run())
    # 0 s then 1.5 s owed: live; 3 s owed: bulk; another stream: live
    assert lanes == ["live", "live", "bulk", "live"]
    assert last == "serlive.req.final.bulk.g"  # 3 s still owed after the first answer
    assert isinstance(answered.exception(), ValueError)
    assert ahead == "serlive.req.final.bulk.g"  # 9.5 s of audio ahead of the clock: a backlog


def test_a_stream_with_audio_waiting_at_its_source_sends_its_finals_to_the_bulk_lane(monkeypatch):
    """A file read fast is a backlog from its first final; a stream the engine held back stays one for
    HELD_MEMORY_S after it is let go, even with nothing owed (it would read on at once), then is live again."""
    from serlive.stream.cluster import gateway

    monkeypatch.setattr(gateway, "HELD_MEMORY_S", 0.3)

    async def run():
        names = Names()
        worker = RemoteWorker({}, names, "g", Prediction, ClusterSink(names, "g"), max_pending_s=4.0,
                              unpaced=lambda stream: stream == "file")
        worker._outbox, worker._unpaced_outbox, worker.js = asyncio.Queue(), asyncio.Queue(), FakeBroker()
        worker.nc = worker.js
        tasks = [asyncio.create_task(worker._publish_requests(q)) for q in (worker._outbox, worker._unpaced_outbox)]
        audio = np.zeros(24_000, np.float32)  # 1.5 s: three reach 4 s owed, the engine holds the stream back
        lanes = []

        async def final(stream: str, segment: int) -> str:
            worker.submit(audio, urgent=True, stream=stream, segment=segment, end_sample=len(audio))
            await asyncio.sleep(0.02)
            subject, data = worker.js.messages[-1]
            lanes.append(subject.split(".")[3])
            return WireRequest.decode(data).id

        await final("file", 0)
        held = [await final("ws", segment) for segment in range(3)]
        for request_id in held:  # all answered: nothing owed, the engine lets the stream go
            worker._resolve(encode_failure(request_id, "bad_audio", "answered"))
        await final("ws", 3)
        await asyncio.sleep(0.35)
        await final("ws", 4)
        for task in tasks:
            task.cancel()
        return lanes

    # the file: bulk at once; ws: live, live, bulk (3 s owed), bulk (just let go), live (HELD_MEMORY_S later)
    assert asyncio.run(run()) == ["bulk", "live", "live", "bulk", "bulk", "live"]


def test_a_paced_streams_requests_do_not_wait_behind_a_fast_streams():
    async def run():
        names = Names()
        worker = RemoteWorker({}, names, "g", Prediction, ClusterSink(names, "g"), unpaced=lambda s: s == "file")
        worker._outbox, worker._unpaced_outbox, worker.js = asyncio.Queue(), asyncio.Queue(), FakeBroker()
        worker.nc = worker.js
        audio = np.zeros(24_000, np.float32)
        for segment in range(50):  # a file read fast: 50 finals queued first
            worker.submit(audio, urgent=True, stream="file", segment=segment, end_sample=len(audio))
        worker.submit(audio, urgent=True, stream="mic", segment=0, end_sample=len(audio))
        task = asyncio.create_task(worker._publish_requests())  # the paced streams' publisher alone
        await asyncio.sleep(0.05)
        task.cancel()
        return [s for s, _ in worker.js.messages], worker._unpaced_outbox.qsize()

    subjects, still_queued = asyncio.run(run())
    assert subjects == ["serlive.req.final.live.g"] and still_queued == 50


def test_a_real_time_stream_catching_up_after_a_lag_is_not_ahead_of_its_clock(monkeypatch):
    """Its clock starts when the stream starts: audio that arrives late and then all at once (this process
    lagged) is never ahead of it, while a stream whose start was not seen is judged from its first request."""
    from serlive.stream.cluster import gateway
    from serlive.stream.events import StreamStatus

    monkeypatch.setattr(gateway, "AHEAD_S", 0.1)

    async def run():
        names = Names()
        worker = RemoteWorker({}, names, "g", Prediction, ClusterSink(names, "g"))
        worker._outbox, worker.js = asyncio.Queue(), FakeBroker()
        worker.nc = worker.js
        task = asyncio.create_task(worker._publish_requests())
        worker.put(StreamStatus("mic", "started"))
        await asyncio.sleep(0.3)  # the process lagged: nothing was read meanwhile
        audio = np.zeros(800, np.float32)
        for stream in ("mic", "unseen"):
            worker.submit(audio, urgent=False, stream=stream, segment=0, end_sample=800)  # 0.05 s, late
            worker.submit(audio, urgent=True, stream=stream, segment=0, end_sample=4_800)  # 0.3 s: caught up
        await asyncio.sleep(0.05)
        task.cancel()
        return [s for s, _ in worker.js.messages if ".req.final." in s]

    assert asyncio.run(run()) == ["serlive.req.final.live.g", "serlive.req.final.bulk.g"]
