"""service/otlp.py on its own: OTLP requests (protobuf and OTLP/JSON) to lines, the stream
each record goes to, the OTLP/JSON rules, and the answers, checked against the real message
types (opentelemetry-proto, and googleapis-common-protos' google.rpc.Status).

reference_lines() below is a plain, slow rendering of the documented line format (a dict per
record and json.dumps), written apart from the service's fragment builder: the tests that run
real SDKs compare the service's files against it, and the tests here pin it to hand-written
lines.
"""

import base64
import gzip
import json
import math
import re
import threading
import time
import zlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format
from google.rpc import code_pb2, status_pb2
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import (
    AnyValue,
    ArrayValue,
    InstrumentationScope,
    KeyValue,
    KeyValueList,
)
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, LogsData, ResourceLogs, ScopeLogs
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from service import otlp
from service.app import create_app
from service.files import LogFiles
from service.parsing import STREAM_NAME
from service.settings import Settings
from service.writer import Writer

pytestmark = pytest.mark.unit

DATA = Path(__file__).resolve().parent / "data" / "otlp"
RECEIVED = 1_796_106_471_123_456_789  # 2026-12-01T06:27:51.123456789Z
DEFAULT = "unknown_service"
TRACE = "5b8efff798038103d269b633813fc60c"
SPAN = "eee19b7ec3c1b174"

# The Logs data model's "Displaying Severity" table, written out: 10 is INFO2, not INFO.
SHORT_NAMES = {
    1: "TRACE", 2: "TRACE2", 3: "TRACE3", 4: "TRACE4",
    5: "DEBUG", 6: "DEBUG2", 7: "DEBUG3", 8: "DEBUG4",
    9: "INFO", 10: "INFO2", 11: "INFO3", 12: "INFO4",
    13: "WARN", 14: "WARN2", 15: "WARN3", 16: "WARN4",
    17: "ERROR", 18: "ERROR2", 19: "ERROR3", 20: "ERROR4",
    21: "FATAL", 22: "FATAL2", 23: "FATAL3", 24: "FATAL4",
}  # fmt: skip


# --- building requests -------------------------------------------------------------------


def value(v: Any) -> AnyValue:
    """A Python value as the AnyValue an SDK would send for it."""
    if isinstance(v, AnyValue):
        return v
    if v is None:
        return AnyValue()
    if isinstance(v, bool):
        return AnyValue(bool_value=v)
    if isinstance(v, int):
        return AnyValue(int_value=v)
    if isinstance(v, float):
        return AnyValue(double_value=v)
    if isinstance(v, str):
        return AnyValue(string_value=v)
    if isinstance(v, bytes):
        return AnyValue(bytes_value=v)
    if isinstance(v, list):
        return AnyValue(array_value=ArrayValue(values=[value(x) for x in v]))
    if isinstance(v, dict):
        return AnyValue(kvlist_value=KeyValueList(values=pairs(v)))
    raise TypeError(v)


def pairs(attributes: dict[str, Any] | list[tuple[str, Any]]) -> list[KeyValue]:
    items = attributes.items() if isinstance(attributes, dict) else attributes
    return [KeyValue(key=k, value=value(v)) for k, v in items]


def resource_logs(
    records: list[LogRecord],
    service: str | None = None,
    resource: dict[str, Any] | None = None,
    scope: InstrumentationScope | None = None,
) -> ResourceLogs:
    attributes = dict(resource or {})
    if service is not None:
        attributes = {"service.name": service, **attributes}
    return ResourceLogs(
        resource=Resource(attributes=pairs(attributes)),
        scope_logs=[ScopeLogs(scope=scope, log_records=records)],
    )


def request(*groups: ResourceLogs) -> ExportLogsServiceRequest:
    return ExportLogsServiceRequest(resource_logs=groups)


def record(**fields: Any) -> LogRecord:
    """A LogRecord; `body` and `attributes` as Python values, ids as hex."""
    if "body" in fields:
        fields["body"] = value(fields["body"])
    if "attributes" in fields:
        fields["attributes"] = pairs(fields["attributes"])
    for key in ("trace_id", "span_id"):
        if isinstance(fields.get(key), str):
            fields[key] = bytes.fromhex(fields[key])
    return LogRecord(**fields)


def hex_ids(message: dict[str, Any], encode: bool = True) -> dict[str, Any]:
    """OTLP/JSON's one change to protobuf's JSON mapping, either way: ids base64 <-> hex."""
    for group in message.get("resourceLogs", ()):
        for scope_logs in group.get("scopeLogs", ()):
            for r in scope_logs.get("logRecords", ()):
                for key in ("traceId", "spanId"):
                    if key in r:
                        r[key] = (
                            base64.b64decode(r[key]).hex()
                            if encode
                            else base64.b64encode(bytes.fromhex(r[key])).decode()
                        )
    return message


def otlp_json(message: ExportLogsServiceRequest) -> bytes:
    """The request as OTLP/JSON, as the JS exporter sends it: camelCase, enums as numbers,
    64-bit integers as strings, ids in hex."""
    as_dict = json_format.MessageToDict(message, use_integers_for_enums=True)
    return json.dumps(hex_ids(as_dict)).encode()


# --- the reference rendering ---------------------------------------------------------------


def rfc3339(ns: int) -> str:
    seconds, fraction = divmod(ns, 1_000_000_000)
    return f"{datetime.fromtimestamp(seconds, UTC):%Y-%m-%dT%H:%M:%S}.{fraction:09d}Z"


