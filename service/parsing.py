"""Request bodies in, normalized lines out: reading with limits, gunzipping, splitting, validating.

Everything here works on whole bodies with single bytes operations (an ASCII check, or one
UTF-8 decode, to validate, a `replace` to count, one to strip CRs), so the text
path does no per-line Python work. Lines are split on b"\\n" only: no other separator, ASCII or
Unicode, can turn one line into two.
"""

import json
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

from service.refusals import Rejected

STREAM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_READ_CHUNK = 64 << 10
_COUNT_PIECE = 1 << 20
_GZIP_WBITS = 31  # zlib's "gzip header and trailer, no zlib wrapper"
# curl's -d and --data-binary send form-urlencoded unless told otherwise: taken as text, as sent.
_TEXT_TYPES = {"text/plain", "application/x-www-form-urlencoded", ""}
_CHARSETS = {"utf-8", "utf8", "us-ascii", "ascii"}
_JSON_SPACE = " \t\n\r"
_SPACE_OUTSIDE_STRINGS = re.compile(r'("(?:[^"\\]|\\.)*")|[ \t\n\r]+')


@dataclass(frozen=True, slots=True)
class Lines:
    """A body's lines as one blob, each line ending in b"\\n"."""

    data: bytes
    count: int


def check_stream_name(name: str) -> str:
    # The name becomes a file name: this pattern is what keeps every file inside the log folder.
    if not STREAM_NAME.fullmatch(name):
        raise Rejected(
            400,
            "bad_stream",
            "stream name must match [A-Za-z0-9][A-Za-z0-9._-]{0,63}",
        )
    return name


def read_body(stream: IO[bytes], length: int | None, encoding: str | None, limit: int) -> bytes:
    """The request body, decompressed, at most `limit` bytes either way.

    A body of known length is read with one call; a chunked one in chunks, stopping as soon
    as it passes the limit (never silently truncating it).
    """
    encoding = (encoding or "identity").strip().lower()
    if encoding not in ("identity", "gzip", "x-gzip", "deflate"):
        raise Rejected(
            415,
            "bad_encoding",
            f"unsupported Content-Encoding {encoding!r}: use gzip, deflate or none",
        )
    if length is not None and length > limit:
        raise _too_large("body", limit)
    if encoding == "identity":
        return b"".join(_read_chunks(stream, length, limit, chunk_size=length or _READ_CHUNK))
    chunks = _read_chunks(stream, length, limit, chunk_size=_READ_CHUNK)
    return _inflate(chunks, limit, gzip=encoding != "deflate")


def _read_chunks(
    stream: IO[bytes], length: int | None, limit: int, chunk_size: int
) -> Iterator[bytes]:
    if length is not None:
        remaining = length
        while remaining:
            chunk = _read(stream, min(remaining, chunk_size))
            if not chunk:
                raise Rejected(400, "incomplete", "request body ended before its Content-Length")
            remaining -= len(chunk)
            yield chunk
        return
    total = 0
    while chunk := _read(stream, chunk_size):
        total += len(chunk)
        if total > limit:
            raise _too_large("body", limit)
        yield chunk


def _read(stream: IO[bytes], size: int) -> bytes:
    try:
        return stream.read(size)
    except OSError as exc:  # the connection failed, or was cut off for taking too long
        raise Rejected(400, "incomplete", f"could not read the request body: {exc}") from None
    except Exception as exc:  # the server's own parse errors, such as a malformed chunk
        raise Rejected(400, "bad_body", f"could not read the request body: {exc}") from None


def _inflate(chunks: Iterator[bytes], limit: int, gzip: bool) -> bytes:
    """Inflate gzip members (or one deflate stream), never holding more than `limit` + 1
    output bytes (a bomb stops right there). Output comes in small steps, so no second copy
    of it builds up."""
    out = bytearray()
    name = "gzip" if gzip else "deflate"
    # HTTP's deflate is the zlib format; some clients send raw deflate: zlib's header tells.
    inflater = zlib.decompressobj(_GZIP_WBITS) if gzip else None
    try:
        for chunk in chunks:
            if inflater is None:
                inflater = zlib.decompressobj(15 if _zlib_header(chunk) else -15)
            while chunk:
                if inflater.eof:
                    if not gzip:
                        raise zlib.error("data after the end of the deflate stream")
                    inflater = zlib.decompressobj(_GZIP_WBITS)  # a further gzip member
                out += inflater.decompress(chunk, min(_READ_CHUNK, limit + 1 - len(out)))
                if len(out) > limit:
                    raise _too_large("decompressed body", limit)
                chunk = inflater.unconsumed_tail or inflater.unused_data
    except zlib.error as exc:
        raise Rejected(400, "bad_gzip", f"body is not valid {name}: {exc}") from None
    if inflater is None or not inflater.eof:
        raise Rejected(400, "bad_gzip", f"body is not valid {name}: it ends before the stream")
    return bytes(out)


def _zlib_header(data: bytes) -> bool:
    return len(data) >= 2 and data[0] & 0x0F == 8 and (data[0] << 8 | data[1]) % 31 == 0


