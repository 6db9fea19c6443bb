"""OTLP/HTTP logs in: an ExportLogsServiceRequest, as protobuf or OTLP/JSON, becomes lines.

  decode(body, content_type)   the request message; BadRequest if the body does not decode
  to_lines(request, ...)       each stream's lines: one JSON line per record (or, in the
                               "otlp" format, one OTLP/JSON LogsData per stream)
  export_response(), status()  the answers OTLP/HTTP asks for, in the request's encoding

OTLP/JSON is protobuf's JSON mapping except that trace and span ids are hex, not base64. It
is read here, field by field against the message's descriptor, into the arguments of the
message's constructor: lowerCamelCase and original field names, enum numbers and names, 64-bit
integers as strings or numbers, unknown fields ignored, as the OpenTelemetry Collector reads it.

A record's line is built from JSON fragments, with what many records share (resource, scope,
severity, attribute keys, the seconds of a timestamp) encoded once: no dict and json.dumps per
record. Decoding runs on the request thread, never on the writer's.
"""

import base64
import json
import math
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from decimal import Decimal
from functools import cache, lru_cache
from json.encoder import encode_basestring as _string  # C: '"..."', non-ASCII kept as is
from typing import Any

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
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
_SECONDS: dict[int, str] = {}  # whole seconds since the epoch -> "YYYY-MM-DDTHH:MM:SS"
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
        message = json.loads(
            body.decode("utf-8"), parse_float=_exact_number, parse_constant=_no_constant
        )
    except UnicodeDecodeError as exc:
        raise BadRequest(f"body is not valid UTF-8: byte offset {exc.start}") from None
    except (ValueError, RecursionError) as exc:
        raise BadRequest(f"body is not valid JSON: {exc}") from None
    if not isinstance(message, dict):
        raise BadRequest("body is not a JSON object (an ExportLogsServiceRequest)")
    try:
        fields = _message_fields(message, ExportLogsServiceRequest.DESCRIPTOR, 0)
    except _Invalid as exc:
        raise BadRequest("request" + "".join(reversed(exc.path)) + " " + str(exc)) from None
    try:
        return ExportLogsServiceRequest(**fields)
    except (ValueError, TypeError) as exc:  # anything the checks above let through
        raise BadRequest(f"body is not an OTLP/JSON ExportLogsServiceRequest: {exc}") from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _exact_number(text: str) -> Decimal:
    # Exact, so that 1.7e18 is read as the integer it is; a double is made of it only where
    # a double belongs.
    number = _decimal(text)
    if number is None:
        raise ValueError(f"number {text[:40]} is out of range")
    return number


def _decimal(text: str) -> Decimal | None:
    try:
        return Decimal(text)
    except ArithmeticError:  # an exponent past ±10**18
        return None


class _Invalid(ValueError):
    """A JSON value the field cannot take; each level it passes up adds its step to `path`."""

    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.path: list[str] = []


_MAX_DEPTH = 100  # messages within messages: protobuf's own limit, for JSON and binary alike


def _message_fields(value: Any, descriptor: Descriptor, depth: int) -> dict[str, Any]:
    """A JSON object as the keyword arguments of its message's constructor, checked field by
    field, so that upb builds the message in C rather than json_format in Python."""
    if not isinstance(value, dict):
        raise _Invalid(f"must be an object, not {_shown(value)}")
    if depth >= _MAX_DEPTH:
        raise BadRequest("body nests too deep to be an ExportLogsServiceRequest")
    fields = _json_fields(descriptor)
    kwargs = {}
    for key, item in value.items():
        known = fields.get(key)
        if known is None or item is None:  # unknown fields are ignored; null is the default
            continue
        name, step, convert, repeated = known
        try:
            if not repeated:
                kwargs.pop(name, None)  # sent under both its names: the later counts, as last
                kwargs[name] = convert(item, depth)
                continue
            if not isinstance(item, list):
                raise _Invalid(f"must be an array, not {_shown(item)}")
            converted = []
            for index, element in enumerate(item):
                try:
                    converted.append(convert(element, depth))
                except _Invalid as exc:
                    exc.path.append(f"[{index}]")
                    raise
            kwargs[name] = converted
        except _Invalid as exc:
            exc.path.append(step)
            raise
    if descriptor.oneofs:
        _keep_last_member(kwargs, descriptor)
    return kwargs


