"""Two promises of PROTOCOL.md kept with real clients: a client that stops reading is closed with 4001
after the documented 5 s (not only by the 20 s + 20 s keep-alive, however much the socket buffers hold),
while one that reads (slowly, or while it sends audio) stays; and a stream name is free again for the
client's next ``start_stream`` right after its ``end_stream``."""

from __future__ import annotations

import asyncio
import json
import logging
import time

from websockets.asyncio.client import connect

from serlive.stream.config import WsConfig
from serlive.stream.engine import Engine
from tests.test_stream_segmenter import islands
from tests.test_stream_ws import predictor, url, ws_config  # noqa: F401 - predictor is a fixture
from tests.test_stream_ws_access import running
from tests.test_stream_ws_protocol import is_type, raw_client, until


def test_a_client_that_never_reads_is_dropped_after_the_documented_5_s(predictor, caplog):
    engine = Engine(predictor, ws_config(), [])  # stats every 0.2 s: a trickle far below any buffer
    defaults = WsConfig()
    assert (defaults.stall_timeout_s, defaults.ping_interval_s) == (5.0, 20.0)

    async def main():
        async with running(engine):
            async with connect(url(engine)) as reader:
                sock, _ = await raw_client(url(engine))  # completes the handshake, then reads nothing
                start = time.monotonic()
                while engine.ws.slow_closed == 0 and time.monotonic() - start < 15:
                    await asyncio.sleep(0.05)
                dropped_after_s = time.monotonic() - start
                messages = 0
                while time.monotonic() - start < 8.0:  # a client that reads stays connected meanwhile
                    json.loads(await asyncio.wait_for(reader.recv(), 5))
                    messages += 1
                sock.close()
                return dropped_after_s, messages, engine.ws.slow_closed

    with caplog.at_level(logging.WARNING, logger="serlive.stream.ws"):
        dropped_after_s, messages, slow_closed = asyncio.run(main())
    assert 4.5 <= dropped_after_s <= 7.5, dropped_after_s
    assert slow_closed == 1 and messages > 10
    assert "did not read for 5 s" in caplog.text


def test_a_sender_that_never_reads_is_dropped_after_the_stall_timeout(predictor, caplog):
    """A client that streams audio in real time (the server reads every message at once) but reads nothing:
    the read probe must still find it, although the server was busy with its audio all along."""
    audio, _ = islands([0.5, 1.0, 0.5] * 10, seed=11)
    pcm = (audio * 32767).astype("<i2").tobytes()
    engine = Engine(predictor, ws_config(accept_audio=True, stall_timeout_s=1.0), [])  # keep-alive: 20 + 20 s
    loop_s, block = 0.05, 1_600  # 0.1 s of audio every 0.05 s: never behind, never held back

    async def main():
        async with running(engine):
            sock, proto = await raw_client(url(engine))  # sends from here on, reads nothing
            loop = asyncio.get_running_loop()
            proto.send_text(json.dumps({"type": "start_stream", "stream": "deaf"}).encode())
            start = time.monotonic()
            for i in range(0, len(pcm), 2 * block):
                if engine.ws.slow_closed:
                    break
                proto.send_binary(pcm[i:i + 2 * block])
                await loop.sock_sendall(sock, b"".join(proto.data_to_send()))
                await asyncio.sleep(loop_s)
            dropped_after_s = time.monotonic() - start
            sock.close()
            return dropped_after_s, engine.ws.slow_closed

    with caplog.at_level(logging.WARNING, logger="serlive.stream.ws"):
        dropped_after_s, slow_closed = asyncio.run(main())
    assert slow_closed == 1 and 0.9 <= dropped_after_s <= 3.0, (slow_closed, dropped_after_s)
    assert "did not read for 1 s" in caplog.text


class SlowModel:
    """The test predictor, 0.4 s slower per forward pass: the engine falls behind a fast sender."""

    def __init__(self, predictor) -> None:
        self._predictor = predictor

    def __getattr__(self, name: str):
        return getattr(self._predictor, name)

    def predict_prepared(self, *args, **kwargs):
        time.sleep(0.4)
        return self._predictor.predict_prepared(*args, **kwargs)


def test_a_sender_the_server_is_not_reading_is_not_taken_for_a_stalled_reader(predictor):
    """Back-pressure on audio: the server stops reading a sender that runs ahead of the model, so its
    pongs wait unread for longer than the stall timeout; it still reads every event and is not dropped."""
    audio, _ = islands([0.2, 1.0, 0.3] * 4, seed=5)
    pcm = (audio * 32767).astype("<i2").tobytes()
    engine = Engine(SlowModel(predictor), ws_config(accept_audio=True, stall_timeout_s=0.3), [])

    async def main():
        got: list = []
        async with running(engine):
            async with connect(url(engine, "?stream=fast")) as ws:
                for _ in range(3):  # about 16 s of audio as fast as the socket takes it
                    for i in range(0, len(pcm), 32_000):
                        await ws.send(pcm[i:i + 32_000])
                await ws.send(json.dumps({"type": "end_stream"}))
                await until(ws, is_type("stream", state="ended"), got)
        return engine.ws.slow_closed, got

    slow_closed, got = asyncio.run(main())
    assert slow_closed == 0 and got[-1]["reason"] == "client_ended"


def test_a_stream_name_is_free_again_right_after_end_stream(predictor):
    audio, _ = islands([0.2, 1.0, 0.3], seed=7)
    pcm = (audio * 32767).astype("<i2").tobytes()
    engine = Engine(predictor, ws_config(accept_audio=True), [])

    async def main():
        got: list = []
        async with running(engine):
            async with connect(url(engine)) as ws:
                for _ in range(3):
                    await ws.send(json.dumps({"type": "start_stream", "stream": "re"}))
                    await ws.send(pcm)
                    await ws.send(json.dumps({"type": "end_stream"}))  # the next start_stream follows at once
                while len([m for m in got if is_type("stream", state="ended")(m)]) < 3:
                    await until(ws, is_type("stream", state="ended"), got)
        return [m["stream"] for m in got if m["type"] == "accepted"], got

    names, got = asyncio.run(asyncio.wait_for(main(), 60))
    assert names == ["re", "re", "re"]
    order = [(m["type"], m.get("state") or m.get("final")) for m in got
             if m["type"] in ("accepted", "stream") or (m["type"] == "prediction" and m["final"])]
    assert order == [("stream", "started"), ("accepted", None), ("prediction", True), ("stream", "ended")] * 3
