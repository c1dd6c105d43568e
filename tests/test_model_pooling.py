"""GAP / SAP / SR pooling against the paper's definitions."""

import numpy as np
import pytest
import torch

from serlive.model import EncoderConfig, ModelConfig, SERModel
from serlive.model.pooling import Pooling, SegmentalPooling, masked_mean, masked_std


def _frames(b=3, t=40, h=16):
    x = torch.randn(b, t, h)
    valid = torch.zeros(b, t, dtype=torch.bool)
    for i, n in enumerate((40, 31, 12)[:b]):
        valid[i, :n] = True
    speech = torch.rand(b, t) > 0.5
    return x, speech, valid


def test_sap_ignores_non_speech_frames_whatever_they_hold():
    sap = SegmentalPooling(16, 4).eval()
    x, speech, valid = _frames()
    ref = sap(x, speech, valid)
    for filler in (torch.randn_like(x) * 100, torch.zeros_like(x), torch.full_like(x, float("nan"))):
        y = torch.where((speech & valid)[..., None], x, filler)
        torch.testing.assert_close(sap(y, speech, valid), ref, rtol=0, atol=1e-6)


def test_sap_equals_mhsa_over_the_gathered_speech_frames():
    # Eq. 4-5 transcribed directly: g = speech frames, h = MHSA(g), SAP = mean(h).
    sap = SegmentalPooling(16, 4).eval()
    x, speech, valid = _frames()
    got = sap(x, speech, valid)
    for i in range(x.shape[0]):
        g = x[i][speech[i] & valid[i]][None]
        h, _ = sap.attn(g, g, g, need_weights=False)
        torch.testing.assert_close(got[i], h[0].mean(0), rtol=1e-5, atol=1e-6)


def test_sap_over_projected_frames_is_mhsa_over_the_projected_speech_frames():
    sap = SegmentalPooling(16, 2, dim=8).eval()  # sap_dim: wide frames (GE2E's 768) attended at a CPU's cost
    x, speech, valid = _frames()
    got = sap(x, speech, valid)
    assert got.shape == (3, 8) and sap.out_dim == 8
    for i in range(x.shape[0]):
        g = sap.down(x[i][speech[i] & valid[i]])[None]
        h, _ = sap.attn(g, g, g, need_weights=False)
        torch.testing.assert_close(got[i], h[0].mean(0), rtol=1e-5, atol=1e-6)
    y = torch.where((speech & valid)[..., None], x, torch.full_like(x, float("nan")))
    torch.testing.assert_close(sap(y, speech, valid), got, rtol=0, atol=1e-6)
    assert Pooling("sr", 16, 2, gap_std=True, sap_dim=8).out_dim == 16 + 16 + 8


def test_sap_without_speech_falls_back_to_all_valid_frames():
    sap = SegmentalPooling(16, 4).eval()
    x, _, valid = _frames()
    none = torch.zeros_like(valid)
    out = sap(x, none, valid)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, sap(x, valid, valid))


def test_gap_of_padded_batch_equals_each_item_alone():
    x, speech, valid = _frames()
    x = torch.where(valid[..., None], x, torch.randn_like(x) * 1e3)  # padding holds garbage
    got = masked_mean(x, valid)
    for i in range(3):
        n = int(valid[i].sum())
        torch.testing.assert_close(got[i], x[i, :n].mean(0))


@pytest.mark.parametrize("mode,dim", [("gap", 16), ("sap", 16), ("sr", 32)])
def test_pooling_modes_shapes(mode, dim):
    x, speech, valid = _frames()
    assert Pooling(mode, 16, 4)(x, speech, valid).shape == (3, dim)
    assert Pooling(mode, 16, 4, gap_std=True)(x, speech, valid).shape == (3, dim + (16 if mode != "sap" else 0))


