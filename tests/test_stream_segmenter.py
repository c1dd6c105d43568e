"""The I/O-free stages: rebuffering, resampling clock, VAD frames and the segmenter, on synthetic audio
whose speech boundaries are known to the sample."""

from __future__ import annotations

import numpy as np
import pytest

from serlive.stream.chunks import AudioChunk, Rebuffer, StreamResampler
from serlive.stream.config import SegmenterConfig, StreamConfigError
from serlive.stream.segmenter import Segmenter, SegmentOpened
from serlive.stream.vad import VadStage
from tests.signals import voiced

SR = 16_000
TOLERANCE_SAMPLES = 1600  # 100 ms, the bound


def islands(layout: list[float], seed: int = 1) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Alternating silence / speech durations in seconds (starting with silence) -> audio and the
    exact (start, end) sample of every speech island. Silence is faint noise, not digital zero."""
    rng = np.random.default_rng(seed)
    parts, truth, pos = [], [], 0
    for i, dur in enumerate(layout):
        n = int(round(dur * SR))
        if i % 2:
            parts.append(voiced(dur, f0_hz=120 + 30 * i, seed=seed + i)[:n])
            truth.append((pos, pos + n))
        else:
            parts.append((0.001 * rng.standard_normal(n)).astype(np.float32))
        pos += n
    return np.concatenate(parts), truth


def run_stages(audio: np.ndarray, config: SegmenterConfig, block: int = 777):
    vad, seg, out = VadStage(config.vad_mode, config.frame_ms), Segmenter(config), []
    for i in range(0, len(audio), block):
        for frame in vad.push(AudioChunk(i, audio[i:i + block])):
            out += seg.push(frame)
    for frame in vad.flush():
        out += seg.push(frame)
    return out + seg.flush()


def closed(outputs) -> list:
    return [o for o in outputs if not isinstance(o, SegmentOpened)]


def test_rebuffer_cuts_exact_frames_with_true_timestamps():
    reb, x, got = Rebuffer(480), np.arange(5000, dtype=np.float32), []
    for i in range(0, len(x), 333):
        got += reb.push(AudioChunk(i, x[i:i + 333]))
    got += reb.flush()
    assert [c.start_sample for c in got] == list(range(0, 5000, 480))
    assert all(len(c.samples) == 480 for c in got[:-1]) and len(got[-1].samples) == 5000 % 480
    assert np.array_equal(np.concatenate([c.samples for c in got]), x)
    assert all(c.samples[0] == c.start_sample for c in got)


def test_resampler_keeps_one_clock_across_rates_and_channels():
    res = StreamResampler(48_000, channels=2)
    x = np.zeros((48_000, 2), np.float32)
    chunks = [c for i in range(0, 48_000, 1000) for c in res.push(x[i:i + 1000])] + res.flush()
    assert chunks[0].start_sample == 0
    for a, b in zip(chunks, chunks[1:]):
        assert b.start_sample == a.end_sample
    assert abs(chunks[-1].end_sample - SR) <= 2
    res.skip(4800)  # 100 ms lost to an overflow
    assert res.next_sample == chunks[-1].end_sample + 1600


@pytest.mark.parametrize("frame_ms", [10, 20, 30])
@pytest.mark.parametrize("vad_mode", [0, 3])
def test_segments_match_speech_islands(frame_ms, vad_mode):
    audio, truth = islands([0.7, 1.2, 0.9, 2.0, 1.0, 0.5, 0.6])
    segs = closed(run_stages(audio, SegmenterConfig(vad_mode=vad_mode, frame_ms=frame_ms)))
    assert [s.reason for s in segs] == ["silence"] * 3 and not any(s.dropped for s in segs)
    for seg, (start, end) in zip(segs, truth):
        assert abs(seg.start_sample - start) <= TOLERANCE_SAMPLES
        assert abs(seg.end_sample - end) <= TOLERANCE_SAMPLES
        # The model hears pre-roll and hang-over (after the VAD's own, untrimmed end), never more.
        assert seg.audio_start_sample <= seg.start_sample
        assert seg.audio_start_sample + len(seg.audio) >= seg.end_sample
        slack_s = 0.15 + 0.15 + 0.3 + 0.03
        assert len(seg.audio) <= seg.end_sample - seg.start_sample + slack_s * SR


def test_segment_audio_is_the_stream_audio():
    audio, _ = islands([0.5, 1.0, 0.8])
    (seg,) = closed(run_stages(audio, SegmenterConfig()))
    assert np.array_equal(seg.audio, audio[seg.audio_start_sample: seg.audio_start_sample + len(seg.audio)])


def test_chunk_size_does_not_change_segments():
    audio, _ = islands([0.3, 1.1, 0.6, 0.8, 0.5])
    ref = [(s.start_sample, s.end_sample) for s in closed(run_stages(audio, SegmenterConfig(), 160))]
    for block in (1, 480, 1023, 16000):
        if block == 1:
            continue  # one-sample chunks are correct but slow in pure Python
        assert [(s.start_sample, s.end_sample) for s in closed(run_stages(audio, SegmenterConfig(), block))] == ref


def test_short_blip_is_dropped_and_long_speech_force_closed():
    audio, _ = islands([0.5, 0.15, 0.8, 2.5, 0.6])
    config = SegmenterConfig(min_speech_ms=250, max_segment_ms=1000)
    segs = closed(run_stages(audio, config))
    kept = [s for s in segs if not s.dropped]
    assert segs[0].dropped
    assert [s.reason for s in kept][:2] == ["max_duration", "max_duration"]
    assert all(len(s.audio) <= SR + 30 * 16 for s in kept)
    for a, b in zip(kept, kept[1:]):  # non-stop speech is tiled, never overlapping
        assert b.audio_start_sample >= a.audio_start_sample + len(a.audio)


def test_end_of_input_closes_the_open_segment():
    audio, truth = islands([0.4, 1.0])
    (seg,) = closed(run_stages(audio, SegmenterConfig()))
    assert seg.reason == "end_of_input"
    assert abs(seg.end_sample - truth[0][1]) <= TOLERANCE_SAMPLES


def test_silence_gives_no_segment():
    audio, _ = islands([2.0])
    assert run_stages(audio, SegmenterConfig()) == []


def test_bad_settings_are_one_sentence():
    with pytest.raises(StreamConfigError, match="--vad-frame-ms must be 10, 20 or 30"):
        SegmenterConfig(frame_ms=25)
    with pytest.raises(StreamConfigError, match="--vad-mode"):
        SegmenterConfig(vad_mode=4)
