"""The OTLP routes of the live service: bad input refused in OTLP's terms and writing nothing,
compressed and empty requests, a request for several streams refused whole when the queue is
full, and a stop under OTLP load that keeps every acknowledged record exactly once."""

import gzip
import http.client
import json
import random
import re
import signal
import socket
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from google.protobuf import json_format
from google.rpc import code_pb2, status_pb2
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.logs.v1.logs_pb2 import LogsData
from support import (
    QUEUE_OF_64_KIB,
    Logwriters,
    Service,
    frozen,
    peak_rss_mib,
    start_service,
    stop_service,
    wait_until,
)
from test_otlp_unit import (
    DATA,
    TRACE,
    hex_ids,
    json_request,
    record,
    reference_lines,
    request,
    resource_logs,
)
from traffic import ClientThreads, KeptAlive

pytestmark = pytest.mark.service

PROTOBUF = {"Content-Type": "application/x-protobuf"}
JSON = {"Content-Type": "application/json"}
SAMPLE = (DATA / "py-sdk-1.45.2.pb").read_bytes()  # the Python SDK's: 6 records of "py-demo"
SAMPLE_LINES = b"".join(reference_lines(ExportLogsServiceRequest.FromString(SAMPLE))["py-demo"])


def sample(service: Service, name: str, **labels: str) -> float:
    """One labelled sample of /metrics (0 if it is not there yet)."""
    text = service.request("GET", "/metrics").body.decode()
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    match = re.search(rf"^{name}{{{wanted}}} (\S+)$", text, re.MULTILINE)
    return float(match[1]) if match else 0.0


def files(service: Service) -> dict[str, bytes]:
    wait_until(lambda: service.metric("logwriter_queue_depth") == 0, 30, "an empty queue")
    return {p.stem: p.read_bytes() for p in sorted(service.dir.glob("*.log"))}


