"""Unit tests of logwriter_client's Handler and Client, against FakeService: an in-process HTTP
server whose answers a test scripts (503 with Retry-After, 401, a cut connection...) and which
records what it accepted. The real service is in test_client_live.py.

These also run on the client's oldest Python (3.9; .ci/run), so they import nothing of the
service's or of the other tests' helpers.
"""

from __future__ import annotations

import ast
import calendar
import gzip
import http.server
import importlib.metadata
import io
import json
import logging
import logging.config
import re
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path

import logwriter_client
import pytest
from logwriter_client import Client, Handler, Refused, Undelivered

pytestmark = pytest.mark.unit

README = Path(__file__).resolve().parent.parent / "README.md"
RFC3339_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")


class FakeService:
    """Answers POSTs from `script` (a status; "cut" to close the connection unanswered;
    "answer-and-close" to accept, then close the kept-alive connection without a word), then
    200; records each accepted request as (path, headers, body decompressed) and the client
    port it came from."""

    def __init__(self) -> None:
        self.script: deque[int | str] = deque()
        self.retry_after = "1"
        self.accepted: list[tuple[str, dict[str, str], bytes]] = []
        self.ports: list[int] = []
        self.times: list[float] = []  # when each request came, answered or not
        self.lock = threading.Lock()
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with fake.lock:
                    fake.times.append(time.monotonic())
                    fake.ports.append(self.client_address[1])
                    answer = fake.script.popleft() if fake.script else 200
                if answer == "cut":
                    self.close_connection = True
                    return
                if answer not in (200, "answer-and-close"):
                    self._answer(int(answer), {"error": f"scripted {answer}"})
                    return
                self.close_connection = answer == "answer-and-close"
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                with fake.lock:
                    fake.accepted.append((self.path, dict(self.headers), body))
                self._answer(200, {"accepted": body.count(b"\n")})

            def _answer(self, status: int, doc: dict[str, object]) -> None:
                data = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                if status in (429, 503):
                    self.send_header("Retry-After", fake.retry_after)
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def lines(self) -> list[bytes]:
        with self.lock:
            return [line for _, _, body in self.accepted for line in body.splitlines()]

    def records(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.lines()]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake() -> Iterator[FakeService]:
    service = FakeService()
    yield service
    service.close()


@pytest.fixture
def logger(request: pytest.FixtureRequest) -> Iterator[logging.Logger]:
    """A logger of this test's own, with no handler; its handlers are closed afterwards."""
    log = logging.getLogger(f"test.{request.node.name}")
    log.setLevel(logging.DEBUG)
    log.propagate = False
    yield log
    for handler in list(log.handlers):
        log.removeHandler(handler)
        if isinstance(handler, Handler):
            handler.close(timeout=2)


def attach(logger: logging.Logger, url: str, **options: object) -> Handler:
    handler = Handler(url, "app", **options)  # type: ignore[arg-type]
    logger.addHandler(handler)
    return handler


