"""``ser-live --connect`` survives any feed: a real WebSocket server (127.0.0.1, port 0) sends malformed,
hostile and unknown messages between real events, to the feed source, to the real app through the Pilot,
and to a real ``ser-live --connect`` process on a pseudo-terminal."""

from __future__ import annotations

import asyncio
import dataclasses
import fcntl
import json
import os
import pty
import select
import struct
import subprocess
import sys
import termios
import threading
import time
import types
import typing

import pytest
from websockets.asyncio.server import serve

from serlive.stream import events as ev
from serlive.tui import feed
from serlive.tui.app import MonitorApp
from serlive.tui.source import WebSocketSource
from serlive.tui.state import MAX_STREAMS, FeedStatus, MonitorState
from serlive.tui.widgets import HealthPanel

from .test_tui_app import SIZE, log_labels, shown, sync
from .test_tui_source import eventually
from .test_tui_state import recorded

PRED = {"type": "prediction", "stream": "local", "segment": 9, "start_sample": 0, "end_sample": 16000,
        "final": True, "label": "happy", "probs": {"happy": 0.9, "sad": 0.1}, "confidence": 0.9}

MALFORMED = [
    (json.dumps({**PRED, "confidence": "high"}), "prediction.confidence is not a number"),  # the reported crash
    (json.dumps({**PRED, "probs": {"happy": "lots"}}), "prediction.probs.happy is not a number"),
    (json.dumps({**PRED, "label": 5}), "prediction.label is not a string"),
    (json.dumps({**PRED, "final": "yes"}), "prediction.final is not true or false"),
    (json.dumps({**PRED, "valence": 1e999}), "prediction.valence is out of range"),  # Infinity
    (json.dumps({**PRED, "end_sample": 10**400}), "prediction.end_sample is not an integer in range"),
    (json.dumps({**PRED, "segment": 1.5}), "prediction.segment is not an integer in range"),
    (json.dumps({**PRED, "label": "x" * 5000}), "prediction.label is longer than 4096 characters"),
    ('{"type":"level","stream":"local","sample":16000,"db":NaN,"speech":true}', "level.db is out of range"),
    ('{"type":"stats","rtf":0.1}', "stats without 'latency_p50_ms'"),
    ('{"type":"stream","stream":"x","state":"paused","detail":"","reason":null}',
     "stream.state is not one of started, ended"),
    ('{"type":"hello","protocol":2,"labels":"angry","model":"m","sample_rate_hz":16000,"streams":[],'
     '"dimensional":false,"device":"cpu"}', "hello.labels is not a list of at most 1024 items"),
    ('{"type":"error","code":"x","message":["not","text"]}', "error.message is not a string"),
    ('{"type":"level","stream":"a","sample":1,"db":0,"speech":true,"type2":1,"stream":{"a":1}}',
     "level.stream is not a string"),
    ("[1, 2]", "not a JSON object"),
    ("null", "not a JSON object"),
    ('{"stream":"x"}', "no 'type'"),
    ("not json", "not JSON"),
    ("[" * 100_000 + "]" * 100_000, "JSON nested too deeply"),
    (b"\x00\x01binary", "a binary frame, not a JSON text message"),
]


def test_every_event_the_engine_sends_reads_back_unchanged():
    events = recorded() + [ev.StreamStatus("ѕpeech.wav", "started", "", None, remote=True),
                           ev.Hello(2, ("a", "b"), "m", 16000, ("x", "y"), False, "cpu", True, 1, ("y",))]
    for event in events:
        assert feed.parse(event.to_json()) == event


