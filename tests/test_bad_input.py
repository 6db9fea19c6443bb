"""Bad input against the real service: each refused as specified, none of it written, the service
healthy afterwards; and line separators other than \\n kept inside their line."""

import gzip
import http.client
import json
import os
import subprocess
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import LOGWRITER, Service, free_port, peak_rss_mib, start_service, stop_service

pytestmark = pytest.mark.service

LIMITS = {"LOGWRITER_MAX_BODY_BYTES": "1MiB", "LOGWRITER_MAX_LINE_BYTES": "64KiB"}
TEXT = {"Content-Type": "text/plain"}


def gzip_bomb(size: int) -> bytes:
    """`size` zero bytes, gzipped (about 1000:1)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = bytes(1 << 20)
    return b"".join([*(packer.compress(block) for _ in range(size >> 20)), packer.flush()])


BAD = [
    # (id, method, path, body, headers, status, words in the error)
    ("utf8", "POST", "/v1/logs/s1", b"fine\nbad \xc3\x28\n", TEXT, 400, "not valid UTF-8: line 2"),
    ("json", "POST", "/v1/logs/s2", b"[1, 2", {"Content-Type": "application/json"}, 400, "JSON"),
    (
        "ndjson-line-3",
        "POST",
        "/v1/logs/s3",
        b'{"a":1}\n{"b":2}\n{"c":\n',
        {"Content-Type": "application/x-ndjson"},
        400,
        "line 3",
    ),
    (
        "gzip",
        "POST",
        "/v1/logs/s4",
        b"\x1f\x8bnot really",
        {"Content-Encoding": "gzip"},
        400,
        "gzip",
    ),
    ("dotdot", "POST", "/v1/logs/..", b"x\n", TEXT, 400, "stream name"),
    ("encoded-dotdot", "POST", "/v1/logs/%2e%2e", b"x\n", TEXT, 400, "stream name"),
    ("traversal", "POST", "/v1/logs/..%2F..%2Ftmp%2Fpwn", b"x\n", TEXT, 400, "stream name"),
    ("subfolder", "POST", "/v1/logs/a/b", b"x\n", TEXT, 400, "stream name"),
    ("absolute", "POST", "/v1/logs/%2Fetc%2Fpasswd", b"x\n", TEXT, 400, "stream name"),
    ("hidden", "POST", "/v1/logs/.bashrc", b"x\n", TEXT, 400, "stream name"),
    ("nul", "POST", "/v1/logs/a%00b", b"x\n", TEXT, 400, "stream name"),
    ("newline", "POST", "/v1/logs/a%0Ab", b"x\n", TEXT, 400, "stream name"),
    ("too-long-name", "POST", "/v1/logs/" + "n" * 65, b"x\n", TEXT, 400, "stream name"),
    ("ack", "POST", "/v1/logs/s5?ack=sometimes", b"x\n", TEXT, 400, "ack must be"),
    ("get", "GET", "/v1/logs/s6", None, {}, 405, "not allowed"),
    ("put", "PUT", "/v1/logs/s7", b"x\n", TEXT, 405, "not allowed"),
    ("body", "POST", "/v1/logs/s8", b"x\n" * (600 << 10), TEXT, 413, "body larger"),
    (
        "gzip-bomb",
        "POST",
        "/v1/logs/s9",
        gzip_bomb(256 << 20),
        {"Content-Encoding": "gzip"},
        413,
        "decompressed body larger",
    ),
    ("line", "POST", "/v1/logs/s10", b"ok\n" + b"y" * (65 << 10) + b"\n", TEXT, 413, "line"),
    (
        "type",
        "POST",
        "/v1/logs/s11",
        b"<x/>",
        {"Content-Type": "application/xml"},
        415,
        "Content-Type",
    ),
    ("encoding", "POST", "/v1/logs/s12", b"x", {"Content-Encoding": "br"}, 415, "Encoding"),
]


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    service = start_service(tmp_path_factory.mktemp("bad-input"), env=LIMITS)
    yield service
    stop_service(service)


@pytest.mark.parametrize(
    ("method", "path", "body", "headers", "status", "words"),
    [case[1:] for case in BAD],
    ids=[case[0] for case in BAD],
)
def test_refused_with_a_clear_error_and_nothing_written(
    limited: Service, method, path, body, headers, status, words
):  # type: ignore[no-untyped-def]
    answer = limited.request(method, path, body, headers)
    assert answer.status == status, answer.body
    assert answer.headers["Content-Type"] == "application/json"
    assert words in json.loads(answer.body)["error"]
    assert sorted(os.listdir(limited.dir)) == []
    assert limited.request("GET", "/healthz").status == 200


def chunked_post(service: Service, path: str, chunks: Iterator[bytes]) -> http.client.HTTPResponse:
    conn = service.connection()
    conn.request("POST", path, body=chunks, headers=TEXT, encode_chunked=True)
    return conn.getresponse()


def test_chunked_body_over_the_limit_is_413_not_truncated(limited: Service):
    chunks = (b"z" * 1000 + b"\n" for _ in range(1100))  # 1.05 MiB in 1001-byte chunks
    answer = chunked_post(limited, "/v1/logs/chunked", chunks)
    assert answer.status == 413, answer.read()
    assert "body larger" in json.loads(answer.read())["error"]
    assert not (limited.dir / "chunked.log").exists()


def test_chunked_body_within_the_limit_is_taken_whole(limited: Service):
    chunks = (b"%04d\n" % i for i in range(1000))
    answer = chunked_post(limited, "/v1/logs/chunked-ok?ack=written", chunks)
    assert (answer.status, json.loads(answer.read())) == (200, {"accepted": 1000})
    assert (limited.dir / "chunked-ok.log").read_bytes() == b"".join(
        b"%04d\n" % i for i in range(1000)
    )
    (limited.dir / "chunked-ok.log").unlink()


def test_other_separators_stay_inside_their_line(limited: Service):
    lines = ["u2028 \u2028 in", "nel \x85 in", "vt \x0b in", "ff \x0c in", "cr \r in", "fs \x1c in"]
    body = "".join(f"{line}\n" for line in lines).encode()
    answer = limited.request("POST", "/v1/logs/separators?ack=written", body, TEXT)
    assert (answer.status, json.loads(answer.body)) == (200, {"accepted": len(lines)})
    assert (limited.dir / "separators.log").read_bytes() == body
    gz = limited.request(
        "POST", "/v1/logs/separators?ack=written", gzip.compress(body), {"Content-Encoding": "gzip"}
    )
    assert gz.status == 200
    assert (limited.dir / "separators.log").read_bytes() == body * 2
    (limited.dir / "separators.log").unlink()


def test_a_gzip_bomb_costs_no_more_memory_than_the_body_limit(service: Service):
    # The service fixture has the default 8 MiB body limit.
    (worker,) = service.worker_pids()
    service.request("POST", "/v1/logs/warm?ack=written", b"warm\n" * 1000, TEXT)
    before = peak_rss_mib(worker)
    bomb = gzip_bomb(1 << 30)  # 1 GiB inflated, about 1 MiB on the wire
    answer = service.request("POST", "/v1/logs/bomb", bomb, {"Content-Encoding": "gzip"})
    assert answer.status == 413
    grown_mib = peak_rss_mib(worker) - before
    assert grown_mib < 8 * 1.5, f"peak RSS grew by {grown_mib:.1f} MiB for an 8 MiB limit"
    assert not (service.dir / "bomb.log").exists()


@pytest.mark.root
def test_a_log_folder_it_cannot_write_in_is_refused_at_start(tmp_path: Path):
    logs = tmp_path / "logs"
    logs.mkdir(mode=0o555)  # root's, and not writable even by root without CAP_DAC_OVERRIDE
    env = {**os.environ, "LOGWRITER_DIR": str(logs), "LOGWRITER_BIND": f"127.0.0.1:{free_port()}"}
    without_override = ["--inh-caps=-dac_override", "--bounding-set=-dac_override"]
    result = subprocess.run(
        ["setpriv", *without_override, str(LOGWRITER)],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert f"cannot write in LOGWRITER_DIR {logs}: read-only, or its permissions" in result.stderr
    assert list(logs.iterdir()) == []
