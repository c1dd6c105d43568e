"""The dashboard in a real browser: Debian's Chromium, headless, driven by Playwright, against real
``ser-live`` processes. Chromium's fake microphone plays real RAVDESS speech with known pauses, so the
page, its AudioWorklet, the socket, the engine's conversion and the feed back to the page all run.
(tests/test_dashboard_audio.py: dropped files give exactly ``--input``'s segments; the worklet's samples.)

References: the same audio run through ``ser-live --input FILE --fast`` gives the segments the page must
show. Screenshots go to tests/artifacts/ (ignored by git) to be looked at.
"""

from __future__ import annotations

import base64
import http.server
import json
import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr
import torch

from serlive.model import ModelConfig, SERModel, save_model_dir
from tests.test_dashboard import EngineProcess, reference_finals

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = [
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium "
                                                      "(apt-get install chromium; .ci/setup does)"),
    pytest.mark.slow,
]
ARTIFACTS = Path(__file__).parent / "artifacts"
RAVDESS = Path(__file__).parent / "data" / "ravdess"
UTTERANCES = ["03-01-01-01-01-01-01.flac", "03-01-05-01-01-01-02.flac", "03-01-03-01-01-01-01.flac"]
LEAD_S, GAP_S, TAIL_S = 2.0, 1.5, 4.0
"""The microphone file: silence before (longer than the page takes to start sending), between and after
(long enough to stop the microphone before Chromium loops the file)."""

CAPTURE_TOLERANCE_S = 0.25
"""What the page sent vs the file Chromium's fake microphone plays: the capture path is the browser's (its own
resampler, and on a starved machine a glitch that drops or repeats a buffer), so an island may move by a few
VAD frames against the file. The engine's part is checked exactly against the samples the page sent."""
START_OFFSET_RANGE_S = (-1.5, 0.05)
"""The page's stream starts when its worklet first runs, after the fake microphone began playing: its
times are earlier than the file's by the start-up delay (measured 0.18 s here), never later."""
TIMEOUT_MS = 90_000


def speech_with_pauses() -> np.ndarray:
    silence = lambda s: np.zeros(int(s * 16_000), np.float32)  # noqa: E731
    parts = [silence(LEAD_S)]
    for name in UTTERANCES:
        audio, sr = sf.read(RAVDESS / name, dtype="float32")
        assert sr == 16_000
        parts += [audio, silence(GAP_S)]
    parts[-1] = silence(TAIL_S)
    return np.concatenate(parts)


@pytest.fixture(scope="module")
def audio_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("browser-audio")
    speech = speech_with_pauses()
    mic = folder / "mic.wav"
    sf.write(mic, speech, 16_000, subtype="PCM_16")
    stereo = soxr.resample(speech, 16_000, 44_100)
    dropped = folder / "talk.wav"  # 44.1 kHz stereo: sent as it is, the engine resamples and down-mixes
    sf.write(dropped, np.stack([stereo, 0.8 * stereo], 1), 44_100, subtype="PCM_16")
    return mic, dropped


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    torch.manual_seed(0)
    dims = save_model_dir(tmp_path_factory.mktemp("model-dims"), SERModel(ModelConfig()).eval())
    plain = save_model_dir(tmp_path_factory.mktemp("model-plain"), SERModel(ModelConfig(dimensional=False)).eval())
    return dims, plain


@pytest.fixture(scope="module")
def browser(audio_files):
    from playwright.sync_api import sync_playwright

    args = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--no-first-run", "--disable-sync", "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-audio-capture={audio_files[0]}"]
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=args)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def dims_engine(models):
    """A ser-live with a valence/arousal model, no local input, remote audio accepted (shared: starting one
    costs seconds)."""
    with EngineProcess(models[0], "--input", "none") as engine:
        yield engine


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.errors = []
    page.on("pageerror", lambda exc: page.errors.append(str(exc)))
    page.set_default_timeout(TIMEOUT_MS)
    yield page
    context.close()


def seg_bounds(page) -> list[tuple[float, float, str]]:
    return [(float(a), float(b), label) for a, b, label in page.eval_on_selector_all(
        "#track .seg.final", "els => els.map(e => [e.dataset.startS, e.dataset.endS, e.dataset.label])")]


