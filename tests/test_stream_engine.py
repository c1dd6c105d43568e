"""The engine end to end on in-memory, stdin and fake-microphone sources with a tiny random model."""

from __future__ import annotations

import asyncio
import io
import threading

import numpy as np
import pytest
import torch

from serlive.model import ModelConfig, Predictor, SERModel
from serlive.stream.config import EngineConfig, InferenceConfig
from serlive.stream.engine import Engine
from serlive.stream.events import Error, Level, PredictionEvent, SegmentEnd, State, StreamStatus
from serlive.stream.mic import MicSource
from serlive.stream.sinks import ListSink
from serlive.stream.sources import ArraySource, SourceError, StdinSource
from tests.test_stream_segmenter import TOLERANCE_SAMPLES, islands

SR = 16_000
LAYOUT = [0.3, 0.8, 0.5, 0.6, 0.4]
"""Two speech islands in 2.6 s: short enough to pace in real time inside a test."""


@pytest.fixture(scope="module")
def predictor():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    return Predictor(SERModel(ModelConfig()).eval())


def run_engine(predictor, sources, config=EngineConfig(), until=None) -> tuple[Engine, ListSink, int]:
    engine, sink = Engine(predictor, config, sources), ListSink()
    engine.add_sink(sink)

    async def main():
        task = asyncio.create_task(engine.run())
        if until is not None:
            await engine.ready.wait()
            await until(engine, sink)
        return await asyncio.wait_for(task, 20)

    return engine, sink, asyncio.run(main())


def finals(sink: ListSink, stream: str | None = None) -> list[PredictionEvent]:
    return [e for e in sink.of(PredictionEvent) if e.final and (stream is None or e.stream == stream)]


def test_every_island_gets_exactly_one_final_in_order(predictor):
    audio, truth = islands(LAYOUT)
    _, sink, code = run_engine(predictor, [ArraySource("a", audio)])
    assert code == 0
    got = finals(sink)
    assert [e.segment for e in got] == [0, 1]
    for e, (start, end) in zip(got, truth):
        assert abs(e.start_sample - start) <= TOLERANCE_SAMPLES and abs(e.end_sample - end) <= TOLERANCE_SAMPLES
        assert set(e.probs) == set(predictor.labels) and e.label == max(e.probs, key=e.probs.get)
        assert e.latency_ms >= 0 and e.speech_frames > 0
    kinds = [type(e) for e in sink.events if not isinstance(e, Level)]
    assert kinds[0] is StreamStatus and sink.events[-1].type == "stats"
    ends = sink.of(StreamStatus)
    assert [s.state for s in ends] == ["started", "ended"]
    # The stream's end comes after its last final; a State follows every final.
    assert sink.events.index(ends[-1]) > sink.events.index(got[-1])
    assert [s.segments for s in sink.of(State)] == [1, 2]
    assert abs(len(sink.of(Level)) - len(audio) / SR * 10) <= 1


def test_fast_and_realtime_give_the_same_finals(predictor):
    audio, _ = islands(LAYOUT, seed=3)
    _, fast, _ = run_engine(predictor, [ArraySource("a", audio, realtime=False)])
    _, live, _ = run_engine(predictor, [ArraySource("a", audio, realtime=True)])
    a, b = finals(fast), finals(live)
    assert [(e.segment, e.start_sample, e.end_sample, e.label) for e in a] == \
           [(e.segment, e.start_sample, e.end_sample, e.label) for e in b]
    for x, y in zip(a, b):
        assert np.allclose(list(x.probs.values()), list(y.probs.values()), atol=1e-5)


def test_streams_are_batched_and_independent(predictor):
    audio, _ = islands(LAYOUT, seed=5)
    config = EngineConfig(inference=InferenceConfig(max_batch=8, max_wait_ms=50, interim_ms=0))
    engine, sink, _ = run_engine(predictor, [ArraySource("s", audio) for _ in range(6)], config)
    _, alone, _ = run_engine(predictor, [ArraySource("s", audio)], config)
    assert engine.worker.items > engine.worker.batches  # several streams shared forward passes
    names = sorted({e.stream for e in finals(sink)})
    assert names == ["s", "s#2", "s#3", "s#4", "s#5", "s#6"]
    ref = finals(alone)
    for name in names:
        got = finals(sink, name)
        assert [(e.start_sample, e.end_sample) for e in got] == [(e.start_sample, e.end_sample) for e in ref]
        for x, y in zip(got, ref):
            assert np.allclose(list(x.probs.values()), list(y.probs.values()), atol=1e-4)


