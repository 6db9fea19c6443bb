"""The OpenTelemetry Python SDK as an application sets it up for logs: LoggerProvider,
BatchLogRecordProcessor, OTLPLogExporter (HTTP/protobuf) and the logging module's
LoggingHandler, configured by the environment alone (OTEL_EXPORTER_OTLP_*, OTEL_SERVICE_NAME,
OTEL_RESOURCE_ATTRIBUTES, OTEL_BLRP_*).

tests/test_otlp_sdk.py runs it in a process of its own, so that the SDK's global state and
environment start clean each time:

    python sdk_client.py app OUT          the records test_otlp_sdk.py checks one by one
    python sdk_client.py numbered:N OUT   N records whose bodies are "n00000 xxx..."

It flushes, shuts down and writes OUT, a JSON object: each export's result and the request it
sent (base64 of the ExportLogsServiceRequest, as the exporter serialized it), the exporter's
endpoint and Content-Encoding, the span the "app" records logged inside, and what the SDK
itself logged (its warnings about our answers, its retries).
"""

import base64
import json
import logging
import sys

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.sdk.trace import TracerProvider


class Recorder(logging.Handler):
    """What the SDK logs about its exports (Python logging's "opentelemetry" loggers), and
    urllib3's line for each request it sent."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(f"{record.levelname} {record.name}: {record.getMessage()}")


def app_records(log: logging.Logger, tracer: trace.Tracer) -> dict[str, str]:
    log.info(
        "order %s placed",
        "A-1",
        extra={"user.id": 42, "ratio": 0.5, "ok": True, "tags": ["a", "b"], "raw": b"\x00\xff"},
    )
    log.warning('non-ASCII: café ünïcødé 日本語 🚀, a quote " and a backslash \\')
    log.debug("multi-line\nsecond line\r\n\tthird, tabbed")
    try:
        1 / 0  # noqa: B018
    except ZeroDivisionError:
        log.exception("division failed")
    with tracer.start_as_current_span("checkout") as span:
        log.error("inside a span")
        context = span.get_span_context()
    log.critical("fatal")
    return {
        "trace_id": f"{context.trace_id:032x}",
        "span_id": f"{context.span_id:016x}",
        "trace_flags": int(context.trace_flags),
    }


def numbered_records(log: logging.Logger, count: int) -> dict[str, str]:
    for i in range(count):
        log.info("n%05d %s", i, "x" * 150)
    return {}


def main(scenario: str, out: str) -> None:
    recorder = Recorder()
    sdk_log = logging.getLogger("opentelemetry")
    sdk_log.addHandler(recorder)
    sdk_log.setLevel(logging.DEBUG)
    # Each HTTP exchange, with its status: the SDK logs a repeated retry warning only once.
    http_log = logging.getLogger("urllib3.connectionpool")
    http_log.addHandler(recorder)
    http_log.setLevel(logging.DEBUG)

    exporter = OTLPLogExporter()  # endpoint, headers, compression, timeout: from the environment
    exports: list[dict[str, str]] = []
    export = exporter.export

    def recorded_export(batch):  # type: ignore[no-untyped-def]
        result = export(batch)  # the exporter's own, retries included
        sent = encode_logs(batch).SerializeToString()  # what it sent: its own encoder
        exports.append({"result": result.name, "request": base64.b64encode(sent).decode()})
        return result

    exporter.export = recorded_export  # type: ignore[method-assign]
    provider = LoggerProvider()  # its resource from OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES
    provider.add_log_record_processor(BatchLogRecordProcessor(exporter))
    trace.set_tracer_provider(TracerProvider())

    log = logging.getLogger("app.checkout")
    log.setLevel(logging.DEBUG)
    log.propagate = False
    log.addHandler(LoggingHandler(logger_provider=provider))

    if scenario == "app":
        span = app_records(log, trace.get_tracer("client"))
    else:
        kind, count = scenario.split(":")
        assert kind == "numbered", scenario
        span = numbered_records(log, int(count))
    flushed = provider.force_flush(timeout_millis=120_000)
    provider.shutdown()
    report = {
        "flushed": flushed,
        "exports": exports,
        "endpoint": exporter._endpoint,
        "content_encoding": exporter._client._headers.get("Content-Encoding"),
        "sdk_log": recorder.messages,
        **span,
    }
    with open(out, "w") as file:
        json.dump(report, file)


if __name__ == "__main__":
    main(*sys.argv[1:])