def gzip_bomb(size: int) -> bytes:
    """`size` zero bytes, gzipped (about 1000:1)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = bytes(1 << 20)
    return b"".join([*(packer.compress(block) for _ in range(size >> 20)), packer.flush()])


def raw_deflate(data: bytes) -> bytes:
    packer = zlib.compressobj(wbits=-15)
    return packer.compress(data) + packer.flush()


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    env = {"LOGWRITER_MAX_BODY_BYTES": "1MiB", "LOGWRITER_MAX_LINE_BYTES": "64KiB"}
    service = start_service(tmp_path_factory.mktemp("otlp-bad-input"), env=env)
    yield service
    stop_service(service)


B64_TRACE = "W47/95gDgQPSabYzgT/GDA=="  # TRACE in base64, as protobuf's own JSON mapping has it

GZIP = {**PROTOBUF, "Content-Encoding": "gzip"}
TEXT = {"Content-Type": "text/plain"}
NDJSON = {"Content-Type": "application/x-ndjson"}
ROUTE = "/otlp/v1/logs"
BAD = [
    # (id, path, body, headers, status, reason, words in Status.message)
    ("truncated-protobuf", ROUTE, SAMPLE[:-7], PROTOBUF, 400, "bad_otlp", "not a protobuf"),
    ("garbage-protobuf", "/otlp/s/v1/logs", b"\xff" * 64, PROTOBUF, 400, "bad_otlp", "protobuf"),
    ("base64-ids", ROUTE, json_request({"traceId": B64_TRACE}), JSON, 400, "bad_otlp", "base64"),
    ("json-not-an-object", ROUTE, b"[1, 2]", JSON, 400, "bad_otlp", "JSON object"),
    ("json-invalid-utf8", ROUTE, b'{"x": "\xff"}', JSON, 400, "bad_otlp", "UTF-8"),
    ("json-zero-bytes", ROUTE, b"", JSON, 400, "bad_otlp", "not valid JSON"),
    ("text-plain", ROUTE, b"a line\n", TEXT, 415, "bad_type", "Content-Type"),
    ("no-type", ROUTE, SAMPLE, {}, 415, "bad_type", "Content-Type"),
    ("ndjson", ROUTE, b"{}\n", NDJSON, 415, "bad_type", "Content-Type"),
    ("brotli", ROUTE, SAMPLE, {**PROTOBUF, "Content-Encoding": "br"}, 415, "bad_encoding", "br"),
    ("bad-gzip", ROUTE, b"\x1f\x8bnot really", GZIP, 400, "bad_gzip", "gzip"),
    ("cut-gzip", ROUTE, gzip.compress(SAMPLE)[:-9], GZIP, 400, "bad_gzip", "gzip"),
    ("too-large", ROUTE, b"\x00" * (1 << 20 | 1), PROTOBUF, 413, "too_large", "larger than"),
    ("hidden-stream", "/otlp/.hidden/v1/logs", SAMPLE, PROTOBUF, 400, "bad_stream", "stream"),
    ("bad-ack", ROUTE + "?ack=sometimes", SAMPLE, PROTOBUF, 400, "bad_ack", "ack must be"),
]


@pytest.mark.parametrize(
    ("path", "body", "headers", "status", "reason", "words"),
    [case[1:] for case in BAD],
    ids=[case[0] for case in BAD],
)
def test_bad_input_is_refused_in_otlps_terms_and_writes_nothing(
    limited: Service, path, body, headers, status, reason, words
):  # type: ignore[no-untyped-def]
    before = sample(limited, "logwriter_rejected_requests_total", reason=reason)
    answer = limited.request("POST", path, body, headers)
    assert answer.status == status, answer.body
    # The request's own encoding; a Content-Type that is neither gets JSON.
    content_type = (
        "application/x-protobuf"
        if headers.get("Content-Type") == PROTOBUF["Content-Type"]
        else "application/json"
    )
    assert answer.headers["Content-Type"] == content_type
    if content_type == "application/json":
        status_message = json_format.Parse(answer.body, status_pb2.Status())
    else:
        status_message = status_pb2.Status.FromString(answer.body)
    assert words in status_message.message, status_message
    assert (
        status_message.code
        == {
            400: code_pb2.INVALID_ARGUMENT,
            413: code_pb2.RESOURCE_EXHAUSTED,
            415: code_pb2.INVALID_ARGUMENT,
        }[status]
    )
    assert sample(limited, "logwriter_rejected_requests_total", reason=reason) == before + 1
    assert list(limited.dir.iterdir()) == []
    assert limited.request("GET", "/healthz").status == 200


@pytest.mark.parametrize(
    ("body", "headers", "answer"),
    [
        (b"", PROTOBUF, b""),
        (b"{}", JSON, b"{}"),
        (b'{"resourceLogs": []}', JSON, b"{}"),
        (request(resource_logs([], service="quiet")).SerializeToString(), PROTOBUF, b""),
        (gzip.compress(b""), {**PROTOBUF, "Content-Encoding": "gzip"}, b""),
    ],
    ids=["protobuf", "json", "json-no-records", "protobuf-no-records", "gzip-of-nothing"],
)
def test_an_empty_request_is_a_success_that_writes_nothing(limited: Service, body, headers, answer):  # type: ignore[no-untyped-def]
    got = limited.request("POST", "/otlp/v1/logs?ack=written", body, headers)
    assert (got.status, got.body, got.headers["Content-Type"]) == (
        200,
        answer,
        headers["Content-Type"],
    )
    assert list(limited.dir.iterdir()) == []


@pytest.fixture(scope="module")
def taking(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    service = start_service(tmp_path_factory.mktemp("otlp-taking"))
    yield service
    stop_service(service)


@pytest.mark.parametrize(
    ("encoding", "pack"),
    [
        ("deflate", zlib.compress),  # zlib-wrapped, as HTTP means it and the Python SDK sends it
        ("deflate", raw_deflate),  # raw, as some clients send it
        ("gzip", gzip.compress),
        ("gzip", lambda data: gzip.compress(data[:700]) + gzip.compress(data[700:])),  # 2 members
    ],
    ids=["deflate-zlib", "deflate-raw", "gzip", "gzip-two-members"],
)
def test_compressed_requests_are_taken(taking: Service, encoding, pack):  # type: ignore[no-untyped-def]
    headers = {**PROTOBUF, "Content-Encoding": encoding}
    answer = taking.request("POST", "/otlp/v1/logs?ack=written", pack(SAMPLE), headers)
    assert (answer.status, answer.body) == (200, b"")
    try:
        assert files(taking) == {"py-demo": SAMPLE_LINES}
    finally:
        for path in taking.dir.glob("*.log"):
            path.unlink()


def test_a_gzip_bomb_is_413_and_costs_no_more_memory_than_the_body_limit(
    start_logwriter: Logwriters,
):
    service = start_logwriter()  # the default 8 MiB body limit
    (worker,) = service.worker_pids()
    warm = service.request("POST", "/otlp/v1/logs?ack=written", SAMPLE, PROTOBUF)
    assert warm.status == 200
    (service.dir / "py-demo.log").unlink()
    before = peak_rss_mib(worker)
    bomb = gzip_bomb(256 << 20)  # 256 MiB of zeros inflated, 32 times the limit; 256 KB sent
    answer = service.request(
        "POST", "/otlp/v1/logs", bomb, {**PROTOBUF, "Content-Encoding": "gzip"}
    )
    grown = peak_rss_mib(worker) - before
    assert answer.status == 413
    status = status_pb2.Status.FromString(answer.body)
    assert status.code == code_pb2.RESOURCE_EXHAUSTED and "decompressed body" in status.message
    assert grown < 8 * 1.5, f"peak RSS grew by {grown:.1f} MiB for an 8 MiB limit"
    assert list(service.dir.iterdir()) == []
    assert sample(service, "logwriter_rejected_requests_total", reason="too_large") == 1


def test_a_body_that_does_not_arrive_in_time_is_503_which_otlp_clients_retry(
    start_logwriter: Logwriters,
):
    # OTLP clients drop a batch on a 408 and retry a 503: the OTLP routes answer 503.
    service = start_logwriter(env={"LOGWRITER_BODY_TIMEOUT": "1"})
    with socket.create_connection(("127.0.0.1", service.port), timeout=10) as sock:
        head = (
            b"POST /otlp/v1/logs HTTP/1.1\r\nHost: t\r\n"
            b"Content-Type: application/x-protobuf\r\nContent-Length: %d\r\n\r\n" % len(SAMPLE)
        )
        sock.sendall(head + SAMPLE[:100])
        answer = http.client.HTTPResponse(sock)
        answer.begin()
        assert (answer.status, answer.getheader("Retry-After")) == (503, "1")
        assert answer.getheader("Content-Type") == "application/x-protobuf"
        status = status_pb2.Status.FromString(answer.read())
        assert status.code == code_pb2.UNAVAILABLE and "took longer than 1 s" in status.message
    assert files(service) == {}


def test_otlp_stream_and_otlp_format_settings(start_logwriter: Logwriters):
    service = start_logwriter(
        env={"LOGWRITER_OTLP_STREAM": "otel-default", "LOGWRITER_OTLP_FORMAT": "otlp"}
    )
    message = request(
        resource_logs([record(time_unix_nano=5, body="no service", trace_id=TRACE)]),
        resource_logs([record(body="named", severity_number=9)], service="checkout"),
        resource_logs([record(body="also unnamed")], service="日本"),
    )
    answer = service.request("POST", "/otlp/v1/logs", message.SerializeToString(), PROTOBUF)
    assert (answer.status, answer.body) == (200, b"")
    written = files(service)
    assert set(written) == {"otel-default", "checkout"}
    for name, groups in [("otel-default", [0, 2]), ("checkout", [1])]:
        (line,) = written[name].splitlines()  # one LogsData per stream and request
        logs_data = json_format.ParseDict(hex_ids(json.loads(line), encode=False), LogsData())
        assert logs_data == LogsData(resource_logs=[message.resource_logs[i] for i in groups])
    assert f'"traceId":"{TRACE}"'.encode() in written["otel-default"]


@pytest.mark.root
def test_a_request_for_two_streams_is_refused_whole_when_the_queue_is_full(
    ext4_disk: Path, start_logwriter: Logwriters
):
    service = start_logwriter(log_dir=ext4_disk / "logs", env=QUEUE_OF_64_KIB)
    message = request(
        resource_logs(
            [record(time_unix_nano=i + 1, body=f"a{i} " + "a" * 200) for i in range(20)],
            service="checkout",
        ),
        resource_logs(
            [
                record(time_unix_nano=i + 1, body=f"b{i} " + "b" * 200, trace_id=TRACE)
                for i in range(20)
            ],
            service="billing",
        ),
    )
    expected = {name: b"".join(lines) for name, lines in reference_lines(message).items()}
    each, both = max(map(len, expected.values())), sum(map(len, expected.values()))
    filler = b"".join(b"filler %05d %s\n" % (i, b"f" * 100) for i in range(487))
    assert 65536 - len(filler) > each and 65536 - len(filler) < both  # room for one, not two
    body = message.SerializeToString()
    with frozen(ext4_disk):
        # The writer takes the filler and waits on the frozen disk, its bytes still queued.
        assert service.request("POST", "/v1/logs/filler", filler).status == 202
        answer = service.request("POST", "/otlp/v1/logs", body, PROTOBUF)
        assert (answer.status, answer.headers["Retry-After"]) == (503, "1")
        status = status_pb2.Status.FromString(answer.body)
        assert (status.code, status.message) == (code_pb2.UNAVAILABLE, "queue is full: retry later")
    assert files(service) == {"filler": filler}  # neither stream got anything of it
    assert sample(service, "logwriter_rejected_requests_total", reason="queue_full") == 1
    assert sample(service, "logwriter_otlp_records_total", outcome="queue_full") == 40
    again = service.request("POST", "/otlp/v1/logs?ack=written", body, PROTOBUF)
    assert (again.status, again.body) == (200, b"")
    assert files(service) == {"filler": filler, **expected}
    assert sample(service, "logwriter_otlp_records_total", outcome="accepted") == 40


# --- a stop under OTLP load ----------------------------------------------------------------


def load_request(client: int, number: int, count: int) -> bytes:
    """`count` records, split over two streams, each body naming its client, request and
    position: "c03 r00017 l0042 of 0075"."""
    bodies = [f"c{client:02d} r{number:05d} l{i:04d} of {count:04d}" for i in range(count)]
    half = count // 2
    return request(
        resource_logs([record(body=b) for b in bodies[:half]], service="load-a"),
        resource_logs([record(body=b) for b in bodies[half:]], service="load-b"),
    ).SerializeToString()


@dataclass
class OtlpLoad(ClientThreads):
    """Client threads posting protobuf requests of 50-100 records on keep-alive connections
    until stop(), recording each request's answer (0: none came)."""

    port: int
    clients: int = 6
    statuses: dict[tuple[int, int], tuple[int, int]] = field(default_factory=dict)

    def acked_records(self) -> int:
        with self._lock:
            return sum(count for status, count in self.statuses.values() if status == 200)

    def _client(self, client: int) -> None:
        rng = random.Random(client)
        conn = KeptAlive(self.port)
        failures = 0
        deadline = time.monotonic() + 60
        for number in range(100_000):
            if self._stop.is_set() or failures >= 20 or time.monotonic() > deadline:
                break
            count = rng.randint(50, 100)
            status = conn.post("/otlp/v1/logs", load_request(client, number, count), PROTOBUF)
            if status == 0:  # no answer
                failures += 1
                time.sleep(0.05)
            with self._lock:
                self.statuses[(client, number)] = (status, count)
        conn.close()


