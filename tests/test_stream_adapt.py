"""Per-speaker adaptation in the engine: each stream's finals shift its later predictions, never earlier ones,
and a long silence (the state's reset) forgets the voice."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from serlive.model import ModelConfig, Predictor, SERModel
from serlive.stream.config import EngineConfig, StateConfig
from serlive.stream.sources import ArraySource
from tests.test_stream_engine import finals, run_engine
from tests.test_stream_segmenter import islands

LAYOUT = [0.3, 0.8, 0.5, 0.6, 0.5, 0.7, 0.4]
"""Three speech islands."""


@pytest.fixture(scope="module")
def adaptable():
    torch.manual_seed(0)
    cfg = ModelConfig()
    cfg = cfg.replace(calibration=dataclasses.replace(cfg.calibration, embedding_mean=(0.0,) * cfg.embed_dim,
                                                      adapt_prior=0.0))
    return Predictor(SERModel(cfg).eval())


def test_later_finals_are_adapted_on_earlier_ones_only(adaptable):
    audio, _ = islands(LAYOUT)
    _, alone, _ = run_engine(adaptable, [ArraySource("a", audio)], EngineConfig(adapt=False))
    _, sink, code = run_engine(adaptable, [ArraySource("a", audio)])
    plain, adapted = finals(alone), finals(sink)
    assert code == 0 and len(adapted) == len(plain) == 3
    assert [e.adapted for e in plain] == [False] * 3 and [e.adapted for e in adapted] == [False, True, True]
    assert adapted[0].probs == pytest.approx(plain[0].probs, abs=1e-6)  # nothing heard before the first
    # The second final is the first one's voice removed: the heads on e2 - e1 (prior 0, reference 0).
    raw = [adaptable.predict(audio[e.start_sample:e.end_sample]) for e in plain[:2]]
    expected = adaptable.finish(raw[1].embedding[None], None, np.array([raw[1].speech_frames]), [raw[1].frames],
                                shift=raw[0].embedding)[0]
    assert adapted[1].label == expected.label
    assert adapted[1].probs[expected.label] == pytest.approx(expected.confidence, abs=0.05)


def test_a_long_silence_forgets_the_voice(adaptable):
    audio, _ = islands(LAYOUT)
    config = EngineConfig(state=StateConfig(reset_after_s=0.4))  # every gap here is longer
    _, sink, _ = run_engine(adaptable, [ArraySource("a", audio)], config)
    assert [e.adapted for e in finals(sink)] == [False, False, False]
