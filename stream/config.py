"""The engine's configuration: one frozen dataclass per stage, composed into :class:`EngineConfig`."""

from __future__ import annotations

from dataclasses import dataclass, field


class StreamConfigError(ValueError):
    """An invalid engine setting; the message is one sentence naming the setting."""


@dataclass(frozen=True, slots=True)
class SegmenterConfig:
    """Frame-by-frame WebRTC VAD and the hysteresis segmenter on top of it.

    A segment opens when at least ``start_ratio`` of the last ``start_window_ms`` is voiced and closes
    after ``end_silence_ms`` of non-speech. The model also gets ``pre_roll_ms`` before and
    ``hang_over_ms`` after the speech. Segments with less than ``min_speech_ms`` of speech are dropped;
    segments reaching ``max_segment_ms`` of audio are force-closed (the paper truncates at 19 s).
    The reported end is pulled back over trailing frames more than ``end_trim_db`` below the segment's
    loudest 10 ms, which undoes most of WebRTC VAD's own hang-over.
    """

    vad_mode: int = 2
    frame_ms: int = 30
    start_window_ms: int = 240
    start_ratio: float = 0.6
    end_silence_ms: int = 300
    pre_roll_ms: int = 150
    hang_over_ms: int = 150
    min_speech_ms: int = 250
    max_segment_ms: int = 19_000
    end_trim_db: float = -30.0

    def __post_init__(self) -> None:
        if self.vad_mode not in (0, 1, 2, 3):
            raise StreamConfigError(f"--vad-mode must be 0, 1, 2 or 3, not {self.vad_mode}")
        if self.frame_ms not in (10, 20, 30):
            raise StreamConfigError(f"--vad-frame-ms must be 10, 20 or 30, not {self.frame_ms}")
        if not 0.0 < self.start_ratio <= 1.0:
            raise StreamConfigError("the segmenter's start_ratio must lie in (0, 1]")
        for name in ("start_window_ms", "end_silence_ms", "max_segment_ms"):
            if getattr(self, name) < self.frame_ms:
                raise StreamConfigError(f"the segmenter's {name} must be at least one VAD frame ({self.frame_ms} ms)")
        if self.max_segment_ms <= self.min_speech_ms:
            raise StreamConfigError("the segmenter's max_segment_ms must exceed min_speech_ms")


@dataclass(frozen=True, slots=True)
class InferenceConfig:
    """The model owner: batches of at most ``max_batch`` requests, waiting at most ``max_wait_ms`` to
    fill one; interim predictions every ``interim_ms`` of open speech (0 disables them). A stream whose
    final predictions waiting for the model hold ``max_pending_s`` of audio or more is not read further
    until they shrink (its source feels the back-pressure; a microphone counts what it drops). With
    ``model_process`` the model owner runs in a child process (:mod:`serlive.stream.procworker`)."""

    max_batch: int = 16
    max_wait_ms: float = 10.0
    interim_ms: int = 500
    warm_up: bool = True
    max_pending_s: float = 4.0
    model_process: bool = False  # the model owner in a child process (stream/procworker.py)

    def __post_init__(self) -> None:
        if self.max_batch < 1:
            raise StreamConfigError("--max-batch must be at least 1")
        if self.max_wait_ms < 0 or self.interim_ms < 0:
            raise StreamConfigError("--max-wait-ms and --interim-ms must not be negative")
        if not self.max_pending_s > 0:
            raise StreamConfigError("the inference max_pending_s must be positive")


@dataclass(frozen=True, slots=True)
class StateConfig:
    """The rolling current state: final predictions weighted by speech duration and by
    ``exp(-age / half_life)`` (age on the stream clock), forgotten after ``reset_after_s`` of silence."""

    half_life_s: float = 8.0
    reset_after_s: float = 30.0


@dataclass(frozen=True, slots=True)
class WsConfig:
    """The WebSocket server: ``port`` 0 picks a free one; ``token`` (if set) is required from clients.

    ``allow_origins``: page origins (``scheme://host[:port]``) allowed besides the server's own host;
    ``accept_audio``: every client may send audio (otherwise only clients that gave the token);
    ``tls_cert``/``tls_key``: PEM files that make it https/wss. A client that leaves a ping unanswered for
    ``ping_timeout_s`` or leaves what was sent unread for ``stall_timeout_s`` is closed with 4001.
    """

    host: str = "127.0.0.1"
    port: int = 8765
    max_clients: int = 32
    token: str | None = None
    client_queue: int = 512
    stall_timeout_s: float = 5.0
    accept_audio: bool = False
    allow_origins: tuple[str, ...] = ()
    tls_cert: str | None = None
    tls_key: str | None = None
    ping_interval_s: float = 20.0
    ping_timeout_s: float = 20.0


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """``adapt``: per-speaker adaptation of each stream (see :mod:`serlive.model.adapt`), when the model can."""

    segmenter: SegmenterConfig = field(default_factory=SegmenterConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    state: StateConfig = field(default_factory=StateConfig)
    ws: WsConfig | None = None
    level_interval_ms: int = 100
    stats_interval_s: float = 1.0
    drain_s: float = 5.0
    """On stop, how long the engine may take to predict what it owes before it reports the rest."""
    adapt: bool = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.drain_s < float("inf"):
            raise StreamConfigError(f"--drain-s must be a number of seconds, 0 or more, not {self.drain_s}")
