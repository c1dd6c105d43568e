"""PROTOCOL.md's example session is what the bundled model really sends: a real client streams a RAVDESS
file to a real engine with the bundled model, and every example line must match a real message (same
fields in the same order; identical where the value is deterministic) and validate against the schema."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import soundfile as sf
import torch
from websockets.asyncio.client import connect

import serlive.stream
from serlive.model import Predictor, bundled_model_dir
from serlive.stream.config import EngineConfig, WsConfig
from serlive.stream.engine import Engine
from tests.test_stream_ws import VALIDATOR
from tests.test_stream_ws_access import running

CLIP = Path(__file__).parent / "data" / "ravdess" / "03-01-05-01-01-01-01.flac"
"""Actor 01, angry: "Kids are talking by the door"."""

DOC = Path(serlive.stream.__file__).parent / "PROTOCOL.md"


def doc_example() -> list[dict]:
    block = re.search(r"## Example session\n.*?```json\n(.*?)```", DOC.read_text(), re.S).group(1)
    return [json.loads(line) for line in block.splitlines() if line.strip()]


def real_session() -> list[dict]:
    """What a client that streams CLIP (as 16 kHz s16le, 100 ms per message) receives."""
    torch.set_num_threads(1)
    predictor = Predictor.from_dir(bundled_model_dir(), torch.device("cpu"), torch.float32)
    engine = Engine(predictor, EngineConfig(ws=WsConfig(host="127.0.0.1", port=0, accept_audio=True)), [],
                    model_name=predictor.config.description)
    audio, rate = sf.read(CLIP, dtype="int16")
    pcm = audio.astype("<i2").tobytes()
    got: list[dict] = []

    async def main():
        async with running(engine):
            async with connect(f"ws://127.0.0.1:{engine.ws.port}/") as ws:
                got.append(json.loads(await ws.recv()))
                await ws.send(json.dumps({"type": "start_stream", "stream": "phone",
                                          "format": {"sample_rate_hz": rate, "encoding": "s16le", "channels": 1}}))
                for i in range(0, len(pcm), 3200):
                    await ws.send(pcm[i:i + 3200])
                await ws.send(json.dumps({"type": "end_stream"}))
                while not (got[-1]["type"] == "stream" and got[-1]["state"] == "ended"):
                    got.append(json.loads(await asyncio.wait_for(ws.recv(), 30)))

    asyncio.run(main())
    return got


DETERMINISTIC = {"hello": ["device"], "accepted": [], "stream": [], "segment_start": [], "segment_end": [],
                 "prediction": ["probs", "confidence", "latency_ms", "label", "start_sample", "end_sample",
                                "start_s", "end_s", "speech_frames"], "state": ["probs", "label"],
                 "level": ["sample", "db", "speech"], "stats": None, "error": None}
"""Per type, the fields whose value may differ from the example (None: only the field names are checked)."""


def test_protocol_doc_example_matches_the_bundled_model():
    real = real_session()
    for message in real:
        VALIDATOR.validate(message)
    example = doc_example()
    assert {m["type"] for m in example} >= {"hello", "accepted", "stream", "segment_start", "segment_end",
                                             "prediction", "state"}
    for shown in example:
        VALIDATOR.validate(shown)
        kind = shown["type"]
        match = ("state", "final") if shown.get("final", True) else ("state",)  # interims are best effort
        same = [m for m in real if m["type"] == kind and all(m.get(k) == shown[k] for k in match if k in shown)]
        assert same, f"no real {kind} message like {shown}"
        assert [list(m) for m in same if list(m) == list(shown)], f"{kind}: fields differ from {list(same[0])}"
        loose = DETERMINISTIC[kind]
        if kind == "prediction" and not shown["final"]:
            loose = [*loose, "final", "ood", "uncertain"]  # an interim looks like a final where the run had
            # none; what it says of its audio depends on how much of it had arrived, which timing decides
        if loose is not None:
            # floats to 4 places: the last digits of a sum move with the machine's thread count
            strip = lambda m: {k: round(v, 4) if isinstance(v, float) else v  # noqa: E731
                               for k, v in m.items() if k not in loose}
            assert strip(shown) in [strip(m) for m in same], f"{kind} example differs from what is sent"
    finals = [m for m in real if m["type"] == "prediction" and m["final"]]
    shown_final = next(m for m in example if m["type"] == "prediction" and m["final"])
    assert shown_final["label"] == finals[0]["label"]
