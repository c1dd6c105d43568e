"""Temperature calibration, ECE, the OOD score and per-speaker adaptation, against references."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from serlive.model import ConfigError, ModelConfig, Predictor, bundled_model_dir
from serlive.model.adapt import SpeakerAdapter
from serlive.model.calibration import (apply_temperature, expected_calibration_error, fit_shift, fit_short,
                                       fit_temperature, ood_score, reference_percentiles, shift_temperatures,
                                       short_factors, temper_for_ood)

DATA_DIR = Path(__file__).parent / "data"


def softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def draw_labels(rng: np.random.Generator, z: np.ndarray, temps) -> np.ndarray:
    """One label per row of logits ``z``, drawn from softmax(z) tempered by ``temps`` (one T or one per row)."""
    return np.array([rng.choice(z.shape[1], p=row) for row in apply_temperature(softmax(z), temps)])


def test_temperature_on_softmax_outputs_is_logit_temperature():
    z = np.random.default_rng(0).normal(size=(50, 4)) * 3
    for t in (0.5, 1.0, 2.5):
        np.testing.assert_allclose(apply_temperature(softmax(z), t), softmax(z / t), atol=1e-9)


def test_fit_temperature_recovers_the_temperature_labels_were_drawn_with():
    rng = np.random.default_rng(1)
    z = rng.normal(size=(20000, 4)) * 4
    true_t = 2.0  # the model's logits are twice as sharp as the truth
    labels = np.array([rng.choice(4, p=p) for p in softmax(z / true_t)])
    assert fit_temperature(softmax(z), labels) == pytest.approx(true_t, rel=0.05)


def test_ece_by_hand():
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.3, 0.7]])
    labels = np.array([0, 1, 0, 1])
    # bins: 0.9 -> two items, accuracy 0.5, |0.5 - 0.9| = 0.4; 0.6 -> acc 1, 0.4; 0.7 -> acc 1, 0.3
    assert expected_calibration_error(probs, labels) == pytest.approx((2 * 0.4 + 0.4 + 0.3) / 4)


def test_calibration_lowers_ece_of_an_overconfident_model_on_held_out_items():
    rng = np.random.default_rng(2)
    z = rng.normal(size=(4000, 4)) * 2
    labels = np.array([rng.choice(4, p=p) for p in softmax(z)])
    overconfident = softmax(3 * z)
    t = fit_temperature(overconfident[:2000], labels[:2000])
    before = expected_calibration_error(overconfident[2000:], labels[2000:])
    after = expected_calibration_error(apply_temperature(overconfident[2000:], t), labels[2000:])
    assert before > 0.1 and after < 0.03 and after < before / 4


def test_ood_score_ranks_against_the_reference_and_saturates_past_it():
    ref = reference_percentiles(np.arange(101.0))  # 0, 5, ..., 100
    scores = ood_score(np.array([0.0, 50.0, 90.0, 100.0, 120.0, 1000.0]), ref)
    np.testing.assert_allclose(scores[:3], [0.0, 0.5, 0.9])
    assert scores[3] == pytest.approx(0.99) and 0.99 < scores[4] < scores[5] <= 1.0
    assert np.all(np.diff(scores) >= 0)


def test_far_out_of_distribution_is_pulled_half_way_to_uniform():
    probs = np.array([[0.99, 0.01 / 3, 0.01 / 3, 0.01 / 3]] * 3)
    out = temper_for_ood(probs, np.array([0.5, 0.995, 1.0]), threshold=0.99, mix=0.5)
    np.testing.assert_allclose(out[0], probs[0])
    assert out[2, 0] == pytest.approx(0.5 * 0.99 + 0.5 * 0.25) and out[1, 0] > out[2, 0]
    np.testing.assert_allclose(out.sum(1), 1.0)


def test_a_temperature_per_row_is_each_row_with_its_own():
    probs = softmax(np.random.default_rng(0).normal(size=(5, 4)) * 3)
    temps = np.array([0.5, 1.0, 1.5, 3.0, 10.0])
    rows = np.stack([apply_temperature(probs[i:i + 1], float(t))[0] for i, t in enumerate(temps)])
    np.testing.assert_allclose(apply_temperature(probs, temps), rows)
    np.testing.assert_allclose(shift_temperatures(np.array([0.5, 1.0, 3.0]), 0.8, 0.5, 1.0),
                               [0.8, 0.8, 0.8 * np.exp(1.0)])


def test_fit_shift_recovers_how_fast_confidence_should_fall_with_atypicality():
    """Labels drawn from softmax(z / T(a)) with T(a) = 0.8 * exp(0.6 * (a - 1)): the fitted beta is near 0.6,
    and it lowers the ECE of the atypical rows against one temperature; with no such dependence it is ~0."""
    rng = np.random.default_rng(1)
    n = 6000
    z = rng.normal(size=(n, 4)) * 2.5
    atyp = rng.uniform(0.5, 4.0, n)
    draw = functools.partial(draw_labels, rng, z)
    y = draw(shift_temperatures(atyp, 0.8, 0.6, 1.0))
    beta = fit_shift(softmax(z), y, atyp, 0.8, 1.0)
    assert beta == pytest.approx(0.6, abs=0.1)
    far = atyp > 2.5
    one_t = expected_calibration_error(apply_temperature(softmax(z[far]), 0.8), y[far])
    shifted = expected_calibration_error(apply_temperature(softmax(z[far]), shift_temperatures(atyp[far], 0.8, beta, 1.0)), y[far])
    assert shifted < one_t / 2, (shifted, one_t)
    assert fit_shift(softmax(z), draw(np.full(n, 0.8)), atyp, 0.8, 1.0) < 0.05


def test_fit_short_recovers_how_fast_confidence_should_fall_with_less_speech():
    """Labels drawn from softmax(z / (0.8 (80 / n)^0.7)) for n < 80 speech frames: the fitted gamma is near 0.7
    and lowers the ECE of the short rows against one temperature; with no such dependence it is ~0."""
    rng = np.random.default_rng(3)
    n = 6000
    z = rng.normal(size=(n, 4)) * 2.5
    frames = rng.integers(10, 160, n)
    draw = functools.partial(draw_labels, rng, z)

    assert np.array_equal(short_factors([10, 40, 80, 200], 80, 1.0), [8.0, 2.0, 1.0, 1.0])
    assert np.array_equal(short_factors([0, 10], 80, 0.0), [1.0, 1.0]) and short_factors([0], 80, 1.0)[0] == 80.0
    base = np.full(n, 0.8)
    y = draw(base * short_factors(frames, 80, 0.7))
    gamma = fit_short(softmax(z), y, base, frames, 80)
    assert gamma == pytest.approx(0.7, abs=0.1)
    short = frames < 30
    one_t = expected_calibration_error(apply_temperature(softmax(z[short]), 0.8), y[short])
    fitted = expected_calibration_error(apply_temperature(softmax(z[short]), 0.8 * short_factors(frames[short], 80, gamma)), y[short])
    assert fitted < one_t / 2, (fitted, one_t)
    assert fit_short(softmax(z), draw(base), base, frames, 80) < 0.05


def test_short_inputs_get_flatter_probabilities_and_whole_utterances_do_not(bundled):
    """The Predictor applies the short-input growth by each input's speech frames: a prefix of an utterance
    under ``short_frames`` is tempered by (short_frames / n)^gamma exactly, the whole utterance (more speech
    frames) not at all."""
    audio, sr = sf.read(DATA_DIR / "ravdess" / "03-01-05-01-01-01-01.flac", dtype="float32")
    plain = bundled.with_calibration(temperature=1.0, shift_beta=0.0, speech_limit=100.0, min_voiced=0.0,
                                     min_confidence=0.0, short_frames=0.0, short_gamma=0.0)
    whole = plain.predict(audio, sr)
    frames = whole.speech_frames - 10.0
    graded = plain.with_calibration(short_frames=frames, short_gamma=1.0)
    assert graded.predict(audio, sr).probs == pytest.approx(whole.probs)
    start = int(np.flatnonzero(np.abs(audio) > 0.01)[0])
    prefix = audio[: start + sr // 2]
    got, raw = graded.predict(prefix, sr), plain.predict(prefix, sr)
    assert 0 < raw.speech_frames < frames
    np.testing.assert_allclose(got.probs, apply_temperature(np.array([raw.probs]), frames / raw.speech_frames)[0], atol=1e-9)
    assert got.confidence < raw.confidence


def test_calibration_config_is_validated():
    with pytest.raises(ConfigError, match="temperature"):
        ModelConfig.from_dict({"calibration": {"temperature": 0}})
    with pytest.raises(ConfigError, match="ood_reference"):
        ModelConfig.from_dict({"calibration": {"ood_reference": [3.0, 1.0]}})
    with pytest.raises(ConfigError, match="shift_beta"):
        ModelConfig.from_dict({"calibration": {"shift_beta": -1.0}})
    with pytest.raises(ConfigError, match="short_gamma"):
        ModelConfig.from_dict({"calibration": {"short_gamma": float("nan")}})
    with pytest.raises(ConfigError, match="min_voiced"):
        ModelConfig.from_dict({"calibration": {"min_voiced": 2.0}})
    with pytest.raises(ConfigError, match="embedding_mean"):
        ModelConfig.from_dict({"embed_dim": 32, "calibration": {"embedding_mean": [0.0, 1.0]}})


def test_adapter_never_looks_ahead():
    """Utterance i's shift depends only on utterances before it: reordering the later ones changes nothing,
    and it would if the adapter saw the current or a future embedding."""
    rng = np.random.default_rng(3)
    embs = rng.normal(size=(12, 32)).astype(np.float32)
    ref = np.zeros(32, np.float32)

    def shifts(order):
        a, out = SpeakerAdapter(ref, prior=2.0), {}
        for i in order:
            out[int(i)] = a.shift()
            a.update(embs[i])
        return out

    first = shifts(np.arange(12))
    order = np.r_[np.arange(6), rng.permutation(np.arange(6, 12))]
    later_shuffled = shifts(order)
    for i in range(6):  # the first six saw the same history in both orders
        np.testing.assert_array_equal(first[i], later_shuffled[i])
    np.testing.assert_array_equal(first[6], later_shuffled[int(order[6])])  # whoever came seventh saw 0..5
    np.testing.assert_allclose(first[5], embs[:5].sum(0) / (5 + 2.0), rtol=1e-6)
    np.testing.assert_array_equal(first[0], np.zeros(32))


@pytest.fixture(scope="module")
def bundled():
    return Predictor.from_dir(bundled_model_dir())


def test_adapted_prediction_is_the_heads_on_the_shifted_embedding(bundled):
    audio, sr = sf.read(DATA_DIR / "ravdess" / "03-01-05-01-01-01-01.flac", dtype="float32")
    raw = bundled.predict(audio, sr)
    adapter = SpeakerAdapter(np.zeros(bundled.config.embed_dim, np.float32), prior=0.0)
    adapter.update(raw.embedding + 0.5)
    shift = adapter.shift()
    plain = Predictor(bundled.model, None)  # no kNN: the probabilities are the classifier's softmax
    expected = torch.softmax(bundled.model.classifier(torch.from_numpy(raw.embedding - shift)), -1).detach().numpy()
    expected = apply_temperature(expected[None], bundled.config.calibration.temperature)[0]  # the shipped T
    got = plain.finish(raw.embedding[None], None, np.array([raw.speech_frames]), [raw.frames], shift=shift)[0]
    assert not got.far  # in domain: no OOD tempering on top
    np.testing.assert_allclose(got.probs, expected, atol=1e-5)
    assert got.adapted and not raw.adapted


def test_noise_and_silence_are_more_atypical_than_any_speech(bundled, tmp_path):
    """The OOD statistic separates noise-only input (and silence) from real speech of unseen recordings."""
    rng = np.random.default_rng(4)
    white = 0.1 * rng.standard_normal(16000 * 3).astype(np.float32)
    pink = np.cumsum(rng.standard_normal(16000 * 3)).astype(np.float32)
    pink = 0.1 * (pink - np.convolve(pink, np.ones(400) / 400, "same")) / np.abs(pink).max()
    noise = [bundled.predict(x).atypicality for x in (white, pink, np.zeros(16000 * 2, np.float32))]
    speech = [bundled.predict(*sf.read(p, dtype="float32")).atypicality
              for p in sorted((DATA_DIR / "ravdess").glob("*.flac"))]
    assert min(noise) > 2 * max(speech), (noise, max(speech))


def test_no_voice_or_past_the_checked_speech_is_uncertain_and_tempered_speech_is_graded(bundled):
    """With a speech limit and a voicing floor (as ``ser-train calibrate`` writes them): noise alone is never
    voiced, so it is flagged and pulled half way to uniform; unseen speech is neither; past the speech limit
    everything is flagged; a growing temperature lowers the confidence of atypical speech without a flag."""
    rng = np.random.default_rng(2)
    noise = 0.05 * rng.standard_normal(16000 * 3).astype(np.float32)
    speech = [sf.read(p, dtype="float32") for p in sorted((DATA_DIR / "ravdess").glob("*.flac"))]
    plain = bundled.with_calibration(temperature=1.0, shift_beta=0.0, speech_limit=100.0, min_voiced=0.02,
                                     min_confidence=0.0, ood_mix=0.5)
    raw = bundled.with_calibration(temperature=1.0, shift_beta=0.0, speech_limit=100.0, min_voiced=0.0,
                                   min_confidence=0.0)
    got, base = plain.predict(noise), raw.predict(noise)
    assert got.voiced == 0.0 and got.speech_frames > 0 and got.uncertain and got.far and not base.uncertain
    np.testing.assert_allclose(got.probs, 0.5 * np.array(base.probs) + 0.125, atol=1e-9)
    voices = [plain.predict(a, sr) for a, sr in speech]
    assert all(v.voiced > 0.3 and not v.uncertain for v in voices), [v.voiced for v in voices]
    limit = float(np.median([v.atypicality for v in voices]))
    capped = bundled.with_calibration(temperature=1.0, shift_beta=0.0, speech_limit=limit, min_voiced=0.0,
                                      min_confidence=0.0)
    flags = [capped.predict(a, sr).uncertain for a, sr in speech]
    assert flags == [v.atypicality > limit for v in voices]
    shifted = bundled.with_calibration(temperature=1.0, shift_beta=1.0, shift_from=0.0, speech_limit=100.0,
                                       min_voiced=0.0, min_confidence=0.0)
    for v, (a, sr) in zip(voices, speech):
        s = shifted.predict(a, sr)
        assert s.label == v.label and s.confidence < v.confidence and not s.uncertain
    unsure = bundled.with_calibration(temperature=1.0, shift_beta=0.0, speech_limit=100.0, min_voiced=0.02,
                                      min_confidence=1.0)  # every voice is now under the confidence floor
    for a, sr in speech:
        got = unsure.predict(a, sr)
        assert got.uncertain and not got.far  # unsure of the emotion, but a voice: the adaptation still learns it
