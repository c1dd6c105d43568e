"""Screens as SVG snapshots (pytest-textual-snapshot): a layout change shows up as a visible diff.

Update after an intended change with ``pytest tests/test_tui_snapshots.py --snapshot-update`` and look at
the report pytest-textual-snapshot writes before committing the new SVGs.
"""

from __future__ import annotations

import dataclasses

from serlive.stream import events as ev
from serlive.tui.app import MonitorApp
from serlive.tui.source import ReplaySource
from serlive.tui.state import FeedStatus

from .test_tui_state import pred, recorded


async def _drawn(pilot) -> None:
    await pilot.app.workers.wait_for_complete()
    await pilot.app.redraw()
    await pilot.pause()


def test_demo_finished(snap_compare):
    """The recorded demo after its last segment: four log rows, sad final, trail of four points."""
    assert snap_compare(MonitorApp(ReplaySource(recorded())), terminal_size=(110, 32), run_before=_drawn)


def test_second_stream_selected(snap_compare):
    """``n`` switches to the remote stream, which has ended."""
    app = MonitorApp(ReplaySource(recorded()))
    assert snap_compare(app, press=["n"], terminal_size=(110, 32), run_before=_drawn)


def test_small_terminal_keeps_essentials(snap_compare):
    """50x16: only the label, the bars and the input meter."""
    assert snap_compare(MonitorApp(ReplaySource(recorded())), terminal_size=(50, 16), run_before=_drawn)


def test_interim_without_dimensional_output(snap_compare):
    """A model with no valence/arousal head, mid-segment: dim interim label, "no dimensional output"."""
    hello = dataclasses.replace(recorded()[0], dimensional=False)
    events = [hello, ev.Level("local", 8000, -21.5, True), ev.SegmentStart("local", 0, 0, 4800),
              pred(0, 0, 1.2, "angry", False, "local")]
    assert snap_compare(MonitorApp(ReplaySource(events)), terminal_size=(110, 32), run_before=_drawn)


def test_help(snap_compare):
    assert snap_compare(MonitorApp(ReplaySource(recorded())), press=["question_mark"], terminal_size=(110, 32),
                        run_before=_drawn)


def test_remote_lookalike_and_dropped_messages(snap_compare):
    """A remote ``ѕpeech.wav`` (Cyrillic ``ѕ``) beside the local ``speech.wav``: the remote one carries the
    yellow ⇄ in the list and the title; the engine panel counts two malformed feed messages."""
    hello = dataclasses.replace(recorded()[0], streams=("speech.wav",))
    lookalike = "\u0455peech.wav"
    events = [hello, FeedStatus(True, "connected to ws://127.0.0.1:8765"),
              ev.StreamStatus("speech.wav", "started", "speech.wav"),
              ev.StreamStatus(lookalike, "started", "", None, remote=True),
              ev.SegmentStart(lookalike, 0, 0, 4800), pred(0, 0, 2.0, "angry", True, lookalike),
              FeedStatus(True, "connected to ws://127.0.0.1:8765", dropped=2,
                         problem="prediction.confidence is not a number")]
    assert snap_compare(MonitorApp(ReplaySource(events, hold=True)), press=["n"], terminal_size=(110, 32),
                        run_before=_settled)


async def _settled(pilot) -> None:
    """For a source that holds: wait for its events to be folded in, then draw."""
    while pilot.app.state.feed.dropped != 2:
        await pilot.pause(0.01)
    await pilot.app.redraw()
    await pilot.pause()
