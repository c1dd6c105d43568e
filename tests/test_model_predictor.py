"""The Predictor: input handling, batching, kNN, dimensional output."""

import numpy as np
import pytest
import torch

from serlive.model import (AudioError, EncoderConfig, KnnConfig, KnnDatastore, ModelConfig, Predictor, SERModel)
from tests.signals import voiced


@pytest.fixture(scope="module")
def predictor():
    torch.manual_seed(0)
    return Predictor(SERModel(ModelConfig(encoder=EncoderConfig(dim=32, heads=4))).eval())


@pytest.mark.parametrize("bad,message", [
    (np.zeros(0, np.float32), "empty"),
    (np.array([0.1, np.nan] * 1000, np.float32), "NaN or infinite"),
    (np.array([0.1, np.inf] * 1000, np.float32), "NaN or infinite"),
    (np.zeros((2, 2, 1000), np.float32), "3-D"),
    (np.zeros(1000, np.complex64), "float or integer"),
    (np.array(["a"] * 1000), "float or integer"),
    (np.zeros(100, np.float32), "at least 400"),
    (np.zeros((500, 500), np.float32), "samples, channels"),
    ("not audio", "float or integer"),
])
def test_bad_inputs_get_clear_errors(predictor, bad, message):
    with pytest.raises(AudioError, match=message):
        predictor.predict(bad)


def test_bad_sample_rate(predictor):
    with pytest.raises(AudioError, match="sample rate"):
        predictor.predict(np.zeros(16_000, np.float32), sample_rate_hz=0)


def test_layouts_dtypes_and_rates_agree(predictor):
    x = voiced(1.0)
    ref = predictor.predict(x)
    stereo = np.stack([x, x], axis=1)
    int16 = (x * 32767).astype(np.int16)
    for audio in (stereo, stereo.T, torch.from_numpy(x), x.astype(np.float64)):
        np.testing.assert_allclose(predictor.predict(audio).probs, ref.probs, atol=1e-5)
    np.testing.assert_allclose(predictor.predict(int16).probs, ref.probs, atol=1e-3)
    import soxr

    x48 = soxr.resample(x, 16_000, 48_000)
    p48 = predictor.predict(x48, sample_rate_hz=48_000)
    assert p48.frames == ref.frames and abs(p48.speech_frames - ref.speech_frames) <= 2


def test_batch_equals_single(predictor):
    waves = [voiced(d, seed=i) for i, d in enumerate((0.7, 2.0, 1.3))]
    batch = predictor.predict_batch(waves)
    for w, b in zip(waves, batch):
        one = predictor.predict(w)
        np.testing.assert_allclose(b.probs, one.probs, atol=1e-5)
        assert b.frames == one.frames and b.speech_frames == one.speech_frames


def test_long_input_is_truncated_to_max_duration(predictor):
    p = predictor.predict(np.zeros(16_000 * 25, np.float32))
    assert p.frames == (int(19.0 * 16_000) - 400) // 320 + 1


def test_silence_has_no_speech_frames_and_a_finite_prediction(predictor):
    p = predictor.predict(np.zeros(16_000, np.float32))
    assert p.speech_frames == 0 and np.isfinite(p.probs).all()


def test_model_without_dimensional_labels_reports_them_absent():
    model = SERModel(ModelConfig(encoder=EncoderConfig(dim=16, heads=2), dimensional=False)).eval()
    p = Predictor(model).predict(voiced(0.5))
    assert p.valence is None and p.arousal is None and sum(p.probs) == pytest.approx(1.0, abs=1e-5)


def test_knn_interpolation_applied_with_configured_alpha():
    cfg = ModelConfig(encoder=EncoderConfig(dim=16, heads=2), knn=KnnConfig(k=3, alpha=0.5, temperature=0.1))
    model = SERModel(cfg).eval()
    base = Predictor(model).predict(voiced(0.8))
    store = KnnDatastore(np.stack([base.embedding] * 3), [1, 1, 1], 4)
    p = Predictor(model, store).predict(voiced(0.8))
    expected = 0.5 * np.eye(4)[1] + 0.5 * np.array(base.probs)
    assert p.knn and not base.knn
    np.testing.assert_allclose(p.probs, expected, atol=1e-5)
    assert not Predictor(model, store, use_knn=False).predict(voiced(0.8)).knn


@pytest.mark.gpu
def test_cuda_bf16_matches_cpu():
    torch.manual_seed(0)
    model = SERModel(ModelConfig(encoder=EncoderConfig(dim=32, heads=4))).eval()
    cpu = Predictor(model).predict(voiced(1.0))
    gpu = Predictor(SERModel(model.config).eval().cpu(), device=torch.device("cuda"), dtype=torch.bfloat16)
    gpu.model.load_state_dict(model.state_dict())
    out = gpu.predict(voiced(1.0))
    np.testing.assert_allclose(out.probs, cpu.probs, atol=3e-2)


def test_speech_pad_cuts_inputs_as_the_segmenter_would():
    """With speech_pad_s the Predictor sees the speech span with context, whatever silence surrounds it:
    a file padded with 2 s of silence predicts exactly what the hand-cut segment predicts."""
    from serlive.model import num_frames, speech_mask, trim_to_speech

    torch.manual_seed(0)
    model = SERModel(ModelConfig(encoder=EncoderConfig(dim=32, heads=4), speech_pad_s=0.15)).eval()
    padded_pred = Predictor(model)
    plain = Predictor(SERModel(model.config.replace(speech_pad_s=None)).eval())
    plain.model.load_state_dict(model.state_dict())
    sr = 16_000
    speech = voiced(1.2)
    wave = np.concatenate([np.zeros(2 * sr, np.float32), speech, np.zeros(sr, np.float32)])
    cut, cut_mask = trim_to_speech(wave, speech_mask(wave), 0.15)
    got = padded_pred.predict(wave)
    want = plain.predict_prepared([cut], [cut_mask])[0]
    np.testing.assert_allclose(got.probs, want.probs, atol=1e-6)
    assert got.frames == len(cut_mask) < num_frames(len(wave))
    # Without the option, the leading silence is part of the input and the answer changes.
    assert not np.allclose(plain.predict(wave).probs, want.probs, atol=1e-4)


def test_bundled_model_gain_robustness_as_documented():
    """Through the Predictor on real RAVDESS utterances: the levelled VAD mask does not move even at
    -12 dB, and at +3 dB (no clipping) the model alone moves no probability by more than 0.05, so a label
    changes only where its top two classes were within 0.1 of each other. Larger cuts, and the kNN vote at
    any gain, move more (the log-mel floor; the model card), so this test claims no more than that."""
    from pathlib import Path

    import soundfile as sf

    from serlive.model import bundled_model_dir

    predictor = Predictor.from_dir(bundled_model_dir(), use_knn=False)
    for path in sorted((Path(__file__).parent / "data" / "ravdess").glob("*.flac")):
        audio, rate = sf.read(path, dtype="float32")
        base = predictor.predict(audio, rate)
        assert predictor.predict(audio * 0.25, rate).speech_frames == base.speech_frames, path.name
        if np.abs(audio).max() * 1.41 < 0.99:
            louder = predictor.predict(audio * 1.41, rate)
            np.testing.assert_allclose(louder.probs, base.probs, atol=0.05, err_msg=path.name)
            top2 = np.sort(base.probs)[-2:]
            assert louder.label == base.label or top2[1] - top2[0] < 0.1, path.name
