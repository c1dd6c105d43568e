"""Long-run stability on the sample clock: a long file made of one block repeated gives the same segments
in every block (WebRTC VAD state does not drift), whatever the chunk size; the rolling state's 30 s reset
comes out the same when finals arrive late (audio faster than real time) as when they arrive at once."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from serlive.stream.chunks import AudioChunk
from serlive.stream.config import EngineConfig
from serlive.stream.events import PredictionEvent, State
from serlive.stream.pipeline import InferenceRequest, StreamPipeline
from tests.test_stream_segmenter import islands

SR = 16_000
RAVDESS = Path(__file__).parent / "data" / "ravdess"
LABELS = ("angry", "happy", "neutral", "sad")


def ravdess_block() -> np.ndarray:
    """Eight RAVDESS utterances with 1.4-4.5 s of faint noise between them (about 50 s), cut to a whole
    number of VAD frames so every repeat starts on a frame boundary."""
    rng = np.random.default_rng(0)
    parts = []
    for i, path in enumerate(sorted(RAVDESS.glob("*.flac"))[:8]):
        x, sr = sf.read(path, dtype="float32")
        x = x.mean(1) if x.ndim > 1 else x
        parts += [soxr.resample(x, sr, SR).astype(np.float32),
                  (0.0005 * rng.standard_normal(int([1.4, 3.0, 2.0, 4.5][i % 4] * SR))).astype(np.float32)]
    block = np.concatenate(parts)
    return block[: len(block) // 960 * 960]


def segments_per_block(block: np.ndarray, repeats: int, chunk: int) -> list[list[tuple[int, int]]]:
    """Push ``repeats`` copies of ``block`` through one pipeline, as fast as possible; each kept segment's
    (start, end) relative to the block it starts in."""
    pipe, per_block = StreamPipeline("long", LABELS, EngineConfig()), [[] for _ in range(repeats)]
    for r in range(repeats):
        offset = r * len(block)
        for i in range(0, len(block), chunk):
            for item in pipe.push(AudioChunk(offset + i, block[i:i + chunk]), 0.0):
                if isinstance(item, InferenceRequest) and item.final:
                    b = item.start_sample // len(block)
                    per_block[b].append((item.start_sample - b * len(block), item.end_sample - b * len(block)))
    return per_block[:-1]  # the last block's trailing segment closes in the next one, which never comes


def test_twenty_minutes_of_one_block_segment_alike_in_every_block():
    block = ravdess_block()
    repeats = int(20 * 60 * SR / len(block)) + 1
    got = segments_per_block(block, repeats, 320)
    assert len(got[0]) >= 8
    assert all(b == got[0] for b in got), [i for i, b in enumerate(got) if b != got[0]]
    # Remote clients send 100 ms messages, files 20 ms blocks: the same segments.
    assert segments_per_block(block, 3, 1600)[:2] == got[:2]


def fake_final(req: InferenceRequest, label: str) -> PredictionEvent:
    probs = {k: float(k == label) for k in LABELS}
    return PredictionEvent(req.stream, req.segment, req.start_sample, req.end_sample, final=True, label=label,
                           probs=probs, confidence=1.0)


def state_sequence(audio: np.ndarray, delay_s: float) -> list[tuple]:
    """Run the pipeline on ``audio`` in 20 ms chunks; each final is applied ``delay_s`` of audio after its
    segment closed (0: at once, as in real time; more: the model lags audio arriving fast)."""
    pipe, waiting, states = StreamPipeline("s", LABELS, EngineConfig()), [], []
    for i in range(0, len(audio), 320):
        out = pipe.push(AudioChunk(i, audio[i:i + 320]), 0.0)
        waiting += [(i + delay_s * SR, r) for r in out if isinstance(r, InferenceRequest) and r.final]
        states += [s for s in out if isinstance(s, State)]
        while waiting and waiting[0][0] <= i:
            req = waiting.pop(0)[1]
            states += pipe.apply_final(fake_final(req, LABELS[req.segment % 4]), req.segment)
    for _, req in waiting:  # the end of input: what is still owed arrives
        states += pipe.apply_final(fake_final(req, LABELS[req.segment % 4]), req.segment)
    return [(s.label, s.segments) for s in states]


def test_state_reset_is_on_the_sample_clock_when_finals_arrive_late():
    # Speech, 31 s of silence (past the 30 s reset), speech, 2 s, speech, 31 s of silence at the end.
    audio, _ = islands([0.3, 0.8, 31.0, 0.8, 2.0, 0.8, 31.0], seed=41)
    at_once = state_sequence(audio, 0.0)
    assert at_once == [("angry", 1), (None, 0), ("happy", 1), ("neutral", 2), (None, 0)]
    for delay_s in (0.5, 5.0, 31.5, 40.0):
        assert state_sequence(audio, delay_s) == at_once, delay_s
