"""``--connect`` mode: a real WebSocket server on 127.0.0.1 port 0 that drops the feed once."""

from __future__ import annotations

import asyncio

import pytest
from websockets.asyncio.server import serve

from serlive.tui import source as source_mod
from serlive.tui.app import MonitorApp
from serlive.tui.source import WebSocketSource
from serlive.tui.state import FeedStatus
from serlive.tui.widgets import HealthPanel

from .test_tui_app import SIZE, log_labels, shown, sync
from .test_tui_state import recorded


@pytest.fixture(autouse=True)
def _fast_backoff(monkeypatch):
    monkeypatch.setattr(source_mod, "BACKOFF_START_S", 0.05)


class DroppingServer:
    """Sends the first half of the recording and hangs up; the next connection gets the rest, then waits."""

    def __init__(self) -> None:
        self.events = recorded()
        self.connections, self.headers = 0, []
        self.second_done = asyncio.Event()

    async def handler(self, ws) -> None:
        self.connections += 1
        self.headers.append(ws.request.headers.get("Authorization"))
        half = len(self.events) // 2
        if self.connections == 1:
            for event in self.events[:half]:
                await ws.send(event.to_json())
            await ws.send("not json")  # a bad message is skipped, not fatal
            return
        await ws.send(self.events[0].to_json())
        for event in self.events[half:]:
            await ws.send(event.to_json())
        self.second_done.set()
        await ws.wait_closed()


async def eventually(check, pilot=None, app=None, timeout_s: float = 15.0) -> None:
    """Wait (redrawing the app, if any) until ``check()`` holds, instead of a blind sleep."""
    async def poll() -> None:
        while True:
            if app is not None:
                await app.redraw()
                await pilot.pause()
            if check():
                return
            await asyncio.sleep(0.02)

    await asyncio.wait_for(poll(), timeout_s)


@sync
async def test_feed_drop_is_reported_and_reconnected():
    server = DroppingServer()
    seen: list = []
    async with serve(server.handler, "127.0.0.1", 0) as ws_server:
        port = ws_server.sockets[0].getsockname()[1]
        client = WebSocketSource(f"ws://127.0.0.1:{port}", token="s3cret")
        task = asyncio.create_task(client.run(seen.append))
        await asyncio.wait_for(server.second_done.wait(), 10)
        await eventually(lambda: len([e for e in seen if not isinstance(e, FeedStatus)]) >= len(server.events) + 1)
        client.stop()
        assert await asyncio.wait_for(task, 5) == 0
    notes = [e for e in seen if isinstance(e, FeedStatus)]
    assert [(n.connected, n.dropped) for n in notes] == [(True, 0), (True, 1), (False, 1), (True, 1)]
    assert notes[1].problem == "not JSON"  # the bad message is counted, and the count survives a reconnect
    assert notes[2].message.startswith("feed lost — reconnecting")
    assert server.headers == ["Bearer s3cret"] * 2
    events = [e for e in seen if not isinstance(e, FeedStatus)]
    assert len(events) == len(server.events) + 1  # the hello is sent again on reconnect


@sync
async def test_monitor_on_a_remote_feed_shows_it_and_says_when_it_is_lost():
    server = DroppingServer()
    async with serve(server.handler, "127.0.0.1", 0) as ws_server:
        port = ws_server.sockets[0].getsockname()[1]
        app = MonitorApp(WebSocketSource(f"ws://127.0.0.1:{port}"))
        async with app.run_test(size=SIZE) as pilot:
            await asyncio.wait_for(server.second_done.wait(), 10)
            await eventually(lambda: len(log_labels(app)) == 4, pilot, app)
            assert log_labels(app) == ["angry", "happy", "neutral", "sad"]
            assert f"connected to ws://127.0.0.1:{port}" in shown(app, HealthPanel)
            ws_server.close()
            await eventually(lambda: "feed lost — reconnecting" in shown(app, HealthPanel), pilot, app)
            await pilot.press("q")


@sync
async def test_no_server_keeps_retrying_until_stopped():
    seen: list = []
    client = WebSocketSource("ws://127.0.0.1:9", open_timeout_s=1)
    task = asyncio.create_task(client.run(seen.append))
    await asyncio.sleep(0.4)
    client.stop()
    assert await asyncio.wait_for(task, 5) == 0
    assert len(seen) >= 2 and all(isinstance(e, FeedStatus) and not e.connected for e in seen)
