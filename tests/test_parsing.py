"""Body parsing: reading with limits, gunzipping, and splitting by content type."""

import gzip
import io
import json

import pytest

from service.parsing import check_stream_name, count_lines, parse_body, read_body
from service.refusals import Rejected

pytestmark = pytest.mark.unit

MAX_LINE = 1 << 20


def text(body: bytes, max_line: int = MAX_LINE) -> list[bytes]:
    lines = parse_body(body, "text/plain", None, max_line)
    assert lines.data.count(b"\n") == lines.count
    assert not lines.data or lines.data.endswith(b"\n")
    return lines.data.split(b"\n")[:-1]


def rejected(call, status: int, reason: str) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(Rejected) as info:
        call()
    assert (info.value.status, info.value.reason) == (status, reason), info.value.message
    return info.value.message


@pytest.mark.parametrize(
    ("body", "lines"),
    [
        (b"", []),
        (b"a", [b"a"]),
        (b"a\n", [b"a"]),
        (b"a\nb", [b"a", b"b"]),
        (b"\n", [b""]),
        (b"\n\n", [b"", b""]),
        (b"a\r\nb\r\n", [b"a", b"b"]),
        (b"a\r", [b"a"]),
        (b"a\r\r\n", [b"a\r"]),  # one trailing CR per line
        (b"a\rb\n", [b"a\rb"]),  # a lone CR stays inside its line
        ("a\u2028b\x85c\x0bd\x0ce\x1cf\n".encode(), ["a\u2028b\x85c\x0bd\x0ce\x1cf".encode()]),
        (b"tab\there\n", [b"tab\there"]),
    ],
)
def test_text_splits_on_newline_only(body: bytes, lines: list[bytes]):
    assert text(body) == lines


def test_text_rejects_invalid_utf8_and_says_where():
    message = rejected(lambda: text(b"ok\nbad \xff\n"), 400, "bad_utf8")
    assert "line 2" in message


def test_text_rejects_surrogates_encoded_in_utf8():
    rejected(lambda: text(b"\xed\xa0\x80\n"), 400, "bad_utf8")


def test_line_limit_counts_the_line_without_its_newline():
    assert text(b"x" * 10 + b"\r\n", max_line=10) == [b"x" * 10]
    assert rejected(lambda: text(b"ok\n" + b"x" * 11, max_line=10), 413, "too_large")


def test_ndjson_keeps_each_nonempty_line_as_sent():
    body = b'{"a": 1}\r\n\n  \n[1, 2]\n"\xe2\x80\xa8"\n3'
    lines = parse_body(body, "application/x-ndjson", None, MAX_LINE)
    assert lines.data == b'{"a": 1}\n[1, 2]\n"\xe2\x80\xa8"\n3\n'
    assert lines.count == 4


@pytest.mark.parametrize(
    ("body", "data", "count"),
    [
        (b'{"a": 1}\n[1, 2]\n"\xe2\x80\xa8"\n3\n', b'{"a": 1}\n[1, 2]\n"\xe2\x80\xa8"\n3\n', 4),
        (b'{"a": 1}\n3', b'{"a": 1}\n3\n', 2),  # the last newline is added
        (b'{"a": 1}\n\n', b'{"a": 1}\n', 1),  # a blank line is dropped
        (b'{"a": 1} \n3\n', b'{"a": 1} \n3\n', 2),  # space after a value is kept
        (b"\n", b"", 0),
        (b"", b"", 0),
    ],
)
def test_ndjson_clean_and_untidy_bodies_alike(body: bytes, data: bytes, count: int):
    lines = parse_body(body, "application/x-ndjson", None, MAX_LINE)
    assert (lines.data, lines.count) == (data, count)


@pytest.mark.parametrize("body", [b'{"a": 1}\n1 2\n', b"[1,\n2]\n", b'{"a": 1}\n{"b": }'])
def test_ndjson_one_value_per_line(body: bytes):
    rejected(lambda: parse_body(body, "application/x-ndjson", None, MAX_LINE), 400, "bad_json")


def test_ndjson_names_the_bad_line():
    body = b'{"a": 1}\n{"b": }\n'
    message = rejected(
        lambda: parse_body(body, "application/x-ndjson", None, MAX_LINE), 400, "bad_json"
    )
    assert "line 2" in message


@pytest.mark.parametrize("value", [b"NaN", b"Infinity", b"-Infinity", b"{", b"[1,]", b"'a'"])
def test_json_rejects_what_is_not_json(value: bytes):
    rejected(lambda: parse_body(value, "application/json", None, MAX_LINE), 400, "bad_json")
    rejected(lambda: parse_body(value, "application/x-ndjson", None, MAX_LINE), 400, "bad_json")


def test_json_array_gives_one_compact_line_per_value():
    body = b'[ {"msg": "caf\xc3\xa9", "n": [1, 2]}, "x\\ny", 3, null ]'
    lines = parse_body(body, "application/json", "utf-8", MAX_LINE)
    assert lines.data == b'{"msg":"caf\xc3\xa9","n":[1,2]}\n"x\\ny"\n3\nnull\n'
    assert lines.count == 4


def test_json_single_value_is_one_line():
    assert parse_body(b' {"a" : 1} ', "application/json", None, MAX_LINE).data == b'{"a":1}\n'
    assert parse_body(b"[]", "application/json", None, MAX_LINE).count == 0


