"""One audio conversion for every source: a recording at 44.1 or 48 kHz, mono or stereo, gives the same
segments (to the sample) read as a file (``--input talk.wav``) as sent over the WebSocket by a real
``websockets`` client in its own format; and every source (array, file, stdin, microphone, WebSocket) hands
the engine the same 16 kHz samples on the int16 grid the VAD hears."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr
import torch
from websockets.asyncio.client import connect

from serlive.model import ModelConfig, Predictor, SERModel
from serlive.stream.chunks import SAMPLE_RATE_HZ, StreamResampler, float_to_s16
from serlive.stream.config import EngineConfig, WsConfig
from serlive.stream.engine import Engine
from serlive.stream.formats import AudioFormat, PcmConverter
from serlive.stream.mic import MicSource
from serlive.stream.sources import ArraySource, FileSource, RemoteSource, StdinSource
from tests.test_stream_engine import FakeSoundDevice

SEGMENT_EVENTS = ("segment_start", "segment_end")
DATA = Path(__file__).parent / "data" / "ravdess"


@pytest.fixture(scope="module")
def predictor():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    return Predictor(SERModel(ModelConfig()).eval())


class ListSink:
    def __init__(self) -> None:
        self.events: list[dict] = []

    def put(self, event) -> None:
        self.events.append(json.loads(event.to_json()))


def talk(rate_hz: int, channels: int, clip: str = "03-01-05-01-01-01-01") -> np.ndarray:
    """A RAVDESS clip at ``rate_hz``: ``(frames, channels)`` float32 on the int16 grid, the right channel
    quieter than the left (so a downmix matters)."""
    audio, sr = sf.read(DATA / f"{clip}.flac", dtype="float32")
    audio = soxr.resample(audio, sr, rate_hz) if rate_hz != sr else audio
    block = np.stack([audio, 0.5 * audio][:channels], axis=1)
    return np.round(np.clip(block, -1, 32767 / 32768) * 32768).astype(np.float32) / 32768


def segments(events: list[dict]) -> list[tuple]:
    return [(e["type"], e["segment"], e["start_sample"], e["end_sample"]) for e in events
            if e["type"] in SEGMENT_EVENTS]


def file_segments(predictor, path) -> list[tuple]:
    sink = ListSink()
    engine = Engine(predictor, EngineConfig(), [FileSource(path, realtime=False)])
    engine.add_sink(sink)
    assert asyncio.run(engine.run()) == 0
    return segments(sink.events)


def socket_segments(predictor, block: np.ndarray, fmt: AudioFormat, message_bytes: int) -> list[tuple]:
    """``block`` sent by a real client in ``fmt``, ``message_bytes`` a binary message (frames split across
    messages where that does not divide evenly)."""
    engine = Engine(predictor, EngineConfig(ws=WsConfig(host="127.0.0.1", port=0, accept_audio=True)), [])
    sink = ListSink()
    engine.add_sink(sink)
    dtype = "<i2" if fmt.encoding == "s16le" else "<f4"
    data = (np.round(block * 32768) if fmt.encoding == "s16le" else block).astype(dtype).tobytes()

    async def main():
        task = asyncio.create_task(engine.run())
        await engine.ready.wait()
        async with connect(f"ws://127.0.0.1:{engine.ws.port}/") as ws:
            await ws.send(json.dumps({"type": "start_stream", "stream": "talk", "format": fmt.to_dict()}))
            for i in range(0, len(data), message_bytes):
                await ws.send(data[i:i + message_bytes])
            await ws.send(json.dumps({"type": "end_stream"}))
            async for message in ws:
                event = json.loads(message)
                if event["type"] == "stream" and event["state"] == "ended":
                    break
        engine.stop()
        return await asyncio.wait_for(task, 30)

    assert asyncio.run(main()) == 0
    return segments([e for e in sink.events if e.get("stream") == "talk"])


@pytest.mark.parametrize("rate_hz, channels, encoding, clip", [
    (44_100, 1, "s16le", "03-01-05-01-01-01-01"), (48_000, 1, "s16le", "03-01-02-01-01-01-02"),
    (48_000, 2, "s16le", "03-01-03-01-01-02-02"), (44_100, 2, "f32le", "03-01-04-01-01-01-03")])
def test_a_file_and_the_same_samples_over_the_socket_give_identical_segments(predictor, tmp_path, rate_hz,
                                                                          channels, encoding, clip):
    """Clips where WebRTC VAD's decision on the first frames turned on one int16 step (a different start)."""
    block = talk(rate_hz, channels, clip)
    path = tmp_path / "talk.wav"
    sf.write(path, block, rate_hz, subtype="PCM_16")
    from_file = file_segments(predictor, path)
    assert len(from_file) >= 2  # an utterance, opened and closed
    fmt = AudioFormat(rate_hz, encoding, channels)
    assert socket_segments(predictor, block, fmt, message_bytes=7777) == from_file


def test_every_source_hands_the_engine_the_same_samples(tmp_path):
    """The same 48 kHz stereo input through each source; 16 kHz sources get the converted s16le bytes."""
    block = talk(48_000, 2)[:3 * 48_000]
    reference = np.concatenate([c.samples for c in StreamResampler(48_000, 2).push(block, last=True)])
    assert np.array_equal(reference, float_to_s16(reference).astype(np.float32) / 32768)  # on the int16 grid
    pcm16k = PcmConverter(AudioFormat(48_000, "s16le", 2))
    s16 = np.round(block * 32768).astype("<i2").tobytes()
    wire = pcm16k.convert(s16) + pcm16k.flush()
    assert np.array_equal(np.frombuffer(wire, "<i2"), float_to_s16(reference))

    async def drain(source) -> np.ndarray:
        return np.concatenate([c.samples async for c in source.chunks()])

    async def remote() -> np.ndarray:
        source = RemoteSource("r")
        feeding = asyncio.create_task(_feed(source, wire))
        got = await drain(source)
        await feeding
        return got

    path = tmp_path / "talk.wav"
    sf.write(path, block, 48_000, subtype="PCM_16")
    mic = MicSource(sd=FakeSoundDevice(block), queue_blocks=10_000, stall_s=0.3)  # a 48 kHz stereo device
    got = {
        "array": asyncio.run(drain(ArraySource("a", block, 48_000))),
        "file": asyncio.run(drain(FileSource(path, realtime=False))),
        "stdin": asyncio.run(drain(StdinSource(io.BytesIO(wire)))),
        "websocket": asyncio.run(remote()),
        "mic": asyncio.run(drain(mic)),
    }
    for name, samples in got.items():
        assert np.array_equal(samples, reference), name


async def _feed(source: RemoteSource, wire: bytes) -> None:
    for i in range(0, len(wire), 1000):
        await source.feed(wire[i:i + 1000])
    source.end()


def test_the_conversion_rounds_onto_the_s16le_grid_and_keeps_what_the_model_must_refuse():
    x = np.array([0.5 / 32768, 1.5 / 32768, -0.5 / 32768, 0.99999, -1.0, 1.2, -7.0 / 32768, -7.4 / 32768,
                  np.nan, np.inf], np.float32)
    (chunk,) = StreamResampler(SAMPLE_RATE_HZ).push(x, last=True)
    grid = (chunk.samples[:8] * 32768).tolist()
    assert grid == [0, 2, 0, 32767, -32768, 32767, -7, -7]  # nearest step, ties to even, clipped
    assert np.isnan(chunk.samples[8]) and chunk.samples[9] == np.inf  # the segment gets bad_audio, not silence
    assert float_to_s16(x[8:]).tolist() == [0, 32767]  # on the wire: silence and full scale
