"""``ser-live bench --agreement FILE ...``: how far incremental interims are from whole-segment ones, on real speech.

Each file runs through a stream's own pipeline (VAD, segmenter, the interim schedule), as fast as possible. Every
interim it asks for is predicted twice: by the whole-segment path (the encoder over the whole open segment, as
before incremental interims) and by the incremental one (encoder state carried over from the segment's previous
interim, :mod:`serlive.model.incremental`), for each ``--tolerance``; finals drop the state, as the worker does (the
last column: what a final that finished its segment's state within each ``--final-tolerance``, instead of
recomputing the segment, would have given).
Printed: interims compared, how often their labels agree, the largest and 99th-percentile probability
difference, how many interims reran their segment's LSTM (rebuilds), LSTM frames run against the whole path's,
and the CPU time of both paths in the same run (process time: what a neighbour's load inflates least).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np

from .chunks import AudioChunk
from .config import EngineConfig, InferenceConfig
from .pipeline import InferenceRequest, StreamPipeline

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")


def audio_files(paths: list[str]) -> list[Path]:
    """The audio files named, and those inside the folders named (recursively), sorted."""
    out: list[Path] = []
    for p in map(Path, paths):
        out += sorted(f for f in p.rglob("*") if f.suffix.lower() in AUDIO_SUFFIXES) if p.is_dir() else [p]
    return out


def requests_of(audio: np.ndarray, labels: tuple[str, ...], config: EngineConfig) -> list[InferenceRequest]:
    """The interim and final requests a stream's pipeline makes for ``audio`` (16 kHz mono float32)."""
    pipeline, out = StreamPipeline("agreement", labels, config), []
    for i in range(0, len(audio), 320):
        out += pipeline.push(AudioChunk(i, audio[i:i + 320]), 0.0)
    out += pipeline.flush(0.0)
    return [r for r in out if isinstance(r, InferenceRequest)]


def compare(predictor, requests: list[InferenceRequest], tolerance: float, totals: dict,
            final_tolerances: tuple[float, ...] = ()) -> None:
    """Both paths for every interim of ``requests``, and for every final that finds its segment's state, one
    finish of a copy of that state per ``final_tolerances`` (what finishing instead of recomputing would give);
    adds to ``totals``."""
    import copy

    from serlive.model.incremental import EncoderState

    predictor.tolerance = tolerance
    states: dict[int, EncoderState] = {}
    for r in requests:
        wave = predictor.prepare(r.audio)
        mask = predictor.mask(wave)
        if r.final:  # the worker recomputes a final's segment: what finishing the state instead would give
            state = states.pop(r.segment, None)
            if state is not None and final_tolerances:
                whole = predictor.predict_prepared([wave], [mask])[0]
                totals["finals"] += 1
                for tol in final_tolerances:
                    predictor.final_tolerance = tol
                    finishing = copy.deepcopy(state)
                    grown = predictor.predict_prepared([wave], [mask], [finishing], [True])[0]
                    got = totals["by_final"].setdefault(tol, dict(same=0, diff=0.0, reran=0, frames=0, whole=0))
                    got["same"] += whole.label == grown.label
                    got["diff"] = max(got["diff"], max(abs(a - b) for a, b in zip(whole.probs, grown.probs)))
                    got["reran"] += finishing.rebuilds > state.rebuilds
                    got["frames"] += finishing.frames_run - state.frames_run
                    got["whole"] += 1 + len(wave) // 160
            continue
        t0 = time.process_time()
        whole = predictor.predict_prepared([wave], [mask])[0]
        t1 = time.process_time()
        state = states.setdefault(r.segment, EncoderState())
        before = (state.rebuilds, state.frames_run)
        grown = predictor.predict_prepared([wave], [mask], [state])[0]
        t2 = time.process_time()
        totals["whole_s"] += t1 - t0
        totals["incremental_s"] += t2 - t1
        totals["interims"] += 1
        totals["same"] += whole.label == grown.label
        totals["diffs"].append(max(abs(a - b) for a, b in zip(whole.probs, grown.probs)))
        totals["rebuilds"] += state.rebuilds - before[0]
        totals["frames"] += state.frames_run - before[1]
        totals["whole_frames"] += 1 + len(wave) // 160