def test_json_lone_surrogate_stays_escaped_and_valid_utf8():
    lines = parse_body(b'["\\ud800"]', "application/json", None, MAX_LINE)
    assert lines.data == b'"\\ud800"\n'
    lines.data.decode("utf-8")


def test_json_keeps_numbers_keys_and_escapes_exactly_as_sent():
    body = b'[0.1000000000000000000001, 1E2, 1e400, {"k": 1, "k": 2}, "a \\" b\\u00e9", ' + (
        b"9" * 5000 + b"]"
    )
    lines = parse_body(body, "application/json", None, 1 << 20).data.split(b"\n")
    assert lines[:5] == [
        b"0.1000000000000000000001",
        b"1E2",
        b"1e400",
        b'{"k":1,"k":2}',
        b'"a \\" b\\u00e9"',
    ]
    assert lines[5] == b"9" * 5000


@pytest.mark.parametrize("mimetype", ["application/json", "application/x-ndjson"])
@pytest.mark.parametrize(
    "body",
    [b"1\x002\x00\n", b"\xef\xbb\xbf{}\n", b"[\x001\x00]\x00"],
    ids=["utf16-as-bytes", "bom", "nul-padded"],
)
def test_json_must_be_utf8_text(body: bytes, mimetype: str):
    rejected(lambda: parse_body(body, mimetype, None, MAX_LINE), 400, "bad_json")


def test_json_nesting_too_deep_is_rejected_not_a_crash():
    deep = b"[" * 100_000 + b"]" * 100_000
    rejected(lambda: parse_body(deep, "application/json", None, MAX_LINE), 400, "bad_json")


def test_json_lines_obey_the_line_limit():
    body = json.dumps(["x" * 20]).encode()
    rejected(lambda: parse_body(body, "application/json", None, 10), 413, "too_large")


@pytest.mark.parametrize(
    ("mimetype", "charset"),
    [("application/xml", None), ("text/html", None), ("text/plain", "latin-1")],
)
def test_unknown_type_or_charset_is_415(mimetype: str, charset: str | None):
    rejected(lambda: parse_body(b"a\n", mimetype, charset, MAX_LINE), 415, "bad_type")


def test_count_lines():
    assert [count_lines(body) for body in (b"", b"a", b"a\nb\n", b"a\nb")] == [0, 1, 2, 2]


def test_count_lines_of_a_body_counted_a_megabyte_at_a_time():
    # Newlines on both sides of each megabyte's edge, and a last line without one.
    body = b"\n".join([b"x" * ((1 << 20) - 1)] * 3 + [b"\n" * 5, b"end"])
    assert count_lines(body) == body.count(b"\n") + 1 == 10
    assert parse_body(body + b"\n", "text/plain", None, 1 << 20).count == 10


@pytest.mark.parametrize("name", ["app", "a", "A-b_c.9", "x" * 64, "a..b"])
def test_stream_names_allowed(name: str):
    assert check_stream_name(name) == name


@pytest.mark.parametrize(
    "name",
    ["", ".", "..", "../etc/passwd", "a/b", ".hidden", "-a", "_a", "x" * 65, "a b", "é", "a\x00"],
)
def test_stream_names_refused(name: str):
    rejected(lambda: check_stream_name(name), 400, "bad_stream")


class ChunkedStream(io.BytesIO):
    """A body without Content-Length, like a chunked wsgi.input: short reads of 7 bytes."""

    def read(self, size: int | None = -1) -> bytes:
        return super().read(min(size or 7, 7) if size and size > 0 else 7)


def test_read_body_with_length_reads_exactly_that():
    assert read_body(io.BytesIO(b"abcdef"), 4, None, 10) == b"abcd"


def test_read_body_too_long_by_length_is_413_before_reading():
    stream = io.BytesIO(b"x" * 11)
    rejected(lambda: read_body(stream, 11, None, 10), 413, "too_large")
    assert stream.tell() == 0


def test_read_body_truncated_is_400():
    rejected(lambda: read_body(io.BytesIO(b"abc"), 5, None, 10), 400, "incomplete")


def test_read_body_chunked_within_and_over_the_limit():
    assert read_body(ChunkedStream(b"x" * 20), None, None, 20) == b"x" * 20
    rejected(lambda: read_body(ChunkedStream(b"x" * 21), None, None, 20), 413, "too_large")


def test_read_body_unknown_encoding_is_415():
    rejected(lambda: read_body(io.BytesIO(b"a"), 1, "br", 10), 415, "bad_encoding")


def test_gzip_body_is_inflated_also_when_chunked_and_with_several_members():
    body = gzip.compress(b"one\n") + gzip.compress(b"two\n")
    assert read_body(io.BytesIO(body), len(body), "gzip", 100) == b"one\ntwo\n"
    assert read_body(ChunkedStream(body), None, "GZIP", 100) == b"one\ntwo\n"


def test_gzip_decompressed_limit_is_exact():
    body = gzip.compress(b"x" * 100)
    assert read_body(io.BytesIO(body), len(body), "gzip", 100) == b"x" * 100
    rejected(lambda: read_body(io.BytesIO(body), len(body), "gzip", 99), 413, "too_large")


@pytest.mark.parametrize(
    "body",
    [b"", b"not gzip", gzip.compress(b"abc")[:-3], gzip.compress(b"abc") + b"junk"],
    ids=["empty", "garbage", "truncated", "trailing-junk"],
)
def test_bad_gzip_is_400(body: bytes):
    rejected(lambda: read_body(io.BytesIO(body), len(body), "gzip", 100), 400, "bad_gzip")