def _keep_last_member(kwargs: dict[str, Any], descriptor: Descriptor) -> None:
    # Of a oneof sent with several members keep the last, as the Collector reads it.
    for oneof in descriptor.oneofs:
        sent = [field.name for field in oneof.fields if field.name in kwargs]
        if len(sent) > 1:
            last = max(sent, key=list(kwargs).index)
            for name in sent:
                if name != last:
                    del kwargs[name]


Converter = Callable[[Any, int], Any]


@cache
def _json_fields(descriptor: Descriptor) -> dict[str, tuple[str, str, Converter, bool]]:
    """Each field by its JSON keys, lowerCamelCase and original: its name, its step in an
    error's path, how a JSON value becomes its value, and whether it is repeated."""
    fields = {}
    for field in descriptor.fields:
        spec = (field.name, "." + field.json_name, _converter(field), field.is_repeated)
        fields[field.json_name] = fields[field.name] = spec
    return fields


def _converter(field: FieldDescriptor) -> Converter:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        descriptor = field.message_type
        return lambda value, depth: _message_fields(value, descriptor, depth + 1)
    if field.name in _IDS:
        size = _IDS[field.name]
        return lambda value, depth: _hex_id(value, size)
    if field.type == FieldDescriptor.TYPE_STRING:
        return lambda value, depth: _string_value(value)
    if field.type == FieldDescriptor.TYPE_BYTES:
        return lambda value, depth: _base64_value(value)
    if field.type == FieldDescriptor.TYPE_BOOL:
        return lambda value, depth: _bool_value(value)
    if field.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return lambda value, depth: _float_value(value)
    if field.type == FieldDescriptor.TYPE_ENUM:
        numbers = {value.name: value.number for value in field.enum_type.values}
        return lambda value, depth: _enum_value(value, numbers)
    low, high = _INTEGER_RANGES[field.type]
    return lambda value, depth: _integer_value(value, low, high)


def _shown(value: Any) -> str:
    if isinstance(value, (dict, list)):  # json.dumps of a deep one could exhaust the stack
        return "an object" if isinstance(value, dict) else "an array"
    if isinstance(value, Decimal):  # a JSON number with a fraction or exponent
        return str(value)[:40]
    return json.dumps(value[:40] if isinstance(value, str) else value)[:40]


def _string_value(value: Any) -> str:
    if not isinstance(value, str):
        raise _Invalid(f"must be a string, not {_shown(value)}")
    if not value.isascii():
        try:
            value.encode()
        except UnicodeEncodeError:
            raise _Invalid("holds a lone surrogate, which is not Unicode text") from None
    return value


