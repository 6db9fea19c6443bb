"""The Flask app on its own (test client, real writer on real files): every answer it gives."""

import gzip
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from support import GatedFiles

from service import writer as writer_module
from service.app import create_app, runtime
from service.settings import Settings
from service.writer import Writer

pytestmark = pytest.mark.unit


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(dir=tmp_path, queue_bytes=4096, max_body_bytes=1024, max_line_bytes=100)


@pytest.fixture
def app(settings: Settings) -> Iterator[Flask]:
    app = create_app(settings)
    writer = runtime(app).writer
    writer.start()
    yield app
    writer.stop()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def stop(app: Flask) -> None:
    runtime(app).writer.stop()


def test_text_is_queued_then_written(app: Flask, client: FlaskClient, tmp_path: Path):
    answer = client.post("/v1/logs/app", data=b"one\r\ntwo", content_type="text/plain")
    assert (answer.status_code, answer.json) == (202, {"accepted": 2})
    stop(app)
    assert (tmp_path / "app.log").read_bytes() == b"one\ntwo\n"


def test_no_content_type_is_text_and_no_stream_is_default(app: Flask, client: FlaskClient):
    answer = client.post("/v1/logs", data=b"x\n")
    assert (answer.status_code, answer.json) == (202, {"accepted": 1})
    named = client.post("/v1/logs/default?ack=written", data=b"y\n")  # served, not redirected
    assert (named.status_code, named.json) == (200, {"accepted": 1})
    stop(app)
    logs = Path(runtime(app).settings.dir)
    assert (logs / "default.log").read_bytes() == b"x\ny\n"


def test_curls_default_form_type_is_text_stored_as_sent(app: Flask, client: FlaskClient):
    # What `curl -d` and `--data-binary` send unless told otherwise; no form decoding.
    body = b"a+b=c%20d&e\r\nsecond\n"
    answer = client.post(
        "/v1/logs/form", data=body, content_type="application/x-www-form-urlencoded"
    )
    assert (answer.status_code, answer.json) == (202, {"accepted": 2})
    stop(app)
    logs = Path(runtime(app).settings.dir)
    assert (logs / "form.log").read_bytes() == b"a+b=c%20d&e\nsecond\n"


# The query string is read as Werkzeug's Request.args reads it: unquoted, the first "ack" wins.
@pytest.mark.parametrize(
    "query", ["ack=written", "ack=fsync", "ack=f%73ync", "x=1&ack=written&ack=queued"]
)
def test_ack_modes_answer_200_once_on_disk(client: FlaskClient, tmp_path: Path, query: str):
    answer = client.post(f"/v1/logs/s?{query}", data=b"a\nb\n")
    assert (answer.status_code, answer.json) == (200, {"accepted": 2})
    assert (tmp_path / "s.log").read_bytes() == b"a\nb\n"


def test_default_ack_mode_comes_from_settings(tmp_path: Path):
    app = create_app(Settings(dir=tmp_path, ack="written"))
    runtime(app).writer.start()
    try:
        answer = app.test_client().post("/v1/logs/s", data=b"a\n")
        assert answer.status_code == 200
        assert (tmp_path / "s.log").read_bytes() == b"a\n"
    finally:
        stop(app)


def test_ndjson_and_json(client: FlaskClient, tmp_path: Path):
    ndjson = client.post(
        "/v1/logs/j?ack=written", data=b'{"a":1}\n\n{"b":2}\n', content_type="application/x-ndjson"
    )
    assert (ndjson.status_code, ndjson.json) == (200, {"accepted": 2})
    json_ = client.post(
        "/v1/logs/j?ack=written", data=b'[{"c": 3}, 4]', content_type="application/json"
    )
    assert (json_.status_code, json_.json) == (200, {"accepted": 2})
    assert (tmp_path / "j.log").read_bytes() == b'{"a":1}\n{"b":2}\n{"c":3}\n4\n'


def test_gzip_body(client: FlaskClient, tmp_path: Path):
    answer = client.post(
        "/v1/logs/g?ack=written",
        data=gzip.compress(b"zipped\n"),
        headers={"Content-Encoding": "gzip"},
    )
    assert (answer.status_code, answer.json) == (200, {"accepted": 1})
    assert (tmp_path / "g.log").read_bytes() == b"zipped\n"


def test_empty_body_accepts_nothing_and_creates_no_file(client: FlaskClient, tmp_path: Path):
    answer = client.post("/v1/logs/empty?ack=written", data=b"")
    assert (answer.status_code, answer.json) == (200, {"accepted": 0})
    assert not (tmp_path / "empty.log").exists()


BAD = [
    # (id, path, body, headers, status, words in the error)
    ("bad-utf8", "/v1/logs/s", b"a\n\xff\n", {}, 400, "UTF-8: line 2"),
    ("bad-json", "/v1/logs/s", b"{", {"Content-Type": "application/json"}, 400, "JSON"),
    (
        "bad-ndjson",
        "/v1/logs/s",
        b'1\n{"x"}\n',
        {"Content-Type": "application/x-ndjson"},
        400,
        "line 2",
    ),
    ("bad-gzip", "/v1/logs/s", b"nope", {"Content-Encoding": "gzip"}, 400, "gzip"),
    ("bad-stream", "/v1/logs/..", b"a\n", {}, 400, "stream name"),
    ("slash-stream", "/v1/logs/a/b", b"a\n", {}, 400, "stream name"),
    ("empty-stream", "/v1/logs/", b"a\n", {}, 400, "stream name"),
    ("bad-ack", "/v1/logs/s?ack=maybe", b"a\n", {}, 400, "ack must be one of"),
    ("body-too-large", "/v1/logs/s", b"x\n" * 600, {}, 413, "body larger than"),
    (
        "gzip-too-large",
        "/v1/logs/s",
        gzip.compress(b"x\n" * 600),
        {"Content-Encoding": "gzip"},
        413,
        "decompressed body larger",
    ),
    ("line-too-large", "/v1/logs/s", b"x" * 101, {}, 413, "line larger"),
    ("bad-type", "/v1/logs/s", b"a", {"Content-Type": "application/xml"}, 415, "Content-Type"),
    ("bad-encoding", "/v1/logs/s", b"a", {"Content-Encoding": "br"}, 415, "Content-Encoding"),
    (
        "bad-charset",
        "/v1/logs/s",
        b"a",
        {"Content-Type": "text/plain; charset=latin-1"},
        415,
        "charset",
    ),
]


