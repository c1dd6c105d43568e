"""The dashboard's audio against ``ser-live --input FILE``: one conversion for every path (issue 29). The page
sends a dropped file at the file's own rate and channels, as Float32 (f32le), and its microphone at the
AudioContext's rate, and the engine converts both by the function ``--input`` uses; so a file dropped on the
page must give exactly the segments (start and end sample, label) that ``ser-live --input FILE --fast``
gives. Real RAVDESS speech, headless Debian Chromium through Playwright, real ``ser-live`` processes."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

from tests.test_dashboard import EngineProcess, reference_finals
from tests.test_dashboard_browser import ARTIFACTS, CHROMIUM, drop_file
from tests.test_dashboard_browser import audio_files, browser, models, page  # noqa: F401 - the shared fixtures

pytestmark = [
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium "
                                                      "(apt-get install chromium; .ci/setup does)"),
    pytest.mark.slow,
]


def _at(rate_hz: int, speech: np.ndarray) -> np.ndarray:
    return soxr.resample(speech, 16_000, rate_hz).astype(np.float32)


RAVDESS = Path(__file__).parent / "data" / "ravdess"
UTTERANCES = ["03-01-01-01-01-01-01.flac", "03-01-01-01-01-01-02.flac", "03-01-01-01-01-01-03.flac"]


def natural_speech() -> np.ndarray:
    """Three RAVDESS recordings back to back, their own room noise between the words, plus noise at -60 dBFS:
    VAD edges that one int16 step can move. (The page before this one, which resampled to 16 kHz itself and
    rounded x*32767, moved the second utterance's start by 480 samples on the 44.1 kHz file; on digital
    silence between the words it gave the same segments.)"""
    speech = np.concatenate([sf.read(RAVDESS / name, dtype="float32")[0] for name in UTTERANCES])
    return (speech + np.random.default_rng(1).normal(0, 1e-3, len(speech))).astype(np.float32)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Three RAVDESS utterances (:func:`natural_speech`), written as a 44.1 kHz mono WAV, a 48 kHz stereo FLAC (the two
    channels differ: the second is quieter and 0.3 s late), a 22.05 kHz four-channel WAV (averaged in the
    page, as the engine averages two) and a 96 kHz WAV (above what start_stream takes: decoded at 48 kHz)."""
    folder = tmp_path_factory.mktemp("dropped")
    speech = natural_speech()
    late = np.roll(speech, int(0.3 * 16_000))
    paths = {name: folder / name for name in ("talk44.wav", "talk48.flac", "quad22.wav", "talk96.wav",
                                              "talk32-24bit.wav", "talk16-8bit.wav", "talk44.mp3")}
    sf.write(paths["talk44.wav"], _at(44_100, speech), 44_100, subtype="PCM_16")
    sf.write(paths["talk48.flac"], np.stack([_at(48_000, speech), 0.6 * _at(48_000, late)], 1), 48_000,
             subtype="PCM_16")
    quad = _at(22_050, speech)
    sf.write(paths["quad22.wav"], np.stack([quad, 0.5 * quad, -0.7 * quad, np.roll(quad, 999)], 1), 22_050,
             subtype="PCM_16")
    sf.write(paths["talk96.wav"], _at(96_000, speech), 96_000, subtype="PCM_16")
    sf.write(paths["talk32-24bit.wav"], _at(32_000, speech), 32_000, subtype="PCM_24")
    sf.write(paths["talk16-8bit.wav"], speech, 16_000, subtype="PCM_U8")
    sf.write(paths["talk44.mp3"], _at(44_100, speech), 44_100, format="MP3")
    return paths


@pytest.fixture(scope="module")
def engine(models):
    with EngineProcess(models[1], "--input", "none") as engine:
        yield engine


def send_file(page, path: Path, how: str) -> list[dict]:
    """The file dropped on the page (or chosen with its file input); the finals the page shows for it."""
    if how == "drop":
        drop_file(page, path)
    else:
        page.set_input_files("#file", str(path))
    page.locator("#send-status", has_text=f"{path.name}: analysed").wait_for()
    page.screenshot(path=ARTIFACTS / f"dashboard-audio-{path.stem}.png")
    return [{"samples": s, "label": label} for s, label in page.eval_on_selector_all(
        "#track .seg.final", "els => els.map(e => [e.dataset.samples, e.dataset.label])")]


