"""The frame grid and the one speech-mask function."""

from pathlib import Path

import numpy as np
import pytest
import torch

from serlive.model import EncoderConfig, ModelConfig, SERModel
from serlive.model.frames import (frame_samples, mask_from_vad, num_frames, speech_mask, speech_span,
                                   trim_to_speech, vad_flags)
from tests.signals import voiced

LENGTHS = [6400, 6401, 6719, 6720, 6721, 16_000, 33_333, 80_000, 160_000, 479_999, 480_000]
"""0.4 s to 30 s, including values either side of a frame boundary."""


def test_num_frames_matches_hf_conv_stack(tiny_wavlm_dir):
    from transformers import WavLMModel

    hf = WavLMModel.from_pretrained(tiny_wavlm_dir)
    for n in list(range(400, 20_000, 97)) + LENGTHS:
        assert num_frames(n) == int(hf._get_feat_extract_output_lengths(torch.tensor(n)))
    assert num_frames(399) == 0 and num_frames(0) == 0


@pytest.mark.parametrize("n", LENGTHS)
def test_mask_length_equals_builtin_encoder_frames(n):
    wave = np.random.default_rng(n).standard_normal(n).astype(np.float32) * 0.01
    mask = speech_mask(wave)
    model = SERModel(ModelConfig(encoder=EncoderConfig(dim=16, heads=2, conv_layers=1, transformer_layers=1))).eval()
    with torch.no_grad():
        hidden, n_frames = model.encoder(torch.from_numpy(wave)[None], torch.tensor([n]))
    assert len(mask) == num_frames(n) == hidden.shape[1] == int(n_frames[0])


def test_mask_length_equals_wavlm_frames(tiny_wavlm_dir):
    from transformers import WavLMModel

    hf = WavLMModel.from_pretrained(tiny_wavlm_dir).eval()
    for n in (6400, 16_000, 48_321):
        wave = torch.randn(1, n) * 0.01
        with torch.no_grad():
            t = hf(wave).last_hidden_state.shape[1]
        assert len(speech_mask(wave[0].numpy())) == t