def test_microphone_end_to_end_one_final_per_island(page, models, audio_files, dims_engine, tmp_path):
    mic_wav = audio_files[0]
    reference = reference_finals(models[0], mic_wav)
    assert len(reference) == len(UTTERANCES)
    page.goto(dims_engine.url)
    page.locator("#conn.conn-up").wait_for()
    page.locator("#circumplex").wait_for()
    page.locator("#no-dims").wait_for(state="hidden")
    assert page.locator("#no-streams").is_visible()  # an open page sends nothing by itself
    sent = []
    page.on("websocket", lambda ws: ws.on("framesent", lambda payload: sent.append(payload)))
    page.click("#mic")
    page.locator("#send-status", has_text="sending the microphone").wait_for()
    context_hz = page.evaluate("serliveApp.mic.ctx.sampleRate")  # the page does not resample: it says so
    declared = {"sample_rate_hz": context_hz, "encoding": "f32le", "channels": 1}
    assert [json.loads(m)["format"] for m in sent if isinstance(m, str) and "start_stream" in m] == [declared]
    assert page.inner_text("#send-status") == f"sending the microphone ({context_hz} Hz, f32le, mono)"
    page.locator("#track .seg.final").nth(len(UTTERANCES) - 1).wait_for()
    chunks = {len(m) for m in sent if isinstance(m, bytes)}
    assert chunks == {context_hz // 10 * 4}, chunks  # 100 ms of Float32 a message
    page.screenshot(path=ARTIFACTS / "dashboard-microphone.png")
    page.click("#mic")  # stop: end_stream, the stream ends on the page
    page.locator("#streams li.ended").wait_for()
    shown = seg_bounds(page)
    page.screenshot(path=ARTIFACTS / "dashboard-microphone-stopped.png")
    assert page.locator("#streams li.selected .own").inner_text() == "this page"
    assert page.locator("#log tbody tr").count() == len(UTTERANCES)
    bars = page.locator("#bars .bar")
    assert bars.count() == 4
    assert page.locator("#label").inner_text().lower() == shown[-1][2]
    page.set_viewport_size({"width": 420, "height": 900})  # a narrow window: one column, no sideways scroll
    assert page.evaluate("document.documentElement.scrollWidth") <= 420
    page.screenshot(path=ARTIFACTS / "dashboard-narrow.png", full_page=True)
    assert len(shown) == len(reference), (shown, reference)  # one final per island of the file
    offset = shown[0][0] - reference[0]["start_s"]
    assert START_OFFSET_RANGE_S[0] <= offset <= START_OFFSET_RANGE_S[1], offset
    for (start, end, _), ref in zip(shown, reference):
        assert abs(start - offset - ref["start_s"]) <= CAPTURE_TOLERANCE_S, (start, end, ref)
        assert abs(end - offset - ref["end_s"]) <= CAPTURE_TOLERANCE_S, (start, end, ref)
    # the engine's part, exactly: the samples the page sent, as a file, give the segments the page shows
    captured = tmp_path / "captured.wav"
    sf.write(captured, np.frombuffer(b"".join(m for m in sent if isinstance(m, bytes)), "<f4"), context_hz,
             subtype="FLOAT")
    exact = reference_finals(models[0], captured)
    assert page.eval_on_selector_all("#track .seg.final", "els => els.map(e => [e.dataset.samples, e.dataset.label])") \
        == [[f"{e['start_sample']}-{e['end_sample']}", e["label"]] for e in exact]
    assert not page.errors


def drop_file(page, path: Path) -> None:
    """A real drop event on the drop zone carrying the file's bytes."""
    data = base64.b64encode(path.read_bytes()).decode()
    transfer = page.evaluate_handle(
        """([name, b64]) => { const bin = atob(b64); const bytes = new Uint8Array(bin.length);
           for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
           const dt = new DataTransfer(); dt.items.add(new File([bytes], name, {type: 'audio/wav'})); return dt; }""",
        [path.name, data])
    page.dispatch_event("#drop", "drop", {"dataTransfer": transfer})


def test_dropped_file_is_analysed_with_a_token_and_survives_a_restart(page, models, audio_files):
    dropped = audio_files[1]
    reference = reference_finals(models[1], dropped)
    with EngineProcess(models[1], "--input", "none", "--ws-token", "s3cret") as engine:
        page.goto(engine.url)  # the printed URL carries ?token=, which the page passes to its sockets
        page.locator("#conn.conn-up").wait_for()
        page.locator("#no-dims", has_text="This model has no valence/arousal.").wait_for()
        page.locator("#circumplex").wait_for(state="hidden")
        drop_file(page, dropped)
        page.locator("#send-status", has_text="talk.wav: analysed").wait_for()
        shown = page.eval_on_selector_all("#track .seg.final", "els => els.map(e => e.dataset.samples)")
        page.screenshot(path=ARTIFACTS / "dashboard-dropped-file.png")
        port = engine.port
        assert shown == [f"{e['start_sample']}-{e['end_sample']}" for e in reference]  # to the sample
    page.locator("#conn", has_text="disconnected — reconnecting").wait_for()
    page.screenshot(path=ARTIFACTS / "dashboard-disconnected.png")
    with EngineProcess(models[1], "--input", "none", port=port, accept_audio=False):  # no token, no audio now
        page.locator("#conn.conn-up").wait_for()
        assert page.locator("#track .seg.final").count() == len(reference)  # history kept across the restart
        page.click("#mic")  # the new engine's hello says accepts_audio: false
        page.locator("#send-error", has_text="start it with --accept-audio").wait_for()
        page.screenshot(path=ARTIFACTS / "dashboard-after-restart.png")
        assert page.locator("#mic").inner_text() == "Use my microphone"
        assert page.locator("#streams li").count() == 1  # nothing was sent: no new stream
    assert not page.errors


class _OtherOrigin(http.server.BaseHTTPRequestHandler):
    """A page on another port (another origin) whose script opens the engine's socket."""

    target = ""

    def do_GET(self):  # noqa: N802 - http.server's name
        body = (f"<script>const ws = new WebSocket({json.dumps(self.target)});"
                "ws.onopen = () => document.title = 'open'; ws.onclose = () => document.title = 'closed';"
                "</script>").encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_other_origin_and_missing_token_are_refused(page, models):
    with EngineProcess(models[1], "--input", "none", "--ws-token", "s3cret") as engine:
        bare = f"http://127.0.0.1:{engine.port}/"
        assert page.goto(bare).status == 401  # no token: not even the page
        assert page.goto(bare + "?token=wrong").status == 401
        _OtherOrigin.target = f"ws://127.0.0.1:{engine.port}/?token=s3cret"
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _OtherOrigin)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            page.goto(f"http://127.0.0.1:{server.server_address[1]}/")
            page.wait_for_function("document.title === 'closed' || document.title === 'open'")
            assert page.title() == "closed"  # right token, wrong origin: refused
        finally:
            server.shutdown()
        assert page.goto(bare + "?token=s3cret").status == 200
        page.locator("#conn.conn-up").wait_for()
        # protocol fields the lead adds later (issue 11): rendered when present
        page.evaluate("""serliveApp.handle({type: 'prediction', stream: 'probe', segment: 0, final: true, start_s: 0.5,
            end_s: 1.5, label: 'happy', probs: {angry: 0.2, happy: 0.3, neutral: 0.25, sad: 0.25}, confidence: 0.3,
            valence: null, arousal: null, uncertain: true, ood: 0.9})""")
        page.locator("#label.uncertain", has_text="uncertain").wait_for()
        confidence = page.inner_text("#confidence").replace("\u00a0", " ")
        assert "leaning happy" in confidence and "less typical than 90 % of its training speech" in confidence
        assert page.locator("#log tbody tr").inner_text().endswith("uncertain, OOD 0.90")
        assert page.locator("#track .seg.final.uncertain").count() == 1
        page.screenshot(path=ARTIFACTS / "dashboard-uncertain.png")
    assert engine.stderr_lines and not any("Traceback" in line for line in engine.stderr_lines)
