"""Checks on ``ser-live``'s arguments where they enter: one-line argparse errors, bounded numbers, a
WebSocket address that can really be bound. Each failure is one sentence on stderr and exit 2."""

from __future__ import annotations

import argparse
import math

EXIT_USAGE = 2
"""Exit code for bad arguments, bad input files, unavailable devices."""


class CliError(Exception):
    """A problem with the command line or its inputs; the message is one sentence for stderr."""


class Parser(argparse.ArgumentParser):
    """argparse with its errors as one line (no usage block): ``ser-live: error: argument --x: ...``."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def number(kind, low=None, high=None, what: str = ""):
    """An argparse ``type`` for finite ints/floats in [low, high], with a one-line reason when not."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'a whole number' if kind is int else 'a number'}")
        if not math.isfinite(value) or (low is not None and value < low) or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be {what}, not {text}")
        return value
    return parse


def ws_url(text: str) -> str:
    """An argparse ``type`` for ``--connect``: a ws:// or wss:// URL with a host."""
    from urllib.parse import urlsplit

    parts = urlsplit(text)
    try:
        parts.port
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} has a bad port")
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise argparse.ArgumentTypeError(f"must be a ws:// or wss:// URL such as ws://127.0.0.1:8765, not {text!r}")
    return text


def check_bindable(host: str, port: int) -> None:
    """Bind and release ``host:port`` as the server will (SO_REUSEADDR), so a taken port or an unknown
    host is one sentence now rather than a traceback after the model has loaded."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise CliError(f"--ws host {host} cannot be resolved: {exc.strerror}") from exc
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                raise CliError(f"cannot listen on {host}:{port}: {exc.strerror} (pick another port with "
                               "--ws HOST:PORT, or --ws off)") from exc


TOKEN_ENV = "SER_LIVE_WS_TOKEN"
"""Environment variable that gives the WebSocket token (unlike the command line, other local users cannot
read a process's environment)."""


def ws_token(cli_token: str | None, token_file: str | None, environ) -> str | None:
    """The WebSocket token from ``--ws-token``, ``--ws-token-file`` (its first line) or :data:`TOKEN_ENV`,
    in that order; None when none is given. Raises :class:`CliError` for both flags, an unreadable or
    empty file, or an empty variable."""
    if cli_token is not None and token_file is not None:
        raise CliError("give the token once: --ws-token or --ws-token-file, not both")
    if token_file is not None:
        from pathlib import Path

        try:
            lines = Path(token_file).read_text(encoding="utf-8").strip().splitlines()
        except OSError as exc:
            raise CliError(f"cannot read --ws-token-file {token_file}: {exc.strerror}") from exc
        except UnicodeDecodeError as exc:
            raise CliError(f"--ws-token-file {token_file} is not UTF-8 text") from exc
        if len(lines) != 1:
            raise CliError(f"--ws-token-file {token_file} must hold the token on one line, not "
                           f"{len(lines) if lines else 'no'} lines")
        return lines[0].strip()
    if cli_token is not None:
        return cli_token
    value = environ.get(TOKEN_ENV)
    if value is not None and not value.strip():
        raise CliError(f"{TOKEN_ENV} is set but empty (unset it, or give a token)")
    return value.strip() if value is not None else None
