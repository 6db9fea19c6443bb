"""Property tests of the body parser: any bytes, any content type, give either a clean refusal
or lines that come back exactly as specified."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.parsing import parse_body
from service.refusals import Rejected

pytestmark = pytest.mark.unit

MAX_LINE = 64
TYPES = ["text/plain", "", "application/x-ndjson", "application/json"]
# Bytes that matter here: separators and near-separators, UTF-8 pieces, JSON syntax.
INTERESTING = st.sampled_from(
    [
        b"\n",
        b"\r",
        b"\r\n",
        b"\x0b",
        b"\x0c",
        b"\x1c",
        b"\xc2\x85",
        b"\xe2\x80\xa8",
        b"\xff",
        b"\xc3",
        b"\x00",
        b" ",
        b"{",
        b"}",
        b"[",
        b"]",
        b'"',
        b",",
        b":",
        b"1",
        b"a",
        b"\\",
    ]
)
BODIES = st.one_of(st.binary(max_size=300), st.lists(INTERESTING, max_size=60).map(b"".join))


def expected_text_lines(body: bytes) -> list[bytes]:
    """The spec, written the slow and obvious way."""
    text = body.decode("utf-8")
    lines = text.split("\n")
    if text.endswith("\n") or not text:
        lines.pop()
    return [line.removesuffix("\r").encode() for line in lines]


@settings(max_examples=400)
@given(body=BODIES, mimetype=st.one_of(st.sampled_from(TYPES), st.text(max_size=20)))
def test_any_body_gives_a_clean_answer(body: bytes, mimetype: str):
    try:
        lines = parse_body(body, mimetype, None, MAX_LINE)
    except Rejected as exc:
        assert exc.status in (400, 413, 415) and exc.message
        return
    assert lines.count == lines.data.count(b"\n")
    assert not lines.data or lines.data.endswith(b"\n")
    got = lines.data.split(b"\n")[:-1]
    assert all(len(line) <= MAX_LINE for line in got)
    for line in got:
        line.decode("utf-8")
    if mimetype in ("text/plain", ""):
        assert got == expected_text_lines(body)
    elif mimetype == "application/x-ndjson":
        sent = [line.removesuffix(b"\r") for line in body.split(b"\n")]
        assert got == [line for line in sent if line.strip(b" \t\r")]
        for line in got:
            json.loads(line.decode())


@given(body=st.binary(max_size=300))
def test_text_never_splits_except_on_newline(body: bytes):
    try:
        lines = parse_body(body, "text/plain", None, 1 << 20)
    except Rejected as exc:
        assert exc.reason == "bad_utf8"
        return
    assert lines.count == body.count(b"\n") + (1 if body and not body.endswith(b"\n") else 0)


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=300)
@given(
    values=st.lists(JSON_VALUES, max_size=5),
    indent=st.sampled_from([None, 0, 2, "\t"]),
    ascii_only=st.booleans(),
)
def test_json_arrays_come_back_one_compact_value_a_line(values, indent, ascii_only):  # type: ignore[no-untyped-def]
    body = json.dumps(values, indent=indent, ensure_ascii=ascii_only).encode()
    lines = parse_body(body, "application/json", None, 1 << 20)
    got = lines.data.split(b"\n")[:-1]
    assert [json.loads(line) for line in got] == values
    for line, value in zip(got, values, strict=True):
        # Compact: what json.dumps makes without whitespace, escapes kept as sent.
        assert line == json.dumps(value, separators=(",", ":"), ensure_ascii=ascii_only).encode()