def test_interims_come_while_speech_is_open(predictor):
    audio, truth = islands([0.3, 2.0, 0.6])
    _, sink, _ = run_engine(predictor, [ArraySource("a", audio, realtime=True)],
                            EngineConfig(inference=InferenceConfig(interim_ms=400)))
    interims = [e for e in sink.of(PredictionEvent) if not e.final]
    assert len(interims) >= 2
    assert all(e.segment == 0 and e.end_sample <= truth[0][1] + 0.5 * SR for e in interims)
    final = finals(sink)[0]
    assert sink.events.index(final) > max(sink.events.index(e) for e in interims)


def test_stdin_pcm_matches_the_array_source(predictor):
    audio, _ = islands(LAYOUT, seed=7)
    pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes() + b"\x01"  # odd trailing byte ignored
    _, from_stdin, code = run_engine(predictor, [StdinSource(io.BytesIO(pcm))])
    _, from_array, _ = run_engine(predictor, [ArraySource("a", audio)])
    assert code == 0
    assert [(e.start_sample, e.end_sample, e.label) for e in finals(from_stdin)] == \
           [(e.start_sample, e.end_sample, e.label) for e in finals(from_array)]


class FakeSoundDevice:
    """Just enough of sounddevice: one 48 kHz stereo input whose stream plays ``audio`` from a thread
    in blocks, then stops as an unplugged device does (finished_callback, no more blocks)."""

    class PortAudioError(Exception):
        pass

    def __init__(self, audio: np.ndarray | None = None, devices: bool = True) -> None:
        self.audio, self.devices = audio, devices

    def query_devices(self, device=None, kind=None):
        if not self.devices:
            raise self.PortAudioError("Error querying device -1")
        return {"name": "Fake Mic", "max_input_channels": 2, "default_samplerate": 48000.0}

    def InputStream(self, samplerate, blocksize, device, channels, dtype, callback, finished_callback):
        fake = self

        class Stream:
            def start(self):
                def play():
                    for i in range(0, len(fake.audio), blocksize):
                        callback(fake.audio[i:i + blocksize], blocksize, None, None)
                    finished_callback()

                threading.Thread(target=play, daemon=True).start()

            def stop(self):
                pass

            def close(self):
                pass

        return Stream()


def test_microphone_unplug_ends_the_source_but_not_the_engine(predictor):
    from serlive.stream.config import WsConfig

    audio, truth = islands([0.3, 0.8, 0.5])
    stereo48 = np.repeat(np.stack([audio, audio], 1), 3, axis=0)  # crude 48 kHz; the VAD still hears speech
    mic = MicSource(sd=FakeSoundDevice(stereo48), queue_blocks=10_000)
    config = EngineConfig(ws=WsConfig(port=0))

    async def until(engine, sink):
        while not any(isinstance(e, StreamStatus) and e.state == "ended" for e in sink.events):
            await asyncio.sleep(0.01)
        assert not engine._stop.is_set()  # still serving after the microphone ended
        engine.stop()

    _, sink, code = run_engine(predictor, [mic], config, until=until)
    assert code == 1
    (err,) = sink.of(Error)
    assert err.code == "source_ended" and "stopped sending audio (unplugged?)" in err.message
    (final,) = finals(sink)
    assert abs(final.start_sample - truth[0][0]) <= TOLERANCE_SAMPLES  # 48 kHz stereo in, 16 kHz clock out


