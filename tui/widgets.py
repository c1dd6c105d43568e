"""The monitor's panels: thin Textual widgets that draw the shared :class:`MonitorState` when refreshed."""

from __future__ import annotations

import asyncio

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widget import Widget
from textual.widgets import DataTable, Label, ListItem, ListView, Static

from . import render
from .state import MonitorState


class StatePanel(Widget):
    """A panel that renders from the app's state on every ``refresh()``."""

    def __init__(self, state: MonitorState, title: str = "", **kwargs) -> None:
        super().__init__(**kwargs)
        self.state = state
        if title:
            self.border_title = title

    def render(self) -> Text:
        return self.draw(self.content_size.width, self.content_size.height)

    def draw(self, width: int, height: int) -> Text:
        raise NotImplementedError


class LabelPanel(StatePanel):
    def draw(self, width: int, height: int) -> Text:
        view = self.state.view
        rolling = view.rolling.label if view and view.rolling else None
        return render.label_panel(view.current if view else None, self.state.labels, width, rolling)


class ProbBars(StatePanel):
    def draw(self, width: int, height: int) -> Text:
        view = self.state.view
        return render.prob_bars(view.current if view else None, self.state.labels, width)


class Circumplex(StatePanel):
    def draw(self, width: int, height: int) -> Text:
        return render.circumplex(self.state.view, self.state.dimensional, width, height)


class Timeline(StatePanel):
    def draw(self, width: int, height: int) -> Text:
        return render.timeline(self.state.view, self.state.labels, width)


class LevelMeter(StatePanel):
    def draw(self, width: int, height: int) -> Text:
        return render.level_meter(self.state.view, width)


class HealthPanel(StatePanel):
    def draw(self, width: int, height: int) -> Text:
        return render.health(self.state)


class SegmentLog(DataTable):
    """The selected stream's finished segments, newest at the bottom; appends, rebuilds on a switch/reset."""

    COLUMNS = ("start", "dur", "label", "conf", "latency")

    def __init__(self, state: MonitorState, **kwargs) -> None:
        super().__init__(cursor_type="row", zebra_stripes=True, **kwargs)
        self.state = state
        self._shown: tuple[str | None, int] = (None, -1)

    def on_mount(self) -> None:
        self.add_columns(*self.COLUMNS)

    def sync(self) -> None:
        view = self.state.view
        key = (view.name if view else None, view.log_version if view else -1)
        if key != self._shown:
            self.clear()
            self._shown = key
        rows = list(view.log) if view else []
        new = rows[self.row_count:]
        for row in new:
            self.add_row(
                f"{row.start_s:7.2f}s", f"{row.duration_s:5.2f}s",
                render.plain(f"{row.label} (uncertain)", style="grey50") if row.uncertain else
                render.plain(row.label, style=render.colour_for(row.label, self.state.labels)),
                f"{row.confidence:.0%}", f"{row.latency_ms:.0f} ms" + (" kNN" if row.knn else ""),
            )
        if new:
            self.move_cursor(row=self.row_count - 1, animate=False)


class StreamList(ListView):
    """Streams to pick from: the local source and any remote ones."""

    def __init__(self, state: MonitorState, **kwargs) -> None:
        super().__init__(**kwargs)
        self.state = state
        self._shown: list[tuple[str, bool, bool]] = []
        self._syncing = asyncio.Lock()

    async def sync(self) -> None:
        # One rebuild at a time: redraws overlap (the tick, a key, a resume), and a clear() awaited in one
        # while another extend()s left duplicated items, or items whose label was removed mid-mount.
        async with self._syncing:
            shown = [(name, view.active, view.remote) for name, view in self.state.streams.items()]
            if shown != self._shown:
                old, self._shown = self._shown, shown
                if [n for n, _, _ in shown[:len(old)]] == [n for n, _, _ in old] and len(self.children) == len(old):
                    # New streams came at the end (the usual case): relabel what changed, add the rest; a
                    # rebuild of hundreds of items on every new stream took seconds.
                    for item, before, now in zip(self.children, old, shown):
                        if before != now:
                            item.query_one(Label).update(_label(*now))
                    await self.extend(ListItem(Label(_label(*row)), name=row[0]) for row in shown[len(old):])
                else:
                    await self.clear()
                    await self.extend(ListItem(Label(_label(*row)), name=row[0]) for row in shown)
            names = [name for name, _, _ in shown]
            if self.state.selected in names and self.index != names.index(self.state.selected):
                self.index = names.index(self.state.selected)


def _label(name: str, active: bool, remote: bool) -> Text:
    # Names come from clients: a Text is never parsed as markup, and printable() escapes controls.
    return render.stream_name(name, remote, not active)


HELP_TEXT = """\
[b]ser-live[/b] — live speech emotion monitor

[b]q[/b]  quit
[b]p[/b]  pause / resume the display (events are held, then shown on resume)
[b]r[/b]  reset the selected stream's rolling display state
[b]s[/b]  save the segment log as CSV in the working directory
[b]n[/b]  switch to the next stream (or pick one in the list)
[b]?[/b]  this help

The big label is the latest prediction: [b]bold[/b] when final, dim while interim.
The timeline covers up to the last two minutes: a block per segment in its
final label's colour, ▒ while a segment is open, ─ for silence.
[b yellow]⇄[/] marks a remote stream: its audio and its name come from a WebSocket
client (a name can copy a local one letter for letter, but not the mark)."""


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,question_mark,q", "dismiss", "Close")]

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help"):
            yield Static(HELP_TEXT)

    def action_dismiss(self) -> None:
        self.dismiss()
