"""Fair scheduling and bounded memory under a flood: a real WebSocket client sends remote audio as fast
as it can beside a real-time stream. The flood must feel back-pressure (its buffers stay bounded) and the
real-time stream's finals must not queue behind the flood's backlog."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
import torch
from websockets.asyncio.client import connect

from serlive.model import ModelConfig, Predictor, SERModel
from serlive.stream.config import EngineConfig, InferenceConfig, WsConfig
from serlive.stream.engine import Engine
from serlive.stream.events import PredictionEvent, StreamStatus
from serlive.stream.sinks import ListSink
from serlive.stream.sources import ArraySource
from serlive.stream.fairqueue import FairQueue
from serlive.stream.fairqueue import QueuedRequest as _Request
from tests.test_stream_segmenter import islands

SR = 16_000
MESSAGE_BYTES = 3200  # 100 ms of s16le


@pytest.fixture(scope="module")
def predictor():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    return Predictor(SERModel(ModelConfig()).eval())


def request(stream: str, final: bool, seq: int) -> _Request:
    return _Request(stream, final, seq, np.zeros(1, np.float32), None, None)


def test_fair_queue_serves_streams_round_robin_finals_before_any_interim():
    q = FairQueue()
    for i in range(6):
        q.put(request("flood", True, i))
    q.put(request("rt", False, 6))
    q.put(request("rt", True, 7))
    q.put(request("other", True, 8))
    first = q.take(3)
    assert [(r.stream, r.seq) for r in first] == [("flood", 0), ("rt", 7), ("other", 8)]
    assert [(r.stream, r.seq) for r in q.take(3)] == [("flood", 1), ("flood", 2), ("flood", 3)]
    assert [r.seq for r in q.take(10)] == [4, 5]  # a batch of finals is not topped up with interims
    assert [r.seq for r in q.take(10)] == [6] and len(q) == 0


def test_a_batch_of_interims_is_capped_and_finals_are_not():
    q = FairQueue()
    for i in range(6):
        q.put(request(f"s{i}", False, i))
        q.put(request(f"f{i}", True, 10 + i))
    assert [r.seq for r in q.take(8, interims=2)] == [10, 11, 12, 13, 14, 15]  # finals fill the batch
    assert len(q.take(8, interims=2)) == 2 and len(q.take(8, interims=2)) == 2 and len(q) == 2


def test_a_waiting_interim_is_superseded_by_its_streams_next_one():
    q = FairQueue()
    assert q.put(request("a", False, 1)) == []
    q.put(request("b", False, 2))
    old = q.put(request("a", False, 3))
    assert [r.seq for r in old] == [1] and len(q) == 2  # the oldest goes, the newest waits
    assert q.put(request("a", True, 4)) == []  # a final never supersedes anything
    assert [r.seq for r in q.take(10)] == [4]
    assert sorted(r.seq for r in q.take(10)) == [2, 3] and len(q) == 0


def sized(stream: str, seconds: float, seq: int, final: bool = True) -> _Request:
    return _Request(stream, final, seq, np.zeros(int(seconds * SR), np.float32), None, None)


def test_fair_queue_serves_a_newcomers_short_final_before_a_backlogs_next_item():
    q = FairQueue()
    for i in range(6):
        q.put(sized("flood", 2.0, i))
    assert [r.seq for r in q.take(1)] == [0]  # the model is busy with the flood
    q.put(sized("rt", 0.8, 10))  # a real-time final arrives behind five queued flood items
    assert [(r.stream, r.seq) for r in q.take(2)] == [("rt", 10), ("flood", 1)]


def test_fair_queue_shares_the_model_by_audio_not_by_requests():
    q = FairQueue()
    for i in range(300):
        q.put(sized("short", 0.5, i))
        q.put(sized("long", 3.0, 1000 + i))
    served = {"short": 0.0, "long": 0.0}
    for _ in range(120):
        for r in q.take(1):
            served[r.stream] += len(r.audio) / SR
    assert served["short"] == pytest.approx(served["long"], rel=0.1)  # round-robin would give 1 : 6


async def flood(port: int, pcm: bytes, stop: asyncio.Event) -> int:
    """Send ``pcm`` over and over, as fast as the server takes it, until ``stop``; returns bytes sent."""
    sent = 0
    async with connect(f"ws://127.0.0.1:{port}/?stream=flood") as ws:
        while not stop.is_set():
            for i in range(0, len(pcm), MESSAGE_BYTES):
                await ws.send(pcm[i:i + MESSAGE_BYTES])
                sent += MESSAGE_BYTES
                if stop.is_set():
                    break
        await ws.send(json.dumps({"type": "end_stream"}))
    return sent


def run_beside(predictor, rt_audio: np.ndarray, flood_pcm: bytes | None, config: EngineConfig):
    engine, sink = Engine(predictor, config, [ArraySource("rt", rt_audio, realtime=True)]), ListSink()
    engine.add_sink(sink)
    engine.worker.served = []
    remotes: list = []
    add_source = engine.add_source

    def keep(source, remote=False):  # the test's window on the server's own RemoteSource and its stream
        name = add_source(source, remote)
        if remote:
            remotes.append((source, engine._streams[name]))
        return name

    engine.add_source = keep

    async def ended(name: str) -> None:
        while not any(isinstance(e, StreamStatus) and e.stream == name and e.state == "ended" for e in sink.events):
            await asyncio.sleep(0.02)

    async def main():
        task = asyncio.create_task(engine.run())
        await asyncio.wait_for(engine.ready.wait(), 60)
        stop = asyncio.Event()
        sender = asyncio.create_task(flood(engine.ws.port, flood_pcm, stop)) if flood_pcm else None
        await asyncio.wait_for(ended("rt"), 120)  # a generous deadline, so a regression fails instead of hanging
        stop.set()
        sent = await asyncio.wait_for(sender, 20) if sender else 0
        if sender:
            await asyncio.wait_for(ended("flood"), 120)
        engine.stop()
        await asyncio.wait_for(task, 20)
        return sent

    sent = asyncio.run(main())
    return engine, sink, remotes, sent


def test_a_flooding_sender_is_throttled_and_real_time_finals_do_not_wait_behind_it(predictor):
    rt_audio, truth = islands([0.3, 0.8, 0.7, 0.6, 0.7, 0.7, 0.4], seed=31)
    flood_audio, _ = islands([0.2, 1.5, 0.3, 2.0, 0.4, 0.9, 0.3] * 3, seed=32)
    pcm = (flood_audio * 32767).astype("<i2").tobytes()
    config = EngineConfig(inference=InferenceConfig(max_pending_s=2.0), ws=WsConfig(port=0, accept_audio=True))
    _, alone, _, _ = run_beside(predictor, rt_audio, None, config)
    engine, sink, ((remote, flood_stream),), sent = run_beside(predictor, rt_audio, pcm, config)

    def rt_finals(s):
        return [(e.segment, e.start_sample, e.end_sample, e.label) for e in s.of(PredictionEvent)
                if e.final and e.stream == "rt"]

    assert rt_finals(sink) == rt_finals(alone) and len(rt_finals(sink)) == len(truth)
    flood_finals = [e for e in sink.of(PredictionEvent) if e.final and e.stream == "flood"]
    assert len(flood_finals) >= 3  # the flood got its share of the model too
    # The flood outran the model, so both bounds were reached and held: the remote buffer (2 s, plus the
    # message being fed) and the audio of its finals waiting for the model (2 s, plus one segment).
    assert remote.peak_buffered_bytes >= remote.max_buffer_bytes and sent > 30 * SR * 2
    assert remote.peak_buffered_bytes <= remote.max_buffer_bytes + MESSAGE_BYTES
    flood_stream_peak = max(e.end_sample - e.start_sample for e in flood_finals) + SR  # pre-roll/hang-over slack
    assert engine._max_owed <= flood_stream.peak_owed_samples <= engine._max_owed + flood_stream_peak
    # Fairness: each real-time final was overtaken by at most one request per other stream, however
    # large the flood's backlog; alone it is overtaken by nothing.
    rt_waits = [n for stream, final, n in engine.worker.served if stream == "rt" and final]
    assert len(rt_waits) == len(truth) and max(rt_waits) <= 2, rt_waits
    flood_waits = [n for stream, final, n in engine.worker.served if stream == "flood" and final]
    assert len(flood_waits) >= len(flood_finals)


def test_bench_fairness_run_and_soak_report_real_figures(predictor, tmp_path, capsys):
    from serlive.model import save_model_dir
    from serlive.stream import soak
    from serlive.stream.bench import speechlike
    from serlive.stream.fairness import fairness_run

    audio, islands_n = speechlike(6.0, seed=1)
    config = EngineConfig()
    alone = asyncio.run(fairness_run(predictor, config, audio, flood=False))
    beside = asyncio.run(fairness_run(predictor, config, audio, flood=True))
    assert alone["finals"] == beside["finals"] == islands_n
    assert alone["flood_finals"] == 0 and beside["flood_finals"] >= 1 and beside["flood_s"] > 0
    assert beside["p95"] is not None and beside["rss_peak"] >= beside["rss_before"] > 0

    model_dir = save_model_dir(tmp_path / "model", predictor.model)
    assert soak.main(["--minutes", "0.1", "--sample-s", "2", "--clients", "3", "--model", str(model_dir)]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("|") and "---" not in line]
    figures = [[float(x) for x in row.strip("|").split("|")] for row in rows[1:]]
    # min, RSS, Python objects, Python blocks, fds, tasks, threads, streams, clients, readers, senders, errors
    assert len(figures) >= 3 and all(f[1] > 0 and f[2] > 10 and f[3] > 10 and f[4] > 0 and f[5] >= 1 for f in figures)
    assert figures[-1][7] == 1  # every remote stream ended; only the local one is left
    assert sum(figures[-1][9:11]) >= 1  # clients came and went


def test_a_forward_pass_holds_at_most_its_audio_budget():
    from types import SimpleNamespace

    from serlive.stream.worker import PASS_AUDIO_S, group_by_length

    long = [SimpleNamespace(audio=np.zeros(int(7.5 * 16_000), np.float32)) for _ in range(10)]
    short = [SimpleNamespace(audio=np.zeros(16_000, np.float32)) for _ in range(10)]
    groups = group_by_length(long + short, max_batch=32)
    assert [len(g) for g in groups] == [1] * 10 + [10]  # 2 x 7.5 s > 10 s: alone; the 1 s ones go together
    assert all(len(g) * len(g[0].audio) <= PASS_AUDIO_S * 16_000 for g in groups)
