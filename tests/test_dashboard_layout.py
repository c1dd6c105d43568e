"""The dashboard and the report as a person sees them, in headless Chromium at 1280 and 420 px, against a
real ``ser-live`` with the bundled model (its long technical description is what the header must tame):
the header's height, the model's details on demand, the remote-stream mark, the empty label card, the
stream dots, the OOD score in words, the refusal message's code and its clearing, the report's width.
Screenshots go to tests/artifacts/ (ignored by git) to be looked at."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from websockets.sync.client import connect

from serlive.model import ModelConfig, SERModel, bundled_model_dir, save_model_dir
from tests.test_dashboard import EngineProcess, run_jsonl
from tests.test_dashboard_browser import ARTIFACTS, CHROMIUM
from tests.test_dashboard_browser import audio_files, browser, page  # noqa: F401 - the shared fixtures

pytestmark = [
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium "
                                                      "(apt-get install chromium; .ci/setup does)"),
    pytest.mark.slow,
]
SPEECH = Path(__file__).parent / "data" / "ravdess" / "03-01-05-01-01-01-01.flac"
LOCAL = "speech.wav"
LOOKALIKE = "\u0455peech.wav"  # CYRILLIC SMALL LETTER DZE, drawn like a Latin s

HEADER_MAX_PX = {1280: 50, 420: 100}
"""One line at 1280 px, three at 420 (the name with the model's short name and the connection; the health
figures, which wrap once). Before: 115 px (the description took two lines) and 214 px (five)."""


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    """The bundled model reading a local ``speech.wav`` (ten minutes of silence, in real time)."""
    local = tmp_path_factory.mktemp("layout") / LOCAL
    sf.write(local, np.zeros(600 * 16_000, np.int16), 16_000, format="FLAC")
    with EngineProcess(bundled_model_dir(), "--input", str(local)) as engine:
        yield engine


class RemoteSender:
    """A WebSocket client with a stream named ``ѕpeech.wav`` open, reading everything (as a client must)
    until closed; ``speak()`` sends one RAVDESS utterance and a second of silence."""

    def __init__(self, port: int) -> None:
        self.url, self.accepted, self.ws = f"ws://127.0.0.1:{port}/", threading.Event(), None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self.accepted.wait(30)

    def _run(self) -> None:
        with connect(self.url) as self.ws:
            self.ws.send(json.dumps({"type": "start_stream", "stream": LOOKALIKE}))
            try:
                for message in self.ws:
                    if json.loads(message)["type"] == "accepted":
                        self.accepted.set()
            except Exception:  # closed at the end of the module
                pass

    def speak(self) -> None:
        audio, _ = sf.read(SPEECH, dtype="int16")
        pcm = np.concatenate([audio, np.zeros(16_000, np.int16)]).astype("<i2").tobytes()
        for i in range(0, len(pcm), 3200):
            self.ws.send(pcm[i:i + 3200])

    def close(self) -> None:
        self.ws.close()
        self.thread.join(10)


@pytest.fixture(scope="module")
def remote(engine):
    sender = RemoteSender(engine.port)
    yield sender
    sender.close()


def header_px(page) -> float:
    return page.evaluate("document.querySelector('header').getBoundingClientRect().height")


def open_page(page, url: str, width: int = 1280) -> None:
    page.set_viewport_size({"width": width, "height": 900 if width < 800 else 800})
    page.goto(url)
    page.locator("#conn.conn-up").wait_for()


def test_header_shows_a_short_model_name_with_the_details_on_demand(page, engine):
    open_page(page, engine.url)
    full = page.evaluate("serliveApp.hello.model")
    assert len(full) > 150 and full.startswith("GE2E voice encoder (")
    assert page.inner_text("#model") == "GE2E voice encoder"
    assert not page.locator("#model-full").is_visible()
    assert header_px(page) <= HEADER_MAX_PX[1280], header_px(page)
    page.screenshot(path=ARTIFACTS / "layout-header-1280.png")
    page.click("#model-box summary")  # details on demand
    assert page.locator("#model-full").is_visible()
    assert page.inner_text("#model-full") == f"{full} · protocol 2"
    page.screenshot(path=ARTIFACTS / "layout-header-details-1280.png")
    page.click("#model-box summary")
    page.set_viewport_size({"width": 420, "height": 900})
    assert header_px(page) <= HEADER_MAX_PX[420], header_px(page)
    assert page.evaluate("document.documentElement.scrollWidth") <= 420
    page.screenshot(path=ARTIFACTS / "layout-header-420.png")
    assert not page.errors


def stream_rows(page) -> list[tuple[str, str, str]]:
    """(name, tags, dot class) per stream in the list."""
    return [tuple(row) for row in page.eval_on_selector_all("#streams li", """els => els.map(li => [
        li.querySelector('.name').textContent, li.querySelector('.tags').textContent,
        li.querySelector('.dot').className])""")]


def test_a_remote_stream_named_like_the_local_one_is_marked(page, engine, remote):
    open_page(page, engine.url)  # joins after the remote stream opened: hello.remote_streams says which
    page.wait_for_function("document.querySelectorAll('#streams li').length === 2")
    rows = stream_rows(page)
    assert [(name, tags) for name, tags, _ in rows] == [(LOCAL, ""), (LOOKALIKE, "⇄ remote")]
    assert "WebSocket client" in page.get_attribute("#streams .tag.remote", "title")
    page.click("#streams li:nth-child(2)")
    page.wait_for_function("name => document.getElementById('sel-name').textContent === name", arg=LOOKALIKE)
    assert page.inner_text("#sel-remote") == "⇄ remote"
    page.click("#streams li:nth-child(1)")
    page.wait_for_function("name => document.getElementById('sel-name').textContent === name", arg=LOCAL)
    assert page.inner_text("#sel-remote") == ""
    page.screenshot(path=ARTIFACTS / "layout-remote-1280.png")
    assert not page.errors


def test_empty_label_card_says_so_in_words(page, engine):
    open_page(page, engine.url)
    page.click("#streams li:first-child")  # the local file is silent: no prediction
    page.wait_for_function("name => document.getElementById('sel-name').textContent === name", arg=LOCAL)
    label = page.locator("#label")
    assert label.inner_text() == "No prediction yet"
    size_px = float(label.evaluate("e => getComputedStyle(e).fontSize")[:-2])
    assert size_px <= 18 and label.bounding_box()["height"] <= 50  # not a 2.4rem bold dash
    page.screenshot(path=ARTIFACTS / "layout-empty-card-1280.png")
    assert not page.errors


def test_neutral_dot_and_ended_dot_are_distinct(page, engine):
    open_page(page, engine.url)
    final = {"type": "prediction", "segment": 0, "final": True, "start_s": 0.5, "end_s": 1.5, "label": "neutral",
             "probs": {"angry": 0.1, "happy": 0.1, "neutral": 0.7, "sad": 0.1}, "confidence": 0.7}
    for name in ("calm.wav", "old.wav"):
        page.evaluate("m => serliveApp.handle(m)", {"type": "stream", "stream": name, "state": "started"})
        page.evaluate("m => serliveApp.handle(m)", {**final, "stream": name})
    page.evaluate("m => serliveApp.handle(m)", {"type": "stream", "stream": "old.wav", "state": "ended",
                                                "reason": "end_of_input"})
    page.evaluate("m => serliveApp.handle(m)", {"type": "stream", "stream": "quiet.wav", "state": "started"})
    page.wait_for_function("document.querySelectorAll('#streams li.ended').length === 1")
    # One evaluation reads all: the list is redrawn with every event, so an element found earlier may be gone.
    neutral, ended, waiting = page.evaluate("""() => [...document.querySelectorAll('#streams li')]
        .filter((li) => ['calm.wav', 'old.wav', 'quiet.wav'].includes(li.querySelector('.name').textContent))
        .map((li) => { const s = getComputedStyle(li.querySelector('.dot'));
                       return [s.backgroundColor, s.borderTopStyle, s.borderTopWidth]; })""")
    assert neutral[0] == "rgb(141, 153, 174)" and neutral[2] == "0px"  # filled in neutral's grey
    assert ended[0] == "rgba(0, 0, 0, 0)" and ended[1] == "solid" and ended[2] == "2px"  # an empty ring
    assert waiting[0] == "rgba(0, 0, 0, 0)" and waiting[1] == "dashed"  # no prediction yet: not a pale neutral
    assert page.eval_on_selector("#streams li.ended .tags", "e => e.textContent") == "ended"
    page.screenshot(path=ARTIFACTS / "layout-dots-1280.png")
    assert not page.errors


def test_a_short_name_with_two_tags_stays_on_one_line(page, engine):
    """The list is 250 px wide at 1280: a name with "⇄ remote" and "ended" beside it was broken mid-word
    ("ѕpeec" / "h.wav"), the very name a person must read letter by letter; the tags wrap under it instead."""
    open_page(page, engine.url)
    for state in ("started", "ended"):
        page.evaluate("m => serliveApp.handle(m)", {"type": "stream", "stream": LOOKALIKE, "state": state,
                                                    "remote": True, "reason": "client_ended" if state == "ended" else None})
    page.wait_for_function("document.querySelectorAll('#streams li.ended').length === 1")
    lines = page.evaluate("""() => { const range = document.createRange();
        range.selectNodeContents(document.querySelector('#streams li.ended .name'));
        return range.getClientRects().length; }""")
    assert page.eval_on_selector("#streams li.ended .tags", "e => e.textContent") == "⇄ remoteended"
    assert lines == 1
    page.locator("#streams").screenshot(path=ARTIFACTS / "layout-stream-tags-1280.png")
    assert not page.errors


def test_ood_score_is_said_in_words(page, engine, remote):
    open_page(page, engine.url)
    page.click("#streams li:nth-child(2)")
    remote.speak()
    page.locator("#log tbody tr").first.wait_for()  # the bundled model's real final for the speech
    ood = page.evaluate("serliveApp.streams.get(serliveApp.selected).last.ood")
    assert isinstance(ood, float) and 0 <= ood <= 1
    words = ("unlike the speech it was trained on" if ood >= 0.99 else
             f"less typical than {round(ood * 100)}\u00a0% of its training speech")
    assert page.inner_text("#confidence abbr.ood") == words
    assert f"score {ood:.2f}" in page.get_attribute("#confidence abbr.ood", "title")
    note = page.locator("#log tbody tr td.note abbr.ood").first
    assert note.inner_text() == f"OOD {ood:.2f}" and "Out-of-distribution" in note.get_attribute("title")
    assert "how unlike the speech the model was trained on" in page.inner_text("#ood-legend")
    page.screenshot(path=ARTIFACTS / "layout-ood-1280.png")
    assert not page.errors


@pytest.fixture(scope="module")
def random_model(tmp_path_factory):
    torch.manual_seed(0)
    return save_model_dir(tmp_path_factory.mktemp("model"), SERModel(ModelConfig(dimensional=False)).eval())


@pytest.mark.parametrize("width", [1280, 420])
def test_refusal_keeps_options_whole_and_goes_with_the_engine(page, random_model, width):
    with EngineProcess(random_model, "--input", "none", accept_audio=False) as refusing:
        open_page(page, refusing.url, width)
        page.click("#mic")
        error = page.locator("#send-error")
        error.wait_for()
        assert "does not accept audio from the page" in error.inner_text()
        codes = error.locator("code")
        assert codes.all_inner_texts() == ["--accept-audio", "?token="]
        for i in range(codes.count()):  # one box each: never broken across lines
            assert codes.nth(i).evaluate("e => e.getClientRects().length") == 1
        assert page.evaluate("document.documentElement.scrollWidth") <= width
        page.screenshot(path=ARTIFACTS / f"layout-refusal-{width}.png", full_page=True)
    page.locator("#conn", has_text="disconnected").wait_for()
    assert error.is_hidden()  # the engine that refused has gone: its refusal no longer holds
    assert not page.errors


def test_report_fits_a_narrow_window(browser, random_model, tmp_path):
    report = tmp_path / "talk.html"
    run_jsonl(random_model, "--input", "demo", "--fast", "--report", str(report))
    context = browser.new_context(viewport={"width": 420, "height": 900})
    page = context.new_page()
    try:
        page.goto(report.as_uri())
        assert page.evaluate("document.documentElement.scrollWidth") <= 420
        page.screenshot(path=ARTIFACTS / "layout-report-420.png", full_page=True)
        page.set_viewport_size({"width": 1280, "height": 900})
        assert page.evaluate("document.documentElement.scrollWidth") <= 1280
        assert page.locator("table").count() == 1 and page.locator(".table-wrap table").count() == 1
    finally:
        context.close()