def _sample(hint):
    """A value of ``hint`` other than a field's default."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return _sample(next(a for a in args if a is not type(None)))
    if origin is tuple:
        return (_sample(args[0]), _sample(args[0]))
    if origin is dict or hint is dict:
        return {"k": _sample(args[1]) if args else "v"}
    return {bool: True, int: 3, float: 0.5, str: "x"}[hint]


@pytest.mark.parametrize("cls", list(ev.EVENT_TYPES.values()), ids=list(ev.EVENT_TYPES))
def test_every_field_of_every_event_type_is_checked_and_read_back(cls):
    """Guards the checker against a field added to an event later with a type it has no rule for: every
    message of that type would then be dropped."""
    hints = typing.get_type_hints(cls)
    values = {f.name: _sample(hints[f.name]) for f in dataclasses.fields(cls)}
    if cls.type in feed.STATES:  # an enumerated field takes one of its values
        name, allowed = feed.STATES[cls.type]
        values[name] = allowed[-1]
    event = cls(**values)
    assert feed.parse(event.to_json()) == event


@pytest.mark.parametrize("message, problem", MALFORMED, ids=[p for _, p in MALFORMED])
def test_a_malformed_message_is_refused_saying_why(message, problem):
    with pytest.raises(feed.BadMessage) as caught:
        feed.parse(message)
    assert str(caught.value) == problem


def test_unknown_types_and_fields_are_ignored_as_the_protocol_asks():
    with pytest.raises(feed.Unknown):
        feed.parse('{"type":"cluster_node","node":"b"}')
    event = feed.parse(json.dumps({**PRED, "new_field": {"any": "thing"}}))
    assert event == ev.PredictionEvent("local", 9, 0, 16000, final=True, label="happy",
                                       probs={"happy": 0.9, "sad": 0.1}, confidence=0.9)


class FeedServer:
    """Sends ``messages`` (text or binary frames) to each connection, then idles until the client leaves;
    records how each connection was closed."""

    def __init__(self, messages: list[str | bytes]) -> None:
        self.messages, self.close_codes = messages, []
        self.sent = asyncio.Event()

    async def handler(self, ws) -> None:
        for message in self.messages:
            await ws.send(message)
        self.sent.set()
        await ws.wait_closed()
        self.close_codes.append(ws.close_code)


def hostile_feed() -> list[str | bytes]:
    """The recorded demo with every malformed message and an unknown type spliced in after the hello."""
    events = [e.to_json() for e in recorded()]
    return events[:1] + [m for m, _ in MALFORMED] + ['{"type":"from_the_future"}'] + events[1:]


class LoopErrors:
    """Collects what asyncio reports as unhandled in this loop (e.g. a task exception never retrieved)."""

    def __init__(self) -> None:
        self.reports: list[str] = []
        asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: self.reports.append(ctx["message"]))


@sync
async def test_source_drops_and_counts_what_is_malformed_and_passes_the_rest():
    server = FeedServer(hostile_feed())
    seen: list = []
    async with serve(server.handler, "127.0.0.1", 0) as ws_server:
        client = WebSocketSource(f"ws://127.0.0.1:{ws_server.sockets[0].getsockname()[1]}")
        task = asyncio.create_task(client.run(seen.append))
        await eventually(lambda: len([e for e in seen if not isinstance(e, FeedStatus)]) == len(recorded()))
        client.stop()
        assert await asyncio.wait_for(task, 5) == 0
    assert [e for e in seen if not isinstance(e, FeedStatus)] == recorded()
    assert client.dropped == len(MALFORMED) and client.ignored == 1
    notes = [e for e in seen if isinstance(e, FeedStatus)]
    assert [n.dropped for n in notes] == list(range(len(MALFORMED) + 1))
    assert [n.problem for n in notes[1:]] == [p for _, p in MALFORMED]
    assert server.close_codes == [1000]


@sync
async def test_monitor_shows_a_hostile_feed_notes_the_drops_and_quits_cleanly():
    errors = LoopErrors()
    server = FeedServer(hostile_feed())
    async with serve(server.handler, "127.0.0.1", 0) as ws_server:
        app = MonitorApp(WebSocketSource(f"ws://127.0.0.1:{ws_server.sockets[0].getsockname()[1]}"))
        async with app.run_test(size=SIZE) as pilot:
            await eventually(lambda: len(log_labels(app)) == 4, pilot, app)
            assert log_labels(app) == ["angry", "happy", "neutral", "sad"]
            health = shown(app, HealthPanel)
            assert f"{len(MALFORMED)} malformed messages dropped" in health
            assert "last: a binary frame" in health
            await pilot.press("q")
        await eventually(lambda: server.close_codes)
    assert app.return_code == 0
    assert server.close_codes == [1000]  # a plain close, not 1011 (internal error)
    assert errors.reports == []


@sync
async def test_quit_on_an_idle_feed_closes_the_socket_cleanly():
    errors = LoopErrors()
    server = FeedServer([recorded()[0].to_json()])
    async with serve(server.handler, "127.0.0.1", 0) as ws_server:
        port = ws_server.sockets[0].getsockname()[1]
        app = MonitorApp(WebSocketSource(f"ws://127.0.0.1:{port}"))
        async with app.run_test(size=SIZE) as pilot:
            await eventually(lambda: f"connected to ws://127.0.0.1:{port}" in shown(app, HealthPanel), pilot, app)
            await pilot.press("q")
        await eventually(lambda: server.close_codes)
    assert app.return_code == 0 and server.close_codes == [1000]
    assert errors.reports == []


class ServerThread:
    """A :class:`FeedServer` on its own event loop in a thread, for a client in another process."""

    def __init__(self, messages: list[str | bytes]) -> None:
        self.server = FeedServer(messages)
        self.port: int | None = None
        self._ready, self._loop, self._stop = threading.Event(), None, None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _main(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        async with serve(self.server.handler, "127.0.0.1", 0) as ws_server:
            self.port = ws_server.sockets[0].getsockname()[1]
            self._ready.set()
            await self._stop.wait()

    def __enter__(self) -> ServerThread:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *exc) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


def run_on_a_terminal(url: str, wait_for: bytes, timeout_s: float = 90.0) -> tuple[int, str]:
    """``ser-live --connect url`` on a 120x36 pseudo-terminal: wait until the screen shows ``wait_for``,
    press q, return the exit code and everything written to the terminal (-1 if it never showed it)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 36, 120, 0, 0))
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "120", "LINES": "36"}
    proc = subprocess.Popen([sys.executable, "-m", "serlive.tui.cli", "--connect", url], stdin=slave,
                            stdout=slave, stderr=slave, env=env, start_new_session=True)
    os.close(slave)
    out, pressed, deadline = b"", False, time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    out += os.read(master, 65536)
                except OSError:  # the child closed the terminal
                    break
            if not pressed and wait_for in out:
                os.write(master, b"q")
                pressed = True
            if pressed and proc.poll() is not None and not ready:
                break
        return (proc.wait(10) if pressed else -1), out.decode("utf-8", "replace")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)


