"""The robustness perturbations do what they claim: SNR, level and clipping measured back, band limits of the
telephone line checked by spectrum, the RT60 of simulated rooms measured back by Schroeder integration,
codecs that keep the length and the timing, and the same audio for the same seed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from serlive.train import lines, perturb
from serlive.train.data import load_audio
from serlive.train.rooms import RirBank, draw_rooms, measure_rt60_s, reverberate

DATA = Path(__file__).parent / "data" / "ravdess"
RATE = 16000


@pytest.fixture(scope="module")
def speech():
    return [load_audio(p, 4 * RATE) for p in sorted(DATA.glob("*.flac"))[:6]]


@pytest.fixture(scope="module")
def rooms(tmp_path_factory):
    return RirBank(draw_rooms((0.3, 0.6), 1, seed=1), tmp_path_factory.mktemp("rirs"))


def tone(seconds=2.0, amp=0.1, hz=440.0):
    t = np.arange(int(seconds * RATE)) / RATE
    return (amp * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def band_db(x, lo_hz, hi_hz):
    spec = np.abs(np.fft.rfft(x.astype(np.float64))) ** 2
    f = np.fft.rfftfreq(len(x), 1 / RATE)
    return 10 * np.log10(spec[(f >= lo_hz) & (f < hi_hz)].sum() / len(x) + 1e-30)


@pytest.mark.parametrize("kind", perturb.NOISES)
@pytest.mark.parametrize("snr_db", [20.0, 5.0])
def test_noise_is_added_at_the_asked_snr(kind, snr_db, speech):
    x = tone()  # power amp^2 / 2, known without the code under test
    y = perturb.add_noise(x, perturb.noise_of(kind, len(x), np.random.default_rng(0), speech), snr_db)
    measured = 10 * np.log10((0.1 ** 2 / 2) / np.mean((y - x).astype(np.float64) ** 2))
    assert len(y) == len(x) and y.dtype == np.float32
    assert measured == pytest.approx(snr_db, abs=0.1)


def test_snr_refers_to_active_speech_not_to_the_silence_around_it():
    x = np.concatenate([np.zeros(2 * RATE, np.float32), tone(), np.zeros(2 * RATE, np.float32)])
    y = perturb.add_noise(x, perturb.white_noise(len(x), np.random.default_rng(0)), 10.0)
    assert 10 * np.log10((0.1 ** 2 / 2) / np.mean((y - x).astype(np.float64) ** 2)) == pytest.approx(10.0, abs=0.2)


def test_noise_colours_and_bursts():
    rng = np.random.default_rng(0)
    white, pink, bursty = (perturb.noise_of(k, 10 * RATE, rng) for k in ("white", "pink", "bursty"))
    # white: equal power per hertz; pink: equal power per octave (-3 dB per octave per hertz)
    assert band_db(white, 4000, 8000) - band_db(white, 500, 1000) == pytest.approx(10 * np.log10(8), abs=0.5)
    assert band_db(pink, 4000, 8000) - band_db(pink, 500, 1000) == pytest.approx(0.0, abs=0.5)

    def spread_db(x):  # loud vs quiet 50 ms frames
        p = np.mean(x[: len(x) // 800 * 800].reshape(-1, 800).astype(np.float64) ** 2, axis=1)
        return 10 * np.log10(np.percentile(p, 90) / np.percentile(p, 10))

    assert spread_db(white) < 2.0 and spread_db(bursty) > 10.0


def test_babble_is_made_of_the_pool(speech):
    babble = perturb.babble_noise(3 * RATE, np.random.default_rng(0), speech[:3])
    assert np.mean(babble.astype(np.float64) ** 2) == pytest.approx(1.0, rel=1e-3)
    assert band_db(babble, 100, 1000) - band_db(babble, 6000, 8000) > 20  # speech-shaped, unlike white noise
    with pytest.raises(ValueError, match="pool"):
        perturb.babble_noise(RATE, np.random.default_rng(0), [])


def test_level_is_measured_back_and_clips_at_full_scale():
    x = tone(amp=0.01)
    for gain_db in (-20.0, -10.0, 6.0):
        y = perturb.level(x, gain_db)
        assert 20 * np.log10(np.sqrt(np.mean(y.astype(np.float64) ** 2) / np.mean(x.astype(np.float64) ** 2))) \
            == pytest.approx(gain_db, abs=0.01)
    loud = perturb.level(tone(amp=0.8), 6.0)
    assert np.max(np.abs(loud)) == 1.0 and np.mean(np.abs(loud) == 1.0) > 0.2


def test_clipping_clips_the_asked_share_of_samples():
    x = perturb.white_noise(RATE, np.random.default_rng(0)) * 0.1
    y = perturb.clipping(x, 10.0)
    assert np.mean(y != x) == pytest.approx(0.10, abs=0.005)
    assert np.max(np.abs(y)) < np.max(np.abs(x)) / 2


def test_telephone_band_is_cut_above_3400_and_below_300_hz():
    x = 0.1 * perturb.white_noise(4 * RATE, np.random.default_rng(0))
    y = lines.telephone(x)
    assert len(y) == len(x) and np.isfinite(y).all()
    passband = band_db(y, 500, 3000) - band_db(x, 500, 3000)
    assert abs(passband) < 1.5
    assert band_db(y, 3800, 8000) - band_db(x, 3800, 8000) < passband - 30
    assert band_db(y, 20, 150) - band_db(x, 20, 150) < passband - 25


def test_mu_law_has_256_levels_and_about_38_db_snr_on_a_loud_tone():
    x = tone(amp=0.5, hz=1000.0)
    y = lines.mu_law(x)
    assert len(np.unique(y)) <= 256
    assert 10 * np.log10(np.mean(x.astype(np.float64) ** 2) / np.mean((y - x).astype(np.float64) ** 2)) > 33


def test_simulated_rooms_have_their_rt60_and_are_cached(rooms, monkeypatch):
    for rir, room in zip(rooms.rirs, rooms.rooms):
        assert np.argmax(np.abs(rir)) <= 8 and np.sum(rir.astype(np.float64) ** 2) == pytest.approx(1.0, rel=1e-4)
        assert measure_rt60_s(rir) == pytest.approx(room.rt60_s, rel=0.15)
    from serlive.train import rooms as rooms_module

    monkeypatch.setattr(rooms_module, "simulate", lambda *_a: pytest.fail("simulated although cached"))
    again = RirBank(rooms.rooms, rooms.cache_path.parent)
    assert all(np.array_equal(a, b) for a, b in zip(again.rirs, rooms.rirs))


def test_reverberation_spreads_energy_in_time_by_the_rt60(rooms):
    x = np.zeros(RATE, np.float32)
    x[1000] = 1.0
    tails = []
    for rt60 in (0.3, 0.6):
        y = reverberate(x, rooms.draw(np.random.default_rng(0), rt60))
        assert len(y) == len(x) and np.sqrt(np.mean(y ** 2)) == pytest.approx(np.sqrt(np.mean(x ** 2)), rel=1e-3)
        tails.append(np.sum(y[1000 + 1600:].astype(np.float64) ** 2) / np.sum(y.astype(np.float64) ** 2))
    assert 0 < tails[0] < tails[1]  # more energy 100 ms after the click in the longer room


@pytest.mark.parametrize("name,kbps", [("opus", 12), ("opus", 16), ("mp3", 32)])
def test_codecs_keep_length_and_timing(name, kbps, speech):
    x = speech[0]
    y = lines.codec(x, name, kbps)
    assert len(y) == len(x) and y.dtype == np.float32 and np.isfinite(y).all()
    assert np.corrcoef(x, y)[0, 1] > 0.8  # re-aligned: the codec's delay is taken out
    assert not np.allclose(x, y, atol=1e-3)  # and it is lossy


def test_codec_many_matches_one_at_a_time_in_length(speech):
    ys = lines.codec_many(speech[:3], "mp3", 32)
    assert [len(y) for y in ys] == [len(x) for x in speech[:3]]
    assert all(np.corrcoef(x, y)[0, 1] > 0.8 for x, y in zip(speech[:3], ys))


def test_every_benchmark_condition_is_reproducible_with_its_seed(speech, rooms):
    x = speech[1]
    assert len(perturb.BENCHMARK) == 24 and len({c.name for c in perturb.BENCHMARK}) == 24
    for cond in perturb.BENCHMARK:
        a, b = (perturb.apply(cond, x, np.random.default_rng(5), speech[2:], rooms) for _ in range(2))
        assert len(a) == len(x) and np.isfinite(a).all() and np.array_equal(a, b), cond.name
        if cond.family != "clean":
            assert not np.array_equal(a, x), cond.name
    noisy = [perturb.apply(perturb.BENCHMARK[5], x, np.random.default_rng(s), speech[2:], rooms) for s in (1, 2)]
    assert not np.array_equal(*noisy)  # another seed, another noise


# --- TrainAugment: the perturbations of what the classifier learns from (augment.classifier) ---

def augment_cfg(**kw):
    from serlive.train.config import AugmentConfig

    return AugmentConfig(**{"classifier": True, "classifier_rt60_s": (0.25,)} | kw)


def snr_of(x, y):
    return 10 * np.log10(perturb.active_power(x) / np.mean((y - x).astype(np.float64) ** 2))


def test_train_augment_draws_settings_within_its_ranges_and_repeats_with_a_seed(speech, tmp_path):
    from serlive.train.augment import TrainAugment

    aug = TrainAugment(augment_cfg(classifier_p=1.0, classifier_codec_p=0.0), speech[3:], rooms_cache_dir=tmp_path)
    plans = [aug.plan(np.random.default_rng(s)) for s in range(200)]
    assert all(1 <= len(chain) <= 2 and codec is None for chain, codec in plans)
    settings = [(f, v) for chain, _ in plans for f, v in chain]
    assert {f for f, _ in settings} == set(aug.families) and "opus" not in aug.families
    assert all(3.0 <= v <= 30.0 for f, v in settings if f in perturb.NOISES)
    assert all(-25.0 <= v <= 10.0 for f, v in settings if f == "level")
    for chain, _ in plans:  # signal-path order: room, noise, gain, clipping, line
        assert [aug.families.index(f) for f, _ in chain] == sorted(aug.families.index(f) for f, _ in chain)
    a, b = (aug.batch(speech[:3], np.random.default_rng(9)) for _ in range(2))
    assert all(np.array_equal(p, q) and len(p) == len(x) for p, q, x in zip(a, b, speech))
    never = TrainAugment(augment_cfg(classifier_p=0.0), speech[3:]).batch(speech[:3], np.random.default_rng(0))
    assert all(np.array_equal(p, x) for p, x in zip(never, speech))


def test_train_augment_codec_stage_and_single_families(speech, tmp_path):
    from serlive.train.augment import TrainAugment

    coded = TrainAugment(augment_cfg(classifier_families=("mp3",), classifier_codec_p=1.0), [])
    for x, y in zip(speech[:2], coded.batch(speech[:2], np.random.default_rng(0))):
        assert len(y) == len(x) and np.corrcoef(x, y)[0, 1] > 0.8 and not np.allclose(x, y, atol=1e-3)
    noisy = TrainAugment(augment_cfg(classifier_families=("pink",), classifier_snr_db=(10.0, 10.0)), [])
    for x, y in zip(speech[:2], noisy.batch(speech[:2], np.random.default_rng(0))):
        assert snr_of(x, y) == pytest.approx(10.0, abs=0.1)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from serlive.train import fit

    from .test_train_fit import tiny_cfg

    return fit.load_data(tiny_cfg(tmp_path_factory.mktemp("vad")), progress=False)


def test_training_batches_are_perturbed_and_validation_stays_clean(tiny_data):
    from serlive.train.sources import WaveSource

    data, index = tiny_data, np.arange(12)
    cfg = augment_cfg(classifier_families=("white",), classifier_snr_db=(10.0, 10.0), kind="volume",
                      volume_db=(-6.0, -6.0))
    source = WaveSource(data, cfg, 4, 20, perturb=cfg)
    batches = list(source.train_batches(index, np.random.default_rng(0)))
    from serlive.model.frames import speech_mask

    rows = moved = 0
    for batch in batches:
        half = len(batch.index) // 2
        for r in range(len(batch.index)):
            n, clean, cached = int(batch.lengths[r]), data.wave(int(batch.index[r])), data.masks[int(batch.index[r])]
            x, mask = batch.waves[r, :n].numpy(), batch.speech[r, : len(cached)].numpy()
            assert n == len(clean)
            if r < half and not np.array_equal(x, clean):  # learnt from: white noise at 10 dB SNR (p = 0.8)
                rows += 1
                assert snr_of(clean, x) == pytest.approx(10.0, abs=0.1)
                # its mask is the VAD's on the noisy audio, as the engine would compute it, not the clean one
                assert mask.tolist() == speech_mask(x, data.vad.mode, data.vad.frame_ms).tolist()
                moved += mask.tolist() != cached.tolist()
            else:  # clean rows, and the SCL view (from the clean audio, 6 dB down), keep the cached mask
                assert mask.tolist() == cached.tolist()
                if r >= half:
                    assert np.allclose(x, clean * 10 ** (-6 / 20), atol=1e-6)
    assert rows >= 6  # about 80 % of 12
    assert moved >= 1  # noise changes what the VAD hears on at least one of them
    for batch in source.eval_batches(index, 4):
        for r in range(len(batch.index)):
            clean = data.wave(int(batch.index[r]))
            assert np.array_equal(batch.waves[r, : len(clean)].numpy(), clean)
    off = WaveSource(data, None, 4, 20)
    for batch in off.train_batches(index, np.random.default_rng(0)):
        assert all(np.array_equal(batch.waves[r, : int(batch.lengths[r])].numpy(), data.wave(int(i)))
                   for r, i in enumerate(batch.index))


def test_a_tiny_fit_runs_with_classifier_augmentation(tmp_path, monkeypatch):
    import json

    import torch

    from serlive.train import cli

    from .test_train_fit import TINY

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    torch.set_num_threads(1)
    sets = [a for s in TINY + [f"data.cache_dir='{tmp_path / 'vad'}'", "optim.epochs=2", "augment.classifier=true",
                               "augment.classifier_p=1.0", "augment.classifier_rt60_s=[0.25]"] for a in ("--set", s)]
    assert cli.main(["fit", *sets, "--out", str(tmp_path / "run")]) == 0
    result = json.loads((tmp_path / "run" / "fold_0" / "result.json").read_text())
    assert len(result["history"]) == 2 and np.isfinite(result["history"][-1]["train_loss"])
    saved = json.loads((tmp_path / "run" / "train_config.json").read_text())["augment"]
    assert saved["classifier"] is True and saved["classifier_rt60_s"] == [0.25]
    assert cli.main(["fit", *sets, "--freeze-encoder", "--out", str(tmp_path / "frozen")]) == 2


def test_old_configs_load_with_classifier_augmentation_off(tmp_path):
    import json

    from serlive.train import config

    table = config.TrainConfig().to_dict()
    for key in [k for k in table["augment"] if k.startswith("classifier")]:
        del table["augment"][key]  # a train_config.json written before the option existed
    (tmp_path / "old.json").write_text(json.dumps(table))
    assert config.load_json(tmp_path / "old.json").augment.classifier is False
    with pytest.raises(config.ConfigError, match="classifier_families"):
        config.load(None, ["augment.classifier_families=['thunder']"])


def test_train_augment_draws_classifier_rooms_per_rt60_and_each_of_them(speech, tmp_path):
    from serlive.train import config
    from serlive.train.augment import TrainAugment

    aug = TrainAugment(augment_cfg(classifier_families=("reverb",), classifier_rooms=3), [], rooms_cache_dir=tmp_path)
    bank = aug.rooms
    assert len(bank.rooms) == 3 and {r.rt60_s for r in bank.rooms} == {0.25}
    assert len({r.size_m for r in bank.rooms}) == 3  # three different shoeboxes
    drawn = {id(bank.draw(np.random.default_rng(s), 0.25)) for s in range(40)}
    assert drawn == {id(r) for r in bank.rirs}
    assert config.AugmentConfig().classifier_rooms == 2  # the rooms of every run made before the option
    for bad in (0, 2.5, True):
        with pytest.raises(config.ConfigError, match="classifier_rooms"):
            augment_cfg(classifier_rooms=bad)
