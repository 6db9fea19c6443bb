"""OTLP/JSON from a real encoder: the OpenTelemetry JS SDK on Node 20 against the live service,
with @opentelemetry/exporter-logs-otlp-http (JSON) and -otlp-proto (protobuf) 0.223.1, as
tests/otlp_js/package-lock.json pins them (.ci/run installs them with npm ci).

0.223.1 and not the 0.203.x the issue named: it is the newest 0.x that supports Node 20 (0.300
and later need Node 22.15), and 0.203.0 sends a Uint8Array attribute as {"0":0,"1":1,...}
instead of base64 (opentelemetry-js#6190; the service refuses that with a 400, see
test_otlp_unit.test_the_js_sdk_0_203_bytes_bug_is_a_400) and drops the endpoint's query string,
so ?ack= never reaches us.

tests/otlp_js/client.js logs fixed records, timestamps included, so each line is known here to
the byte, and both exporters must give the same lines. The SDK's diagnostics (a
DiagConsoleLogger at WARN) must stay silent: it warns when it cannot parse our answer, and
when the answer carries a partial success, which one client is made to get.
"""

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from support import Logwriters, Service, wait_until

pytestmark = [pytest.mark.service, pytest.mark.tools]

JS = Path(__file__).resolve().parent / "otlp_js"
NODE = shutil.which("node")


def t(ms: int) -> str:
    """client.js's at(ms): 2026-12-01T06:27:51.123456789Z plus `ms` milliseconds."""
    return f"2026-12-01T06:27:51.{123_456_789 + ms * 1_000_000:09d}Z"


def expected(service: str) -> bytes:
    """The file client.js's records make for `service`, to the byte."""
    tail = {
        "resource": {"service.name": service, "service.version": "0.0.1"},
        "scope": {"name": "app.js", "version": "1.2.3"},
    }
    records: list[dict[str, Any]] = [
        {
            "severity": "INFO",
            "severity_number": 9,
            "body": "plain message",
            "attributes": {
                "user.id": 42,
                "ratio": 0.5,
                "ok": True,
                "tags": ["a", "b"],
                "big": 2**53,
            },
        },
        {"severity": "INFO2", "severity_number": 10, "body": "no severity text, number 10"},
        {
            "severity": "warn",
            "severity_number": 13,
            "body": 'non-ASCII: café 日本語 🚀 "quoted" \\ backslash',
        },
        {"severity": "DEBUG", "severity_number": 5, "body": "multi-line\nsecond line\r\n\tthird"},
        {
            "severity": "INFO",
            "severity_number": 9,
            "body": {"structured": {"nested": [1, "two", None]}, "n": 3.25},
            "attributes": {"bytes": "AAEC/w=="},  # a Uint8Array, as base64
        },
        {
            "severity": "INFO",
            "severity_number": 9,
            "body": "an event",
            "event_name": "app.checkout.done",
        },
        {
            "severity": "ERROR",
            "severity_number": 17,
            "body": "something failed",
            "attributes": {
                "exception.type": "Error",
                "exception.message": "boom",
                "exception.stacktrace": "Error: boom\n    at main (app.js:1:1)",
            },
        },
        {
            "severity": "ERROR",
            "severity_number": 17,
            "body": "inside a span",
            "trace_id": "5b8efff798038103d269b633813fc60c",
            "span_id": "eee19b7ec3c1b174",
            "flags": 1,
        },
    ]
    lines = [
        {"time": t(n), "observed_time": t(n + 500), **fields, **tail}
        for n, fields in enumerate(records)
    ]
    return b"".join(
        json.dumps(line, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"
        for line in lines
    )


class Node:
    """client.js in a process of its own, with only the OTEL_* variables given."""

    def __init__(self, env: dict[str, str], *args: str) -> None:
        environment = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
        self.proc = subprocess.Popen(
            [str(NODE), str(JS / "client.js"), *args],
            env={**environment, **env},
            cwd=JS,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def finish(self, timeout: float = 60) -> tuple[list[dict[str, Any]], str]:
        """Each export's result, and what the SDK wrote to stderr."""
        try:
            out, err = self.proc.communicate(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        assert self.proc.returncode == 0, out + err
        return json.loads(out)["results"], err


@pytest.fixture
def node() -> None:
    if NODE is None:
        pytest.skip("node is not installed: the JS SDK's exporters cannot run here")
    if not (JS / "node_modules" / "@opentelemetry" / "sdk-logs").is_dir():
        pytest.fail("the JS SDK is not installed: run `npm ci --prefix tests/otlp_js`")


def written(service: Service) -> dict[str, bytes]:
    wait_until(lambda: service.metric("logwriter_queue_depth") == 0, 30, "an empty queue")
    return {path.stem: path.read_bytes() for path in sorted(service.dir.glob("*.log"))}


def test_js_sdk_json_and_protobuf_exporters(node: None, start_logwriter: Logwriters):
    service = start_logwriter(env={"LOGWRITER_MAX_LINE_BYTES": "4KiB"})
    base = f"http://127.0.0.1:{service.port}/otlp"
    as_is = {"OTEL_EXPORTER_OTLP_LOGS_ENDPOINT": f"{base}/v1/logs?ack=written"}
    clients = {
        # The base endpoint: the SDK adds /v1/logs, and service.name picks the file.
        "js-proto": Node({"OTEL_EXPORTER_OTLP_ENDPOINT": base}, "proto", "js-proto"),
        "js-json": Node({"OTEL_EXPORTER_OTLP_ENDPOINT": base}, "json", "js-json"),
        # The logs endpoint as is, its query string kept (0.203.x dropped it).
        "js-json-gzip": Node(
            {**as_is, "OTEL_EXPORTER_OTLP_COMPRESSION": "gzip"}, "json", "js-json-gzip"
        ),
        "js-proto-gzip": Node(
            {**as_is, "OTEL_EXPORTER_OTLP_COMPRESSION": "gzip"}, "proto", "js-proto-gzip"
        ),
    }
    for name, client in clients.items():
        results, diagnostics = client.finish()
        assert results == [{"code": 0, "records": 8, "error": None}], name  # 0: SUCCESS
        assert diagnostics == "", f"{name}: the JS SDK complained:\n{diagnostics}"
    files = written(service)
    assert files == {name: expected(name) for name in clients}


def test_js_sdk_reads_our_partial_success_in_both_encodings(
    node: None, start_logwriter: Logwriters
):
    service = start_logwriter(env={"LOGWRITER_MAX_LINE_BYTES": "4KiB"})
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{service.port}/otlp"}
    clients = {
        "partial-json": Node(env, "json", "partial-json", "partial"),
        "partial-proto": Node(env, "proto", "partial-proto", "partial"),
    }
    for name, client in clients.items():
        results, diagnostics = client.finish()
        # A partial success is a success: the client must not send the batch again.
        assert results == [{"code": 0, "records": 9, "error": None}], name
        warnings = diagnostics.strip().splitlines()
        assert len(warnings) == 1 and "Received Partial Success response" in warnings[0], (
            f"{name}: {diagnostics}"
        )
        # What our ExportLogsServiceResponse said, as the SDK's decoder read it.
        partial = json.loads(warnings[0].split("response:", 1)[1])
        assert int(partial["rejectedLogRecords"]) == 1, warnings[0]
        assert partial["errorMessage"].startswith("1 log records refused"), warnings[0]
    assert written(service) == {name: expected(name) for name in clients}
