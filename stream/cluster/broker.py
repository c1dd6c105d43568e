"""Connecting to the NATS server (one sentence when it cannot be done) and the deployment's JetStream
streams, created on first use with file storage so a broker restart loses nothing acknowledged."""

from __future__ import annotations

import asyncio
import logging

from ..argcheck import CliError
from .options import Names

log = logging.getLogger(__name__)

RECONNECT_WAIT_S = 0.25
"""Between reconnection attempts after the connection is lost (forever: a broker restart is survived)."""

AUDIO_MAX_AGE_S = 600.0
"""Audio chunks are kept this long: a final must reach a worker within it (a worker that finds a chunk
gone reports the segment as failed)."""

RESULTS_MAX_AGE_S = 600.0
EVENTS_MAX_AGE_S = 600.0
EVENTS_MAX_BYTES = 1 << 30
DUPLICATE_WINDOW_S = 120.0
"""JetStream drops a message whose Nats-Msg-Id it stored within this window (retried publishes, a final
published again by the worker a request was redelivered to)."""


def _describe(exc: BaseException, servers: list[str], tls: bool = False) -> str:
    where = ", ".join(servers)
    text = str(exc)
    if tls and ("Connection lost" in text or "connection closed" in text.lower() or isinstance(exc, ConnectionResetError)):
        # TLS 1.3: a server that wants a client certificate may close the connection before its alert is read
        return (f"the NATS server at {where} closed the TLS connection while it was opened (does it want a client "
                "certificate? --nats-tls-cert and --nats-tls-key)")
    if "Authorization" in text or "authorization" in text or "Authentication" in text:
        return f"the NATS server at {where} refused the credentials ({text.removeprefix('nats: ').strip(chr(39))})"
    if type(exc).__name__ in ("SecureConnRequiredError", "SecureConnWantedError", "SecureConnFailedError") \
            or "SSL" in text or "TLS" in text:
        return f"cannot open a TLS connection to the NATS server at {where}: {text or type(exc).__name__}"
    if isinstance(exc, ConnectionRefusedError):
        text = "connection refused"
    elif isinstance(exc, OSError) and exc.strerror:
        text = exc.strerror
    return f"cannot reach the NATS server at {where}: {text or 'no server answered'}"


async def connect(options: dict, name: str, probe: bool = False):
    """A connection; with ``probe``, one quick attempt that raises :class:`CliError` (one sentence) when the
    server is unreachable or refuses us. Otherwise reconnects forever after a loss."""
    import nats

    errors: list[BaseException] = []

    async def on_error(exc: BaseException) -> None:
        errors.append(exc)
        if not probe:
            log.warning("NATS: %s", exc or type(exc).__name__)

    holder: list = []

    async def on_disconnect() -> None:
        if holder and not (holder[0].is_closed or holder[0].is_draining):  # (also called on our own close)
            log.warning("lost the connection to the NATS server; reconnecting")

    async def on_reconnect() -> None:
        log.warning("reconnected to the NATS server")

    kw = dict(options, name=name, error_cb=on_error, connect_timeout=2, reconnect_time_wait=RECONNECT_WAIT_S,
              max_reconnect_attempts=1 if probe else -1, allow_reconnect=not probe)
    if not probe:
        kw.update(disconnected_cb=on_disconnect, reconnected_cb=on_reconnect, pending_size=64 << 20)
    try:
        nc = await nats.connect(**kw)
        holder.append(nc)
        return nc
    except Exception as exc:  # noqa: BLE001 - every failure is one sentence for the user
        cause = next((e for e in errors if "Authorization" in str(e)), errors[-1] if errors else exc)
        raise CliError(_describe(cause, options["servers"], "tls" in options)) from exc


def check_broker(options: dict, names: Names) -> None:
    """Connect once and ask for JetStream: the user learns at once (before the model loads) that the broker
    is down, refuses the credentials or has no JetStream."""
    async def probe() -> None:
        nc = await connect(options, "ser-live probe", probe=True)
        try:
            await nc.jetstream().account_info()
        except Exception as exc:  # noqa: BLE001
            raise CliError(f"the NATS server at {', '.join(options['servers'])} has no JetStream "
                           f"(start it with -js): {exc}") from exc
        finally:
            await nc.close()

    asyncio.run(probe())


async def ensure_streams(js, names: Names) -> None:
    """Create the deployment's streams if they are missing (every role calls this; the first one wins)."""
    from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig

    wanted = [
        StreamConfig(name=names.requests, subjects=[f"{names.prefix}.req.final.{lane}.>" for lane in ("live", "bulk")],
                     retention=RetentionPolicy.WORK_QUEUE, storage=StorageType.FILE,
                     duplicate_window=DUPLICATE_WINDOW_S),
        StreamConfig(name=names.audio, subjects=[f"{names.prefix}.audio.>"], retention=RetentionPolicy.LIMITS,
                     storage=StorageType.FILE, max_age=AUDIO_MAX_AGE_S, allow_direct=True),
        StreamConfig(name=names.results, subjects=[f"{names.prefix}.res.>"], retention=RetentionPolicy.LIMITS,
                     storage=StorageType.FILE, max_age=RESULTS_MAX_AGE_S, duplicate_window=DUPLICATE_WINDOW_S),
        StreamConfig(name=names.events, subjects=[f"{names.prefix}.ev.>"], retention=RetentionPolicy.LIMITS,
                     storage=StorageType.FILE, max_age=EVENTS_MAX_AGE_S, max_bytes=EVENTS_MAX_BYTES,
                     discard=DiscardPolicy.OLD, duplicate_window=DUPLICATE_WINDOW_S),
    ]
    for config in wanted:
        try:
            await js.stream_info(config.name)
        except Exception:  # noqa: BLE001 - NotFoundError: create it (a racing creator makes add_stream fail)
            try:
                await js.add_stream(config)
            except Exception as exc:  # noqa: BLE001
                log.debug("stream %s: %s", config.name, exc)


async def fetch(subscription, batch: int, timeout_s: float, what: str) -> list:
    """Up to ``batch`` messages of a pull subscription, or none (nothing came within ``timeout_s``, or the
    connection is being re-established)."""
    try:
        return await subscription.fetch(batch, timeout=timeout_s)
    except asyncio.TimeoutError:
        return []
    except Exception as exc:  # noqa: BLE001 - reconnecting
        log.debug("%s fetch: %s", what, exc)
        await asyncio.sleep(0.1)
        return []


async def retry(operation, stopping=lambda: False, what: str = "publish"):
    """``await operation()`` until it succeeds (the broker may be restarting): only for operations that
    are idempotent (a publish with a Nats-Msg-Id, an ack)."""
    delay_s = 0.05
    while True:
        try:
            return await operation()
        except Exception as exc:  # noqa: BLE001 - timeouts, no responders, reconnecting
            if stopping():
                raise
            log.debug("%s failed (%s); retrying", what, exc)
            await asyncio.sleep(delay_s)
            delay_s = min(delay_s * 2, 1.0)
