"""Regenerates demo_events.jsonl: a recorded-style event sequence shaped like `ser-live --input demo`
(four utterances: angry, happy, neutral, sad) plus a remote stream with two segments. Run with the venv python."""
import json
from pathlib import Path
from serlive.stream import events as ev
SR = 16000
LABELS = ("angry", "happy", "neutral", "sad")
out = [ev.Hello(protocol=1, labels=LABELS, model="sap-wavlm-base+ (bundled)", sample_rate_hz=SR,
                streams=("local",), dimensional=True, device="cpu")]
out.append(ev.StreamStatus("local", "started", "demo.flac"))
segs = {"local": [(0.60, 3.17, "angry", (0.78, 0.10, 0.07, 0.05), (-0.6, 0.8)),
                  (4.87, 6.71, "happy", (0.12, 0.71, 0.12, 0.05), (0.7, 0.5)),
                  (8.41, 9.84, "neutral", (0.08, 0.10, 0.66, 0.16), (0.05, -0.1)),
                  (11.54, 13.24, "sad", (0.04, 0.06, 0.25, 0.65), (-0.5, -0.6))],
        "remote-1": [(1.0, 2.5, "happy", (0.1, 0.6, 0.2, 0.1), (0.5, 0.3)),
                     (5.0, 7.0, "sad", (0.05, 0.05, 0.3, 0.6), (-0.4, -0.5))]}
timeline = []
for stream, ss in segs.items():
    for i, (a, b, lab, probs, (v, ar)) in enumerate(ss):
        s0, s1 = int(a * SR), int(b * SR)
        timeline.append((a + 0.3, ev.SegmentStart(stream, i, s0, s0 + int(0.3 * SR))))
        mid = (a + b) / 2
        ip = dict(zip(LABELS, [round(0.25 + (p - 0.25) * 0.5, 3) for p in probs]))
        itop = max(ip, key=ip.get)
        timeline.append((mid, ev.PredictionEvent(stream, i, s0, int(mid * SR), final=False, label=itop, probs=ip,
                        confidence=ip[itop], valence=v * 0.5, arousal=ar * 0.5, latency_ms=41.0, speech_frames=40)))
        timeline.append((b + 0.3, ev.SegmentEnd(stream, i, s0, s1, reason="silence")))
        fp = dict(zip(LABELS, probs))
        timeline.append((b + 0.35, ev.PredictionEvent(stream, i, s0, s1, final=True, label=lab, probs=fp,
                        confidence=max(probs), valence=v, arousal=ar, knn=True, latency_ms=60.0 + 10 * i,
                        speech_frames=int((b - a) * 50))))
        timeline.append((b + 0.36, ev.State(stream, lab, fp, v, ar, i + 1)))
    if stream == "remote-1":
        timeline.append((0.5, ev.StreamStatus(stream, "started", "ws client 127.0.0.1", remote=True)))
for k in range(int(14.8 / 0.25)):
    t = k * 0.25
    for stream, ss in segs.items():
        speech = any(a <= t < b for a, b, *_ in ss)
        timeline.append((t, ev.Level(stream, int(t * SR), -18.0 - k % 3 if speech else -52.0 + k % 2, speech)))
for k in range(1, 15):
    timeline.append((float(k), ev.Stats(rtf=0.081, latency_p50_ms=64.0, latency_p95_ms=91.0, queue_depth=0,
                                       dropped_audio_s=0.0, device="cpu", clients=1, streams=2)))
timeline.sort(key=lambda x: x[0])
out += [e for _, e in timeline]
out.append(ev.StreamStatus("remote-1", "ended", "client closed", "client_closed", remote=True))
with open(Path(__file__).with_name("demo_events.jsonl"), "w") as f:
    for e in out:
        f.write(e.to_json() + "\n")

