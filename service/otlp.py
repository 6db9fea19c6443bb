"""OTLP/HTTP logs in: an ExportLogsServiceRequest, as protobuf or OTLP/JSON, becomes lines.

  decode(body, content_type)   the request message; BadRequest if the body does not decode
  to_lines(request, ...)       each stream's lines: one JSON line per record (or, in the
                               "otlp" format, one OTLP/JSON LogsData per stream)
  export_response(), status()  the answers OTLP/HTTP asks for, in the request's encoding

OTLP/JSON is protobuf's JSON mapping except that trace and span ids are hex, not base64: they
are turned into base64 before json_format parses the rest, which takes lowerCamelCase and the
original field names, enum numbers and names, 64-bit integers as strings or numbers, and here
ignores unknown fields, as the OpenTelemetry Collector does.

A record's line is built from JSON fragments, with what many records share (resource, scope,
severity, attribute keys, the seconds of a timestamp) encoded once: no dict and json.dumps per
record. Decoding runs on the request thread, never on the writer's.
"""

import base64
import json
import math
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from json.encoder import encode_basestring as _string  # C: '"..."', non-ASCII kept as is
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.logs.v1.logs_pb2 import LogsData

from service.parsing import Lines

PROTOBUF = "application/x-protobuf"
JSON = "application/json"

_NS = 1_000_000_000
_NOT_NAME = re.compile(r"[^A-Za-z0-9._-]")
# The Logs data model's short names ("Displaying Severity"): 9 is INFO, 10 INFO2.
_SHORT_NAMES = {
    number: f"{level}{index + 1 if index else ''}"
    for block, level in enumerate(("TRACE", "DEBUG", "INFO", "WARN", "ERROR", "FATAL"))
    for index, number in enumerate(range(4 * block + 1, 4 * block + 5))
}
# google.rpc.Code for the HTTP statuses the OTLP routes answer with.
_RPC_CODES = {400: 3, 401: 16, 403: 7, 408: 4, 413: 8, 415: 3, 429: 8, 500: 13, 503: 14}


class BadRequest(ValueError):
    """The body is not an ExportLogsServiceRequest: a 400, never retried by a client."""


def decode(body: bytes, content_type: str) -> ExportLogsServiceRequest:
    if content_type == PROTOBUF:
        try:
            return ExportLogsServiceRequest.FromString(body)
        except DecodeError as exc:
            raise BadRequest(f"body is not a protobuf ExportLogsServiceRequest: {exc}") from None
    try:
        message = json.loads(body.decode("utf-8"), parse_constant=_no_constant)
    except UnicodeDecodeError as exc:
        raise BadRequest(f"body is not valid UTF-8: byte offset {exc.start}") from None
    except (ValueError, RecursionError) as exc:
        raise BadRequest(f"body is not valid JSON: {exc}") from None
    if not isinstance(message, dict):
        raise BadRequest("body is not a JSON object (an ExportLogsServiceRequest)")
    _ids_to_base64(message)
    try:
        return json_format.ParseDict(
            message, ExportLogsServiceRequest(), ignore_unknown_fields=True
        )
    except (json_format.ParseError, RecursionError) as exc:
        raise BadRequest(f"body is not an OTLP/JSON ExportLogsServiceRequest: {exc}") from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _ids_to_base64(message: dict[str, Any]) -> None:
    where = "resourceLogs"
    try:
        for i, resource_logs in enumerate(_items(message, "resourceLogs")):
            for j, scope_logs in enumerate(_items(resource_logs, "scopeLogs")):
                for k, record in enumerate(_items(scope_logs, "logRecords")):
                    where = f"resourceLogs[{i}].scopeLogs[{j}].logRecords[{k}]"
                    for key, size in (("traceId", 16), ("spanId", 8)):
                        for name in (key, _snake(key)):
                            if record.get(name):
                                record[name] = _hex_to_base64(record[name], size, key)
    except (AttributeError, TypeError) as exc:
        raise BadRequest(f"{where}: not an OTLP/JSON ExportLogsServiceRequest ({exc})") from None
    except BadRequest as exc:
        raise BadRequest(f"{where}: {exc}") from None


def _items(message: dict[str, Any], key: str) -> list[Any]:
    return message.get(key) or message.get(_snake(key)) or []