def test_mask_from_vad_uses_frame_centres():
    # 30 ms VAD frames (480 samples); encoder frame t has its centre at 320 t + 200.
    flags = np.array([0, 1, 0, 1], bool)
    n = 4 * 480
    mask = mask_from_vad(flags, 480, n)
    centres = np.arange(num_frames(n)) * 320 + 200
    assert mask.tolist() == [bool(flags[c // 480]) for c in centres]


def test_speech_mask_finds_voiced_island_to_the_vad_frame():
    sr = 16_000
    wave = np.concatenate([np.zeros(sr, np.float32), voiced(1.5), np.zeros(sr, np.float32)])
    mask = speech_mask(wave, mode=3, frame_ms=30)
    speech_frames = np.flatnonzero(mask)
    start_s, end_s = speech_frames[0] * 0.02, speech_frames[-1] * 0.02 + 0.025
    # WebRTC VAD holds speech on for a few frames after it stops (its hang-over): allow 150 ms.
    assert abs(start_s - 1.0) <= 0.05 and 0.0 <= end_s - 2.5 <= 0.15
    assert not mask[: int(0.9 / 0.02)].any() and not mask[int(2.7 / 0.02):].any()
    assert (mask == mask_from_vad(vad_flags(wave, 3, 30), 480, len(wave))).all()


def test_vad_rejects_bad_settings():
    with pytest.raises(ValueError, match="10, 20 or 30"):
        frame_samples(25)
    with pytest.raises(ValueError, match="aggressiveness"):
        vad_flags(np.zeros(1600, np.float32), mode=4)


def test_trim_to_speech_cuts_on_the_frame_grid_with_the_asked_context():
    sr = 16_000
    wave = np.concatenate([np.zeros(sr, np.float32), voiced(1.5), np.zeros(sr, np.float32)])
    mask = speech_mask(wave)
    first_speech, last_speech = np.flatnonzero(mask)[[0, -1]]
    trimmed, tmask = trim_to_speech(wave, mask, 0.15)
    pad = round(0.15 * sr / 320)
    assert len(tmask) == num_frames(len(trimmed))
    assert np.flatnonzero(tmask)[0] == pad and np.flatnonzero(tmask)[-1] == len(tmask) - 1 - pad
    assert np.array_equal(tmask, mask[first_speech - pad: last_speech + 1 + pad])
    start = (first_speech - pad) * 320
    assert np.array_equal(trimmed, wave[start: start + len(trimmed)])
    # Encoder frame j of the cut is frame first - pad + j of the whole: same 400 samples.
    assert len(trimmed) == (len(tmask) - 1) * 320 + 400
    # About 1.5 s of speech (+ VAD hang-over) + 2 x 0.15 s, from a 3.5 s file.
    assert 1.75 <= len(trimmed) / sr <= 2.05


def test_trim_to_speech_clips_at_the_edges_and_leaves_speechless_input_alone():
    wave = voiced(1.0)
    mask = speech_mask(wave)
    trimmed, tmask = trim_to_speech(wave, mask, 0.5)
    assert speech_span(mask, 0.5)[0] == 0 and len(tmask) == num_frames(len(trimmed)) <= len(mask)
    silent = np.zeros(16_000, np.float32)
    same, smask = trim_to_speech(silent, speech_mask(silent), 0.15)
    assert same is silent and len(smask) == num_frames(16_000)


def test_speech_mask_does_not_move_with_gain_and_leaves_silence_alone():
    from serlive.model.frames import VAD_LEVEL, level_for_vad

    rng = np.random.default_rng(0)
    room = rng.standard_normal(48_000).astype(np.float32) * 1e-3  # -60 dBFS of room noise
    wave = room.copy()
    wave[16_000:32_000] += voiced(1.0) * 0.5
    masks = {g: speech_mask(wave * g) for g in (0.02, 0.1, 0.5, 1.5)}  # -34 dB .. +3.5 dB, no clipping
    ref = masks[1.5]
    # The voicing (1.0 .. 2.0 s) is speech and the room noise around it is not (WebRTC VAD may mark its
    # first few frames and holds on for a hang-over after speech).
    assert ref[55:95].all() and not ref[10:45].any() and not ref[110:].any()
    for g, mask in masks.items():
        assert (mask != ref).sum() <= 2, g  # a boundary frame at most: the PCM rounding differs
    assert np.percentile(np.abs(level_for_vad(wave * 0.02)), 99.9) == pytest.approx(VAD_LEVEL, rel=1e-3)
    # Room noise alone is not levelled up into "speech": the gain stops at 48 dB (VAD_LEVEL / VAD_MIN_LEVEL).
    # (WebRTC VAD calls its first few frames speech whatever they hold: skip its start-up.)
    from serlive.model.frames import VAD_MIN_LEVEL

    np.testing.assert_allclose(level_for_vad(room * 0.1), room * 0.1 * (VAD_LEVEL / VAD_MIN_LEVEL), rtol=1e-5)
    assert not speech_mask(room * 0.1)[10:].any()
    np.testing.assert_array_equal(speech_mask((wave * 32767 * 0.5).astype(np.int16)), speech_mask(wave * 0.5))


def test_speech_span_starts_and_ends_where_speech_is_dense_not_at_isolated_frames():
    mask = np.zeros(200, bool)
    mask[60:140] = True            # 1.6 s of speech
    mask[[5, 20, 170, 190]] = True  # isolated VAD false positives in the pauses (noise)
    assert speech_span(mask, 0.0) == (60, 140)
    assert speech_span(mask, 0.1) == (55, 145)
    mask[58] = True                 # a speech frame just before a dense stretch belongs to it
    assert speech_span(mask, 0.0) == (58, 140)
    short = np.zeros(50, bool)
    short[[10, 12, 30]] = True      # no dense stretch at all: first to last speech frame, as before
    assert speech_span(short, 0.0) == (10, 31)


def test_speech_span_in_white_noise_stays_near_the_clean_span():
    import soundfile as sf

    from serlive.train import perturb

    rng = np.random.default_rng(0)
    grew = []
    for path in sorted(Path(__file__).parent.glob("data/ravdess/*.flac"))[:8]:
        x = sf.read(path, dtype="float32")[0]
        a, b = speech_span(speech_mask(x), 0.15)
        noisy = perturb.add_noise(x, perturb.white_noise(len(x), rng), 10.0)
        m = speech_mask(noisy)
        na, nb = speech_span(m, 0.15)
        first, last = np.flatnonzero(m)[[0, -1]]
        grew.append(((nb - na) - (b - a), (last - first) - (b - a)))
    grew = np.array(grew)
    # The VAD's own first-to-last speech frame reaches into the noise (the old cut); the span does not.
    assert np.median(grew[:, 0]) <= 10 < np.median(grew[:, 1])