def test_statistics_pooling_is_mean_and_std_of_each_item_alone():
    x, speech, valid = _frames()
    x = torch.where(valid[..., None], x, torch.randn_like(x) * 1e3)
    got = Pooling("gap", 16, 4, gap_std=True)(x, speech, valid)
    for i in range(3):
        ref = x[i, : int(valid[i].sum())].numpy()
        np.testing.assert_allclose(got[i, :16].numpy(), ref.mean(0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got[i, 16:].numpy(), np.sqrt(ref.var(0) + 1e-5), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(masked_std(x, valid)[:, :], got[:, 16:])


def test_spectral_stats_are_the_classic_statistics_of_the_speech_frames():
    from serlive.model.spectral import SpectralStats

    branch = SpectralStats().eval()  # not standardised yet (shift 0, scale 1): the output is the raw vector
    rng = np.random.default_rng(0)
    wave = (rng.standard_normal(16_000) * 0.1).astype(np.float32)
    speech = torch.from_numpy(rng.random(49) > 0.4)[None]
    with torch.no_grad():
        got = branch(torch.from_numpy(wave)[None], torch.tensor([16_000]), speech)[0].numpy()
        mel = branch.frontend(torch.from_numpy(wave)[None])[0].numpy()  # (49, 64)
        louder = branch(torch.from_numpy(wave * 8)[None], torch.tensor([16_000]), speech)[0].numpy()
    mel = (mel - mel.mean()) / 5.0  # the item's mean log-mel removed, the built-in scale
    keep = speech[0].numpy()
    pairs = keep[1:] & keep[:-1]
    ref = np.concatenate([mel[keep].mean(0), mel[keep].std(0), np.diff(mel, axis=0)[pairs].std(0)])
    np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(louder, got, rtol=1e-3, atol=1e-3)  # gain-invariant
    many = torch.randn(50, 192) * 3 + 1
    branch.standardise_with(many)
    with torch.no_grad():
        again = branch(torch.from_numpy(wave)[None], torch.tensor([16_000]), speech)[0].numpy()
    np.testing.assert_allclose(again, (ref - many.mean(0).numpy()) / many.std(0).numpy(), rtol=1e-3, atol=1e-3)


def test_model_with_both_statistics_gives_padded_items_what_they_get_alone():
    cfg = ModelConfig(encoder=EncoderConfig(dim=32, heads=4), gap_std=True, spectral_stats=True)
    _padded_vs_single(SERModel(cfg).eval(), [16_000, 9_000, 23_456])


def _padded_vs_single(model, lengths):
    waves = [torch.randn(n) * 0.1 for n in lengths]
    n = max(lengths)
    batch = torch.zeros(len(waves), n)
    for i, w in enumerate(waves):
        batch[i, : len(w)] = w
    t = (n - 400) // 320 + 1
    speech = torch.rand(len(waves), t) > 0.3
    with torch.no_grad():
        out = model(batch, torch.tensor(lengths), speech)
        for i, w in enumerate(waves):
            one = model(w[None], torch.tensor([len(w)]), speech[i : i + 1])
            torch.testing.assert_close(out.embedding[i], one.embedding[0], rtol=1e-4, atol=1e-4)


def test_builtin_model_padded_batch_equals_items_alone():
    model = SERModel(ModelConfig(encoder=EncoderConfig(dim=32, heads=4))).eval()
    _padded_vs_single(model, [16_000, 9_000, 23_456])


def test_wavlm_model_padded_batch_equals_items_alone(tiny_wavlm_dir):
    model = SERModel(ModelConfig(encoder=EncoderConfig(kind="hf", name=str(tiny_wavlm_dir)))).eval()
    _padded_vs_single(model, [16_000, 9_000, 23_456])


@pytest.mark.parametrize("level_input", [{"frame_energy": True}, {"input_norm": "global"}])
def test_builtin_level_inputs_keep_level_and_padding_invariance(level_input):
    cfg = ModelConfig(encoder=EncoderConfig(dim=32, heads=4, **level_input))
    model = SERModel(cfg).eval()
    _padded_vs_single(model, [16_000, 9_000])
    x = torch.randn(1, 16_000) * 0.1
    with torch.no_grad():
        quiet, _ = model.encoder(x, torch.tensor([16_000]))
        loud, _ = model.encoder(x * 8, torch.tensor([16_000]))
        plain = SERModel(cfg.replace(encoder=EncoderConfig(dim=32, heads=4))).eval()
        p_quiet, _ = plain.encoder(x, torch.tensor([16_000]))
        p_loud, _ = plain.encoder(x * 8, torch.tensor([16_000]))
    # Per-frame LayerNorm alone cannot see a uniform gain; the energy input and the global scaling can.
    torch.testing.assert_close(p_quiet, p_loud, rtol=1e-3, atol=1e-3)
    assert (quiet - loud).abs().max() > 1e-2


def test_builtin_utterance_norm_is_gain_invariant_but_keeps_dynamics():
    cfg = ModelConfig(encoder=EncoderConfig(dim=32, heads=4, input_norm="utterance"))
    model = SERModel(cfg).eval()
    _padded_vs_single(model, [16_000, 9_000])
    plain = SERModel(cfg.replace(encoder=EncoderConfig(dim=32, heads=4))).eval()
    torch.manual_seed(0)
    x = torch.randn(1, 16_000) * 0.05
    lengths = torch.tensor([16_000])
    with torch.no_grad():
        base, _ = model.encoder(x, lengths)
        gained, _ = model.encoder(x * 8, lengths)
    # A uniform gain is invisible to the whole encoder (a microphone's level says nothing about emotion) ...
    torch.testing.assert_close(base, gained, rtol=1e-3, atol=1e-3)

    def normalised_input(m, wave):
        mel = m.encoder.frontend(wave)
        return m.encoder.in_norm(mel, torch.ones(mel.shape[:2], dtype=torch.bool))[0]  # (T, n_mels)

    louder_half = torch.cat([x[:, :8_000], 8 * x[:, 8_000:]], dim=1)  # same spectra, second half 18 dB up
    apart = [t for t in range(49) if t != 24]  # frame 24 (samples 7680..8080) straddles the change
    with torch.no_grad():
        utt = normalised_input(model, x)[apart], normalised_input(model, louder_half)[apart]
        frame = normalised_input(plain, x)[apart], normalised_input(plain, louder_half)[apart]
    # ... but one half louder than the other is seen; per-frame LayerNorm cannot see it.
    torch.testing.assert_close(frame[0], frame[1], rtol=1e-3, atol=1e-3)
    assert (utt[0] - utt[1]).abs().max() > 0.1


def test_spec_augment_masks_bands_and_spans_only_while_training():
    from serlive.model.builtin import spec_augment

    torch.manual_seed(0)
    feats = torch.ones(64, 100, 40)
    out = spec_augment(feats, freq_masks=2, freq_width=8, time_masks=2, time_width=10)
    zero_bins = (out == 0).all(dim=1)  # (B, F): a mel bin zeroed at every frame
    zero_frames = (out == 0).all(dim=2)  # (B, T)
    assert zero_bins.sum(1).max() <= 16 and zero_frames.sum(1).max() <= 20
    assert zero_bins.any(1).float().mean() > 0.7 and zero_frames.any(1).float().mean() > 0.7
    # Everything zeroed lies in a zeroed bin or frame: whole bands and spans, nothing scattered.
    assert torch.equal(out == 0, zero_bins[:, None, :] | zero_frames[:, :, None])
    assert not torch.equal(zero_bins[0], zero_bins[1])  # drawn per item
    # Eval mode: the flag changes nothing, so an exported model predicts as without it.
    cfg = ModelConfig(encoder=EncoderConfig(dim=32, heads=4, spec_augment=True))
    model = SERModel(cfg).eval()
    plain = SERModel(cfg.replace(encoder=EncoderConfig(dim=32, heads=4))).eval()
    plain.load_state_dict(model.state_dict())
    x = torch.randn(2, 16_000) * 0.1
    lengths = torch.tensor([16_000, 12_000])
    with torch.no_grad():
        torch.testing.assert_close(model.encoder(x, lengths)[0], plain.encoder(x, lengths)[0])
        model.train(), plain.train()
        for m in (model, plain):
            for mod in m.modules():
                if isinstance(mod, torch.nn.Dropout):
                    mod.eval()
        assert not torch.allclose(model.encoder(x, lengths)[0], plain.encoder(x, lengths)[0])