def _snake(key: str) -> str:
    return re.sub("([A-Z])", lambda m: "_" + m[1].lower(), key)


def _hex_to_base64(value: Any, size: int, key: str) -> str:
    try:
        raw = bytes.fromhex(value) if isinstance(value, str) else b""
    except ValueError:
        raw = b""
    if len(raw) != size:
        raise BadRequest(f"{key} must be {2 * size} hex digits (not base64), got {value!r}")
    return base64.b64encode(raw).decode()


def stream_for_service(name: str) -> str | None:
    """The stream a service.name maps onto, or None if nothing of it is left: characters
    outside [A-Za-z0-9._-] become "_", leading ones a name cannot start with are dropped, and
    the rest is cut to 64."""
    return _NOT_NAME.sub("_", name).lstrip("._-")[:64] or None


@dataclass(frozen=True, slots=True)
class Batch:
    """A request's records as each stream's lines, and those refused for being too long."""

    streams: dict[str, Lines]
    records: int  # taken
    refused: int  # each would have been (or been in) a line over the line limit


def to_lines(
    request: ExportLogsServiceRequest,
    stream: str | None,
    default_stream: str,
    fmt: str,
    received_ns: int,
    max_line: int,
) -> Batch:
    """All records to `stream` if given, else each ResourceLogs to the stream its
    service.name names, else to `default_stream`; `fmt` is one of settings.OTLP_FORMATS."""
    by_stream: dict[str, list[Any]] = {}
    for resource_logs in request.resource_logs:
        name = stream or _service_stream(resource_logs.resource.attributes) or default_stream
        by_stream.setdefault(name, []).append(resource_logs)
    streams = {}
    taken = refused = 0
    for name, group in by_stream.items():
        records = sum(len(scope_logs.log_records) for rl in group for scope_logs in rl.scope_logs)
        if fmt == "otlp":
            lines = [_logs_data_line(group)] if records else []
        else:
            lines = [line for rl in group for line in _record_lines(rl, received_ns)]
        data = "".join(lines).encode()
        if len(data) - len(lines) > max_line:  # only then can a line be over the limit
            kept = [line for line in lines if len(line.encode()) - 1 <= max_line]
            refused += records if fmt == "otlp" else len(lines) - len(kept)
            records = 0 if fmt == "otlp" else len(kept)
            lines, data = kept, "".join(kept).encode()
        if lines:
            streams[name] = Lines(data, len(lines))
            taken += records
    return Batch(streams, taken, refused)


def _service_stream(attributes: Iterable[Any]) -> str | None:
    for pair in attributes:
        if pair.key == "service.name":
            return stream_for_service(pair.value.string_value)
    return None


def _record_lines(resource_logs: Any, received_ns: int) -> Iterable[str]:
    attributes = resource_logs.resource.attributes
    resource = ',"resource":' + _object(attributes) if attributes else ""
    for scope_logs in resource_logs.scope_logs:
        tail = resource + _scope(scope_logs.scope) + "}\n"
        for record in scope_logs.log_records:
            yield _record(record, received_ns) + tail


def _record(r: Any, received_ns: int) -> str:
    """A record's line up to its resource: the keys in the order the README gives."""
    observed = r.observed_time_unix_nano
    parts = ['{"time":"', _time(r.time_unix_nano or observed or received_ns), '"']
    if observed:
        parts += ',"observed_time":"', _time(observed), '"'
    parts.append(_severity(r.severity_text, r.severity_number))
    if r.body.WhichOneof("value"):
        parts += ',"body":', _value(r.body)
    if r.attributes:
        parts += ',"attributes":', _object(r.attributes)
    if r.trace_id.strip(b"\0"):
        parts += ',"trace_id":"', _id(r.trace_id, 16, "trace_id"), '"'
    if r.span_id.strip(b"\0"):
        parts += ',"span_id":"', _id(r.span_id, 8, "span_id"), '"'
    if r.flags:
        parts.append(f',"flags":{r.flags}')
    if r.event_name:
        parts += ',"event_name":', _string(r.event_name)
    return "".join(parts)


def _time(ns: int) -> str:
    seconds, fraction = divmod(ns, _NS)
    return f"{_second(seconds)}.{fraction:09d}Z"


@lru_cache(maxsize=1024)
def _second(seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))


