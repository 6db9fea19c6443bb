"""The OpenTelemetry Python SDK (1.45.2, pinned in the test extra) against the live service:
LoggingHandler records through BatchLogRecordProcessor and the HTTP/protobuf OTLPLogExporter,
configured by the environment alone, each client in a process of its own
(data/otlp/sdk_client.py). Every line written is checked whole against what the exporter sent,
rendered as the README says (test_otlp_unit.reference_lines), and what matters in it is checked
again by hand: bodies, severities, attributes, the traceback, the span's ids, the resource."""

import base64
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from google.rpc import code_pb2, status_pb2
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from support import Logwriters, Service, frozen, start_service, stop_service, wait_until
from test_otlp_unit import reference_lines

pytestmark = [pytest.mark.service, pytest.mark.process]

CLIENT = Path(__file__).resolve().parent / "data" / "otlp" / "sdk_client.py"
APP_BODIES = [
    "order A-1 placed",
    'non-ASCII: café ünïcødé 日本語 🚀, a quote " and a backslash \\',
    "multi-line\nsecond line\r\n\tthird, tabbed",
    "division failed",
    "inside a span",
    "fatal",
]
APP_SEVERITIES = [
    ("INFO", 9),
    ("WARN", 13),
    ("DEBUG", 5),
    ("ERROR", 17),
    ("ERROR", 17),
    ("FATAL", 21),
]


