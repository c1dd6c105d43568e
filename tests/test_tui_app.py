"""The monitor through ``App.run_test()`` and its Pilot, fed recorded event sequences."""

from __future__ import annotations

import argparse
import asyncio
import csv
import functools
import threading

import pytest
from rich.text import Text

from serlive.stream import events as ev
from serlive.tui.app import MonitorApp, make_source
from serlive.tui.source import EngineSource, ReplaySource, WebSocketSource
from serlive.tui.widgets import Circumplex, HelpScreen, LabelPanel, ProbBars, SegmentLog, StreamList

from .test_tui_state import LABELS, pred, recorded

SIZE = (110, 32)


def sync(test):
    """Run an async test in its own event loop (the project has no pytest-asyncio)."""

    @functools.wraps(test)
    def wrapper(*args, **kwargs):
        return asyncio.run(test(*args, **kwargs))

    return wrapper


async def settle(app: MonitorApp, pilot) -> None:
    """Let a finite source run out, then draw."""
    await app.workers.wait_for_complete()
    await app.redraw()
    await pilot.pause()


def shown(app: MonitorApp, widget_type) -> str:
    widget = app.query_one(widget_type)
    return widget.draw(widget.content_size.width, widget.content_size.height).plain


def log_labels(app: MonitorApp) -> list[str]:
    table = app.query_one(SegmentLog)
    return [str(table.get_row_at(i)[2]) for i in range(table.row_count)]


class FakeEngine:
    """The engine's interface (add_sink / run / stop / hello), replaying events; half from another thread."""

    def __init__(self, events: list[ev.Event]) -> None:
        self.events, self.sinks, self.stopped = events, [], False

    def add_sink(self, sink) -> None:
        self.sinks.append(sink)

    def hello(self) -> ev.Hello:
        return self.events[0]

    async def run(self) -> int:
        rest = self.events[1:]
        half = len(rest) // 2
        for event in rest[:half]:
            for sink in self.sinks:
                sink.put(event)
            await asyncio.sleep(0)
        thread = threading.Thread(target=lambda: [s.put(e) for e in rest[half:] for s in self.sinks])
        thread.start()
        await asyncio.to_thread(thread.join)
        await asyncio.sleep(0.05)
        return 3

    def stop(self) -> None:
        self.stopped = True


@sync
async def test_recorded_demo_shows_label_probabilities_and_log():
    app = MonitorApp(ReplaySource(recorded()))
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        label = shown(app, LabelPanel)
        assert "▀" in label and "65% final" in label and "rolling: sad" in label
        bars = shown(app, ProbBars).splitlines()
        assert bars[3].startswith("sad") and bars[3].endswith("65%") and bars[0].endswith("4%")
        assert log_labels(app) == ["angry", "happy", "neutral", "sad"]
        assert "V -0.50 A -0.60" in shown(app, Circumplex)


@sync
async def test_interim_prediction_reads_differently_from_final():
    hello = recorded()[0]
    app = MonitorApp(ReplaySource([hello, ev.SegmentStart("local", 0, 0, 4800), pred(0, 0, 1, "happy", False, "local")]))
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        assert "interim" in shown(app, LabelPanel) and "final" not in shown(app, LabelPanel)
        assert app.query_one(SegmentLog).row_count == 0


@sync
async def test_switching_streams_by_key_and_by_list():
    app = MonitorApp(ReplaySource(recorded()))
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        await pilot.press("n")
        assert app.state.selected == "remote-1" and log_labels(app) == ["happy", "sad"]
        assert Text.from_markup(app.query_one("#now").border_title).plain == "now · ⇄ remote-1"  # marked remote
        await pilot.press("n")
        assert app.state.selected == "local" and len(log_labels(app)) == 4
        streams = app.query_one(StreamList)
        streams.focus()
        await pilot.press("down", "enter")
        await pilot.pause()
        assert app.state.selected == "remote-1" and log_labels(app) == ["happy", "sad"]


@sync
async def test_pause_holds_the_display_and_resume_catches_up():
    events = recorded()
    app = MonitorApp(ReplaySource(events[:40], hold=True))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause(0.1)
        await pilot.press("p")
        assert app.paused and "PAUSED" in app.query_one("#now").border_subtitle
        before = len(app.state.view.log)
        for event in events[40:]:
            app.feed(event)
        await app.redraw()
        assert len(app.state.view.log) == before and app.query_one(SegmentLog).row_count == before
        await pilot.press("p")
        assert not app.paused and log_labels(app) == ["angry", "happy", "neutral", "sad"]


@sync
async def test_reset_save_help_and_quit_keys(tmp_path):
    app = MonitorApp(ReplaySource(recorded()), csv_dir=tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        await pilot.press("s")
        (saved,) = tmp_path.glob("ser-live-segments-*.csv")
        assert len(list(csv.reader(saved.open()))) == 1 + 6
        assert any(str(saved) in n.message for n in app._notifications)
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape")
        assert not isinstance(app.screen, HelpScreen)
        await pilot.press("r")
        assert app.query_one(SegmentLog).row_count == 0 and "listening" in shown(app, LabelPanel)
        await pilot.press("q")
    assert app.return_value == 0


@sync
async def test_resized_small_keeps_the_essentials():
    app = MonitorApp(ReplaySource(recorded()))
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        for size in [(50, 16), (20, 6), (8, 3), SIZE]:
            await pilot.resize_terminal(*size)
            await app.redraw()
            await pilot.pause()
        await pilot.resize_terminal(50, 16)
        await pilot.pause()
        assert app.screen.has_class("-compact") and not app.query_one(Circumplex).display
        assert "SAD" in shown(app, LabelPanel) or "▀" in shown(app, LabelPanel)


@sync
async def test_local_engine_events_arrive_through_the_sink_from_any_thread():
    engine = FakeEngine(recorded())
    app = MonitorApp(EngineSource(engine))
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        assert log_labels(app) == ["angry", "happy", "neutral", "sad"]
        assert app.state.finished == 3 and "input ended" in app.state.feed.message
        await pilot.press("q")
    assert engine.stopped and app.return_value == 3


class Broken:
    async def run(self, emit) -> int:
        raise RuntimeError("no microphone")

    def stop(self) -> None:
        pass


@sync
async def test_a_failing_source_is_reported_not_fatal():
    app = MonitorApp(Broken())
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        assert app.state.error.code == "source_failed" and "no microphone" in app.state.error.message
        assert app.is_running


def test_connect_flag_picks_the_websocket_feed_and_loads_nothing():
    source = make_source(argparse.Namespace(connect="ws://127.0.0.1:1", ws_token="s3cret"))
    assert isinstance(source, WebSocketSource) and source.token == "s3cret"


@pytest.fixture(autouse=True)
def _labels_are_the_demo_ones():
    assert recorded()[0].labels == LABELS


@sync
async def test_overlapping_redraws_list_each_stream_once_with_its_name():
    """Redraws overlap (the 10 Hz tick, a key, a resume): the stream list is rebuilt one at a time, so it never
    holds a stream twice, nor an item without its label (shown as 'ListItem[name=...]')."""
    app = MonitorApp(ReplaySource(recorded()[:1]))
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)

        async def start(i: int) -> None:
            app.feed(ev.StreamStatus(f"phone-{i}", "started", "client"))
            await app.redraw()

        await asyncio.gather(*(start(i) for i in range(5)))
        await pilot.pause()
        items = list(app.query_one(StreamList).children)
        assert [item.name for item in items] == list(app.state.streams) == ["local"] + [f"phone-{i}" for i in range(5)]
        assert [str(item.query_one("Label").render()) for item in items] == [item.name for item in items]
