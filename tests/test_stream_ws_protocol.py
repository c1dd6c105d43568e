"""Protocol version 2 through real clients: declared formats (converted or refused), ``accepted``, stream
end reasons, message limits (1009, ``bad_message``), a reader that stops reading (4001), hostile names.
Every message received is validated against protocol.schema.json."""

from __future__ import annotations

import asyncio
import json
import socket
from urllib.parse import quote

import numpy as np
import soxr
from websockets.asyncio.client import connect
from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.uri import parse_uri

from serlive.stream.events import StreamStatus
from serlive.stream.ingest import MAX_MESSAGE_BYTES
from serlive.stream.sinks import ListSink
from serlive.stream.engine import Engine
from serlive.stream.ws import CLOSE_TOO_BIG, CLOSE_TOO_SLOW
from tests.test_stream_segmenter import islands
from tests.test_stream_ws import VALIDATOR, predictor, url, ws_config  # noqa: F401 - predictor is a fixture
from tests.test_stream_ws_access import running


async def until(ws, predicate, got: list) -> dict:
    """Receive (validating each message) until one matches ``predicate``; returns it."""
    while True:
        message = json.loads(await asyncio.wait_for(ws.recv(), 30))
        VALIDATOR.validate(message)
        got.append(message)
        if predicate(message):
            return message


def is_type(kind: str, **fields):
    return lambda m: m["type"] == kind and all(m.get(k) == v for k, v in fields.items())


def test_declared_format_is_converted_and_the_sender_learns_its_stream(predictor):
    audio, truth = islands([0.3, 0.8, 0.5, 0.7, 0.5], seed=13)
    wide = soxr.resample(audio, 16_000, 48_000).astype("<f4")
    stereo = np.stack([wide, 0.5 * wide], 1).tobytes()  # interleaved f32le, 48 kHz, 2 channels
    fmt = {"sample_rate_hz": 48_000, "encoding": "f32le", "channels": 2}
    engine = Engine(predictor, ws_config(accept_audio=True), [])
    got: list = []

    async def main():
        async with running(engine):
            async with connect(url(engine)) as ws:
                await until(ws, is_type("hello"), got)
                await ws.send(json.dumps({"type": "start_stream", "stream": "lab mic", "format": fmt}))
                accepted = await until(ws, is_type("accepted"), got)
                for i in range(0, len(stereo), 38_403):  # ~100 ms per message, cut mid-frame on purpose
                    await ws.send(stereo[i:i + 38_403])
                await ws.send(json.dumps({"type": "end_stream"}))
                ended = await until(ws, is_type("stream", state="ended"), got)
            return accepted, ended

    accepted, ended = asyncio.run(main())
    assert accepted == {"type": "accepted", "stream": "lab mic", "format": fmt}
    assert ended["reason"] == "client_ended"
    finals = [m for m in got if m["type"] == "prediction" and m["final"]]
    assert len(finals) == len(truth)
    for m, (start, end) in zip(finals, truth):  # the 16 kHz clock: timestamps as if sent at 16 kHz
        assert abs(m["start_s"] - start / 16000) <= 0.1 and abs(m["end_s"] - end / 16000) <= 0.1


def test_bad_formats_are_refused_and_end_before_audio_is_no_stream(predictor):
    bad = [{"sample_rate_hz": 96_000}, {"sample_rate_hz": "16000"}, {"encoding": "mulaw"}, {"channels": 3},
           {"channels": 1, "bits": 24}, "s16le"]
    engine = Engine(predictor, ws_config(accept_audio=True), [])
    got: list = []

    async def main():
        async with running(engine):
            async with connect(url(engine)) as ws:
                await until(ws, is_type("hello"), got)
                for fmt in bad:
                    await ws.send(json.dumps({"type": "start_stream", "format": fmt}))
                    await until(ws, is_type("error"), got)
                await ws.send(json.dumps({"type": "start_stream", "stream": 5}))
                await until(ws, is_type("error"), got)
                await ws.send(json.dumps({"type": "end_stream"}))
                await until(ws, is_type("error"), got)
            return engine.hello().streams

    assert asyncio.run(main()) == ()
    codes = [m["code"] for m in got if m["type"] == "error"]
    assert codes == ["bad_format"] * len(bad) + ["bad_message", "no_stream"]
    assert not [m for m in got if m["type"] in ("accepted", "stream")]