def test_microphone_unplug_without_a_websocket_server_ends_the_run(predictor):
    audio, _ = islands([0.3, 0.5])
    mic = MicSource(sd=FakeSoundDevice(np.stack([audio, audio], 1)), queue_blocks=10_000, stall_s=0.5)
    _, sink, code = run_engine(predictor, [mic])
    assert code == 1 and sink.of(StreamStatus)[-1].detail.endswith("stopped sending audio (unplugged?)")


def test_microphone_overflow_is_counted_not_waited_for():
    mic = MicSource(sd=FakeSoundDevice(np.zeros((10, 2), np.float32)), queue_blocks=2)

    async def main():
        mic._queue = asyncio.Queue(2)
        for _ in range(5):
            mic._on_block(np.zeros((960, 2), np.float32), None)
        return mic._queue.qsize(), mic._pending_gap

    assert asyncio.run(main()) == (2, 3 * 960)
    assert mic.dropped_samples == 3 * 320


def test_microphone_errors_are_one_sentence(monkeypatch):
    import sys

    with pytest.raises(SourceError, match="^no audio input device is available"):
        MicSource(sd=FakeSoundDevice(devices=False))
    with pytest.raises(SourceError, match="^no audio input device matches --mic 7"):
        MicSource("7", sd=FakeSoundDevice(devices=False))
    monkeypatch.setitem(sys.modules, "sounddevice", None)
    with pytest.raises(SourceError, match="sounddevice package is not installed"):
        MicSource()


def test_missing_portaudio_is_one_sentence(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_portaudio(name, *args, **kwargs):
        if name == "sounddevice":
            raise OSError("PortAudio library not found")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_portaudio)
    with pytest.raises(SourceError, match="PortAudio library is not installed"):
        MicSource()


def test_hello_and_stop_before_run(predictor):
    audio, _ = islands(LAYOUT)
    engine = Engine(predictor, EngineConfig(), [ArraySource("a", audio, realtime=True)])
    hello = engine.hello()
    assert hello.streams == ("a",) and hello.labels == predictor.labels and hello.sample_rate_hz == 16_000
    engine.stop()  # before run(): run() starts, then stops at once, flushing what it has
    assert asyncio.run(asyncio.wait_for(engine.run(), 10)) == 0


def test_under_load_interims_are_skipped_oldest_first_and_finals_stay_whole(predictor):
    """Eight streams read as fast as possible with an interim every 20 ms: the model cannot keep up, so waiting
    interims are superseded by their stream's next one (counted per stream in stats) and the spacing grows,
    while every final comes, in order, as without interims."""
    audio, truth = islands([0.3, 1.6, 0.5, 1.2, 0.4], seed=9)

    def sources():  # as a client sends (paced by its sender, not held back yet): the bulk gate lets them run
        out = [ArraySource(f"s{i}", audio) for i in range(8)]
        for source in out:
            source.paced = None
        return out

    busy = EngineConfig(inference=InferenceConfig(max_batch=4, max_wait_ms=0, interim_ms=20))
    engine, sink, _ = run_engine(predictor, sources(), busy)
    _, calm, _ = run_engine(predictor, sources(), EngineConfig(inference=InferenceConfig(interim_ms=0)))
    stats = engine.stats()
    assert stats.skipped_interims > 0 and stats.skipped_interims == sum(stats.skipped_interims_by_stream.values())
    assert set(stats.skipped_interims_by_stream) <= {f"s{i}" for i in range(8)}
    for name in (f"s{i}" for i in range(8)):
        got, ref = finals(sink, name), finals(calm, name)
        assert [(e.segment, e.start_sample, e.end_sample, e.label) for e in got] == \
               [(e.segment, e.start_sample, e.end_sample, e.label) for e in ref] and len(got) == len(truth)
    interims = [e for e in sink.of(PredictionEvent) if not e.final]
    every_20ms = 8 * 2.8 / 0.02  # interims asked for if the spacing stayed at 20 ms over 2.8 s of speech
    assert interims and len(interims) + stats.skipped_interims < every_20ms / 2  # it grew (measured: 184 of 1120)


