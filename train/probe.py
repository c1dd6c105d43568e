"""``ser-train probe``: what a model says about what it was never meant to hear, and how sure it is.

A model directory predicts some speech files as they are, the same files under a few conditions of the
robustness benchmark (noise at 10 dB SNR, a reverberant room, the telephone band), and inputs that are not
emotional speech at all: noise alone, silence, a two-tone chord and, when ``espeak-ng`` is installed,
synthetic speech in three languages. One row per input: how many, the share flagged ``uncertain``, and the
mean and highest top probability. No labels are needed: it shows whether the confidence falls where the
input leaves what the model knows, and whether anything comes out at 0.99.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from serlive.model import SAMPLE_RATE_HZ, ConfigError, Predictor, bundled_model_dir

from . import perturb
from .data import load_audio

CONDITIONS = ("white noise 10 dB SNR", "pink noise 10 dB SNR", "babble noise 10 dB SNR", "reverb RT60 0.6 s",
              "telephone 300-3400 Hz mu-law")
SENTENCES = (("en", "I can't believe you did that again, after everything we said."),
             ("de", "Das Wetter ist heute schön, und ich gehe gleich nach draußen."),
             ("fr", "Je ne sais pas pourquoi tu es parti sans rien dire."))
MAX_SAMPLES = 30 * SAMPLE_RATE_HZ


def non_speech(seconds: float = 3.0, seed: int = 0) -> dict[str, list[np.ndarray]]:
    """Inputs with no voice in them, each ``seconds`` long."""
    n, rng = int(seconds * SAMPLE_RATE_HZ), np.random.default_rng(seed)
    t = np.arange(n) / SAMPLE_RATE_HZ
    chord = 0.2 * (np.sin(2 * np.pi * 220 * t) + np.sin(2 * np.pi * 330 * t))
    return {"white and pink noise": [0.05 * perturb.white_noise(n, rng), 0.05 * perturb.pink_noise(n, rng)],
            "silence": [np.zeros(n, np.float32)],
            "two-tone chord (220 + 330 Hz)": [chord.astype(np.float32)]}


def synthetic_speech() -> list[np.ndarray] | None:
    """espeak-ng's voice saying :data:`SENTENCES` (None when espeak-ng is not installed)."""
    if shutil.which("espeak-ng") is None:
        return None
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for lang, text in SENTENCES:
            path = Path(tmp) / f"{lang}.wav"
            subprocess.run(["espeak-ng", "-v", lang, "-w", str(path), text], check=True, capture_output=True)
            out.append(load_audio(path, MAX_SAMPLES))
    return out


def run(model_dir: str | Path | None, files: list[str | Path], seed: int = 0) -> list[dict]:
    """The rows of the probe (see the module docstring); ``files``: speech recordings (two or more)."""
    if len(files) < 2:
        raise ConfigError("ser-train probe needs two or more speech files (babble is made from the others)")
    predictor = Predictor.from_dir(model_dir or bundled_model_dir())
    speech = [load_audio(Path(f), MAX_SAMPLES) for f in files]
    rooms = perturb.benchmark_rooms(rt60s_s=(0.6,))
    by_name = {c.name: c for c in perturb.BENCHMARK}
    inputs = {"speech as recorded": speech}
    for name in CONDITIONS:
        cond = by_name[name]
        inputs[f"the same, {name}"] = [
            perturb.apply(cond, x, np.random.default_rng([seed, i]), speech[:i] + speech[i + 1:], rooms)
            for i, x in enumerate(speech)]
    inputs |= non_speech(seed=seed)
    espeak = synthetic_speech()
    rows = [row(name, [predictor.predict(x) for x in waves]) for name, waves in inputs.items()]
    if espeak is None:
        rows.append({"input": "espeak-ng speech (en, de, fr)", "n": 0, "note": "espeak-ng is not installed"})
    else:
        rows.append(row("espeak-ng speech (en, de, fr)", [predictor.predict(x) for x in espeak]))
    return rows


def row(name: str, preds: list) -> dict:
    conf = np.array([p.confidence for p in preds])
    return {"input": name, "n": len(preds), "uncertain": float(np.mean([p.uncertain for p in preds])),
            "mean_top": float(conf.mean()), "max_top": float(conf.max())}


def markdown(rows: list[dict]) -> str:
    lines = ["| input | n | flagged `uncertain` | mean top probability | highest top probability |",
             "|---|---|---|---|---|"]
    for r in rows:
        if r["n"] == 0:
            lines.append(f"| {r['input']} | 0 | {r['note']} | — | — |")
        else:
            lines.append(f"| {r['input']} | {r['n']} | {100 * r['uncertain']:.0f} % | {r['mean_top']:.2f} | "
                         f"{r['max_top']:.2f} |")
    return "\n".join(lines) + "\n"
