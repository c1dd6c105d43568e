"""A remote stream named exactly like a local one (``ѕpeech.wav`` with a Cyrillic ``ѕ``) is still told apart:
a real engine with a local source and a WebSocket server, a real client sending RAVDESS speech under the
look-alike name; the monitor on the engine, the ``--connect`` view of a client that joins later, the text
output and every message on the wire (checked against the schema) all mark the remote stream."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from rich.text import Text
from websockets.asyncio.client import connect

from serlive.model import ModelConfig, Predictor, SERModel
from serlive.stream.config import EngineConfig, WsConfig
from serlive.stream.engine import Engine
from serlive.stream.sinks import TextSink
from serlive.stream.sources import ArraySource
from serlive.tui import render
from serlive.tui.app import MonitorApp
from serlive.tui.source import EngineSource, WebSocketSource
from serlive.tui.state import MonitorState
from serlive.tui.widgets import StreamList

from .test_stream_ws import VALIDATOR
from .test_tui_app import SIZE, sync
from .test_tui_source import eventually

LOCAL = "speech.wav"
LOOKALIKE = "\u0455peech.wav"  # CYRILLIC SMALL LETTER DZE, drawn like a Latin s
SPEECH = Path(__file__).parent / "data" / "ravdess" / "03-01-05-01-01-01-01.flac"


@pytest.fixture(scope="module")
def predictor():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    return Predictor(SERModel(ModelConfig()).eval())


def listed(app: MonitorApp) -> list[str]:
    return [item.query_one("Label").render().plain for item in app.query_one(StreamList).children]


async def until(ws, check, got: list) -> None:
    """Receive into ``got`` until ``check(message)``."""
    while True:
        got.append(json.loads(await asyncio.wait_for(ws.recv(), 30)))
        if check(got[-1]):
            return


@sync
async def test_a_remote_stream_named_like_a_local_one_is_marked_everywhere(predictor):
    assert LOOKALIKE != LOCAL and LOOKALIKE[1:] == LOCAL[1:]
    audio, rate = sf.read(SPEECH, dtype="int16")
    assert rate == 16_000
    local = ArraySource(LOCAL, np.zeros(60 * 16_000, np.float32), realtime=True)  # lives until stopped
    engine = Engine(predictor, EngineConfig(ws=WsConfig(host="127.0.0.1", port=0, accept_audio=True),
                                            stats_interval_s=0.2), [local])
    text = io.StringIO()
    engine.add_sink(TextSink(text))
    app = MonitorApp(EngineSource(engine))
    wire: list[dict] = []
    async with app.run_test(size=SIZE) as pilot:
        await eventually(lambda: engine.ready.is_set() and LOCAL in app.state.streams, pilot, app)
        url = f"ws://127.0.0.1:{engine.ws.port}/"
        async with connect(url) as sender:
            await sender.send(json.dumps({"type": "start_stream", "stream": LOOKALIKE}))
            pcm = audio.astype("<i2").tobytes()
            for i in range(0, len(pcm), 3200):
                await sender.send(pcm[i:i + 3200])
            await until(sender, lambda m: m["type"] == "accepted", wire)
            late = MonitorState()  # what `ser-live --connect` folds, joining while the stream is open
            view = WebSocketSource(url)
            watching = asyncio.create_task(view.run(late.apply))
            await eventually(lambda: late.hello is not None)
            assert late.hello.remote_streams == (LOOKALIKE,) and set(late.hello.streams) == {LOCAL, LOOKALIKE}
            assert late.streams[LOOKALIKE].remote and not late.streams[LOCAL].remote
            await eventually(lambda: len(listed(app)) == 2, pilot, app)
            assert listed(app) == [LOCAL, render.REMOTE_MARK + LOOKALIKE]
            app.state.selected = LOOKALIKE
            await app.redraw()
            assert Text.from_markup(app.query_one("#now").border_title).plain == f"now · ⇄ {LOOKALIKE}"
            await sender.send(json.dumps({"type": "end_stream"}))
            await until(sender, lambda m: m["type"] == "stream" and m["state"] == "ended", wire)
        view.stop()
        assert await asyncio.wait_for(watching, 5) == 0
        await eventually(lambda: listed(app)[1].endswith("(ended)"), pilot, app)
        assert listed(app) == [LOCAL, f"{render.REMOTE_MARK}{LOOKALIKE} (ended)"]
        await pilot.press("q")
    assert app.return_code == 0
    for message in wire:
        VALIDATOR.validate(message)
    streams = [(m["stream"], m["state"], m["remote"]) for m in wire if m["type"] == "stream"]
    assert streams == [(LOOKALIKE, "started", True), (LOOKALIKE, "ended", True)]
    assert wire[0]["type"] == "hello" and wire[0]["streams"] == [LOCAL] and wire[0]["remote_streams"] == []
    lines = text.getvalue().splitlines()
    assert f"{LOCAL}: started" in lines
    assert f"[remote] {LOOKALIKE}: started" in lines
    assert any(line.startswith(f"[remote] {LOOKALIKE}: ended") for line in lines)
    remote_finals = [line for line in lines if "#0 " in line and LOOKALIKE in line]
    assert remote_finals and all(line.startswith("[remote] ") for line in remote_finals)


def test_a_client_cannot_put_the_marks_in_its_name():
    from serlive.stream.names import client_stream_name
    from serlive.stream.sinks import REMOTE_MARK as TEXT_MARK

    for mark in (render.REMOTE_MARK, TEXT_MARK, "⇄ remote"):
        assert client_stream_name(mark + LOCAL, "x") != mark + LOCAL
        assert mark.strip() not in client_stream_name(mark + LOCAL, "x")
    assert client_stream_name(LOOKALIKE, "x") == LOOKALIKE  # letters of any script pass: hence the marks
