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


# The adaptation kinds on real recordings, through the bundled model: causality, the EM priors, the voice term.

from pathlib import Path  # noqa: E402

import soundfile as sf  # noqa: E402

from serlive.model import bundled_model_dir  # noqa: E402
from serlive.model.adapt import KINDS, adapted, build, em_priors  # noqa: E402
from serlive.model.calibration import apply_temperature, temper_prediction  # noqa: E402

FIXTURES = Path(__file__).parent / "data" / "ravdess"


@pytest.fixture(scope="module")
def bundled():
    return Predictor.from_dir(bundled_model_dir())


@pytest.fixture(scope="module")
def recordings(bundled):
    """The fixture recordings' unadapted predictions (26 utterances, 3 actors)."""
    return [bundled.predict(*sf.read(p, dtype="float32")) for p in sorted(FIXTURES.glob("*.flac"))]


def adapter_of(predictor, kind):
    cal, clf = predictor.config.calibration, predictor.model.classifier
    heads = (clf.weight.detach().double().numpy(), clf.bias.detach().double().numpy(), cal.temperature)
    means = np.random.default_rng(0).normal(size=(4, predictor.config.embed_dim)) + np.array(cal.embedding_mean)
    return build(kind, np.array(cal.embedding_mean), cal.adapt_prior, heads, means, np.full(4, 0.25))


@pytest.mark.parametrize("kind", [k for k in KINDS if k != "none"])
def test_no_kind_looks_ahead(bundled, recordings, kind):
    """A stream's first utterances are predicted the same whatever follows them, and the first as alone."""
    def stream(order):
        adapter, out = adapter_of(bundled, kind), []
        for i in order:
            out.append(adapted(bundled, recordings[i], adapter))
            adapter.update(recordings[i].embedding)
        return out

    head = [0, 5, 9, 13, 20, 24]
    one, two = stream(head + [1, 2, 3, 4]), stream(head + [25, 18, 11, 7, 16])
    for a, b in zip(one[:len(head)], two[:len(head)]):
        assert a.probs == b.probs and a.label == b.label
    assert one[0].probs == recordings[0].probs
    assert any(a.probs != recordings[i].probs for a, i in zip(one[1:], head[1:]))  # it does adapt


def test_em_recovers_the_label_priors_a_stream_was_drawn_with():
    """Saerens et al.'s EM against the priors that drew the data (two-dimensional Gaussian classes, posteriors
    computed under uniform priors as the class-weighted heads give them)."""
    rng = np.random.default_rng(1)
    centres = np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [2.0, 2.0]])
    truth = np.array([0.1, 0.1, 0.7, 0.1])
    y = rng.choice(4, 4000, p=truth)
    x = centres[y] + rng.normal(size=(4000, 2))
    logits = -0.5 * ((x[:, None, :] - centres[None]) ** 2).sum(-1)
    post = np.exp(logits - logits.max(1, keepdims=True))
    post /= post.sum(1, keepdims=True)
    naive = post.mean(0)
    est = em_priors(post, np.full(4, 0.25), 0.0)
    assert np.abs(est - truth).max() < 0.03 < np.abs(naive - truth).max()


def test_a_far_voice_flattens_the_stream_and_a_near_one_does_not(bundled, recordings):
    """``voice_beta``: past ``voice_from`` the temperature grows with the stream's distance; nearer, nothing."""
    far = bundled.with_calibration(voice_from=0.0, voice_beta=0.5)
    near = bundled.with_calibration(voice_from=1e3, voice_beta=0.5)
    for predictor, flatter in ((far, True), (near, False)):
        adapter = predictor.new_adapter()
        adapter.update(recordings[3].embedding + 5.0)  # a voice 5 * sqrt(32) away, as another language's
        plain, got = predictor.adapt(recordings[0], adapter), adapted(predictor, recordings[0], adapter)
        assert (got.confidence < plain.confidence) == flatter and got.label == plain.label
    factor = float(np.exp(0.5 * adapter.distance()))
    expected = apply_temperature(np.array([plain.probs]), factor)[0]
    np.testing.assert_allclose(adapted(far, recordings[0], adapter).probs, expected, atol=1e-9)


def test_a_flattened_prediction_under_the_confidence_floor_is_uncertain(recordings):
    sure = recordings[0]
    flat = temper_prediction(sure, 50.0, 0.4)
    assert not sure.uncertain and flat.uncertain and flat.label == sure.label and flat.confidence < 0.4
    assert temper_prediction(sure, 1.0, 0.4) is sure


def test_a_voice_near_the_training_speakers_is_shifted_less(bundled, recordings):
    """``adapt_near``: no shift within it, half at 1.5 times it, whole from twice it on."""
    from serlive.model.adapt import familiarity_gate

    assert [familiarity_gate(d, 2.0) for d in (0.0, 2.0, 3.0, 4.0, 9.0)] == [0.0, 0.0, 0.5, 1.0, 1.0]
    assert familiarity_gate(0.1, 0.0) == 1.0
    adapter = bundled.new_adapter()
    adapter.update(recordings[3].embedding)
    d = adapter.distance()
    for near, share in ((2 * d, 0.0), (d / 1.5, 0.5), (d / 2, 1.0)):
        gated = bundled.with_calibration(adapt_near=near)
        expected = bundled.refinish([recordings[0]], shift=share * adapter.shift())[0]
        np.testing.assert_allclose(adapted(gated, recordings[0], adapter).probs, expected.probs, atol=1e-12)