def _bool_value(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _Invalid(f"must be true or false, not {_shown(value)}")
    return value


def _integer_value(value: Any, low: int, high: int) -> int:
    number = _whole_number(value)
    if number is None:
        raise _Invalid(f"must be an integer, not {_shown(value)}")
    if not low <= number <= high:
        raise _Invalid(f"must be an integer from {low} to {high}, not {_shown(value)}")
    return int(number)


def _whole_number(value: Any) -> int | Decimal | None:
    """A JSON number, or a string as proto3's JSON writes 64-bit integers (decimal, or with a
    fraction or exponent that leaves a whole number: "1e3"), if it is a whole number."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and _NUMBER.fullmatch(value):
        value = _decimal(value)
    if isinstance(value, Decimal) and value == value.to_integral_value():
        return value
    return None


def _float_value(value: Any) -> float:
    if isinstance(value, str) and value in _FLOAT_NAMES:
        return float(value)
    if isinstance(value, (int, Decimal)) and not isinstance(value, bool):
        try:
            number = float(value)
        except OverflowError:  # an int past a double's range; a Decimal becomes inf
            number = math.inf
    elif isinstance(value, str) and _NUMBER.fullmatch(value):
        number = float(value)
    else:
        raise _Invalid(f"must be a number, not {_shown(value)}")
    if not math.isfinite(number):
        raise _Invalid(f"must be a number a double can hold, not {_shown(value)}")
    return number


def _enum_value(value: Any, numbers: dict[str, int]) -> int:
    if isinstance(value, str):
        if value in numbers:
            return numbers[value]
    elif (number := _whole_number(value)) is not None and _INT32[0] <= number <= _INT32[1]:
        return int(number)  # proto3 enums are open: a number without a name is kept
    raise _Invalid(f"must be one of {', '.join(numbers)} or its number, not {_shown(value)}")


def _base64_value(value: Any) -> bytes:
    # Standard or URL-safe, padded or not, as proto3's JSON allows; nothing outside the
    # alphabet, which binascii would drop rather than refuse.
    digits = value.rstrip("=") if isinstance(value, str) else None
    if digits is None or not _BASE64.fullmatch(value) or len(digits) % 4 == 1:
        raise _Invalid(f"must be base64, not {_shown(value)}")
    return base64.b64decode(digits.translate(_URL_SAFE) + "=" * (-len(digits) % 4))


def _hex_id(value: Any, size: int) -> bytes:
    # bytes.fromhex would skip spaces between the digits.
    raw = bytes.fromhex(value) if isinstance(value, str) and _HEX.fullmatch(value) else None
    if raw is None or len(raw) not in (0, size):
        raise _Invalid(f"must be {2 * size} hex digits (not base64), not {_shown(value)}")
    return raw


_INT32 = (-(2**31), 2**31 - 1)
_INTEGER_RANGES = {
    **dict.fromkeys(
        (FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_SFIXED32),
        _INT32,
    ),
    **dict.fromkeys(
        (FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_SINT64, FieldDescriptor.TYPE_SFIXED64),
        (-(2**63), 2**63 - 1),
    ),
    **dict.fromkeys((FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32), (0, 2**32 - 1)),
    **dict.fromkeys((FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64), (0, 2**64 - 1)),
}
_IDS = {"trace_id": 16, "span_id": 8}  # bytes fields that OTLP/JSON writes in hex
# A number as float() reads it, without the spaces and underscores it also allows.
_NUMBER = re.compile(r"[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")
_FLOAT_NAMES = ("NaN", "Infinity", "-Infinity")
_HEX = re.compile(r"(?:[0-9a-fA-F]{2})*")
_BASE64 = re.compile(r"[A-Za-z0-9+/_-]*={0,2}")
_URL_SAFE = str.maketrans("-_", "+/")


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
    line = f'{{"time":"{_time(r.time_unix_nano or observed or received_ns)}"'
    if observed:
        line += f',"observed_time":"{_time(observed)}"'
    line += _severity(r.severity_text, r.severity_number)
    body = r.body
    text = body.string_value  # the common body, without WhichOneof
    if text:
        line += ',"body":' + _string(text)
    elif body.WhichOneof("value"):
        line += ',"body":' + _value(body)
    if r.attributes:
        line += ',"attributes":' + _object(r.attributes)
    trace_id, span_id = r.trace_id, r.span_id
    if trace_id.strip(b"\0"):
        line += f',"trace_id":"{_id(trace_id, 16, "trace_id")}"'
    if span_id.strip(b"\0"):
        line += f',"span_id":"{_id(span_id, 8, "span_id")}"'
    if r.flags:
        line += f',"flags":{r.flags}'
    if r.event_name:
        line += ',"event_name":' + _string(r.event_name)
    return line


def _time(ns: int) -> str:
    seconds, fraction = divmod(ns, _NS)
    return f"{_SECONDS.get(seconds) or _second(seconds)}.{fraction:09d}Z"


def _second(seconds: int) -> str:
    if len(_SECONDS) >= 4096:
        _SECONDS.clear()
    text = _SECONDS[seconds] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    return text


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
                for key, size in (("traceId", 16), ("spanId", 8)):
                    if key in record:
                        raw = base64.b64decode(record[key])
                        record[key] = _id(raw, size, key)
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
