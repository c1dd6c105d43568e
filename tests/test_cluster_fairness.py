"""Fairness through the broker under an overload, with real processes: one gateway reads many copies of a
long recording as fast as it can (more than the one model worker can serve, so each of its streams is held
back by the engine and advances slower than real time), another reads the demo file in real time. The
real-time stream's finals must travel in the live lane and none of the overload's may (the lane is a FIFO
in the broker: one there would put the real-time finals behind the overload's), and their latency stays
near what they get alone."""

from __future__ import annotations

import asyncio
import signal

import numpy as np
import pytest

pytest.importorskip("nats")

from .clusterkit import Broker, finals, gateway, wait_for, worker  # noqa: E402
from .test_cluster_e2e import DEMO, delivered  # noqa: E402

OVERLOAD_STREAMS = 40
"""Enough fast streams to keep the worker's bulk places full for the whole real-time run."""


@pytest.fixture()
def long_recording(tmp_path):
    import soundfile

    audio, rate = soundfile.read(DEMO, dtype="float32")
    path = tmp_path / "long.flac"
    soundfile.write(path, np.tile(audio, 8), rate)  # 2 minutes: the overload outlasts the real-time stream
    return path


def test_a_real_time_stream_is_not_queued_behind_an_overload(tmp_path, long_recording):
    broker = Broker(tmp_path / "store")
    the_worker = worker(tmp_path, broker, "w")
    overload = None
    try:
        the_worker.wait_line("ready", 120)
        alone = gateway(tmp_path, broker, "alone", [DEMO])  # the real-time stream by itself first
        assert alone.wait(120) == 0, alone.stderr[-3000:]
        live_alone = asyncio.run(delivered(broker.url, "workers_live"))
        overload = gateway(tmp_path, broker, "overload", [long_recording] * OVERLOAD_STREAMS, "--fast")
        wait_for(lambda: finals(tmp_path / "overload.jsonl"), 120, "the overload's first final")
        beside = gateway(tmp_path, broker, "beside", [DEMO])
        assert beside.wait(120) == 0, beside.stderr[-3000:]
        assert overload.proc.poll() is None, "the overload ended before the real-time stream"
        overload_served = len(finals(tmp_path / "overload.jsonl"))
        live = asyncio.run(delivered(broker.url, "workers_live")) - live_alone
        bulk = asyncio.run(delivered(broker.url, "workers_bulk"))
    finally:
        for proc in (overload, the_worker):
            if proc is not None:
                proc.kill(signal.SIGTERM)
        broker.stop()
    alone_ms = [e["latency_ms"] for e in finals(tmp_path / "alone.jsonl")]
    beside_ms = [e["latency_ms"] for e in finals(tmp_path / "beside.jsonl")]
    assert len(alone_ms) == len(beside_ms) == live_alone == 4
    assert live == 4, f"{live - 4} of the overload's finals went to the live lane"
    assert bulk >= overload_served > 2 * OVERLOAD_STREAMS  # the worker served the overload meanwhile
    # generous (the CPU is shared): queued behind the overload's finals they wait several seconds
    assert np.median(beside_ms) < 2 * np.median(alone_ms) + 500, (alone_ms, beside_ms)
    assert max(beside_ms) < 3 * max(alone_ms) + 1000, (alone_ms, beside_ms)