_LOAD_BODY = re.compile(r"c(\d\d) r(\d{5}) l(\d{4}) of (\d{4})")


def check_load_files(service: Service, statuses: dict[tuple[int, int], tuple[int, int]]) -> int:
    """Every record of a 200 on disk exactly once, nothing of a refused request, all or none of
    one that got no answer; each request's share of a stream in one run. Returns the records."""
    seen: dict[tuple[int, int], list[int]] = {}
    for name in ("load-a", "load-b"):  # a request's first half went to load-a, the rest to b
        data = (service.dir / f"{name}.log").read_bytes()
        assert data.endswith(b"\n") and b"\0" not in data
        ended: set[tuple[int, int]] = set()  # requests whose run in this file is over
        previous = None
        for number, line in enumerate(data.splitlines(), 1):
            parsed = json.loads(line)
            assert parsed["resource"] == {"service.name": name}, f"{name}:{number}"
            match = _LOAD_BODY.fullmatch(parsed["body"])
            assert match, f"{name}:{number}: {line[:100]!r}"
            client, req, position, count = map(int, match.groups())
            key = (client, req)
            if key != previous:
                assert key not in ended, f"{name}:{number}: c{client} r{req} is not in one run"
                if previous is not None:
                    ended.add(previous)
                previous = key
            seen.setdefault(key, []).append(position)
    total = 0
    for key, positions in seen.items():
        status, count = statuses.get(key, (None, None))
        assert status in (200, 0), f"c{key[0]} r{key[1]}: written, but answered {status}"
        assert positions == list(range(count)), f"c{key[0]} r{key[1]}: {len(positions)} of {count}"
        total += count
    missing = [key for key, (status, _) in statuses.items() if status == 200 and key not in seen]
    assert not missing, f"{len(missing)} acknowledged requests missing: {missing[:5]}"
    return total


def test_sigterm_under_otlp_load_keeps_every_acknowledged_record_once(
    start_logwriter: Logwriters,
):
    service = start_logwriter(workers=2, env={"LOGWRITER_ACK": "queued"})
    load = OtlpLoad(service.port).start()
    try:
        wait_until(lambda: load.acked_records() > 20_000, 60, "20,000 acknowledged records")
        service.signal(signal.SIGTERM)
        assert service.wait(60) == 0, service.log_text()
    finally:
        load.stop()
    on_disk = check_load_files(service, load.statuses)
    answers = [status for status, _ in load.statuses.values()]
    print(f"{on_disk} records on disk; answers: { {s: answers.count(s) for s in set(answers)} }")
    assert on_disk >= load.acked_records() > 20_000
    assert set(answers) <= {200, 503, 0}
    assert "Traceback" not in service.log_text()
