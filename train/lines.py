"""What a line does to speech: the telephone band with G.711 μ-law, and lossy codecs through ffmpeg.

All take and return 16 kHz mono float32 of the same length. Hand-written rather than taken from
``audiomentations`` (see :mod:`.perturb` for the general reasons): it has no μ-law or Opus, and its
``Mp3Compression`` goes through temporary files and the ``lameenc``/``pydub`` packages.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
import threading

import numpy as np

from serlive.model import SAMPLE_RATE_HZ

TELEPHONE_RATE_HZ = 8000
MU = 255.0

CODECS = {"opus": ("libopus", "ogg"), "mp3": ("libmp3lame", "mp3")}
"""Codec name -> (ffmpeg encoder, container) for :func:`codec`."""

MAX_DELAY_SAMPLES = 4000
"""The longest codec delay :func:`codec` looks for when it re-aligns the decoded audio (250 ms)."""


class CodecError(RuntimeError):
    """ffmpeg is missing or failed; the message is one sentence."""


@functools.lru_cache(maxsize=16)
def _band_sos(low_hz: float, high_hz: float, order: int):
    from scipy.signal import butter

    return butter(order, [low_hz, high_hz], btype="bandpass", fs=TELEPHONE_RATE_HZ, output="sos")


def mu_law(x: np.ndarray) -> np.ndarray:
    """G.711-style μ-law (μ = 255) at 8 bits: compand, quantise to 256 levels, expand. Full scale is ±1.
    (G.711 approximates this curve with 8 linear segments; the difference is below its quantisation step.)"""
    x = np.clip(x, -1.0, 1.0)
    y = np.sign(x) * np.log1p(MU * np.abs(x)) / np.log1p(MU)
    q = np.round((y + 1.0) * 127.5) / 127.5 - 1.0
    return (np.sign(q) * np.expm1(np.abs(q) * np.log1p(MU)) / MU).astype(np.float32)


def telephone(x: np.ndarray, low_hz: float = 300.0, high_hz: float = 3400.0, order: int = 6,
              companding: bool = True) -> np.ndarray:
    """A narrow-band call: down to 8 kHz, band-pass ``low_hz``..``high_hz`` (Butterworth, ``order`` per
    edge), μ-law at 8 bits, back to 16 kHz. The length is kept."""
    import soxr
    from scipy.signal import sosfilt

    narrow = soxr.resample(np.asarray(x, np.float32), SAMPLE_RATE_HZ, TELEPHONE_RATE_HZ)
    narrow = sosfilt(_band_sos(low_hz, high_hz, order), narrow).astype(np.float32)
    if companding:
        narrow = mu_law(narrow)
    return _fit(soxr.resample(narrow, TELEPHONE_RATE_HZ, SAMPLE_RATE_HZ).astype(np.float32), len(x))


def require_ffmpeg(what: str) -> None:
    """A ConfigError naming ``what`` when ffmpeg is not on the PATH (checked before any work starts)."""
    from serlive.model import ConfigError

    if shutil.which("ffmpeg") is None:
        raise ConfigError(f"{what} needs ffmpeg, which is not installed (apt-get install ffmpeg)")


def codec(x: np.ndarray, name: str, bitrate_kbps: float) -> np.ndarray:
    """Encode ``x`` with ``name`` (``opus`` or ``mp3``) at ``bitrate_kbps`` and decode it again: two ffmpeg
    processes joined by a pipe, no temporary files. The decoded audio is shifted back by the codec's delay
    (found by cross-correlation, at most :data:`MAX_DELAY_SAMPLES`) and cut or padded to ``len(x)``."""
    return codec_many([x], name, bitrate_kbps)[0]


def codec_many(waves: list[np.ndarray], name: str, bitrate_kbps: float, gap_s: float = 0.25) -> list[np.ndarray]:
    """:func:`codec` for several waveforms in one ffmpeg run: they are joined with ``gap_s`` of silence,
    coded, re-aligned and cut apart again. Starting ffmpeg costs more than coding a few seconds, so a
    training batch's codec items go through together."""
    gap = np.zeros(int(gap_s * SAMPLE_RATE_HZ), np.float32)
    joined = np.concatenate([p for w in waves for p in (np.asarray(w, np.float32), gap)])
    y = _round_trip(joined, name, bitrate_kbps)
    y = _fit(y[_delay(joined, y):], len(joined))
    out, start = [], 0
    for w in waves:
        out.append(np.ascontiguousarray(y[start: start + len(w)], np.float32))
        start += len(w) + len(gap)
    return out


def _round_trip(x: np.ndarray, name: str, bitrate_kbps: float) -> np.ndarray:
    if name not in CODECS:
        raise ValueError(f"unknown codec {name!r} (known: {', '.join(CODECS)})")
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise CodecError("ffmpeg is not installed (needed for the codec perturbations)")
    encoder, container = CODECS[name]
    raw = ["-f", "f32le", "-ar", str(SAMPLE_RATE_HZ), "-ac", "1"]
    enc_cmd = [ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error", *raw, "-i", "pipe:0",
               "-c:a", encoder, "-b:a", f"{bitrate_kbps:g}k", "-f", container, "pipe:1"]
    dec_cmd = [ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error", "-f", container, "-i", "pipe:0", *raw,
               "pipe:1"]
    enc = subprocess.Popen(enc_cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    dec = subprocess.Popen(dec_cmd, stdin=enc.stdout, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    enc.stdout.close()  # the decoder holds the read end now
    data = np.ascontiguousarray(x, np.float32).tobytes()
    writer = threading.Thread(target=_feed, args=(enc.stdin, data), daemon=True)
    writer.start()
    out, err = dec.communicate()
    writer.join()
    if enc.wait() != 0 or dec.returncode != 0:
        detail = err.decode(errors="replace").strip()[:200]
        raise CodecError(f"ffmpeg {name} at {bitrate_kbps:g} kbit/s failed: {detail}")
    return np.frombuffer(out, np.float32).copy()


def _feed(pipe, data: bytes) -> None:
    try:
        pipe.write(data)
    except BrokenPipeError:
        pass
    finally:
        pipe.close()


def _delay(x: np.ndarray, y: np.ndarray) -> int:
    """The lag (0..MAX_DELAY_SAMPLES) at which ``y`` best matches ``x``."""
    from scipy.signal import fftconvolve

    n = min(len(x), len(y))
    if n < 64:
        return 0
    ref = np.asarray(x[:n], np.float64)
    corr = fftconvolve(np.asarray(y[:n], np.float64), ref[::-1], mode="full")[n - 1:]
    return int(np.argmax(corr[: MAX_DELAY_SAMPLES + 1]))


def _fit(y: np.ndarray, n: int) -> np.ndarray:
    if len(y) >= n:
        return np.ascontiguousarray(y[:n], np.float32)
    return np.concatenate([y, np.zeros(n - len(y), np.float32)]).astype(np.float32)