def declared_format(sent: list) -> dict:
    """The format of the one ``start_stream`` among the page's sent WebSocket frames."""
    starts = [json.loads(m) for m in sent if isinstance(m, str) and '"start_stream"' in m]
    assert len(starts) == 1, starts
    return starts[0]["format"]


def as_shown(reference: list[dict]) -> list[dict]:
    return [{"samples": f"{e['start_sample']}-{e['end_sample']}", "label": e["label"]} for e in reference]


@pytest.mark.parametrize(("name", "how", "declared"), [
    ("talk44.wav", "input", {"sample_rate_hz": 44_100, "encoding": "f32le", "channels": 1}),
    ("talk48.flac", "drop", {"sample_rate_hz": 48_000, "encoding": "f32le", "channels": 2}),
    ("quad22.wav", "drop", {"sample_rate_hz": 22_050, "encoding": "f32le", "channels": 1}),  # averaged in the page
    ("talk32-24bit.wav", "drop", {"sample_rate_hz": 32_000, "encoding": "f32le", "channels": 1}),
    ("talk16-8bit.wav", "drop", {"sample_rate_hz": 16_000, "encoding": "f32le", "channels": 1}),
])
def test_a_dropped_file_gives_the_segments_of_input_file(page, engine, models, files, name, how, declared):
    reference = reference_finals(models[1], files[name])
    assert len(reference) == 3, reference  # one per utterance: the comparison below means something
    page.goto(engine.url)
    page.locator("#conn.conn-up").wait_for()
    seen = []
    page.on("websocket", lambda ws: ws.on("framesent", lambda payload: seen.append(payload)))
    shown = send_file(page, files[name], how)
    assert shown == as_shown(reference)
    assert declared_format(seen) == declared
    binary = [len(m) for m in seen if isinstance(m, bytes)]
    rate, channels = declared["sample_rate_hz"], declared["channels"]
    assert binary and max(binary) == rate * channels * 4 < 1 << 20  # a second a message, under 1 MiB
    read, _ = sf.read(files[name], dtype="float32", always_2d=True)  # what --input reads (libsndfile)
    expected = read if read.shape[1] <= 2 else read.mean(axis=1)  # the engine's downmix (chunks.downmix)
    sent = np.frombuffer(b"".join(m for m in seen if isinstance(m, bytes)), "<f4")
    np.testing.assert_array_equal(sent, expected.reshape(-1))  # interleaved, sample for sample
    assert not page.errors


@pytest.mark.parametrize(("name", "declared_hz"), [("talk96.wav", 48_000), ("talk44.mp3", 44_100)])
def test_close_to_input_where_equal_is_out_of_reach(page, engine, models, files, name, declared_hz):
    """96 kHz is beyond start_stream's range: the browser resamples to 48 kHz and the engine from there. An MP3
    is sent at its own rate, but the browser's decoder is not libsndfile's (mpg123). The bounds may move by a
    VAD frame or two from --input's, never more."""
    reference = reference_finals(models[1], files[name])
    page.goto(engine.url)
    page.locator("#conn.conn-up").wait_for()
    seen = []
    page.on("websocket", lambda ws: ws.on("framesent", lambda payload: seen.append(payload)))
    shown = send_file(page, files[name], "drop")
    assert declared_format(seen) == {"sample_rate_hz": declared_hz, "encoding": "f32le", "channels": 1}
    assert len(shown) == len(reference)
    for got, ref in zip(shown, reference):
        start, end = map(int, got["samples"].split("-"))
        assert abs(start - ref["start_sample"]) <= 960 and abs(end - ref["end_sample"]) <= 960, (got, ref)


HEADER_JS = """async (b64) => { const bin = atob(b64); const bytes = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
  return window.SerAudio.headerInfo(bytes.buffer); }"""


