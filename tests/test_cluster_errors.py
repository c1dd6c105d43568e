"""The cluster's commands when the broker is down, refuses the credentials, or the options are wrong: one
sentence on stderr and exit 2, no traceback (real processes, a real nats-server)."""

from __future__ import annotations

import signal

import pytest

pytest.importorskip("nats")

from .clusterkit import DATA, Broker, Proc, feed, free_port, gateway  # noqa: E402

FILE = sorted(DATA.glob("*.flac"))[0]


def one_sentence(proc: Proc, words: str) -> None:
    assert proc.wait(60) == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ser-live: error: ") and words in lines[0], proc.stderr


@pytest.mark.parametrize("role", ["gateway", "worker", "feed"])
def test_broker_down_at_start_is_one_sentence(tmp_path, role):
    url = f"nats://127.0.0.1:{free_port()}"
    args = {"gateway": ["--nats", url, "--input", str(FILE), "--fast", "--no-tui", "--ws", "off"],
            "worker": ["worker", "--nats", url, "--device", "cpu"],
            "feed": ["feed", "--nats", url, "--ws", "127.0.0.1:0"]}[role]
    one_sentence(Proc(tmp_path, role, *args), f"cannot reach the NATS server at {url}: connection refused")


def test_credentials_are_passed_through(tmp_path):
    broker = Broker(tmp_path / "store", "--user", "ser", "--pass", "secret")
    try:
        wrong = Proc(tmp_path, "wrong", "--nats", broker.url, "--nats-user", "ser", "--nats-password", "nope",
                     "--input", str(FILE), "--fast", "--no-tui", "--ws", "off")
        one_sentence(wrong, "refused the credentials")
        none = Proc(tmp_path, "none", "feed", "--nats", broker.url, "--ws", "127.0.0.1:0")
        one_sentence(none, "refused the credentials")
        right = feed(tmp_path, broker, "right", "--nats-user", "ser", "--nats-password", "secret")
        right.wait_line("dashboard at", 30)
        right.kill(signal.SIGTERM)
        assert right.proc.returncode == 0 and "Traceback" not in right.stderr
    finally:
        broker.stop()


@pytest.mark.parametrize("option, value, words", [
    ("--nats-prefix", "a.b", "--nats-prefix takes letters"),
    ("--nats-name", "x y", "--nats-name takes letters"),
    ("--nats-creds", "/nonexistent/user.creds", "cannot read --nats-creds"),
])
def test_bad_cluster_options_are_one_sentence(tmp_path, option, value, words):
    proc = gateway(tmp_path, None, "g", [FILE], "--nats", "nats://127.0.0.1:4222", option, value)
    one_sentence(proc, words)


def test_a_bad_nats_url_is_one_sentence(tmp_path):
    one_sentence(Proc(tmp_path, "w", "worker", "--nats", "http://127.0.0.1:4222"), "--nats takes nats://HOST:PORT")


def test_a_token_is_passed_through(tmp_path):
    broker = Broker(tmp_path / "store", "--auth", "s3cret")
    try:
        one_sentence(Proc(tmp_path, "bad", "feed", "--nats", broker.url, "--nats-token", "wrong", "--ws", "127.0.0.1:0"),
                     "refused the credentials")
        good = feed(tmp_path, broker, "good", "--nats-token", "s3cret")
        good.wait_line("dashboard at", 30)
        good.kill(signal.SIGTERM)
        assert good.proc.returncode == 0
    finally:
        broker.stop()


def test_tls_is_passed_through(tmp_path):
    import shutil
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    broker = Broker(tmp_path / "store", "--tls", "--tlscert", str(cert), "--tlskey", str(key))
    url = broker.url.replace("nats://", "tls://")
    try:
        unverified = Proc(tmp_path, "unverified", "feed", "--nats", url, "--ws", "127.0.0.1:0")
        one_sentence(unverified, "TLS")
        verified = Proc(tmp_path, "verified", "feed", "--nats", url, "--nats-tls-ca", str(cert), "--ws", "127.0.0.1:0")
        verified.wait_line("dashboard at", 30)
        verified.kill(signal.SIGTERM)
        assert verified.proc.returncode == 0 and "Traceback" not in verified.stderr
    finally:
        broker.stop()


def test_nats_secrets_never_reach_a_log_line(monkeypatch, caplog):
    import argparse
    import logging

    from serlive.stream.cluster.options import add_nats_options, connect_options

    ap = argparse.ArgumentParser()
    add_nats_options(ap)
    monkeypatch.setenv("NATS_TOKEN", "tok-from-env-1234")
    args = ap.parse_args(["--nats", "nats://127.0.0.1:4222", "--nats-user", "ops", "--nats-password", "pw-on-cli-5678"])
    kw = connect_options(args)
    assert kw["password"] == "pw-on-cli-5678" and kw["token"] == "tok-from-env-1234"
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("nats.aio.client").debug("connect {'pass': 'pw-on-cli-5678', 'auth_token': 'tok-from-env-1234'}")
    text = caplog.text
    assert "pw-on-cli-5678" not in text and "tok-from-env-1234" not in text and "connect {'pass'" in text