def test_names_are_restricted_and_duplicates_numbered(predictor):
    engine = Engine(predictor, ws_config(accept_audio=True), [])
    hostile = "[/]\x1b[2J\nfake line"

    async def open_stream(ws, got, **start):
        await until(ws, is_type("hello"), got)
        if start:
            await ws.send(json.dumps({"type": "start_stream", **start}))
        else:
            await ws.send(b"\x00\x00" * 160)
        return (await until(ws, is_type("accepted"), got))["stream"]

    async def main():
        got: list = []
        async with running(engine):
            async with connect(url(engine, "?stream=dup")) as a, connect(url(engine, "?stream=dup")) as b, \
                    connect(url(engine, "?stream=" + quote(hostile))) as c, connect(url(engine)) as d:
                return [await open_stream(a, got), await open_stream(b, got, format={"channels": 1}),
                        await open_stream(c, got), await open_stream(d, got, stream="x" * 500)]

    assert asyncio.run(main()) == ["dup", "dup#2", "_____2J_fake line", "x" * 64]


def test_message_limits(predictor):
    engine = Engine(predictor, ws_config(accept_audio=True), [])
    got: list = []
    texts = ["[" * 2000 + "]" * 2000, '{"a":' * 800 + "1" + "}" * 800, "x" * 5000, "not json", "[1, 2]",
             json.dumps({"type": "subscribe"})]

    async def main():
        async with running(engine):
            async with connect(url(engine)) as ws:
                hello = await until(ws, is_type("hello"), got)
                for text in texts:
                    await ws.send(text)
                    await until(ws, is_type("error"), got)
                await ws.send(json.dumps({"type": "end_stream"}))  # still connected and answered
                await until(ws, is_type("error"), got)
            async with connect(url(engine), max_size=None) as ws:
                await ws.send(b"\x00" * (MAX_MESSAGE_BYTES + 2))
                try:
                    while True:
                        await ws.recv()
                except ConnectionClosed as exc:
                    return hello, exc.rcvd.code

    hello, code = asyncio.run(main())
    assert hello["max_message_bytes"] == MAX_MESSAGE_BYTES and code == CLOSE_TOO_BIG
    assert [m["code"] for m in got if m["type"] == "error"] == ["bad_message"] * len(texts) + ["no_stream"]


async def raw_client(address: str):
    """A socket that completes the WebSocket handshake (sans-I/O protocol) and then does what the test says."""
    loop = asyncio.get_running_loop()
    proto = ClientProtocol(parse_uri(address))
    proto.send_request(proto.connect())
    uri = parse_uri(address)
    sock = socket.create_connection((uri.host, uri.port))
    sock.setblocking(False)
    await loop.sock_sendall(sock, b"".join(proto.data_to_send()))
    while proto.state is State.CONNECTING:
        proto.receive_data(await loop.sock_recv(sock, 65536))
    assert proto.state is State.OPEN
    return sock, proto


