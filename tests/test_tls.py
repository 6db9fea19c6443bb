"""TLS (LOGWRITER_TLS_CERT, LOGWRITER_TLS_KEY) on the real service, with a certificate made
here by openssl and a client that trusts it."""

import http.client
import os
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support import Logwriters

pytestmark = [pytest.mark.service, pytest.mark.tools]


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1"),
            *("-addext", "subjectAltName=IP:127.0.0.1"),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def test_https_with_a_trusted_certificate_and_plain_http_refused(
    start_logwriter: Logwriters, certificate: tuple[Path, Path]
):
    cert, key = certificate
    service = start_logwriter(
        env={"LOGWRITER_TLS_CERT": str(cert), "LOGWRITER_TLS_KEY": str(key)}, tls=cert
    )
    context = ssl.create_default_context(cafile=str(cert))
    conn = http.client.HTTPSConnection("127.0.0.1", service.port, timeout=10, context=context)
    for number in range(3):  # kept alive across requests
        conn.request("POST", "/v1/logs/tls?ack=written", b"over tls %d\n" % number)
        answer = conn.getresponse()
        assert (answer.status, answer.read()) == (200, b'{"accepted":1}\n')
    conn.close()

    plain = http.client.HTTPConnection("127.0.0.1", service.port, timeout=10)
    with pytest.raises((http.client.HTTPException, ConnectionError)):
        plain.request("POST", "/v1/logs/plain?ack=written", b"in the clear\n")
        plain.getresponse()
    plain.close()
    assert (service.dir / "tls.log").read_bytes() == b"over tls 0\nover tls 1\nover tls 2\n"
    assert not (service.dir / "plain.log").exists()


def test_a_stalled_tls_handshake_is_cut_at_the_deadline(
    start_logwriter: Logwriters, certificate: tuple[Path, Path]
):
    cert, key = certificate
    service = start_logwriter(
        env={
            "LOGWRITER_TLS_CERT": str(cert),
            "LOGWRITER_TLS_KEY": str(key),
            "LOGWRITER_BODY_TIMEOUT": "1",
        },
        tls=cert,
    )
    stalled = []
    for _ in range(8):  # as many as there are threads: each holds one in its handshake
        sock = socket.create_connection(("127.0.0.1", service.port))
        sock.sendall(b"\x16\x03\x01\x02\x00\x01")  # the start of a ClientHello, no more
        stalled.append(sock)
    started = time.monotonic()
    context = ssl.create_default_context(cafile=str(cert))
    conn = http.client.HTTPSConnection("127.0.0.1", service.port, timeout=10, context=context)
    conn.request("POST", "/v1/logs/tls?ack=written", b"after\n")
    assert conn.getresponse().status == 200
    assert time.monotonic() - started < 2.5
    for sock in stalled:
        sock.settimeout(5)
        received = b""
        while chunk := sock.recv(100):  # a TLS alert, at most, then closed
            received += chunk
        assert received in (b"", b"\x15\x03\x03\x00\x02\x02\x32"), received  # decode_error
        sock.close()
    conn.close()


@pytest.mark.process
def test_the_container_probe_speaks_https_when_tls_is_on(
    start_logwriter: Logwriters, certificate: tuple[Path, Path]
):
    cert, key = certificate
    env = {"LOGWRITER_TLS_CERT": str(cert), "LOGWRITER_TLS_KEY": str(key)}
    service = start_logwriter(env=env, tls=cert)
    probe_env = {**os.environ, **env, "LOGWRITER_BIND": f"0.0.0.0:{service.port}"}
    probe = [sys.executable, "-m", "service.probe"]
    assert subprocess.run(probe, env=probe_env, capture_output=True).returncode == 0
    plain_env = {key: value for key, value in probe_env.items() if "TLS" not in key}
    refused = subprocess.run(probe, env=plain_env, capture_output=True, text=True)
    assert refused.returncode == 1 and "logwriter probe" in refused.stderr