def closed_port() -> str:
    """A URL where nothing listens."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def test_a_record_is_one_json_object_with_its_fields(fake: FakeService, logger: logging.Logger):
    handler = attach(logger, fake.url)
    logger.info("hello %s", "there", extra={"user": "ada", "n": 3, "obj": object()})
    try:
        raise ValueError("boom")
    except ValueError:
        logger.exception("it failed")
    assert handler.flush(5)
    first, second = fake.records()
    assert RFC3339_UTC.fullmatch(str(first["time"]))
    sent_at = calendar.timegm(time.strptime(str(first["time"])[:19], "%Y-%m-%dT%H:%M:%S"))
    assert abs(time.time() - sent_at) < 60  # UTC
    assert {k: first[k] for k in ("level", "logger", "message", "user", "n")} == {
        "level": "INFO",
        "logger": logger.name,
        "message": "hello there",
        "user": "ada",
        "n": 3,
    }
    assert str(first["obj"]).startswith("<object object at")  # not JSON: its repr
    assert first["thread"] == threading.current_thread().name
    assert isinstance(first["process"], int)
    assert "exc" not in first
    assert second["level"] == "ERROR"
    assert "ValueError: boom" in str(second["exc"]) and "Traceback" in str(second["exc"])
    path, headers, _ = fake.accepted[0]
    assert path == "/v1/logs/app?ack=written"
    assert headers["Content-Type"] == "application/x-ndjson"


def test_values_json_cannot_hold_become_their_repr(fake: FakeService, logger: logging.Logger):
    # NaN would make the line invalid JSON, and the service refuses the whole batch for one.
    cycle: list[object] = []
    cycle.append(cycle)
    handler = attach(logger, fake.url)
    logger.info("odd", extra={"nan": float("nan"), "cycle": cycle, "keys": {(1, 2): "tuple"}})
    logger.info("lone surrogate \udc80 and é")
    assert handler.flush(5)
    odd, text = fake.records()
    assert (odd["nan"], odd["cycle"], odd["keys"]) == ("nan", "[[...]]", "{(1, 2): 'tuple'}")
    assert text["message"] == "lone surrogate \udc80 and é"  # escaped, so the body is UTF-8


def test_a_plain_formatter_sends_text_lines(fake: FakeService, logger: logging.Logger):
    handler = attach(logger, fake.url)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logger.warning("disk %d%% full", 91)
    assert handler.flush(5)
    assert fake.lines() == [f"WARNING {logger.name}: disk 91% full".encode()]
    assert fake.accepted[0][1]["Content-Type"] == "text/plain; charset=utf-8"


def test_records_go_in_batches_by_size_over_one_connection(
    fake: FakeService, logger: logging.Logger
):
    handler = attach(logger, fake.url, batch_bytes=20_000, batch_seconds=60)
    for i in range(1000):
        logger.info("record %04d", i)
    assert handler.flush(10)
    assert [json.loads(line)["message"] for line in fake.lines()] == [
        f"record {i:04d}" for i in range(1000)
    ]
    sizes = [len(body) for _, _, body in fake.accepted]
    assert all(size <= 20_000 for size in sizes)
    assert len(sizes) <= 1000 * len(fake.lines()[0]) // 15_000  # full batches, not one a record
    assert len(set(fake.ports)) == 1  # kept alive


def test_a_batch_goes_after_batch_seconds_without_a_flush(
    fake: FakeService, logger: logging.Logger
):
    attach(logger, fake.url, batch_seconds=0.3)
    started = time.monotonic()
    for i in range(5):
        logger.info("r%d", i)
    deadline = time.monotonic() + 5
    while not fake.accepted and time.monotonic() < deadline:
        time.sleep(0.01)
    took = fake.times[0] - started
    assert 0.25 <= took < 2, took
    assert len(fake.accepted) == 1 and len(fake.lines()) == 5  # the five, in one request


def test_large_bodies_are_gzipped_small_ones_not(fake: FakeService, logger: logging.Logger):
    handler = attach(logger, fake.url, gzip_bytes=10_000)
    logger.info("small")
    assert handler.flush(5)
    for i in range(500):
        logger.info("large %d", i)
    assert handler.flush(5)
    encodings = [headers.get("Content-Encoding") for _, headers, _ in fake.accepted]
    assert encodings == [None, "gzip"]
    assert len(fake.lines()) == 501


def test_the_token_goes_in_a_bearer_header(fake: FakeService, logger: logging.Logger):
    handler = attach(logger, fake.url, token="s3cret")
    logger.info("x")
    assert handler.flush(5)
    assert fake.accepted[0][1]["Authorization"] == "Bearer s3cret"


@pytest.mark.parametrize("answer", [503, 429, 500, 502, 408, "cut"])
def test_what_is_worth_retrying_is_retried(
    fake: FakeService, logger: logging.Logger, answer: int | str, capsys: pytest.CaptureFixture
):
    fake.retry_after = "0"
    fake.script.extend([answer, answer])
    handler = attach(logger, fake.url)
    logger.info("once")
    assert handler.flush(10)
    assert [r["message"] for r in fake.records()] == ["once"]
    assert len(fake.times) == 3
    assert "retrying" in capsys.readouterr().err  # said once, on the first failure


def test_a_kept_alive_connection_closed_while_idle_is_replaced_at_once(
    fake: FakeService, capsys: pytest.CaptureFixture
):
    # The service closes idle connections; that is no failure, and is not waited out.
    fake.script.append("answer-and-close")
    client = Client(fake.url)
    client.send(["one"])
    client.send(["two"])
    assert fake.lines() == [b"one", b"two"]
    assert len(set(fake.ports)) == 2
    assert "retrying" not in capsys.readouterr().err


def test_retry_after_is_honoured(fake: FakeService):
    fake.retry_after = "1"
    fake.script.append(503)
    assert Client(fake.url, "app").send(["a"]) == 1
    assert fake.times[1] - fake.times[0] >= 1.0


def test_backoff_grows_with_jitter(fake: FakeService):
    fake.retry_after = "0"
    fake.script.extend([500] * 5)
    Client(fake.url, "app", max_backoff=10).send(["a"])
    gaps = [fake.times[i + 1] - fake.times[i] for i in range(len(fake.times) - 1)]
    # Each wait is within [half, all] of 0.1 s doubled per attempt (plus scheduling).
    for attempt, gap in enumerate(gaps):
        ceiling = 0.1 * 2**attempt
        assert ceiling / 2 - 0.01 <= gap <= ceiling + 0.2, gaps


def test_a_refusal_is_reported_once_and_its_batch_dropped(
    fake: FakeService, logger: logging.Logger, capsys: pytest.CaptureFixture
):
    fake.script.extend([401, 401, 401])
    handler = attach(logger, fake.url)
    for i in range(4):
        logger.info("r%d", i)
        assert handler.flush(5)
    assert len(fake.times) == 4  # one request each: refusals are not retried
    assert [r["message"] for r in fake.records()] == ["r3"]
    assert handler.lost == 3
    err = capsys.readouterr().err
    assert err.count("refused") == 1 and "401: scripted 401" in err


def test_a_full_buffer_drops_and_counts_then_says_so_first(
    fake: FakeService, logger: logging.Logger
):
    fake.retry_after = "0"
    fake.script.extend([503] * 8)  # about a second of backoff
    handler = attach(logger, fake.url, buffer_bytes=20_000, batch_seconds=0.01, max_backoff=0.2)
    logger.info("in flight")
    time.sleep(0.2)  # taken, and being retried
    for i in range(1000):
        logger.info("during %04d", i)
    assert handler.dropped > 0
    assert handler.flush(20)
    records = fake.records()
    messages = [str(r["message"]) for r in records]
    kept = [m for m in messages if m.startswith("during")]
    notices = [r for r in records if r["logger"] == "logwriter_client"]
    assert messages[0] == "in flight"
    assert len(notices) == 1 and notices[0] is records[1]  # first, once sending works
    assert notices[0]["dropped"] == handler.dropped == 1000 - len(kept)
    assert kept == [f"during {i:04d}" for i in range(len(kept))]  # what fitted, in order
    assert len(kept) * len(fake.lines()[2]) <= 20_000


def test_emit_does_no_io_and_returns_while_the_service_hangs(logger: logging.Logger):
    # A service that never answers: emit must not wait for it.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        handler = attach(logger, f"http://127.0.0.1:{silent.getsockname()[1]}", timeout=2)
        logger.info("first")  # the thread connects and waits for an answer
        time.sleep(0.2)
        took = []
        for i in range(2000):
            started = time.perf_counter()
            logger.info("r%d", i)
            took.append(time.perf_counter() - started)
        took.sort()
        assert took[len(took) // 2] < 0.001 and took[-1] < 0.05, (took[len(took) // 2], took[-1])
        assert not handler.flush(0.1)
        handler.close(timeout=0.2)


def test_close_sends_what_is_buffered_then_stops(fake: FakeService, logger: logging.Logger):
    handler = attach(logger, fake.url, batch_seconds=60)
    for i in range(3):
        logger.info("r%d", i)
    thread = handler._sender._thread
    handler.close()
    assert [r["message"] for r in fake.records()] == ["r0", "r1", "r2"]
    assert thread is not None and not thread.is_alive()


def test_close_gives_up_within_its_timeout_and_says_so(
    logger: logging.Logger, capsys: pytest.CaptureFixture
):
    handler = attach(logger, closed_port())
    logger.info("nowhere to go")
    started = time.monotonic()
    assert not handler.flush(0.3)
    handler.close(timeout=1)
    assert time.monotonic() - started < 3
    assert handler.lost == 1
    assert "1 records not delivered within 1 s" in capsys.readouterr().err


def test_a_record_larger_than_a_batch_goes_to_handle_error(
    fake: FakeService, logger: logging.Logger, capsys: pytest.CaptureFixture
):
    handler = attach(logger, fake.url, batch_bytes=1000)
    logger.info("x" * 2000)
    logger.info("fits")
    assert handler.flush(5)
    assert [r["message"] for r in fake.records()] == ["fits"]
    assert "over batch_bytes" in capsys.readouterr().err


def test_the_readme_dictconfig_snippet_works(fake: FakeService):
    snippet = re.search(r"```python\n(import logging\.config\n.*?)```", README.read_text(), re.S)
    assert snippet, "the README's dictConfig example is gone"
    code = snippet[1].replace("http://127.0.0.1:8080", fake.url)
    exec(code, {"__name__": "app"})
    root = logging.getLogger()
    handlers = [h for h in root.handlers if isinstance(h, Handler)]
    try:
        assert len(handlers) == 1
        assert handlers[0].flush(5)
        assert fake.records() and fake.accepted[0][0].startswith("/v1/logs/app?")
    finally:
        for handler in handlers:
            root.removeHandler(handler)
            handler.close()


def test_client_send_returns_what_was_accepted(fake: FakeService):
    client = Client(fake.url + "/", "events")
    assert client.send(["one", b"two"], ack="fsync") == 2
    assert fake.accepted[0][0] == "/v1/logs/events?ack=fsync"
    assert fake.lines() == [b"one", b"two"]


def test_client_send_raises_on_refusal_and_when_it_cannot_deliver(fake: FakeService):
    fake.script.append(413)
    with pytest.raises(Refused) as refused:
        Client(fake.url).send(["a"])
    assert refused.value.status == 413 and refused.value.error == "scripted 413"
    started = time.monotonic()
    with pytest.raises(Undelivered, match="cannot reach"):
        Client(closed_port()).send(["a"], timeout=0.5)
    assert time.monotonic() - started < 2


def test_client_checks_what_it_is_given():
    with pytest.raises(ValueError, match="url"):
        Client("127.0.0.1:8080")
    with pytest.raises(ValueError, match="stream"):
        Client("http://127.0.0.1:8080", "../etc")
    with pytest.raises(ValueError, match="newline"):
        Client("http://127.0.0.1:8080").send(["two\nlines"])
    with pytest.raises(ValueError, match="ack"):
        Client("http://127.0.0.1:8080").post(b"a\n", ack="soon")


def test_the_distribution_requires_nothing():
    # Installing it into an app must bring in neither Flask nor Gunicorn, nor anything else.
    assert not importlib.metadata.requires("logwriter-client")


def test_the_client_imports_only_the_standard_library():
    stdlib = getattr(sys, "stdlib_module_names", None)  # Python 3.10+
    if stdlib is None:
        pytest.skip("no sys.stdlib_module_names before Python 3.10")
    package = Path(logwriter_client.__file__).parent
    imported = set()
    for module in package.glob("*.py"):
        for node in ast.walk(ast.parse(module.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module.split(".")[0])
    assert imported - stdlib == {"logwriter_client"}


def test_a_url_prefix_is_kept(fake: FakeService):
    Client(fake.url + "/logwriter").send(["a"])
    assert fake.accepted[0][0] == "/logwriter/v1/logs/default?ack=written"


def test_lone_reports_go_to_stderr_not_to_a_handler(
    logger: logging.Logger, capsys: pytest.CaptureFixture
):
    # The handler's own troubles must not be logged through logging's handlers, ours included.
    stream = io.StringIO()
    spy = logging.StreamHandler(stream)
    logging.getLogger().addHandler(spy)
    try:
        handler = attach(logger, closed_port())
        logger.info("x")
        handler.close(timeout=0.3)
    finally:
        logging.getLogger().removeHandler(spy)
    assert "logwriter_client:" in capsys.readouterr().err
    assert stream.getvalue() == ""