def test_slow_finals_space_every_streams_interims_out_until_finals_are_fast_again(predictor):
    """Finals first (load.FINAL_TARGET_MS): a slow final doubles every stream's interim spacing, up to the
    cap; fast ones halve it; a stream's pipeline asks for interims that much further apart."""
    from serlive.stream.engine import _Stream
    from serlive.stream.load import FINAL_TARGET_MS, MAX_INTERIM_SCALE, Pressure
    from serlive.stream.pipeline import InferenceRequest, StreamPipeline
    from serlive.stream.chunks import AudioChunk

    config = EngineConfig(inference=InferenceConfig(interim_ms=250))
    engine = Engine(predictor, config)
    for name in ("a", "b"):
        engine._streams[name] = _Stream(ArraySource(name, np.zeros(1, np.float32)),
                                        StreamPipeline(name, predictor.labels, config, engine.pressure), False)
    pressures = []
    for close_ms in [2 * FINAL_TARGET_MS] * 5 + [0.8 * FINAL_TARGET_MS] + [0.1 * FINAL_TARGET_MS] * 4:
        engine.pressure.press(close_ms)
        pressures.append([s.pipeline.pressure.level for s in engine._streams.values()])
    assert [a for a, b in pressures] == [b for a, b in pressures] == [2, 4, 8, 8, 8, 8, 4, 2, 1, 1]
    assert MAX_INTERIM_SCALE == 8

    audio, _ = islands([0.3, 4.0, 0.6])

    def interims(pressure: int) -> list[int]:
        pipeline = StreamPipeline("s", predictor.labels, config, Pressure(pressure))
        out = [r for i in range(0, len(audio), 320) for r in pipeline.push(AudioChunk(i, audio[i:i + 320]), 0.0)]
        return [r.end_sample for r in out if isinstance(r, InferenceRequest) and not r.final]

    calm, pressed, period = interims(1), interims(4), config.inference.interim_ms * 16
    assert len(calm) >= 12 and np.all(np.abs(np.diff(calm) - period) <= 480)  # on the 30 ms VAD grid
    assert len(pressed) >= 3 and np.all(np.abs(np.diff(pressed) - 4 * period) <= 480)


def test_streams_read_faster_than_real_time_do_not_hold_back_a_real_time_one(predictor):
    """Many files read as fast as possible share the event loop with one paced in real time: the real-time stream
    keeps its clock (each of its level events comes when its audio does) and its finals come soon. Without the
    engine's bulk gate its audio fell 0.3-2.4 s behind; without the gate's bound on the model's queue its second
    final took 3-8.8 s (300 finals queued ahead of it)."""
    audio, _ = islands([0.3, 1.0, 0.6, 1.0, 0.6])  # 3.5 s, two islands
    fast_audio, _ = islands([0.3, 1.2, 0.5] * 8, seed=3)  # 16 s each
    sources = [ArraySource("rt", audio, realtime=True)] + [ArraySource(f"fast{i}", fast_audio) for i in range(200)]
    lags = []

    class Clock:
        """How far behind its own audio each of the real-time stream's level events comes."""
        origin = None

        def put(self, event) -> None:
            if isinstance(event, Level) and event.stream == "rt":
                now = asyncio.get_running_loop().time()
                self.origin = self.origin if self.origin is not None else now - event.sample / SR
                lags.append(now - self.origin - event.sample / SR)

    async def watch(engine, sink):
        engine.add_sink(Clock())
        while not any(e.stream == "rt" and e.state == "ended" for e in sink.of(StreamStatus)):
            await asyncio.sleep(0.05)
        engine.stop()

    _, sink, _ = run_engine(predictor, sources, EngineConfig(inference=InferenceConfig(interim_ms=0)), until=watch)
    got = finals(sink, "rt")
    assert [e.segment for e in got] == [0, 1]
    assert len(lags) >= 30 and np.percentile(lags, 90) < 0.1, sorted(lags)  # measured 0.02 s with the gate
    assert max(lags) < 0.25, sorted(lags)  # one pause of the loop (a garbage collection): 0.16 s seen once
    assert max(e.latency_ms for e in got) < 2500, [e.latency_ms for e in got]  # measured 0.46-1.63 s (3-8.8 s before)
