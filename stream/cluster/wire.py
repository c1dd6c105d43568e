"""What travels between gateway and worker, and the checks a received message passes first.

A request is a small JSON object naming its segment (stream, segment, start/end sample, final or interim)
and the audio it covers as the JetStream sequence numbers of the audio chunks that hold it: each chunk is
the segment's samples since the gateway's previous request (raw little-endian float32), so every sample
crosses to the broker once per segment. A result is JSON: the :class:`~serlive.model.Prediction` fields,
arrays as base64 float32, or ``error`` and ``message``. Anything that does not parse is :class:`WireError`.
"""

from __future__ import annotations

import base64
import dataclasses
import json
from dataclasses import dataclass

import numpy as np

MAX_REQUEST_BYTES = 64 << 10
MAX_CHUNKS = 4096
MAX_TAIL_BYTES = 4 * 16_000 * 4


class WireError(ValueError):
    """A message that is not what its subject carries (garbage, a foreign publisher, another version)."""


@dataclass(frozen=True, slots=True)
class WireRequest:
    """One inference request as it crosses the broker. ``id`` is unique per gateway process and request:
    ``gateway:stream-number:segment:f`` for a final (the de-duplication key), ``...:i<end>`` for an interim."""

    id: str
    gateway: str
    stream: str
    segment: int
    start_sample: int
    end_sample: int
    final: bool
    chunks: tuple[int, ...]
    samples: int
    reply: str
    sent_s: float  # wall clock (time.time()) at publish: workers drop interims that waited too long
    tail: bytes = b""  # a final's last audio (float32), carried in the request itself: one round trip less

    def encode(self) -> bytes:
        head = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "tail"}
        return json.dumps(head, separators=(",", ":")).encode() + b"\n" + self.tail

    @property
    def tail_samples(self) -> np.ndarray:
        return chunk_samples(self.tail)

    @classmethod
    def decode(cls, data: bytes) -> "WireRequest":
        head, _, tail = data.partition(b"\n")  # (JSON escapes newlines: the first one ends the head)
        if len(head) > MAX_REQUEST_BYTES or len(tail) > MAX_TAIL_BYTES or len(tail) % 4:
            raise WireError(f"a request of {len(head)} + {len(tail)} bytes")
        try:
            raw = json.loads(head)
            req = cls(str(raw["id"]), str(raw["gateway"]), str(raw["stream"]), int(raw["segment"]),
                      int(raw["start_sample"]), int(raw["end_sample"]), bool(raw["final"]),
                      tuple(int(c) for c in raw["chunks"]), int(raw["samples"]), str(raw["reply"]),
                      float(raw["sent_s"]), tail)
        except (ValueError, TypeError, KeyError, AttributeError, UnicodeDecodeError) as exc:
            raise WireError(f"not a request: {exc}") from exc
        if len(req.chunks) > MAX_CHUNKS or req.samples <= 0 or (req.chunks and min(req.chunks) <= 0) \
                or not (req.chunks or req.tail):
            raise WireError("a request without audio")
        if not req.reply or any(c in req.reply for c in " *>\t\r\n"):
            raise WireError("a request without a valid reply subject")
        return req


def chunk_bytes(samples: np.ndarray) -> bytes:
    return np.ascontiguousarray(samples, dtype="<f4").tobytes()


def chunk_samples(data: bytes) -> np.ndarray:
    if len(data) % 4:
        raise WireError(f"an audio chunk of {len(data)} bytes is not float32 samples")
    return np.frombuffer(data, dtype="<f4").astype(np.float32)


def _encode_value(value):
    if isinstance(value, np.ndarray):
        return {"nd": base64.b64encode(np.ascontiguousarray(value, dtype="<f4").tobytes()).decode(),
                "shape": list(value.shape)}
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, np.generic):
        return value.item()
    return value


def encode_prediction(request_id: str, prediction) -> bytes:
    fields = {f.name: _encode_value(getattr(prediction, f.name)) for f in dataclasses.fields(prediction)}
    return json.dumps({"id": request_id, "prediction": fields}, separators=(",", ":")).encode()


def encode_failure(request_id: str, code: str, message: str) -> bytes:
    return json.dumps({"id": request_id, "error": code, "message": message}).encode()


def decode_result(data: bytes, prediction_type) -> tuple[str, object | None, tuple[str, str] | None]:
    """``(id, prediction, None)`` or ``(id, None, (code, message))``."""
    try:
        raw = json.loads(data)
        request_id = str(raw["id"])
        if "error" in raw:
            return request_id, None, (str(raw["error"]), str(raw.get("message", "")))
        kwargs = {}
        for f in dataclasses.fields(prediction_type):
            if f.name not in raw["prediction"]:
                if f.default is dataclasses.MISSING:
                    raise WireError(f"a prediction without {f.name}")
                continue
            value = raw["prediction"][f.name]
            if isinstance(value, dict) and "nd" in value:
                value = np.frombuffer(base64.b64decode(value["nd"]), dtype="<f4").astype(np.float32)
                value = value.reshape(raw["prediction"][f.name]["shape"])
            elif isinstance(value, list) and "tuple" in str(f.type):
                value = tuple(value)
            kwargs[f.name] = value
        return request_id, prediction_type(**kwargs), None
    except (ValueError, TypeError, KeyError, AttributeError, UnicodeDecodeError) as exc:
        raise WireError(f"not a result: {exc}") from exc