class Client:
    """sdk_client.py running in a process of its own, with only the OTEL_* variables given."""

    def __init__(self, folder: Path, scenario: str, env: dict[str, str]) -> None:
        self.out = folder / f"sdk-client-{len(list(folder.glob('sdk-client-*')))}.json"
        self.out.touch()
        environment = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
        self.proc = subprocess.Popen(
            [sys.executable, str(CLIENT), scenario, str(self.out)],
            env={**environment, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def report(self, timeout: float = 60) -> dict[str, Any]:
        try:
            output, _ = self.proc.communicate(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        assert self.proc.returncode == 0, output
        report = json.loads(self.out.read_text())
        report["output"] = output
        return report


def sent(report: dict[str, Any]) -> list[ExportLogsServiceRequest]:
    return [
        ExportLogsServiceRequest.FromString(base64.b64decode(export["request"]))
        for export in report["exports"]
    ]


def expected_lines(report: dict[str, Any], stream: str | None = None) -> dict[str, bytes]:
    """Each stream's file as the README's format makes it of what the exporter sent."""
    out: dict[str, bytes] = {}
    for message in sent(report):
        for name, lines in reference_lines(message, stream=stream).items():
            out[name] = out.get(name, b"") + b"".join(lines)
    return out


def files(service: Service) -> dict[str, bytes]:
    wait_until(lambda: service.metric("logwriter_queue_depth") == 0, 30, "an empty queue")
    return {path.stem: path.read_bytes() for path in sorted(service.dir.glob("*.log"))}


def labelled(service: Service, name: str, label: str, value: str) -> float:
    text = service.request("GET", "/metrics").body.decode()
    match = re.search(rf'^{name}{{{label}="{value}"}} (\S+)$', text, re.MULTILINE)
    return float(match[1]) if match else 0.0


def check_app_lines(data: bytes, report: dict[str, Any], service_name: str) -> list[dict]:
    """The "app" scenario's records, field by field."""
    assert data.count(b"\n") == len(APP_BODIES)
    assert "café ünïcødé 日本語 🚀".encode() in data  # UTF-8 as sent, not escaped
    lines = [json.loads(line) for line in data.splitlines()]
    assert [line["body"] for line in lines] == APP_BODIES
    assert [(line["severity"], line["severity_number"]) for line in lines] == APP_SEVERITIES
    for line in lines:
        assert list(line)[:2] == ["time", "observed_time"]
        assert re.fullmatch(r"20\d\d-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z", line["time"])
        assert line["scope"] == {"name": "app.checkout"}
        assert line["resource"]["service.name"] == service_name
        assert line["resource"]["telemetry.sdk.language"] == "python"
        assert line["resource"]["telemetry.sdk.version"] == "1.45.2"
        assert line["attributes"]["code.function.name"] in ("app_records", "<module>")
        assert line["attributes"]["code.file.path"] == str(CLIENT)
    first = lines[0]["attributes"]
    assert {k: first[k] for k in ("user.id", "ratio", "ok", "tags", "raw")} == {
        "user.id": 42,
        "ratio": 0.5,
        "ok": True,
        "tags": ["a", "b"],
        "raw": "AP8=",  # bytes, as base64
    }
    exception = lines[3]["attributes"]
    assert exception["exception.type"] == "ZeroDivisionError"
    assert exception["exception.message"] == "division by zero"
    stack = exception["exception.stacktrace"]
    assert stack.startswith("Traceback (most recent call last):\n")
    assert "1 / 0" in stack and stack.endswith("ZeroDivisionError: division by zero\n")
    in_span = lines[4]
    assert (in_span["trace_id"], in_span["span_id"], in_span["flags"]) == (
        report["trace_id"],
        report["span_id"],
        report["trace_flags"],  # W3C trace flags: sampled, and (SDK 1.45) random
    )
    assert in_span["flags"] & 1
    assert all(
        "trace_id" not in line and "span_id" not in line for i, line in enumerate(lines) if i != 4
    )
    return lines


def answers(report: dict[str, Any]) -> list[int]:
    """The HTTP status of each request the exporter sent, in order."""
    return [int(s) for s in re.findall(r'"POST [^"]*" (\d{3}) ', "\n".join(report["sdk_log"]))]


def succeeded(report: dict[str, Any]) -> None:
    assert report["flushed"] and report["exports"]
    assert [e["result"] for e in report["exports"]] == ["SUCCESS"] * len(report["exports"])
    assert answers(report) == [200] * len(report["exports"])
    noise = [m for m in report["sdk_log"] if not m.startswith("DEBUG")]
    assert noise == [], noise


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    service = start_service(tmp_path_factory.mktemp("otlp-sdk"))
    yield service
    stop_service(service)


@pytest.fixture
def service(shared: Service) -> Iterator[Service]:
    """The module's service, with an empty log folder for each test."""
    yield shared
    files(shared)
    for path in shared.dir.glob("*.log"):
        path.unlink()


def test_base_endpoint_routes_each_service_to_its_own_file(service: Service, tmp_path: Path):
    base = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{service.port}/otlp"}
    checkout = Client(tmp_path, "app", {**base, "OTEL_SERVICE_NAME": "checkout"})
    billing = Client(
        tmp_path,
        "app",
        {**base, "OTEL_RESOURCE_ATTRIBUTES": "service.name=billing,deployment.environment=test"},
    )
    reports = {"checkout": checkout.report(), "billing": billing.report()}
    written = files(service)
    assert set(written) == {"checkout", "billing"}
    for name, report in reports.items():
        succeeded(report)
        assert report["endpoint"] == f"http://127.0.0.1:{service.port}/otlp/v1/logs"
        assert report["content_encoding"] is None
        assert expected_lines(report) == {name: written[name]}
        check_app_lines(written[name], report, name)
    billing_line = json.loads(written["billing"].splitlines()[0])
    assert billing_line["resource"]["deployment.environment"] == "test"
    assert reports["checkout"]["trace_id"] != reports["billing"]["trace_id"]


def test_logs_endpoint_is_used_as_is(service: Service, tmp_path: Path):
    port = service.port
    report = Client(
        tmp_path,
        "app",
        {
            "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT": f"http://127.0.0.1:{port}/otlp/forced/v1/logs",
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}/otlp/not-this-one",
            "OTEL_SERVICE_NAME": "named",  # the URL's stream wins over service.name
        },
    ).report()
    succeeded(report)
    assert report["endpoint"] == f"http://127.0.0.1:{port}/otlp/forced/v1/logs"
    written = files(service)
    assert set(written) == {"forced"}
    assert expected_lines(report, stream="forced") == written
    check_app_lines(written["forced"], report, "named")


@pytest.mark.parametrize("compression", ["gzip", "deflate"])
def test_compressed_requests(service: Service, tmp_path: Path, compression: str):
    # ?ack=written in the URL, which the Python exporter keeps: the lines are in the file
    # when the export returns.
    endpoint = f"http://127.0.0.1:{service.port}/otlp/v1/logs?ack=written"
    report = Client(
        tmp_path,
        "app",
        {
            "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT": endpoint,
            "OTEL_EXPORTER_OTLP_COMPRESSION": compression,
            "OTEL_SERVICE_NAME": f"packed-{compression}",
        },
    ).report()
    succeeded(report)
    assert report["content_encoding"] == compression
    written = {path.stem: path.read_bytes() for path in service.dir.glob("*.log")}
    assert expected_lines(report) == written
    check_app_lines(written[f"packed-{compression}"], report, f"packed-{compression}")


def test_bearer_token_from_otel_exporter_otlp_headers(start_logwriter: Logwriters, tmp_path: Path):
    service = start_logwriter(env={"LOGWRITER_TOKENS": "s3cret,other"})
    base = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{service.port}/otlp"}
    allowed = Client(
        tmp_path,
        "app",
        {
            **base,
            "OTEL_SERVICE_NAME": "allowed",
            "OTEL_EXPORTER_OTLP_HEADERS": "Authorization=Bearer%20s3cret,X-Extra=1",
        },
    )
    refused = Client(
        tmp_path,
        "app",
        {
            **base,
            "OTEL_SERVICE_NAME": "refused",
            "OTEL_EXPORTER_OTLP_HEADERS": "Authorization=Bearer%20wrong",
        },
    )
    good, bad = allowed.report(), refused.report()
    succeeded(good)
    assert [e["result"] for e in bad["exports"]] == ["FAILURE"]
    assert answers(bad) == [401]  # not retried
    assert any("Failed to export logs batch code: 401" in m for m in bad["sdk_log"])
    written = files(service)
    assert set(written) == {"allowed"}
    assert expected_lines(good) == written
    check_app_lines(written["allowed"], good, "allowed")
    assert labelled(service, "logwriter_rejected_requests_total", "reason", "unauthorized") == 1


QUEUE = {
    "LOGWRITER_QUEUE_BYTES": "64KiB",
    "LOGWRITER_MAX_BODY_BYTES": "64KiB",
    "LOGWRITER_MAX_LINE_BYTES": "16KiB",
}


@pytest.mark.root
def test_a_full_queue_gets_503_and_the_sdk_retries_until_every_record_lands_once(
    ext4_disk: Path, start_logwriter: Logwriters, tmp_path: Path
):
    service = start_logwriter(log_dir=ext4_disk / "logs", env=QUEUE)
    filler = b"".join(b"filler %05d %s\n" % (i, b"f" * 100) for i in range(560))  # 63 KB
    records = 300
    probe = ExportLogsServiceRequest()
    scope_logs = probe.resource_logs.add().scope_logs.add()
    for i in range(20):
        scope_logs.log_records.add().body.string_value = f"probe {i} " + "p" * 400
    with frozen(ext4_disk):
        # The writer takes the filler and waits on the frozen disk: the queue stays full.
        assert service.request("POST", "/v1/logs/filler", filler).status == 202
        answer = service.request(
            "POST",
            "/otlp/probe/v1/logs",
            probe.SerializeToString(),
            {"Content-Type": "application/x-protobuf"},
        )
        assert (answer.status, answer.headers["Retry-After"]) == (503, "1")
        assert answer.headers["Content-Type"] == "application/x-protobuf"
        status = status_pb2.Status.FromString(answer.body)
        assert (status.code, status.message) == (code_pb2.UNAVAILABLE, "queue is full: retry later")
        client = Client(
            tmp_path,
            f"numbered:{records}",
            {
                "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT": (
                    f"http://127.0.0.1:{service.port}/otlp/v1/logs?ack=written"
                ),
                "OTEL_SERVICE_NAME": "numbered",
                "OTEL_EXPORTER_OTLP_TIMEOUT": "60",  # seconds, in Python
                "OTEL_BLRP_MAX_EXPORT_BATCH_SIZE": "50",  # about 10 KB of protobuf each
            },
        )
        wait_until(
            lambda: (
                labelled(service, "logwriter_rejected_requests_total", "reason", "queue_full") >= 3
            ),
            30,
            "the SDK's requests to meet the full queue",
        )
    report = client.report()
    assert [e["result"] for e in report["exports"]] == ["SUCCESS"] * (records // 50)
    statuses = answers(report)
    print(f"the SDK's requests got {statuses}")
    # At least two 503s, then a 200 for each batch: none sent again once taken.
    assert statuses[:2] == [503, 503] and statuses.count(200) == records // 50
    assert set(statuses) == {503, 200}
    retries = [m for m in report["sdk_log"] if "retrying" in m]
    # Retry-After: 1 replaced the SDK's jittered backoff (2**n * 0.8..1.2 s). (It logs the
    # same warning once, so there is one line for all the retries.)
    assert retries and all(m.endswith("retrying in 1.00s.") for m in retries), retries
    written = files(service)
    assert set(written) == {"filler", "numbered"}
    assert written["filler"] == filler
    assert expected_lines(report) == {"numbered": written["numbered"]}
    bodies = [json.loads(line)["body"] for line in written["numbered"].splitlines()]
    assert sorted(body[:6] for body in bodies) == [f"n{i:05d}" for i in range(records)]
    rejected = labelled(service, "logwriter_otlp_records_total", "outcome", "queue_full")
    assert rejected >= 20 + 50 * 2