@lru_cache(maxsize=1024)
def _severity(text: str, number: int) -> str:
    name = text or _SHORT_NAMES.get(number)
    fragment = f',"severity":{_string(name)}' if name else ""
    return fragment + (f',"severity_number":{number}' if number else "")


def _id(raw: bytes, size: int, what: str) -> str:
    if len(raw) != size:
        raise BadRequest(f"{what} must be {size} bytes, got {len(raw)}")
    return raw.hex()


def _scope(scope: Any) -> str:
    parts = []
    if scope.name:
        parts.append('"name":' + _string(scope.name))
    if scope.version:
        parts.append('"version":' + _string(scope.version))
    if scope.attributes:
        parts.append('"attributes":' + _object(scope.attributes))
    return ',"scope":{' + ",".join(parts) + "}" if parts else ""


def _object(pairs: Iterable[Any]) -> str:
    """Key-value pairs as one JSON object; a key sent twice keeps its first place, last value."""
    members = {}
    for pair in pairs:
        text = pair.value.string_value  # the common case, without WhichOneof
        members[_key(pair.key)] = _string(text) if text else _value(pair.value)
    return "{" + ",".join(map(":".join, members.items())) + "}"


@lru_cache(maxsize=4096)
def _key(key: str) -> str:
    return _string(key)


def _value(value: Any) -> str:
    """An AnyValue as the plain JSON value it stands for."""
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return _string(value.string_value)
    if kind == "int_value":
        return str(value.int_value)
    if kind == "bool_value":
        return "true" if value.bool_value else "false"
    if kind == "double_value":
        number = value.double_value
        if math.isfinite(number):
            return repr(number)
        return '"NaN"' if math.isnan(number) else ('"Infinity"' if number > 0 else '"-Infinity"')
    if kind == "array_value":
        return "[" + ",".join(map(_value, value.array_value.values)) + "]"
    if kind == "kvlist_value":
        return _object(value.kvlist_value.values)
    if kind == "bytes_value":
        return '"' + base64.b64encode(value.bytes_value).decode() + '"'
    return "null"


def _logs_data_line(group: list[Any]) -> str:
    """One OTLP/JSON LogsData, as the Collector's file exporter writes it (its otlpjsonfile
    receiver reads it back): enums as numbers, 64-bit integers as strings, ids in hex."""
    message = json_format.MessageToDict(LogsData(resource_logs=group), use_integers_for_enums=True)
    for resource_logs in message.get("resourceLogs", ()):
        for scope_logs in resource_logs.get("scopeLogs", ()):
            for record in scope_logs.get("logRecords", ()):
                for key in ("traceId", "spanId"):
                    if key in record:
                        record[key] = base64.b64decode(record[key]).hex()
    return json.dumps(message, ensure_ascii=False, separators=(",", ":")) + "\n"


def export_response(content_type: str, rejected: int = 0, message: str = "") -> bytes:
    """An ExportLogsServiceResponse: empty when every record was taken, else partial_success
    with how many were refused and why."""
    if content_type == JSON:
        if not rejected:
            return b"{}"
        partial = {"rejectedLogRecords": str(rejected), "errorMessage": message}
        return json.dumps({"partialSuccess": partial}, separators=(",", ":")).encode()
    if not rejected:
        return b""
    partial_success = _field(1, _varint(rejected), 0) + _field(2, message.encode())
    return _field(1, partial_success)


def status(content_type: str, http_status: int, message: str) -> bytes:
    """A google.rpc.Status {code = 1, message = 2}, by hand: opentelemetry-proto has no
    google/rpc/status.proto."""
    code = _RPC_CODES.get(http_status, 2)  # 2: UNKNOWN
    if content_type == JSON:
        return json.dumps({"code": code, "message": message}, separators=(",", ":")).encode()
    return _field(1, _varint(code), 0) + _field(2, message.encode())


def _field(number: int, payload: bytes, wire_type: int = 2) -> bytes:
    """A protobuf field: a varint (wire type 0, payload already encoded) or length-delimited."""
    size = _varint(len(payload)) if wire_type == 2 else b""
    return _varint(number << 3 | wire_type) + size + payload


def _varint(number: int) -> bytes:
    out = bytearray()
    while number > 0x7F:
        out.append(number & 0x7F | 0x80)
        number >>= 7
    out.append(number)
    return bytes(out)
