"""The Textual monitor: :class:`MonitorApp` draws a :class:`MonitorState` fed by an event source.

``run_tui(args)`` is what ``ser-live`` calls when a terminal is attached: it picks the source (the local
engine from :func:`serlive.stream.cli.build_engine`, or ``--connect``'s WebSocket feed) and runs the app.
The source runs as a worker in the app's own event loop, so the engine and the screen share one loop.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections import deque
from pathlib import Path

from rich.text import Text
from textual import work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import Footer, ListView

from serlive.stream import events as ev
from serlive.stream.names import printable

from . import render
from .source import EngineSource, EventSource, WebSocketSource
from .state import FeedStatus, MonitorState
from .widgets import (
    Circumplex, HealthPanel, HelpScreen, LabelPanel, LevelMeter, ProbBars, SegmentLog, StreamList, Timeline,
)

log = logging.getLogger(__name__)

COMPACT_BELOW = (72, 22)
"""Below this many columns or rows only the essentials stay: label, bars, level."""

QUIT_WAIT_S = 2.0
"""How long ``q`` waits for the event source to stop before the app exits anyway."""

ERROR_TOAST_GAP_S = 1.0
"""At most one error toast this often."""

HELD_MAX = 200_000
"""Events kept while the display is paused (about ten hours of one stream's levels); older ones are lost."""


class MonitorApp(App[int]):
    CSS_PATH = "app.tcss"
    TITLE = "ser-live"
    ENABLE_COMMAND_PALETTE = False
    BINDINGS = [
        Binding("q", "quit", "Quit"),
        Binding("p", "toggle_pause", "Pause/Resume"),
        Binding("r", "reset", "Reset"),
        Binding("s", "save_csv", "Save CSV"),
        Binding("n", "next_stream", "Next stream"),
        Binding("question_mark", "help", "Help", key_display="?"),
    ]

    def __init__(self, source: EventSource, *, refresh_s: float = 0.1, csv_dir: Path | None = None) -> None:
        super().__init__()
        self.source, self.refresh_s, self.csv_dir = source, refresh_s, csv_dir
        self.state = MonitorState()
        self.paused = False
        self._held: deque[ev.Event | FeedStatus] = deque(maxlen=HELD_MAX)
        self._dirty = True
        self._toasted_s = float("-inf")

    def compose(self) -> ComposeResult:
        s = self.state
        with Horizontal(id="top"):
            with Vertical(id="now"):
                yield LabelPanel(s, id="label")
                yield ProbBars(s, id="bars")
                yield LevelMeter(s, id="level")
            yield Circumplex(s, "valence / arousal", id="circumplex")
            with Vertical(id="side"):
                yield StreamList(s, id="streams")
                yield HealthPanel(s, "engine", id="health")
        yield Timeline(s, "timeline", id="timeline")
        yield SegmentLog(s, id="log")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#streams").border_title = "streams"
        self.query_one("#log").border_title = "segments"
        self._consume()
        self.set_interval(self.refresh_s, self._tick)
        self._apply_size(self.size.width, self.size.height)

    @work(exclusive=True, group="source")
    async def _consume(self) -> None:
        try:
            code = await self.source.run(self.feed)
        except Exception as exc:  # the source's own failure: show it, keep the screen up
            log.exception("event source failed")
            self.feed(ev.Error(code="source_failed", message=f"{type(exc).__name__}: {exc}"))
            self.feed(FeedStatus(False, "event source failed"))
            code = 1
        self.state.finished = code
        self._dirty = True

    def feed(self, event: ev.Event | FeedStatus) -> None:
        """Fold an event into the state; the screen catches up on the next tick (10 Hz by default)."""
        if self.paused:
            self._held.append(event)
            return
        self.state.apply(event)
        self._dirty = True
        if isinstance(event, ev.Error) and time.monotonic() - self._toasted_s >= ERROR_TOAST_GAP_S:
            # The health panel shows the latest error; toasts are spaced so a flood of errors cannot bury the screen.
            self._toasted_s = time.monotonic()
            self.notify(printable(event.message), title=printable(event.code), severity="error", markup=False)

    async def _tick(self) -> None:
        if self._dirty:
            await self.redraw()

    async def redraw(self) -> None:
        """Redraw every panel from the state now."""
        self._dirty = False
        for widget in self.query("#label, #bars, #level, #circumplex, #health, #timeline"):
            widget.refresh()
        self.query_one(SegmentLog).sync()
        await self.query_one(StreamList).sync()
        self._set_titles()

    def _set_titles(self) -> None:
        view = self.state.view
        now = self.query_one("#now")
        now.border_title = Text("now · ").append_text(render.stream_name(view.name, view.remote)) if view else "now"
        feed = self.state.feed
        now.border_subtitle = "⏸ PAUSED" if self.paused else Text(
            "" if feed.connected else printable(feed.message.split(" (")[0]))
        if view is not None:
            self.query_one(Timeline).border_title = f"timeline · last {view.window_s:.0f} s"

    def on_resize(self, event) -> None:
        self._apply_size(event.size.width, event.size.height)

    def _apply_size(self, width: int, height: int) -> None:
        self.screen.set_class(width < COMPACT_BELOW[0] or height < COMPACT_BELOW[1], "-compact")
        self.screen.set_class(height < 12, "-tiny")

    async def on_list_view_selected(self, message: ListView.Selected) -> None:
        if message.item.name and message.item.name != self.state.selected:
            self.state.selected = message.item.name
            await self.redraw()

    async def action_quit(self) -> None:
        # Let the source end by itself first (a remote feed closes its socket cleanly); exiting at once
        # would cancel it mid-receive.
        self.source.stop()
        workers = [w for w in self.workers if w.group == "source"]
        if workers:
            try:
                await asyncio.wait_for(asyncio.gather(*(w.wait() for w in workers), return_exceptions=True),
                                       QUIT_WAIT_S)
            except asyncio.TimeoutError:
                log.warning("the event source did not stop within %.0f s", QUIT_WAIT_S)
        self.exit(self.state.finished or 0)

    async def action_toggle_pause(self) -> None:
        self.paused = not self.paused
        if not self.paused:
            while self._held:
                self.state.apply(self._held.popleft())
        self._set_titles()
        self.notify("display paused — events still arrive" if self.paused else "display resumed", timeout=2)
        await self.redraw()

    async def action_reset(self) -> None:
        self.state.reset_selected()
        await self.redraw()
        self.notify(f"reset {printable(self.state.selected or 'display')}", timeout=2, markup=False)

    async def action_next_stream(self) -> None:
        self.state.select_next()
        await self.redraw()

    def action_save_csv(self) -> None:
        name = f"ser-live-segments-{time.strftime('%Y%m%d-%H%M%S')}.csv"
        path = (self.csv_dir or Path.cwd()) / name
        try:
            rows = self.state.save_csv(path)
        except OSError as exc:
            self.notify(f"could not save {path}: {exc}", severity="error", markup=False)
            return
        log.info("saved %d segments to %s", rows, path)
        self.notify(f"saved {rows} segments to {path}", title="segment log", markup=False)

    def action_help(self) -> None:
        self.push_screen(HelpScreen())


class _AppLogHandler(logging.Handler):
    """Warnings from the engine while the screen is up go to toasts, not to a stderr that would tear it."""

    def __init__(self, app: MonitorApp) -> None:
        super().__init__(logging.WARNING)
        self.app = app

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.app.call_from_thread(self.app.notify, printable(record.getMessage()), severity="warning",
                                      markup=False)
        except RuntimeError:  # on the app's own thread, or the app is not running
            try:
                self.app.notify(printable(record.getMessage()), severity="warning", markup=False)
            except Exception:
                pass


def make_source(args) -> EventSource:
    """``--connect URL``: a remote feed, nothing loaded locally; otherwise the local engine."""
    url = getattr(args, "connect", None)
    if url:
        return WebSocketSource(url, token=getattr(args, "ws_token", None))
    from serlive.stream.cli import build_engine

    return EngineSource(build_engine(args))


def run_tui(args) -> int:
    """Run the monitor until the user quits; returns the source's exit code (0 if it was still running)."""
    from serlive.stream import cli as stream_cli

    root = logging.getLogger()
    root.setLevel(getattr(logging, str(getattr(args, "log_level", "warning")).upper(), logging.WARNING))
    try:
        source = make_source(args)
    except stream_cli.CliError as exc:
        sys.stderr.write(f"ser-live: error: {exc}\n")
        return stream_cli.EXIT_USAGE
    app = MonitorApp(source)
    # Records written to the terminal would tear the screen: while it is up they become toasts.
    terminal = [h for h in root.handlers if type(h) is logging.StreamHandler]
    for h in terminal:
        root.removeHandler(h)
    handler = _AppLogHandler(app)
    root.addHandler(handler)
    try:
        code = app.run()
    finally:
        root.removeHandler(handler)
        for h in terminal:
            root.addHandler(h)
    return int(code or 0)