@pytest.mark.parametrize(
    ("path", "body", "headers", "status", "words"),
    [case[1:] for case in BAD],
    ids=[c[0] for c in BAD],
)
def test_bad_requests_are_refused_and_write_nothing(
    app: Flask, client: FlaskClient, tmp_path: Path, path, body, headers, status, words
):  # type: ignore[no-untyped-def]
    answer = client.post(path, data=body, headers=headers)
    assert answer.status_code == status
    assert words in answer.json["error"]
    stop(app)
    assert list(tmp_path.iterdir()) == []


def test_wrong_method_is_405_with_allow(client: FlaskClient):
    answer = client.get("/v1/logs/s")
    assert answer.status_code == 405
    assert "POST" in answer.headers["Allow"]
    assert "error" in answer.json


def test_unknown_path_is_404_json(client: FlaskClient):
    answer = client.get("/nope")
    assert answer.status_code == 404 and "error" in answer.json


def test_full_queue_is_503_with_retry_after(settings: Settings):
    files = GatedFiles(settings.dir)
    files.gate.clear()
    writer = Writer(files, settings.queue_bytes)
    app = create_app(settings, writer)
    writer.start()
    client = app.test_client()
    try:
        body = (b"x" * 90 + b"\n") * 10  # 910 bytes: four fit the 4096-byte queue
        assert [client.post("/v1/logs/s", data=body).status_code for _ in range(4)] == [202] * 4
        full = client.post("/v1/logs/s", data=body)
        assert full.status_code == 503
        assert full.headers["Retry-After"] == "1"
        assert "queue is full" in full.json["error"]
        ready = client.get("/readyz")
        assert (ready.status_code, ready.json) == (503, {"error": "queue is full"})
    finally:
        files.gate.set()
        writer.stop()


def test_a_request_gives_way_to_a_backlogs_writes_before_reading_and_checking_its_body(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(writer_module, "_GIVE_WAY_SECONDS", 0.3)
    files = GatedFiles(tmp_path)
    files.gate.clear()
    settings = Settings(dir=tmp_path, queue_bytes=2000)
    writer = Writer(files, settings.queue_bytes)
    client = create_app(settings, writer).test_client()
    writer.start()
    try:
        assert client.post("/v1/logs/s", data=b"x" * 1100 + b"\n").status_code == 202
        assert files.at_gate.wait(5)  # held in the file: over half the queue is its to write
        started = time.monotonic()
        assert client.post("/v1/logs/s", data=b"y\n").status_code == 202
        assert 0.55 <= time.monotonic() - started < 2, "twice, for at most 0.3 s each"
    finally:
        files.gate.set()
        writer.stop()
    assert (tmp_path / "s.log").read_bytes() == b"x" * 1100 + b"\ny\n"


def test_health_and_readiness_follow_the_writer(app: Flask, client: FlaskClient):
    assert (client.get("/healthz").status_code, client.get("/readyz").status_code) == (200, 200)
    stop(app)
    assert client.get("/healthz").status_code == 503
    assert client.get("/readyz").json == {"error": "writer thread is not running"}
    refused = client.post("/v1/logs/s", data=b"late\n")
    assert refused.status_code == 503 and refused.headers["Retry-After"] == "1"


Sample = tuple[str, tuple[tuple[str, str], ...]]  # a sample's name and its labels


def registry_value(sample: Sample) -> float:
    name, labels = sample
    return REGISTRY.get_sample_value(name, dict(labels)) or 0.0


def page_values(page: str) -> dict[Sample, float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(page)
        for sample in family.samples
    }


def test_metrics_count_lines_and_refusals(app: Flask, client: FlaskClient):
    # The registry is the whole test process's: what counts is how far each sample moves.
    moves: dict[Sample, float] = {
        ("logwriter_lines_received_total", ()): 2,
        ("logwriter_lines_written_total", ()): 2,
        ("logwriter_bytes_written_total", ()): 4,
        ("logwriter_rejected_requests_total", (("reason", "bad_utf8"),)): 1,
        ("logwriter_rejected_lines_total", (("reason", "bad_utf8"),)): 2,
        ("logwriter_http_requests_total", (("code", "200"),)): 1,
        ("logwriter_http_requests_total", (("code", "400"),)): 1,
    }
    before = {sample: registry_value(sample) for sample in moves}
    assert client.post("/v1/logs/s?ack=written", data=b"a\nb\n").status_code == 200
    assert client.post("/v1/logs/s", data=b"ok\n\xff\n").status_code == 400
    stop(app)  # the writer counts lines written just after it acks them: the count is in now
    answer = client.get("/metrics")  # counted itself only once it has answered
    assert answer.status_code == 200
    shown = page_values(answer.get_data(as_text=True))
    assert {sample: shown.get(sample, 0.0) - before[sample] for sample in moves} == moves
