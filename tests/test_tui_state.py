"""The monitor's view state and drawing, without Textual: events in, what the screen should say out."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from serlive.stream import events as ev
from serlive.tui import render
from serlive.tui.state import CSV_COLUMNS, FeedStatus, MonitorState

RECORDED = Path(__file__).resolve().parents[1] / "tui" / "testdata" / "demo_events.jsonl"
LABELS = ("angry", "happy", "neutral", "sad")
SR = ev.SAMPLE_RATE_HZ


def recorded() -> list[ev.Event]:
    return [ev.from_dict(json.loads(line)) for line in RECORDED.read_text().splitlines()]


def folded(events) -> MonitorState:
    state = MonitorState()
    for event in events:
        state.apply(event)
    return state


def pred(segment: int, start_s: float, end_s: float, label: str, final: bool, stream: str = "mic", **kw):
    probs = {name: (0.7 if name == label else 0.1) for name in LABELS}
    return ev.PredictionEvent(stream, segment, int(start_s * SR), int(end_s * SR), final=final, label=label,
                              probs=probs, confidence=0.7, **kw)


def test_recorded_demo_folds_into_log_current_trail_and_health():
    state = folded(recorded())
    assert list(state.streams) == ["local", "remote-1"] and state.selected == "local"
    view = state.view
    assert [row.label for row in view.log] == ["angry", "happy", "neutral", "sad"]
    assert view.log[0].start_s == pytest.approx(0.60) and view.log[0].duration_s == pytest.approx(2.57)
    assert view.current.label == "sad" and view.current.final and view.current.confidence == pytest.approx(0.65)
    assert len(view.trail) == 4 and view.trail[-1] == (-0.5, -0.6)
    assert [(b.label, b.open) for b in view.blocks] == [(lab, False) for lab in LABELS]
    assert view.rolling.label == "sad" and view.level_db is not None
    assert state.stats.rtf == pytest.approx(0.081) and state.hello.model.startswith("sap")
    assert not state.streams["remote-1"].active and [r.label for r in state.streams["remote-1"].log] == [
        "happy", "sad"]


def test_interim_prediction_is_current_but_labels_nothing_until_final():
    state = folded([ev.SegmentStart("mic", 0, 0, 4800), pred(0, 0, 1.0, "happy", final=False)])
    view = state.view
    assert view.current.label == "happy" and not view.current.final
    assert view.blocks[0].open and view.blocks[0].label is None and not view.log
    state.apply(ev.SegmentEnd("mic", 0, 0, 2 * SR))
    state.apply(pred(0, 0, 2.0, "sad", final=True, valence=-0.4, arousal=-0.2, latency_ms=55.0))
    assert view.current.final and view.blocks[0].label == "sad" and not view.blocks[0].open
    assert view.log[-1].latency_ms == 55.0 and list(view.trail) == [(-0.4, -0.2)]


def test_dropped_segment_leaves_no_block():
    state = folded([ev.SegmentStart("mic", 0, 0, 4800), ev.SegmentEnd("mic", 0, 0, 3200, dropped=True)])
    assert not state.view.blocks


def test_reset_clears_rolling_display_but_keeps_level_and_tells_the_table():
    state = folded(recorded())
    version = state.view.log_version
    state.reset_selected()
    view = state.view
    assert view.current is None and not view.log and not view.trail and not view.blocks
    assert view.level_db is not None and view.log_version == version + 1
    assert state.streams["remote-1"].log, "reset touches only the selected stream"


def test_select_next_wraps_and_feed_status_is_kept():
    state = folded(recorded() + [FeedStatus(False, "feed lost — reconnecting in 1 s")])
    assert [state.select_next(), state.select_next()] == ["remote-1", "local"]
    assert not state.feed.connected and "reconnecting" in state.feed.message


def test_save_csv_round_trips(tmp_path):
    state = folded(recorded())
    path = tmp_path / "log.csv"
    assert state.save_csv(path) == 6
    rows = list(csv.DictReader(path.open()))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert [(r["stream"], r["label"]) for r in rows[:2]] == [("local", "angry"), ("local", "happy")]
    assert float(rows[0]["duration_s"]) == pytest.approx(2.57)
    assert {r["uncertain"] for r in rows} == {"False"}
    state.apply(ev.SegmentStart("mic", 0, 0, 4800))
    state.apply(pred(0, 0, 1.0, "sad", final=True, uncertain=True))
    assert state.save_csv(path) == 7
    last = list(csv.DictReader(path.open()))[-1]
    assert (last["stream"], last["label"], last["uncertain"]) == ("mic", "sad", "True")


def test_stats_survive_the_wire():
    stats = ev.Stats(rtf=0.1, latency_p50_ms=None, latency_p95_ms=80.0, queue_depth=1, dropped_audio_s=0.5,
                     device="cuda:0", clients=2, streams=3)
    assert ev.from_dict(json.loads(stats.to_json())) == stats


def test_big_text_rows_align_and_unknown_characters_still_draw():
    for word in ("angry", "neutral", "sad", "x_y"):
        rows = render.big_text(word)
        assert len(rows) == 3 and len({len(r) for r in rows}) == 1 and rows[0].strip()


def test_bars_show_every_class_with_its_probability():
    view = folded([pred(0, 0, 1, "neutral", final=True)]).view
    text = render.prob_bars(view.current, LABELS, 40).plain.splitlines()
    assert [line.split()[0] for line in text] == list(LABELS)
    assert text[2].endswith("70%") and text[0].endswith("10%") and all(len(line) == 40 for line in text)


def test_circumplex_says_when_there_is_no_dimensional_output():
    state = folded([pred(0, 0, 1, "sad", final=True)])
    assert render.circumplex(state.view, False, 25, 10).plain == "no dimensional output"
    state.apply(pred(1, 1, 2, "sad", final=True, valence=1.0, arousal=1.0))
    drawn = render.circumplex(state.view, True, 25, 10).plain.splitlines()
    assert drawn[0][-1] == "●" and drawn[-1].startswith("V +1.00 A +1.00")


def test_timeline_draws_segments_in_their_place_and_silence_between():
    state = folded([ev.SegmentStart("mic", 0, 0, 100), ev.SegmentEnd("mic", 0, 0, 15 * SR),
                    pred(0, 0, 15, "angry", final=True), ev.Level("mic", 30 * SR, -40.0, False)])
    line = render.timeline(state.view, LABELS, 30).plain
    assert line == "█" * 15 + "─" * 15