def cost(predictor, streams: int, seconds: float, config: EngineConfig) -> dict:
    """CPU seconds of ``streams`` bench streams' interims and finals (the benchmark's synthetic speech, its
    random start offsets), replayed in 0.5 s batches through the whole-segment and the incremental path (finals
    recompute their segment in both, as the worker does)."""
    from serlive.model.incremental import EncoderState

    from .bench import speechlike

    audio, _ = speechlike(seconds)
    rng, batches = np.random.default_rng(streams), {}
    for s in range(streams):
        offset = np.zeros(int(rng.uniform(0, 1.5) * 16_000), np.float32)
        for r in requests_of(np.concatenate([offset, audio]), predictor.labels, config):
            batches.setdefault((r.end_sample // 8000, r.final), []).append((s, r))
    out = {}
    for mode in ("whole", "incremental"):
        states: dict = {}
        cpu = {True: 0.0, False: 0.0}
        for (_, final), items in sorted(batches.items()):
            waves = [predictor.prepare(r.audio) for _, r in items]
            masks = [predictor.mask(w) for w in waves]
            carry = None if final or mode == "whole" else [states.setdefault((s, r.segment), EncoderState())
                                                            for s, r in items]
            t0 = time.process_time()
            predictor.predict_prepared(waves, masks, carry)
            cpu[final] += time.process_time() - t0
        out[mode] = (sum(len(v) for (_, f), v in batches.items() if not f), cpu[False], cpu[True])
    return out


def run_agreement(args) -> int:
    """Print the agreement table for ``args.agreement`` (files or folders) with ``args.model``."""
    import soundfile
    import torch

    from serlive.model import Predictor
    from serlive.model.audio import to_mono_16k

    if args.threads:
        torch.set_num_threads(args.threads)
    files = audio_files(args.agreement)
    if not files or not args.model:
        raise SystemExit("ser-live bench --agreement: give --model DIR and at least one audio file or folder")
    predictor = Predictor.from_dir(args.model)
    if not predictor.incremental:
        raise SystemExit(f"ser-live bench --agreement: {args.model} has no incremental encoder (GE2E without dereverb)")
    config = EngineConfig(inference=InferenceConfig(interim_ms=args.interim_ms))
    requests = []
    for f in files:
        try:
            audio, rate = soundfile.read(str(f), dtype="float32", always_2d=True)
        except (OSError, RuntimeError, soundfile.LibsndfileError) as exc:
            raise SystemExit(f"ser-live bench --agreement: cannot read {f}: {str(exc).splitlines()[0]}") from None
        requests.append(requests_of(to_mono_16k(audio.mean(1), rate), predictor.labels, config))
    if args.cost_streams:
        for mode, (n, interims_s, finals_s) in cost(predictor, args.cost_streams, args.seconds, config).items():
            print(f"{args.cost_streams} bench streams x {args.seconds:g} s, {mode}: {n} interims {interims_s:.2f} CPU s, "
                  f"finals {finals_s:.2f} CPU s", flush=True)
    print(f"{len(files)} files, {sum(len(r) for r in requests)} requests, interim every {args.interim_ms} ms, "
          f"torch threads={torch.get_num_threads()}")
    finals = tuple(float(t) for t in args.final_tolerance.split(","))
    print("| tolerance | interims | same label | max prob diff | p99 prob diff | rebuilds | LSTM frames vs whole "
          "| CPU time vs whole | finals from the state (final tolerance: same label, max prob diff, reran, "
          "LSTM frames vs whole) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for tol in (float(t) for t in args.tolerance.split(",")):
        totals = dict(whole_s=0.0, incremental_s=0.0, interims=0, same=0, diffs=[], rebuilds=0, frames=0,
                      whole_frames=0, finals=0, by_final={})
        for reqs in requests:
            compare(predictor, reqs, tol, totals, finals)
        nf = max(totals["finals"], 1)
        by_final = "; ".join(f"{t:g}: {100 * f['same'] / nf:.1f} %, {f['diff']:.4f}, {100 * f['reran'] / nf:.0f} %, "
                             f"{f['frames'] / max(f['whole'], 1):.2f}" for t, f in totals["by_final"].items())
        n, d = max(totals["interims"], 1), np.array(totals["diffs"] or [0.0])
        print(f"| {'inf (never rebuild)' if math.isinf(tol) else f'{tol:g}'} | {totals['interims']} | "
              f"{100 * totals['same'] / n:.1f} % | {d.max():.4f} | {np.percentile(d, 99):.4f} | "
              f"{totals['rebuilds']} ({100 * totals['rebuilds'] / n:.0f} %) | "
              f"{totals['frames'] / max(totals['whole_frames'], 1):.2f} | "
              f"{totals['incremental_s'] / max(totals['whole_s'], 1e-9):.2f} | "
              f"{totals['finals']} finals; {by_final} |", flush=True)
    return 0