def test_header_rate_and_depth(page, engine, tmp_path):
    """The page reads the rate (and integer depth) the file declares, as libsndfile does."""
    page.goto(engine.url)
    cases = {"a.wav": (11_025, "PCM_16", 16), "b.wav": (32_000, "PCM_24", 24), "c.wav": (44_100, "FLOAT", 0),
             "d.flac": (48_000, "PCM_16", 16), "e.flac": (8_000, "PCM_24", 24), "f.ogg": (22_050, "VORBIS", 0),
             "g.ogg": (48_000, "OPUS", 0), "h.mp3": (44_100, "MPEG_LAYER_III", 0),
             "i.mp3": (22_050, "MPEG_LAYER_III", 0), "j.mp3": (11_025, "MPEG_LAYER_III", 0)}
    for name, (rate, subtype, bits) in cases.items():
        path = tmp_path / name
        sf.write(path, np.zeros((rate // 10, 2), np.float32), rate, subtype=subtype)
        got = page.evaluate(HEADER_JS, base64.b64encode(path.read_bytes()).decode())
        assert got == {"rate": rate, "bits": bits}, name
    assert page.evaluate(HEADER_JS, base64.b64encode(b"not audio at all").decode()) is None


PASS_JS = """async ([rate, samples]) => {
  const ctx = new OfflineAudioContext(1, samples.length + rate / 10, rate);
  await ctx.audioWorklet.addModule(window.SerAudio.withToken('worklet.js'));
  const node = new AudioWorkletNode(ctx, 'pcm-f32', {numberOfInputs: 1, numberOfOutputs: 1});
  const chunks = [];
  node.port.onmessage = (e) => chunks.push(Array.from(new Float32Array(e.data.samples)));
  const buffer = ctx.createBuffer(1, samples.length, rate);
  buffer.copyToChannel(Float32Array.from(samples), 0);
  const src = ctx.createBufferSource();
  src.buffer = buffer;
  src.connect(node).connect(ctx.destination);
  src.start();
  await ctx.startRendering();
  await new Promise((r) => setTimeout(r, 300));
  return chunks;
}"""


@pytest.mark.parametrize("rate_hz", [44_100, 48_000])
def test_worklet_posts_the_microphones_samples_unchanged(page, engine, rate_hz):
    """The microphone's worklet neither resamples nor rounds: its 100 ms Float32 chunks are the samples it got."""
    page.goto(engine.url)
    audio, _ = sf.read(RAVDESS / "03-01-05-01-01-01-01.flac", dtype="float32")
    samples = _at(rate_hz, audio[:16_000])
    chunks = page.evaluate(PASS_JS, [rate_hz, samples.tolist()])
    assert {len(c) for c in chunks[:-1]} == {rate_hz // 10}
    out = np.array([x for c in chunks for x in c], np.float32)
    assert len(out) >= len(samples)
    np.testing.assert_array_equal(out[:len(samples)], samples)


def test_a_file_that_is_not_audio_is_one_sentence_and_sends_nothing(page, engine, tmp_path):
    notes = tmp_path / "notes.wav"
    notes.write_bytes(b"RIFF\x04\x00\x00\x00WAVEthis is not audio")
    page.goto(engine.url)
    page.locator("#conn.conn-up").wait_for()
    seen = []
    page.on("websocket", lambda ws: ws.on("framesent", lambda payload: seen.append(payload)))
    drop_file(page, notes)
    page.locator("#send-error", has_text="notes.wav: ").wait_for()
    assert page.inner_text("#send-error") == "notes.wav: not audio this browser can decode"
    assert not [m for m in seen if isinstance(m, bytes) or "start_stream" in m]
    assert not page.errors


HIGH_RATE_DEVICE_JS = """(() => {  // an output device at 96 kHz: a context made without options runs at 96 kHz
  const Real = window.AudioContext;
  window.AudioContext = class extends Real { constructor(options) { super(options || {sampleRate: 96000}); } };
})();"""


def test_a_microphone_context_above_48_khz_is_reopened_at_48_khz(page, engine):
    page.add_init_script(HIGH_RATE_DEVICE_JS)
    page.goto(engine.url)
    page.locator("#conn.conn-up").wait_for()
    assert page.evaluate("new AudioContext().sampleRate") == 96_000
    seen = []
    page.on("websocket", lambda ws: ws.on("framesent", lambda payload: seen.append(payload)))
    page.click("#mic")
    page.locator("#send-status", has_text="sending the microphone (48000 Hz, f32le, mono)").wait_for()
    assert declared_format(seen) == {"sample_rate_hz": 48_000, "encoding": "f32le", "channels": 1}
    page.locator("#track .seg.final").first.wait_for()  # the fake microphone's speech arrives as segments
    page.click("#mic")
    page.locator("#streams li.ended").wait_for()
    assert {len(m) for m in seen if isinstance(m, bytes)} >= {4800 * 4}
    assert not page.errors