FEEDS = {"idle": ([], ""), "bad-confidence": ([json.dumps(PRED | {"confidence": "high"})], "1 malformed message dropped"),
         "hostile": (hostile_feed()[1:], f"{len(MALFORMED)} malformed messages dropped")}


@pytest.mark.parametrize("kind", list(FEEDS))
def test_ser_live_connect_process_quits_without_a_traceback(kind):
    messages, note = FEEDS[kind]
    with ServerThread([recorded()[0].to_json()] + messages) as server:
        shows = note.encode() if note else b"connected to ws://127.0.0.1"  # q only once the screen says so
        code, screen = run_on_a_terminal(f"ws://127.0.0.1:{server.port}", shows)
        deadline = time.monotonic() + 5
        while not server.server.close_codes and time.monotonic() < deadline:
            time.sleep(0.05)
    assert code == 0, screen[-2000:]
    assert "Traceback" not in screen and "1011" not in screen and "never retrieved" not in screen, screen[-3000:]
    assert server.server.close_codes == [1000]


def flood() -> list[str]:
    """A feed that opens a new stream and reports an error in every other message."""
    messages = [dataclasses.replace(recorded()[0], streams=()).to_json()]
    for i in range(MAX_STREAMS + 44):
        messages += [ev.StreamStatus(f"s{i}", "started").to_json(), ev.Error("bad_audio", f"stream s{i} NaN").to_json()]
    return messages