def parse_body(body: bytes, mimetype: str, charset: str | None, max_line: int) -> Lines:
    """Split and validate a body by its content type into newline-terminated lines."""
    if charset is not None and charset.lower() not in _CHARSETS:
        raise Rejected(415, "bad_type", f"unsupported charset {charset!r}: bodies are UTF-8")
    if mimetype in _TEXT_TYPES:
        lines = _text_lines(body)
    elif mimetype == "application/x-ndjson":
        lines = _ndjson_lines(body)
    elif mimetype == "application/json":
        lines = _json_lines(body)
    else:
        raise Rejected(
            415,
            "bad_type",
            f"unsupported Content-Type {mimetype!r}: "
            "use text/plain, application/x-ndjson or application/json",
        )
    _check_line_length(lines, max_line)
    return lines


def count_lines(body: bytes) -> int:
    """How many lines a body holds when split on b"\\n" (a last line without one counts)."""
    return _newlines(body) + (1 if body and not body.endswith(b"\n") else 0)


def _newlines(data: bytes) -> int:
    """How many b"\\n" `data` holds.

    bytes.count looks at one byte at a time; replace() finds them with memchr and is several
    times faster, copy included. It works on a megabyte at a time, so the copy stays small.
    """
    if len(data) <= _COUNT_PIECE:
        return len(data) - len(data.replace(b"\n", b""))
    return sum(_newlines(data[i : i + _COUNT_PIECE]) for i in range(0, len(data), _COUNT_PIECE))


def _text_lines(body: bytes) -> Lines:
    if not body.isascii():  # ASCII is UTF-8 already, and isascii() makes no copy
        _decode(body)  # validates; the lines are kept as bytes
    if not body:
        return Lines(b"", 0)
    if not body.endswith(b"\n"):
        body += b"\n"
    if b"\r" in body:  # a one-byte search is memchr-fast, a two-byte one far slower
        # One trailing CR per line: "a\r\r\n" keeps its first CR, "a\rb" is untouched.
        body = body.replace(b"\r\n", b"\n")
    return Lines(body, _newlines(body))


def _ndjson_lines(body: bytes) -> Lines:
    lines = _decode(body).split("\n")
    if lines[-1] == "":
        lines.pop()
    # The common body, every line one value with nothing around it, is kept as it came: no
    # per-line stripping and joining, which cost more than the validation itself. Anything
    # else takes the line-by-line path.
    if lines and all(map(_is_one_value, lines)):
        return Lines(body if body.endswith(b"\n") else body + b"\n", len(lines))
    return _ndjson_lines_one_by_one(lines)


def _ndjson_lines_one_by_one(lines: list[str]) -> Lines:
    """Blank lines dropped, a trailing CR and the JSON whitespace around each value allowed."""
    kept = []
    for number, line in enumerate(lines, start=1):
        value = line.strip(_JSON_SPACE)
        if value:
            if not _is_one_value(value):
                _check_json(line, f"line {number}")  # raises, saying what is wrong
            kept.append(line.removesuffix("\r"))
    return Lines(("\n".join(kept) + "\n").encode() if kept else b"", len(kept))


def _json_lines(body: bytes) -> Lines:
    """Each value of a top-level array (or the one value) as one line, compacted by removing
    the whitespace between tokens: its numbers, escapes and keys stay exactly as sent."""
    text = _decode(body).strip(_JSON_SPACE)
    _check_json(text, "body")
    values = _array_items(text) if text.startswith("[") else [text]
    lines = [_SPACE_OUTSIDE_STRINGS.sub(r"\1", value) + "\n" for value in values]
    return Lines("".join(lines).encode(), len(lines))


def _array_items(text: str) -> list[str]:
    """The source text of each item of a JSON array already known to be valid."""
    items = []
    i = _skip_space(text, 1)
    while text[i] != "]":
        _, end = _VALIDATOR.raw_decode(text, i)
        items.append(text[i:end])
        i = _skip_space(text, end)
        if text[i] == ",":
            i = _skip_space(text, i + 1)
    return items


def _skip_space(text: str, i: int) -> int:
    while text[i] in _JSON_SPACE:
        i += 1
    return i


def _decode(body: bytes) -> str:
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = body.count(b"\n", 0, exc.start) + 1
        raise Rejected(
            400, "bad_utf8", f"body is not valid UTF-8: line {line}, byte offset {exc.start}"
        ) from None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _ignore(text: str) -> None:
    return None  # numbers are only validated, never converted (their text is what is written)


# Strict JSON: no NaN or Infinity; numbers are not converted, so no size limit applies to them.
_VALIDATOR = json.JSONDecoder(
    parse_int=_ignore, parse_float=_ignore, parse_constant=_reject_constant
)
_SCAN = _VALIDATOR.scan_once


def _is_one_value(text: str) -> bool:
    """Whether `text`, stripped of JSON whitespace, is one JSON value: the decoder's C scanner
    alone, without decode()'s whitespace regexes."""
    try:
        return _SCAN(text, 0)[1] == len(text)
    except (ValueError, StopIteration, RecursionError):
        return False


def _check_json(text: str, where: str) -> None:
    try:
        _VALIDATOR.decode(text)
    except (ValueError, RecursionError) as exc:
        raise Rejected(400, "bad_json", f"invalid JSON in {where}: {exc}") from None


def _check_line_length(lines: Lines, max_line: int) -> None:
    # Only a blob longer than the limit can hold a line longer than it.
    if len(lines.data) - lines.count <= max_line:
        return
    longest = max(map(len, lines.data.split(b"\n")))
    if longest > max_line:
        raise _too_large("line", max_line)


def _too_large(what: str, limit: int) -> Rejected:
    return Rejected(413, "too_large", f"{what} larger than the limit of {limit} bytes")
