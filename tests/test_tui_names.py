"""Hostile stream names (from WebSocket clients, or odd file names) are shown as plain text: the TUI never
interprets them as markup and never writes their control characters to the terminal."""

from __future__ import annotations

from serlive.stream import events as ev
from serlive.tui.app import MonitorApp
from serlive.tui.source import ReplaySource
from serlive.tui.widgets import HealthPanel, StreamList

from .test_tui_app import SIZE, settle, shown, sync
from .test_tui_state import pred, recorded

HOSTILE = ["[/]", "[bold red]boss[/bold red]", "x\x1b[2J\x1b[31mfake\nline", "[link=http://evil.example]y"]


def hostile_events() -> list[ev.Event]:
    hello = recorded()[0]
    events: list[ev.Event] = [hello]
    for name in HOSTILE:
        events += [ev.StreamStatus(name, "started", f"client {name}"), ev.SegmentStart(name, 0, 0, 4800),
                   pred(0, 0, 1, "happy", True, name),
                   ev.Error("bad_audio", f"stream {name} sent NaN", name)]
    return events + [ev.StreamStatus(HOSTILE[0], "ended", "gone [/]", "client_closed")]


@sync
async def test_markup_and_escape_sequences_in_names_are_shown_literally():
    app = MonitorApp(ReplaySource(hostile_events()))
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        listed = [str(item.query_one("Label").render()) for item in app.query_one(StreamList).children]
        for name in HOSTILE:
            assert name in app.state.streams
            app.state.selected = name
            await app.redraw()
            await pilot.pause()
            title = str(app.query_one("#now").border_title)
            assert "\x1b" not in title and "\n" not in title
        assert "\x1b" not in "".join(listed) and any("[/]" in label for label in listed)
        assert any("[bold red]boss[/bold red]" in label for label in listed)
        assert "\\x1b[2J" in "".join(listed)  # shown escaped, not sent to the terminal
        assert "\x1b" not in shown(app, HealthPanel)
        await pilot.press("r")  # the reset toast names the stream too
        await pilot.pause()
    assert app.return_code in (None, 0)