def plain(v: AnyValue) -> Any:
    """An AnyValue as the plain JSON value the README promises."""
    kind = v.WhichOneof("value")
    if kind == "double_value":
        d = v.double_value
        if math.isnan(d):
            return "NaN"
        return d if math.isfinite(d) else ("Infinity" if d > 0 else "-Infinity")
    if kind == "bytes_value":
        return base64.b64encode(v.bytes_value).decode()
    if kind == "array_value":
        return [plain(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return as_object(v.kvlist_value.values)
    return getattr(v, kind) if kind else None


def as_object(kvs: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kv in kvs:
        out[kv.key] = plain(kv.value)  # a key sent twice: its first place, its last value
    return out


def reference_line(
    r: LogRecord, resource: Resource, scope: InstrumentationScope, received: int = RECEIVED
) -> bytes:
    line: dict[str, Any] = {
        "time": rfc3339(r.time_unix_nano or r.observed_time_unix_nano or received)
    }
    if r.observed_time_unix_nano:
        line["observed_time"] = rfc3339(r.observed_time_unix_nano)
    severity = r.severity_text or SHORT_NAMES.get(r.severity_number)
    if severity:
        line["severity"] = severity
    if r.severity_number:
        line["severity_number"] = r.severity_number
    if r.HasField("body") and r.body.WhichOneof("value"):
        line["body"] = plain(r.body)
    if r.attributes:
        line["attributes"] = as_object(r.attributes)
    if r.trace_id.strip(b"\0"):
        line["trace_id"] = r.trace_id.hex()
    if r.span_id.strip(b"\0"):
        line["span_id"] = r.span_id.hex()
    if r.flags:
        line["flags"] = r.flags
    if r.event_name:
        line["event_name"] = r.event_name
    if resource.attributes:
        line["resource"] = as_object(resource.attributes)
    scope_part = {}
    if scope.name:
        scope_part["name"] = scope.name
    if scope.version:
        scope_part["version"] = scope.version
    if scope.attributes:
        scope_part["attributes"] = as_object(scope.attributes)
    if scope_part:
        line["scope"] = scope_part
    return json.dumps(line, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


def reference_stream(group: ResourceLogs, default: str = DEFAULT) -> str:
    for kv in group.resource.attributes:
        if kv.key == "service.name":
            name = re.sub(r"[^A-Za-z0-9._-]", "_", kv.value.string_value).lstrip("._-")[:64]
            return name or default
    return default


def reference_lines(
    message: ExportLogsServiceRequest,
    stream: str | None = None,
    default: str = DEFAULT,
    received: int = RECEIVED,
) -> dict[str, list[bytes]]:
    """Each stream's lines, as the README describes them, for the `records` format."""
    out: dict[str, list[bytes]] = {}
    for group in message.resource_logs:
        for scope_logs in group.scope_logs:
            for r in scope_logs.log_records:
                name = stream or reference_stream(group, default)
                line = reference_line(r, group.resource, scope_logs.scope, received)
                out.setdefault(name, []).append(line)
    return out


# --- the service's conversion --------------------------------------------------------------


def convert(
    body: bytes | ExportLogsServiceRequest,
    content_type: str = otlp.PROTOBUF,
    stream: str | None = None,
    fmt: str = "records",
    max_line: int = 1 << 20,
) -> otlp.Batch:
    if isinstance(body, ExportLogsServiceRequest):
        body = body.SerializeToString() if content_type == otlp.PROTOBUF else otlp_json(body)
    message = otlp.decode(body, content_type)
    return otlp.to_lines(message, stream, DEFAULT, fmt, RECEIVED, max_line)


def lines(batch: otlp.Batch) -> dict[str, list[bytes]]:
    """Each stream's lines, checking that the counts match the data."""
    out = {}
    for name, stream_lines in batch.streams.items():
        split = stream_lines.data.splitlines(keepends=True)
        assert stream_lines.count == len(split), name
        assert all(line.endswith(b"\n") and line.count(b"\n") == 1 for line in split)
        out[name] = split
    return out


def only_line(batch: otlp.Batch) -> bytes:
    ((_, (line,)),) = lines(batch).items()
    return line


def both_encodings(message: ExportLogsServiceRequest, **kwargs: Any) -> dict[str, list[bytes]]:
    """The lines of `message` sent as protobuf, after checking OTLP/JSON gives the same."""
    from_protobuf = lines(convert(message, otlp.PROTOBUF, **kwargs))
    assert lines(convert(message, otlp.JSON, **kwargs)) == from_protobuf
    return from_protobuf


def bad(body: bytes | dict[str, Any], content_type: str = otlp.JSON) -> str:
    """The BadRequest message for a body that must be refused."""
    if isinstance(body, dict):
        body = json.dumps(body).encode()
    with pytest.raises(otlp.BadRequest) as refused:
        convert(body, content_type)
    return str(refused.value)


def json_request(*records: dict[str, Any], **resource_logs_fields: Any) -> bytes:
    group = {"scopeLogs": [{"logRecords": list(records)}], **resource_logs_fields}
    return json.dumps({"resourceLogs": [group]}).encode()


# --- the line ------------------------------------------------------------------------------

FULL = request(
    resource_logs(
        [
            record(
                time_unix_nano=1_796_106_471_123_456_789,
                observed_time_unix_nano=1_796_106_472_000_000_001,
                severity_text="WARN",
                severity_number=13,
                body="checkout failed",
                attributes={"user.id": 42, "ok": True},
                trace_id=TRACE,
                span_id=SPAN,
                flags=1,
                event_name="app.checkout",
            )
        ],
        service="checkout",
        resource={"host.name": "h1"},
        scope=InstrumentationScope(
            name="app.checkout", version="1.2.3", attributes=pairs({"lib": "x"})
        ),
    )
)
FULL_LINE = (
    b'{"time":"2026-12-01T06:27:51.123456789Z","observed_time":"2026-12-01T06:27:52.000000001Z",'
    b'"severity":"WARN","severity_number":13,"body":"checkout failed",'
    b'"attributes":{"user.id":42,"ok":true},'
    b'"trace_id":"5b8efff798038103d269b633813fc60c","span_id":"eee19b7ec3c1b174","flags":1,'
    b'"event_name":"app.checkout","resource":{"service.name":"checkout","host.name":"h1"},'
    b'"scope":{"name":"app.checkout","version":"1.2.3","attributes":{"lib":"x"}}}\n'
)


def test_a_record_is_one_line_with_its_keys_in_the_documented_order():
    assert both_encodings(FULL) == {"checkout": [FULL_LINE]}
    assert reference_lines(FULL) == {"checkout": [FULL_LINE]}
    assert convert(FULL).records == 1 and convert(FULL).refused == 0


def test_empty_fields_are_left_out():
    message = request(resource_logs([record(), record(body="")]))
    assert both_encodings(message) == {
        DEFAULT: [
            b'{"time":"2026-12-01T06:27:51.123456789Z"}\n',
            b'{"time":"2026-12-01T06:27:51.123456789Z","body":""}\n',  # sent, though empty
        ]
    }
    zeros = record(trace_id=bytes(16), span_id=bytes(8), flags=0, severity_number=0)
    empty_scope = InstrumentationScope(name="", version="")
    message = request(resource_logs([zeros], resource={}, scope=empty_scope))
    assert both_encodings(message) == {DEFAULT: [b'{"time":"2026-12-01T06:27:51.123456789Z"}\n']}


@pytest.mark.parametrize(
    ("time_ns", "observed_ns", "line"),
    [
        (
            5,
            7,
            '{"time":"1970-01-01T00:00:00.000000005Z","observed_time":"1970-01-01T00:00:00.000000007Z"}',
        ),
        (
            0,
            7,
            '{"time":"1970-01-01T00:00:00.000000007Z","observed_time":"1970-01-01T00:00:00.000000007Z"}',
        ),
        (0, 0, '{"time":"2026-12-01T06:27:51.123456789Z"}'),  # when the request came
        (1, 0, '{"time":"1970-01-01T00:00:00.000000001Z"}'),
        (2**64 - 1, 0, '{"time":"2554-07-21T23:34:33.709551615Z"}'),  # nanoseconds kept
        (1_796_106_471_000_000_000, 0, '{"time":"2026-12-01T06:27:51.000000000Z"}'),
    ],
    ids=["time", "observed", "received", "1ns", "u64-max", "whole-second"],
)
def test_time_is_the_records_else_observed_else_received(time_ns, observed_ns, line):  # type: ignore[no-untyped-def]
    message = request(
        resource_logs([record(time_unix_nano=time_ns, observed_time_unix_nano=observed_ns)])
    )
    assert both_encodings(message) == {DEFAULT: [line.encode() + b"\n"]}


@pytest.mark.parametrize(
    ("text", "number", "fields"),
    [
        *((None, n, {"severity": name, "severity_number": n}) for n, name in SHORT_NAMES.items()),
        ("warn", 13, {"severity": "warn", "severity_number": 13}),  # the text as sent
        ("Notice", 0, {"severity": "Notice"}),
        (None, 99, {"severity_number": 99}),  # out of the table: no name
        (None, 0, {}),
    ],
)
def test_severity_is_the_text_else_the_short_name(text, number, fields):  # type: ignore[no-untyped-def]
    message = request(resource_logs([record(severity_text=text or "", severity_number=number)]))
    ((line,),) = both_encodings(message).values()
    parsed = json.loads(line, object_pairs_hook=list)
    assert parsed == [("time", "2026-12-01T06:27:51.123456789Z"), *fields.items()]


def test_info2_is_severity_number_10():
    message = request(resource_logs([record(severity_number=10)]))
    assert b'"severity":"INFO2","severity_number":10' in only_line(convert(message))


def test_any_value_is_written_as_plain_json():
    attributes = [
        ("s", "text"),
        ("t", True),
        ("f", False),
        ("i", 42),
        ("min", -(2**63)),
        ("max", 2**63 - 1),
        ("d", 0.1),
        ("e", 1e300),
        ("z", -0.0),
        ("nan", math.nan),
        ("inf", math.inf),
        ("-inf", -math.inf),
        ("bytes", b"\x00\x01\x02\xff"),
        ("empty-bytes", AnyValue(bytes_value=b"")),
        ("array", [1, "two", None, [3.5]]),
        ("kvlist", {"nested": {"deeper": [True]}, "n": 3}),
        ("none", None),
        ("dup", "first"),
        ("later", 1),
        ("dup", "last"),
    ]
    body = {"structured": [1, "two", None], "n": 3.25}
    message = request(resource_logs([record(body=body, attributes=attributes)]))
    (line,) = both_encodings(message)[DEFAULT]
    assert line == (
        b'{"time":"2026-12-01T06:27:51.123456789Z",'
        b'"body":{"structured":[1,"two",null],"n":3.25},'
        b'"attributes":{"s":"text","t":true,"f":false,"i":42,'
        b'"min":-9223372036854775808,"max":9223372036854775807,'  # numbers, all 64 bits
        b'"d":0.1,"e":1e+300,"z":-0.0,"nan":"NaN","inf":"Infinity","-inf":"-Infinity",'
        b'"bytes":"AAEC/w==","empty-bytes":"","array":[1,"two",null,[3.5]],'
        b'"kvlist":{"nested":{"deeper":[true]},"n":3},"none":null,"dup":"last","later":1}}\n'
    )
    assert json.loads(line)["attributes"]["min"] == -(2**63)  # exact, not a float
    assert reference_lines(message) == {DEFAULT: [line]}


def test_a_body_with_newlines_and_control_characters_stays_one_line():
    text = 'multi-line\nsecond\r\n\tthird\x00\x1f \u2028 "quoted" \\ café 日本語 🚀'
    message = request(resource_logs([record(body=text, attributes={"k\nkey": "v\nvalue"})]))
    (line,) = both_encodings(message)[DEFAULT]
    assert line.count(b"\n") == 1 and line.endswith(b"}\n")
    assert "café 日本語 🚀".encode() in line  # UTF-8 as it is, not \u escapes
    parsed = json.loads(line)
    assert (parsed["body"], parsed["attributes"]) == (text, {"k\nkey": "v\nvalue"})


# --- streams -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("service_name", "stream"),
    [
        ("checkout", "checkout"),
        ("Check.Out-2_x", "Check.Out-2_x"),
        ("My Service/β", "My_Service__"),
        ("a/../../etc/passwd", "a_.._.._etc_passwd"),
        ("__x", "x"),
        ("-a.b_c", "a.b_c"),
        ("._-._-x", "x"),
        ("a..b", "a..b"),
        ("x" * 70, "x" * 64),
        ("_" * 10 + "y" * 70, "y" * 64),  # the leading ones go first, then the cut
        ("tab\there", "tab_here"),
        ("...", None),
        ("", None),
        ("日本", None),
        ("🚀", None),
    ],
)
def test_stream_for_service(service_name, stream):  # type: ignore[no-untyped-def]
    assert otlp.stream_for_service(service_name) == stream
    if stream is not None:
        assert STREAM_NAME.fullmatch(stream)


def test_records_go_to_the_stream_their_service_names_else_the_default():
    message = request(
        resource_logs([record(body="c1"), record(body="c2")], service="checkout"),
        resource_logs([record(body="b1")], service="billing"),
        resource_logs([record(body="c3")], service="checkout"),
        resource_logs([record(body="u1")]),
        resource_logs([record(body="u2")], service="日本"),
        resource_logs([record(body="u3")], resource={"service.name": 5}),
        resource_logs([], service="quiet"),  # no record: no stream
    )
    got = both_encodings(message)
    assert {name: [json.loads(x)["body"] for x in xs] for name, xs in got.items()} == {
        "checkout": ["c1", "c2", "c3"],
        "billing": ["b1"],
        DEFAULT: ["u1", "u2", "u3"],
    }
    assert got == reference_lines(message)
    assert convert(message).records == 7
    fixed = both_encodings(message, stream="fixed")  # /otlp/<stream>/v1/logs
    assert {name: len(xs) for name, xs in fixed.items()} == {"fixed": 7}
    assert fixed == reference_lines(message, stream="fixed")


def test_an_empty_request_gives_no_stream():
    for body, content_type in [(b"", otlp.PROTOBUF), (b"{}", otlp.JSON)]:
        batch = convert(body, content_type)
        assert (batch.streams, batch.records, batch.refused) == ({}, 0, 0)
    batch = convert(b'{"resourceLogs":[{"scopeLogs":[{"logRecords":[]}]}]}', otlp.JSON)
    assert (batch.streams, batch.records) == ({}, 0)


# --- OTLP/JSON rules -----------------------------------------------------------------------


def test_json_ids_are_hex_in_either_case_and_written_lowercase():
    for trace, span in [
        (TRACE, SPAN),
        (TRACE.upper(), SPAN.upper()),
        ("5B8eFFf7" + TRACE[8:], SPAN),
    ]:
        line = only_line(convert(json_request({"traceId": trace, "spanId": span}), otlp.JSON))
        assert line == (
            b'{"time":"2026-12-01T06:27:51.123456789Z",'
            b'"trace_id":"5b8efff798038103d269b633813fc60c","span_id":"eee19b7ec3c1b174"}\n'
        )


def test_json_empty_and_null_ids_are_no_ids():
    for ids in [{"traceId": "", "spanId": ""}, {"traceId": None}, {"traceId": "0" * 32}]:
        line = only_line(convert(json_request(ids), otlp.JSON))
        assert line == b'{"time":"2026-12-01T06:27:51.123456789Z"}\n'


@pytest.mark.parametrize(
    ("ids", "words"),
    [
        (
            {"traceId": base64.b64encode(bytes.fromhex(TRACE)).decode()},
            "traceId must be 32 hex digits",
        ),
        (
            {"spanId": base64.b64encode(bytes.fromhex(SPAN)).decode()},
            "spanId must be 16 hex digits",
        ),
        ({"traceId": TRACE[:-2]}, "traceId"),
        ({"spanId": SPAN + "00"}, "spanId"),
        ({"traceId": "zz" * 16}, "traceId"),
        ({"trace_id": base64.b64encode(bytes.fromhex(TRACE)).decode()}, "traceId"),
        ({"traceId": 5}, "traceId"),
    ],
    ids=["base64-trace", "base64-span", "short", "long", "not-hex", "snake-base64", "number"],
)
def test_json_ids_that_are_not_hex_of_the_right_length_are_refused(ids, words):  # type: ignore[no-untyped-def]
    message = bad(json_request({}, ids))
    assert words in message and "resourceLogs[0].scopeLogs[0].logRecords[1]" in message


def test_json_id_error_shows_a_bounded_part_of_a_huge_value():
    message = bad(json_request({}, {"traceId": "ab" * 500_000}))
    assert "traceId must be 32 hex digits" in message and len(message) < 400


def test_protobuf_ids_of_the_wrong_length_are_refused():
    for ids in [{"trace_id": b"\x01" * 15}, {"span_id": b"\x01" * 9}]:
        body = request(resource_logs([record(**ids)])).SerializeToString()
        assert "must be" in bad(body, otlp.PROTOBUF)


SNAKE = {
    "resource_logs": [
        {
            "resource": {"attributes": [{"key": "service.name", "value": {"string_value": "s"}}]},
            "scope_logs": [
                {
                    "scope": {"name": "sc", "version": "1"},
                    "log_records": [
                        {
                            "time_unix_nano": "1000000000",
                            "observed_time_unix_nano": 2000000000,
                            "severity_number": "SEVERITY_NUMBER_WARN",
                            "severity_text": "W",
                            "body": {
                                "kvlist_value": {
                                    "values": [{"key": "a", "value": {"int_value": "7"}}]
                                }
                            },
                            "attributes": [{"key": "b", "value": {"bool_value": True}}],
                            "trace_id": TRACE.upper(),
                            "span_id": SPAN,
                            "flags": 1,
                            "event_name": "ev",
                        }
                    ],
                }
            ],
        }
    ]
}
SNAKE_LINE = (
    b'{"time":"1970-01-01T00:00:01.000000000Z","observed_time":"1970-01-01T00:00:02.000000000Z",'
    b'"severity":"W","severity_number":13,"body":{"a":7},"attributes":{"b":true},'
    b'"trace_id":"5b8efff798038103d269b633813fc60c","span_id":"eee19b7ec3c1b174","flags":1,'
    b'"event_name":"ev","resource":{"service.name":"s"},"scope":{"name":"sc","version":"1"}}\n'
)


def test_json_snake_case_keys_and_enum_names_are_taken_as_the_collector_takes_them():
    assert lines(convert(json.dumps(SNAKE).encode(), otlp.JSON)) == {"s": [SNAKE_LINE]}
    camel = {
        "resourceLogs": [
            {
                "resource": {
                    "attributes": [{"key": "service.name", "value": {"stringValue": "s"}}]
                },
                "scopeLogs": [
                    {
                        "scope": {"name": "sc", "version": "1"},
                        "logRecords": [
                            {
                                "timeUnixNano": 1000000000,
                                "observedTimeUnixNano": "2000000000",
                                "severityNumber": 13,
                                "severityText": "W",
                                "body": {
                                    "kvlistValue": {
                                        "values": [{"key": "a", "value": {"intValue": 7}}]
                                    }
                                },
                                "attributes": [{"key": "b", "value": {"boolValue": True}}],
                                "traceId": TRACE,
                                "spanId": SPAN.upper(),
                                "flags": "1",
                                "eventName": "ev",
                            }
                        ],
                    }
                ],
            }
        ]
    }
    assert lines(convert(json.dumps(camel).encode(), otlp.JSON)) == {"s": [SNAKE_LINE]}
    # A name that is not SeverityNumber's is refused (NOTES' decision), not read as 0.
    assert "severityNumber" in bad(json_request({"severityNumber": "SEVERITY_NUMBER_LOUD"}))


def test_json_unknown_fields_are_ignored_at_every_level():
    body = {
        "resourceLogs": [
            {
                "resource": {"attributes": [], "futureResource": {"x": 1}},
                "scopeLogs": [
                    {
                        "scope": {"name": "sc", "futureScope": [1]},
                        "logRecords": [{"body": {"stringValue": "b"}, "futureRecord": "x"}],
                        "schemaUrl": "https://example.invalid/s",
                        "futureScopeLogs": None,
                    }
                ],
                "futureResourceLogs": True,
            }
        ],
        "futureRequest": {"deep": {"er": []}},
    }
    assert only_line(convert(json.dumps(body).encode(), otlp.JSON)) == (
        b'{"time":"2026-12-01T06:27:51.123456789Z","body":"b","scope":{"name":"sc"}}\n'
    )


@pytest.mark.parametrize(
    "variant",
    [
        {
            "timeUnixNano": "1796106471123456789",
            "attributes": [{"key": "i", "value": {"intValue": "-9223372036854775808"}}],
        },
        {
            "timeUnixNano": 1796106471123456789,
            "attributes": [{"key": "i", "value": {"intValue": -9223372036854775808}}],
        },
    ],
    ids=["strings", "numbers"],
)
def test_json_64_bit_integers_may_be_strings_or_numbers(variant):  # type: ignore[no-untyped-def]
    assert only_line(convert(json_request(variant), otlp.JSON)) == (
        b'{"time":"2026-12-01T06:27:51.123456789Z","attributes":{"i":-9223372036854775808}}\n'
    )


@pytest.mark.parametrize(
    ("time", "flags", "severity"),
    [(b'"+1.796106471123456789e18"', b'"1e0"', b"9"), (b"1.796106471123456789e18", b"1.0", b"9.0")],
    ids=["strings", "numbers"],
)
def test_json_integers_with_a_sign_fraction_or_exponent_are_taken_when_whole(time, flags, severity):  # type: ignore[no-untyped-def]
    # proto3's JSON mapping accepts exponent notation; the value is read exactly, not as a
    # double (which would make it 1796106471123456768).
    body = json_request({"timeUnixNano": "T", "flags": "F", "severityNumber": "S"})
    body = body.replace(b'"T"', time).replace(b'"F"', flags).replace(b'"S"', severity)
    assert only_line(convert(body, otlp.JSON)) == (
        b'{"time":"2026-12-01T06:27:51.123456789Z","severity":"INFO","severity_number":9,'
        b'"flags":1}\n'
    )
    assert "must be an integer, not" in bad(json_request({"flags": "1.5"}))
    assert "must be an integer, not" in bad(json_request({"flags": 1.5}))
    assert "severityNumber" in bad(json_request({"severityNumber": 9.5}))
    assert "severityNumber" in bad(json_request({"severityNumber": "9"}))  # a name or a number


def test_json_null_means_the_default():
    nulls = {"severityNumber": None, "severityText": None, "body": None, "traceId": None}
    line = only_line(convert(json_request(nulls), otlp.JSON))
    assert line == b'{"time":"2026-12-01T06:27:51.123456789Z"}\n'


def test_json_doubles_nan_and_infinity_as_strings_are_taken():
    values = [{"doubleValue": x} for x in ("NaN", "Infinity", "-Infinity", 1.5, "2.5")]
    body = json_request(*({"body": v} for v in values))
    got = [json.loads(x)["body"] for x in lines(convert(body, otlp.JSON))[DEFAULT]]
    assert got == ["NaN", "Infinity", "-Infinity", 1.5, 2.5]


def test_json_any_value_with_two_members_keeps_the_last_as_the_collector_does():
    body = json_request({"body": {"stringValue": "a", "intValue": "1"}})
    assert json.loads(only_line(convert(body, otlp.JSON)))["body"] == 1


def test_json_field_sent_under_both_its_names_counts_where_it_came_last():
    body = json_request({"body": {"stringValue": "a", "intValue": "1", "string_value": "b"}})
    assert json.loads(only_line(convert(body, otlp.JSON)))["body"] == "b"


def test_json_any_value_member_that_a_later_one_replaces_must_still_be_valid():
    assert "intValue must be an integer" in bad(
        json_request({"body": {"intValue": "x", "stringValue": "a"}})
    )


def test_json_bytes_are_base64_standard_or_url_safe():
    body = json_request({"body": {"bytesValue": "AAEC/w=="}}, {"body": {"bytesValue": "AAEC_w"}})
    got = [json.loads(x)["body"] for x in lines(convert(body, otlp.JSON))[DEFAULT]]
    assert got == ["AAEC/w==", "AAEC/w=="]


BAD_JSON = [
    ("array", b"[1, 2]", "not a JSON object"),
    ("string", b'"resourceLogs"', "not a JSON object"),
    ("null", b"null", "not a JSON object"),
    ("truncated", b'{"resourceLogs": [', "not valid JSON"),
    ("zero-bytes", b"", "not valid JSON"),
    ("invalid-utf8", b'{"resourceLogs": [], "x": "\xff"}', "not valid UTF-8"),
    ("bom", b'\xef\xbb\xbf{"resourceLogs": []}', "not valid JSON"),
    ("nan-literal", b'{"resourceLogs": NaN}', "not valid JSON"),
    (
        "infinity-literal",
        json_request({"body": {"doubleValue": 1}}).replace(b"1}", b"Infinity}"),
        "JSON",
    ),
    ("resourceLogs-object", b'{"resourceLogs": {"scopeLogs": []}}', "resourceLogs"),
    ("resourceLogs-number", b'{"resourceLogs": 5}', "resourceLogs"),
    (
        "record-string",
        b'{"resourceLogs": [{"scopeLogs": [{"logRecords": ["x"]}]}]}',
        "logRecords[0]",
    ),
    ("body-number", json_request({"body": 5}), "body"),
    ("body-list", json_request({"body": ["stringValue"]}), "body"),
    ("bytes-as-object", json_request({"body": {"bytesValue": {"0": 0, "1": 1}}}), "bytesValue"),
    ("time-negative", json_request({"timeUnixNano": -1}), "timeUnixNano"),
    ("time-over-u64", json_request({"timeUnixNano": str(2**64)}), "timeUnixNano"),
    ("time-not-a-number", json_request({"timeUnixNano": "12x"}), "timeUnixNano"),
    ("int-not-a-number", json_request({"body": {"intValue": "abc"}}), "intValue"),
    ("lone-surrogate", json_request({"body": {"stringValue": "a\ud800b"}}), "surrogate"),
    ("enum-lone-surrogate", json_request({"severityNumber": "\ud800"}), "severityNumber"),
    (
        "int-out-of-int64",
        json_request({"body": {"intValue": str(2**63)}}),
        "from -9223372036854775808",
    ),
    ("int-of-5000-digits", json_request({"body": {"intValue": "9" * 5000}}), "intValue"),
    ("int-huge-exponent", json_request({"body": {"intValue": "1e999999999"}}), "intValue"),
    ("double-past-a-double", json_request({"body": {"doubleValue": 10**400}}), "doubleValue"),
    ("bytes-one-digit-too-many", json_request({"body": {"bytesValue": "ABCDE="}}), "bytesValue"),
    (
        "double-past-a-double-as-literal",
        json_request({"body": {"doubleValue": "%"}}).replace(b'"%"', b"1e400"),
        "doubleValue",
    ),
    (
        "double-past-a-double-as-string",
        json_request({"body": {"doubleValue": "-1e400"}}),
        "doubleValue",
    ),
    (
        "int-exponent-past-decimal",
        json_request({"timeUnixNano": "1e1000000000000000000"}),
        "timeUnixNano",
    ),
    (
        "number-exponent-past-decimal",
        json_request({"flags": "%"}).replace(b'"%"', b"1e1000000000000000000"),
        "out of range",
    ),
]


@pytest.mark.parametrize(("body", "words"), [c[1:] for c in BAD_JSON], ids=[c[0] for c in BAD_JSON])
def test_bad_json_bodies_are_refused(body, words):  # type: ignore[no-untyped-def]
    assert words in bad(body)


def test_json_number_strings_are_checked_in_linear_time():
    digits = "1" * 200_000 + "x"  # a regex that backtracks would take hours on this
    started = time.perf_counter()
    assert "must be an integer" in bad(json_request({"timeUnixNano": digits}))
    assert "must be a number" in bad(json_request({"body": {"doubleValue": digits}}))
    assert time.perf_counter() - started < 5


def test_json_deepest_array_that_parses_is_named_in_the_error_not_a_crash():
    # The deepest array json.loads takes at this stack depth: describing it in the error
    # must not recurse again (json.dumps of it, a few frames deeper, would exhaust the stack).
    for depth in range(1000, 800, -1):
        nested = (b"[" * depth + b"]" * depth).join(json_request({"flags": "%"}).split(b'"%"'))
        message = bad(nested)
        if "not valid JSON" not in message:
            assert "flags must be an integer, not an array" in message
            return
    pytest.fail("no nesting from 800 to 1000 deep was parsed")


def test_json_nested_past_protobufs_limit_is_refused_not_a_crash():
    deep: dict[str, Any] = {"stringValue": "x"}
    for _ in range(300):
        deep = {"arrayValue": {"values": [deep]}}
    assert "deep" in bad(json_request({"body": deep}))
    assert "not valid JSON" in bad(b"[" * 100_000 + b"]" * 100_000)


def test_bad_protobuf_bodies_are_refused():
    sample = (DATA / "py-sdk-1.45.2.pb").read_bytes()
    for cut in (1, 7, len(sample) // 2):
        assert "not a protobuf ExportLogsServiceRequest" in bad(sample[:-cut], otlp.PROTOBUF)
    assert "protobuf" in bad(b"\x0a\x05\x01", otlp.PROTOBUF)
    assert "protobuf" in bad(b"\xff" * 20, otlp.PROTOBUF)
    # resource_logs.scope_logs.log_records.body.string_value holding invalid UTF-8
    invalid_utf8 = b"\x0a\x0b\x12\x09\x12\x07\x2a\x05\x0a\x03\xff\xfe\xfd"
    assert "protobuf" in bad(invalid_utf8, otlp.PROTOBUF)
    # An AnyValue nested past upb's depth limit, encoded by hand (the library will not).
    deep = AnyValue(string_value="x").SerializeToString()
    for _ in range(120):
        deep = field(5, field(1, deep))  # AnyValue.array_value, ArrayValue.values
    too_deep = field(1, field(2, field(2, field(5, deep))))  # the request down to the body
    assert "protobuf" in bad(too_deep, otlp.PROTOBUF)


def field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field, by hand."""
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    return bytes([*out, n])


@pytest.mark.parametrize(
    "body",
    [
        json_request({"body": "plain text"}),
        json_request({"attributes": [{"key": "k", "value": "v"}]}),
        json_request({"attributes": ["k"]}),
        json_request({"body": {"kvlistValue": "values"}}),
        json_request({"body": {"arrayValue": {"values": ["stringValue"]}}}),
        json_request({}, resource="service.name"),
        b'{"resourceLogs": [{"scopeLogs": [{"scope": "name", "logRecords": [{}]}]}]}',
    ],
    ids=["body", "attribute-value", "attribute", "kvlist", "array-item", "resource", "scope"],
)
def test_json_string_where_an_object_belongs_is_refused_not_read_as_empty(body):  # type: ignore[no-untyped-def]
    # json_format (with ignore_unknown_fields), logwriter's first decoder, reads a string
    # there as a message whose fields are its characters, all unknown: the record would be
    # written without its body.
    bad(body)


@pytest.mark.parametrize("text", ["!!!", "AA!!EC/w==", "AAEC/w==extra"])
def test_json_bytes_that_are_not_base64_are_refused(text):  # type: ignore[no-untyped-def]
    # json_format's lenient base64, which logwriter first used, drops what is outside the
    # alphabet: "!!!" would be written as "", "AA!!EC/w==" as "AAEC/w==". The Collector
    # answers 400.
    assert "bytesValue" in bad(json_request({"body": {"bytesValue": text}}))


# --- protobuf and JSON, and the captured SDK bodies ----------------------------------------


def test_protobuf_and_json_decode_to_the_same_lines():
    message = request(
        FULL.resource_logs[0],
        resource_logs(
            [
                record(
                    time_unix_nano=2**63 + 5,
                    severity_number=10,
                    body={"k": [1, 2.5, b"\xff", None, {"x": math.nan}]},
                    attributes={"big": 2**63 - 1, "neg": -1},
                    flags=0xFFFFFFFF,
                ),
                record(observed_time_unix_nano=1, body="", trace_id=TRACE),
            ],
            service="other",
        ),
    )
    for fmt in ("records", "otlp"):
        got = both_encodings(message, fmt=fmt)
        assert set(got) == {"checkout", "other"}
    assert both_encodings(message) == reference_lines(message)


def test_the_captured_python_sdk_bodies():
    plain_body = (DATA / "py-sdk-1.45.2.pb").read_bytes()
    message = ExportLogsServiceRequest.FromString(plain_body)
    got = lines(convert(plain_body))
    assert got == reference_lines(message) and list(got) == ["py-demo"]
    assert [json.loads(x)["severity"] for x in got["py-demo"]] == [
        "INFO",
        "WARN",
        "DEBUG",
        "ERROR",
        "ERROR",
        "FATAL",
    ]
    for name, inflate in [
        ("py-sdk-1.45.2.pb.gz", gzip.decompress),
        ("py-sdk-1.45.2.pb.deflate", zlib.decompress),
    ]:
        body = inflate((DATA / name).read_bytes())
        assert lines(convert(body)) == reference_lines(ExportLogsServiceRequest.FromString(body))


def test_the_captured_js_sdk_bodies_json_and_protobuf_agree():
    js_json = (DATA / "js-sdk-0.223.1.json").read_bytes()
    js_pb = (DATA / "js-sdk-0.223.1.pb").read_bytes()
    from_json = lines(convert(js_json, otlp.JSON))
    from_pb = lines(convert(js_pb, otlp.PROTOBUF))
    assert list(from_json) == ["js223-json"] and list(from_pb) == ["js223-proto"]
    assert from_pb == reference_lines(ExportLogsServiceRequest.FromString(js_pb))

    def shape(line: bytes) -> dict[str, Any]:  # the two runs differ in times and names only
        return {
            k: v
            for k, v in json.loads(line).items()
            if k not in ("time", "observed_time", "resource")
        }

    assert [shape(x) for x in from_json["js223-json"]] == [shape(x) for x in from_pb["js223-proto"]]
    by_body = {
        json.loads(x)["body"] if isinstance(json.loads(x)["body"], str) else "kv": json.loads(x)
        for x in from_json["js223-json"]
    }
    assert by_body["kv"]["attributes"] == {"bytes": "AAEC/w=="}  # a Uint8Array, as base64
    assert by_body["no severity text, number 10"]["severity"] == "INFO2"
    assert by_body["inside a span"]["trace_id"] == TRACE


def test_the_js_sdk_0_203_bytes_bug_is_a_400():
    """@opentelemetry/otlp-transformer 0.203.0 sends a Uint8Array attribute as {"0":0,...}:
    refused, naming the field, rather than written as something else."""
    words = bad((DATA / "js-sdk-0.203.0-bytes-bug.json").read_bytes())
    assert "bytesValue" in words


# --- the `otlp` output format --------------------------------------------------------------


def test_otlp_format_is_one_logs_data_per_stream_that_parses_back():
    message = request(
        FULL.resource_logs[0],
        resource_logs([record(body="u", severity_number=9)]),
        resource_logs(
            [record(time_unix_nano=2**64 - 1, trace_id=TRACE, span_id=SPAN)], service="checkout"
        ),
    )
    for content_type in (otlp.PROTOBUF, otlp.JSON):
        batch = convert(message, content_type, fmt="otlp")
        assert (batch.records, batch.refused) == (3, 0)
        got = lines(batch)
        assert {name: len(xs) for name, xs in got.items()} == {"checkout": 1, DEFAULT: 1}
        for name, groups in [("checkout", [0, 2]), (DEFAULT, [1])]:
            ((line,),) = [got[name]]
            as_dict = json.loads(line)
            parsed = json_format.ParseDict(hex_ids(as_dict, encode=False), LogsData())
            assert parsed == LogsData(resource_logs=[message.resource_logs[i] for i in groups])
        checkout = got["checkout"][0]
        # As the file exporter's example: ids in hex, enums as numbers, 64-bit ints as strings.
        assert f'"traceId":"{TRACE}","spanId":"{SPAN}"'.encode() in checkout
        assert b'"severityNumber":13' in checkout
        assert b'"timeUnixNano":"18446744073709551615"' in checkout
        assert b'"intValue":"42"' in checkout


def test_otlp_format_refuses_protobuf_ids_of_the_wrong_length():
    body = request(resource_logs([record(trace_id=b"\x01" * 15)])).SerializeToString()
    with pytest.raises(otlp.BadRequest):
        convert(body, otlp.PROTOBUF, fmt="otlp")


# --- the line limit ------------------------------------------------------------------------


def test_records_format_refuses_only_the_records_whose_line_is_too_long():
    other = resource_logs([record(body="k")], service="o")
    (other_line,) = reference_lines(request(other))["o"]
    limit = len(other_line) - 1  # a line's bytes, without its newline, may be up to this
    short = reference_line(record(body="ok"), Resource(), InstrumentationScope())
    pad = limit - (len(short) - 1)
    message = request(
        resource_logs(
            [
                record(body="ok"),
                record(body="y" * 500),
                record(body="ok" + "x" * pad),  # exactly at the limit
                record(body="ok" + "z" * (pad + 1)),  # one byte over
            ]
        ),
        other,
    )
    for content_type in (otlp.PROTOBUF, otlp.JSON):
        batch = convert(message, content_type, max_line=limit)
        assert (batch.records, batch.refused) == (3, 2)
        got = lines(batch)
        assert {k: [json.loads(x)["body"] for x in v] for k, v in got.items()} == {
            DEFAULT: ["ok", "ok" + "x" * pad],
            "o": ["k"],
        }
        assert len(got[DEFAULT][1]) - 1 == limit
        assert got == {
            k: [x for x in v if len(x) - 1 <= limit] for k, v in reference_lines(message).items()
        }
    everything_too_long = request(resource_logs([record(body="y" * 500)] * 3))
    batch = convert(everything_too_long, max_line=limit)
    assert (batch.streams, batch.records, batch.refused) == ({}, 0, 3)


def test_otlp_format_refuses_a_streams_whole_line_when_it_is_too_long():
    message = request(
        resource_logs([record(body="ok"), record(body="y" * 500)], service="big"),
        resource_logs([record(body="ok")], service="small"),
    )
    small_line = lines(convert(message, fmt="otlp"))["small"][0]
    batch = convert(message, fmt="otlp", max_line=len(small_line) - 1)
    assert (batch.records, batch.refused) == (1, 2)  # both of "big"'s records
    assert lines(batch) == {"small": [small_line]}


# --- the answers ---------------------------------------------------------------------------


def test_export_response_is_a_real_export_logs_service_response():
    assert otlp.export_response(otlp.PROTOBUF) == b""
    assert not ExportLogsServiceResponse.FromString(b"").HasField("partial_success")
    message = "2 log records refused: each would be a line over 1048576 bytes — é"
    partial = ExportLogsServiceResponse.FromString(otlp.export_response(otlp.PROTOBUF, 2, message))
    assert partial.HasField("partial_success")
    assert (
        partial.partial_success.rejected_log_records,
        partial.partial_success.error_message,
    ) == (
        2,
        message,
    )
    big = ExportLogsServiceResponse.FromString(otlp.export_response(otlp.PROTOBUF, 2**40, "m"))
    assert big.partial_success.rejected_log_records == 2**40

    assert otlp.export_response(otlp.JSON) == b"{}"
    empty = json_format.Parse(otlp.export_response(otlp.JSON), ExportLogsServiceResponse())
    assert not empty.HasField("partial_success")
    answer = otlp.export_response(otlp.JSON, 2, message)
    as_json = json_format.Parse(answer, ExportLogsServiceResponse())
    assert as_json == partial
    assert json.loads(answer) == {
        "partialSuccess": {"rejectedLogRecords": "2", "errorMessage": message}
    }


@pytest.mark.parametrize(
    ("http_status", "code"),
    [
        (400, code_pb2.INVALID_ARGUMENT),
        (401, code_pb2.UNAUTHENTICATED),
        (408, code_pb2.DEADLINE_EXCEEDED),
        (413, code_pb2.RESOURCE_EXHAUSTED),
        (415, code_pb2.INVALID_ARGUMENT),
        (429, code_pb2.RESOURCE_EXHAUSTED),
        (500, code_pb2.INTERNAL),
        (503, code_pb2.UNAVAILABLE),
    ],
)
def test_status_is_a_real_google_rpc_status(http_status, code):  # type: ignore[no-untyped-def]
    message = "queue is full: retry later — ünïcødé"
    from_protobuf = status_pb2.Status.FromString(otlp.status(otlp.PROTOBUF, http_status, message))
    assert (from_protobuf.code, from_protobuf.message, list(from_protobuf.details)) == (
        code,
        message,
        [],
    )
    from_json = json_format.Parse(otlp.status(otlp.JSON, http_status, message), status_pb2.Status())
    assert from_json == from_protobuf


# --- the route, in this process: a request's streams are queued all together or not at all --


def test_a_multi_stream_request_is_refused_whole_when_the_queue_is_full(tmp_path: Path):
    class Gated(LogFiles):
        def append(self, stream, buffers):  # type: ignore[no-untyped-def]
            gate.wait()
            super().append(stream, buffers)

    gate = threading.Event()
    settings = Settings(dir=tmp_path, queue_bytes=4096, max_body_bytes=4096, max_line_bytes=1024)
    writer = Writer(Gated(tmp_path), settings.queue_bytes)
    client = create_app(settings, writer).test_client()
    writer.start()
    message = request(
        resource_logs(
            [record(time_unix_nano=RECEIVED, body=f"a{i} " + "a" * 100) for i in range(5)],
            service="a",
        ),
        resource_logs(
            [record(time_unix_nano=RECEIVED, body=f"b{i} " + "b" * 100) for i in range(5)],
            service="b",
        ),
    )
    expected = reference_lines(message)
    sizes = [len(b"".join(lines)) for lines in expected.values()]
    try:
        room = 4096 - max(sizes) - 10  # the filler leaves room for either stream, not both
        filler = (b"f" * 99 + b"\n") * (room // 100) + b"f" * (room % 100 - 1) + b"\n"
        assert len(filler) == room and 4096 - room < sum(sizes)
        assert client.post("/v1/logs/filler", data=filler).status_code == 202
        full = client.post(
            "/otlp/v1/logs?ack=queued",
            data=message.SerializeToString(),
            content_type=otlp.PROTOBUF,
        )
        assert (full.status_code, full.headers["Retry-After"]) == (503, "1")
        assert full.content_type == otlp.PROTOBUF
        assert status_pb2.Status.FromString(full.data).code == code_pb2.UNAVAILABLE
        gate.set()
        again = client.post(
            "/otlp/v1/logs?ack=written",
            data=message.SerializeToString(),
            content_type=otlp.PROTOBUF,
        )
        assert (again.status_code, again.data, again.content_type) == (200, b"", otlp.PROTOBUF)
    finally:
        gate.set()
        writer.stop()
    assert {path.stem: path.read_bytes() for path in tmp_path.glob("*.log")} == {
        "filler": filler,
        **{name: b"".join(lines) for name, lines in expected.items()},  # once: the retry's
    }
