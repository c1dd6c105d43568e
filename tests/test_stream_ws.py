"""The WebSocket server through real clients (websockets library) on 127.0.0.1, port 0; every message is
validated against stream/protocol.schema.json."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import torch
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

import serlive.stream
from serlive.model import ModelConfig, Predictor, SERModel
from serlive.stream.config import EngineConfig, WsConfig
from serlive.stream.engine import Engine
from serlive.stream.events import EVENT_TYPES, from_dict
from serlive.stream.sources import ArraySource
from serlive.stream.ws import CLOSE_TOO_MANY, CLOSE_TOO_SLOW, _Client
from tests.test_stream_segmenter import TOLERANCE_SAMPLES, islands

SCHEMA = json.loads((Path(serlive.stream.__file__).parent / "protocol.schema.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)


@pytest.fixture(scope="module")
def predictor():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    return Predictor(SERModel(ModelConfig()).eval())


def ws_config(**kw) -> EngineConfig:
    return EngineConfig(ws=WsConfig(host="127.0.0.1", port=0, **kw), stats_interval_s=0.2)


async def collect(url: str, messages: list, **kw) -> None:
    """Receive until the server closes the connection."""
    async with connect(url, **kw) as ws:
        async for message in ws:
            messages.append(json.loads(message))


def url(engine: Engine, query: str = "") -> str:
    return f"ws://127.0.0.1:{engine.ws.port}/{query}"


def test_schema_is_valid_and_covers_every_event_type():
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    assert set(SCHEMA["$defs"]) - {"format"} == set(EVENT_TYPES)


def test_clients_receive_valid_messages_and_a_stalled_one_stalls_nobody(predictor):
    audio, truth = islands([0.3, 0.8, 0.5, 0.6, 0.6], seed=11)
    engine = Engine(predictor, ws_config(), [ArraySource("a", audio, realtime=True)])
    got_a, got_b = [], []

    async def main():
        task = asyncio.create_task(engine.run())
        await engine.ready.wait()
        stalled = await connect(url(engine), max_queue=1, close_timeout=0.2)  # never reads a message
        readers = [asyncio.create_task(collect(url(engine), got)) for got in (got_a, got_b)]
        code = await asyncio.wait_for(task, 15)  # the stalled client did not hold the engine or the others
        await asyncio.wait_for(asyncio.gather(*readers), 15)
        await stalled.close()
        return code

    assert asyncio.run(main()) == 0
    for got in (got_a, got_b):
        for message in got:
            VALIDATOR.validate(message)
            from_dict(message)  # and it rebuilds into its typed event
        assert got[0]["type"] == "hello" and got[0]["labels"] == list(predictor.labels)
        finals = [m for m in got if m["type"] == "prediction" and m["final"]]
        assert len(finals) == 2
        for m, (start, end) in zip(finals, truth):
            assert abs(m["start_s"] - start / 16000) <= 0.1 and abs(m["end_s"] - end / 16000) <= 0.1
        assert {m["type"] for m in got} >= {"hello", "segment_start", "segment_end", "prediction", "state",
                                             "level", "stats", "stream"}


def test_remote_audio_gets_its_own_stream(predictor):
    audio, truth = islands([0.3, 0.8, 0.5], seed=13)
    pcm = (audio * 32767).astype("<i2").tobytes()
    engine = Engine(predictor, ws_config(accept_audio=True), [])
    seen: list = []

    async def main():
        task = asyncio.create_task(engine.run())
        await engine.ready.wait()
        async with connect(url(engine, "?stream=phone")) as ws:
            for i in range(0, len(pcm), 3200):
                await ws.send(pcm[i:i + 3200])
            await ws.send(json.dumps({"type": "end_stream"}))
            async for message in ws:
                seen.append(json.loads(message))
                if seen[-1]["type"] == "stream" and seen[-1]["state"] == "ended":
                    break
        engine.stop()
        return await asyncio.wait_for(task, 10)

    assert asyncio.run(main()) == 0
    for message in seen:
        VALIDATOR.validate(message)
    finals = [m for m in seen if m["type"] == "prediction" and m["final"]]
    assert len(finals) == 1 and finals[0]["stream"] == "phone"
    assert abs(finals[0]["start_s"] - truth[0][0] / 16000) <= 0.1
    assert [m for m in seen if m["type"] == "accepted"] == [
        {"type": "accepted", "stream": "phone", "format": {"sample_rate_hz": 16000, "encoding": "s16le", "channels": 1}}]
    assert seen[0]["accepts_audio"] is True and seen[0]["protocol"] == 2
    assert seen[-1]["reason"] == "client_ended" and seen[-1]["stream"] == "phone"


def close_code(engine: Engine, query: str = "", **kw):
    async def attempt():
        async with connect(url(engine, query), **kw) as ws:
            try:
                while True:
                    await ws.recv()
            except ConnectionClosed as exc:
                return exc.rcvd.code if exc.rcvd else None
    return attempt()


def test_token_and_client_limit_close_with_clear_codes(predictor):
    engine = Engine(predictor, ws_config(token="s3cret", max_clients=1), [])

    async def main():
        task = asyncio.create_task(engine.run())
        await engine.ready.wait()
        for query in ("?token=wrong", ""):
            with pytest.raises(InvalidStatus) as refused:
                await close_code(engine, query)
            assert refused.value.response.status_code == 401
        async with connect(url(engine, "?token=s3cret")) as first:
            hello = json.loads(await first.recv())
            assert hello["type"] == "hello"
            assert await close_code(engine, additional_headers={"Authorization": "Bearer s3cret"}) == CLOSE_TOO_MANY
        engine.stop()
        return await asyncio.wait_for(task, 10)

    assert asyncio.run(main()) == 0


class NeverSends:
    """A connection whose send never completes: the worst stalled client."""

    def __init__(self) -> None:
        self.closed_with = None

    async def send(self, message):
        await asyncio.Event().wait()

    async def close(self, code, reason):
        self.closed_with = code


def test_stalled_client_skips_then_is_dropped():
    async def main():
        conn = NeverSends()
        client = _Client(conn, max_queue=4, stall_timeout_s=0.05)
        sender = asyncio.create_task(client.send_loop())
        for i in range(10):
            client.offer(str(i))  # never blocks
        async def closed() -> None:
            while conn.closed_with is None:  # the blocked send times out and the client is closed
                await asyncio.sleep(0.01)

        await asyncio.wait_for(closed(), 10)
        client.offer("late")  # ignored once dropped
        sender.cancel()
        return conn, client

    conn, client = asyncio.run(main())
    assert client.skipped == 6 and client.dropped and conn.closed_with == CLOSE_TOO_SLOW


def test_replies_to_a_client_are_not_skipped_with_its_broadcast_events():
    async def main():
        client = _Client(NeverSends(), max_queue=4, stall_timeout_s=60)
        for i in range(10):
            client.offer(f"event {i}")
        client.offer("accepted", reply=True)
        return client

    client = asyncio.run(main())
    assert client.skipped == 6 and list(client._queue)[-1] == "accepted"


def test_wire_form_is_strict_json_even_for_non_finite_numbers():
    from serlive.stream.events import PredictionEvent

    def strict(text: str):
        return json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} is not JSON"))

    event = PredictionEvent("a", 0, 0, 16000, final=True, label="sad", probs={"sad": float("nan")},
                            confidence=float("inf"), latency_ms=1.0)
    data = strict(event.to_json())
    assert data["probs"] == {"sad": None} and data["confidence"] is None and data["latency_ms"] == 1.0