def test_a_client_that_stops_reading_is_closed_with_4001(predictor):
    audio, _ = islands([0.3, 0.8, 0.5], seed=3)
    engine = Engine(predictor, ws_config(ping_interval_s=0.2, ping_timeout_s=0.5),
                    [__import__("serlive.stream.sources", fromlist=["ArraySource"]).ArraySource(
                        "a", audio, realtime=True)])

    async def main():
        async with running(engine):
            sock, proto = await raw_client(url(engine))  # reads nothing from here on
            while engine.ws.slow_closed == 0:
                await asyncio.sleep(0.05)
            loop = asyncio.get_running_loop()
            while proto.close_rcvd is None:  # now read what the server sent, close frame included
                data = await asyncio.wait_for(loop.sock_recv(sock, 65536), 10)
                if not data:
                    break
                proto.receive_data(data)
            messages = [json.loads(e.data) for e in proto.events_received()
                        if isinstance(e, Frame) and e.opcode is Opcode.TEXT]
            sock.close()
            return proto.close_rcvd, messages

    close, messages = asyncio.run(main())
    assert close is not None and close.code == CLOSE_TOO_SLOW
    assert messages and messages[0]["type"] == "hello"


def test_end_reasons_tell_a_clean_close_from_a_lost_connection(predictor):
    engine = Engine(predictor, ws_config(accept_audio=True), [])
    sink = ListSink()
    engine.add_sink(sink)

    async def main():
        loop = asyncio.get_running_loop()
        async with running(engine):
            async with connect(url(engine, "?stream=polite")) as ws:
                await ws.send(b"\x00\x00" * 1600)
                await until(ws, is_type("accepted"), [])
            sock, proto = await raw_client(url(engine, "?stream=cut"))
            proto.send_binary(b"\x00\x00" * 1600)
            await loop.sock_sendall(sock, b"".join(proto.data_to_send()))
            while "cut" not in engine.hello().streams:
                await asyncio.sleep(0.01)
            sock.close()  # no close frame
            while len([e for e in sink.of(StreamStatus) if e.state == "ended"]) < 2:
                await asyncio.sleep(0.01)

    asyncio.run(main())
    reasons = {e.stream: e.reason for e in sink.of(StreamStatus) if e.state == "ended"}
    assert reasons == {"polite": "client_closed", "cut": "connection_lost"}


def test_non_finite_float_audio_is_reported_once(predictor):
    engine = Engine(predictor, ws_config(accept_audio=True), [])
    samples = np.zeros(1600, "<f4")
    samples[::100] = np.nan
    got: list = []

    async def main():
        async with running(engine):
            async with connect(url(engine)) as ws:
                await ws.send(json.dumps({"type": "start_stream", "format": {"encoding": "f32le"}}))
                await until(ws, is_type("accepted"), got)
                for _ in range(3):
                    await ws.send(samples.tobytes())
                await ws.send(json.dumps({"type": "end_stream"}))
                await until(ws, is_type("stream", state="ended"), got)

    asyncio.run(main())
    errors = [m for m in got if m["type"] == "error"]
    assert [(m["code"], m["stream"]) for m in errors] == [("bad_audio", "remote-1")]


def test_a_reader_whose_sends_block_is_closed_with_4001_after_what_was_sent(predictor):
    """The other way to stall: no ping is due, but the events pile up until a send stays blocked."""
    from serlive.stream.events import Error

    engine = Engine(predictor, ws_config(ping_interval_s=3600, stall_timeout_s=0.5), [])
    big = Error("bad_message", "x" * 60_000)

    async def main():
        loop = asyncio.get_running_loop()
        async with running(engine):
            sock, proto = await raw_client(url(engine))
            sent = 0
            while engine.ws.slow_closed == 0:  # emit until the server gives up on this reader
                engine.emit(big)
                sent += 1
                await asyncio.sleep(0.005)
            received = 0
            while proto.close_rcvd is None:
                data = await asyncio.wait_for(loop.sock_recv(sock, 1 << 20), 10)
                if not data:
                    break
                proto.receive_data(data)
                received += sum(1 for e in proto.events_received() if isinstance(e, Frame) and e.opcode is Opcode.TEXT)
            sock.close()
            return proto.close_rcvd, sent, received

    close, sent, received = asyncio.run(main())
    assert close is not None and close.code == CLOSE_TOO_SLOW
    assert 0 < received <= sent + 1  # hello plus the events that made it before the close frame