@sync
async def test_a_flood_of_streams_and_errors_stays_bounded_on_screen():
    server = FeedServer(flood())
    async with serve(server.handler, "127.0.0.1", 0) as ws_server:
        app = MonitorApp(WebSocketSource(f"ws://127.0.0.1:{ws_server.sockets[0].getsockname()[1]}"))
        async with app.run_test(size=SIZE) as pilot:
            await eventually(lambda: app.state.unshown == 44, pilot, app)
            assert len(app.state.streams) == MAX_STREAMS and "s255" in app.state.streams
            assert "44 events of others not shown" in shown(app, HealthPanel)
            assert app.state.error.message == f"stream s{MAX_STREAMS + 43} NaN"  # the latest, in the panel
            assert len(app._notifications) <= 3  # toasts spaced a second apart, not 300 of them
            await pilot.press("q")
    assert app.return_code == 0


def test_an_ended_stream_makes_room_for_a_new_one():
    state = MonitorState()
    for i in range(MAX_STREAMS):
        state.apply(ev.StreamStatus(f"s{i}", "started"))
    state.apply(ev.Level("late", 0, -20.0, False))
    assert "late" not in state.streams and state.unshown == 1
    state.apply(ev.StreamStatus("s7", "ended", reason="client_closed"))
    state.apply(ev.Level("late", 0, -20.0, False))
    assert "late" in state.streams and "s7" not in state.streams and len(state.streams) == MAX_STREAMS
    assert state.selected == "s0"  # the selected stream is never the one forgotten


@pytest.mark.parametrize("line, problem", [('{"type":"prediction"}', "line 2: prediction without 'stream'"),
                                           ("{", "line 2: not JSON")])
def test_replay_of_a_bad_recording_is_one_sentence_and_exit_2(tmp_path, line, problem):
    recording = tmp_path / "events.jsonl"
    recording.write_text(recorded()[0].to_json() + "\n" + line + "\n")
    proc = subprocess.run([sys.executable, "-m", "serlive.tui.replay", str(recording)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr == f"replay: error: {recording}, {problem}\n"


@sync
async def test_stop_while_a_server_never_answers_the_handshake_returns_at_once():
    held: list = []

    async def hold(reader, writer):  # accepts the TCP connection, never answers the upgrade
        held.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    errors = LoopErrors()
    async with server:
        client = WebSocketSource(f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}", open_timeout_s=30)
        task = asyncio.create_task(client.run(lambda e: None))
        await eventually(lambda: held)
        started = time.monotonic()
        client.stop()
        assert await asyncio.wait_for(task, 5) == 0
        assert time.monotonic() - started < 0.5  # not the 30 s handshake timeout, nor the app's 2 s quit wait
        for writer in held:
            writer.close()
    assert errors.reports == []


@sync
async def test_a_token_in_the_url_is_not_shown_on_screen():
    server = FeedServer([recorded()[0].to_json()])
    seen: list = []
    async with serve(server.handler, "127.0.0.1", 0) as ws_server:
        port = ws_server.sockets[0].getsockname()[1]
        client = WebSocketSource(f"ws://127.0.0.1:{port}/?token=s3cret-token")
        task = asyncio.create_task(client.run(seen.append))
        await eventually(lambda: any(isinstance(e, FeedStatus) for e in seen))
        ws_server.close()
        await eventually(lambda: any(isinstance(e, FeedStatus) and not e.connected for e in seen))
        client.stop()
        assert await asyncio.wait_for(task, 5) == 0
    notes = [e.message for e in seen if isinstance(e, FeedStatus)]
    assert notes[0] == f"connected to ws://127.0.0.1:{port}/?token=[redacted]"
    assert not any("s3cret" in note for note in notes)
