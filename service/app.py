"""The HTTP face of logwriter: a Flask app that validates bodies and queues them for the writer.

create_app() only builds objects: no thread is started, no file touched. The Gunicorn hooks
(service.server) start and stop the writer it holds, in each worker process.
"""

import functools
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl

from flask import Blueprint, Flask, Request, Response, current_app, jsonify, request
from prometheus_client import Counter
from werkzeug.exceptions import HTTPException
from werkzeug.http import parse_options_header
from werkzeug.routing import PathConverter

from service import metrics, otlp
from service.auth import BearerTokens, Token
from service.deadlines import ReadDeadlines
from service.files import LogFiles
from service.parsing import check_stream_name, count_lines, parse_body, read_body
from service.refusals import Rejected
from service.settings import Settings
from service.writer import Ack, Entry, QueueFull, WriteFailed, Writer, WriterStopped, parse_ack

log = logging.getLogger("logwriter")

QUEUE_WAIT_SECONDS = 1.0  # how long a request waits for room in a full queue before a 503
RETRY_AFTER_SECONDS = "1"
_RUNTIME = "logwriter"  # the key of app.extensions that holds the Runtime
_OTLP_TYPES = (otlp.PROTOBUF, otlp.JSON)

api = Blueprint("logwriter", __name__)
OPENAPI = (Path(__file__).parent / "openapi.json").read_bytes()  # the API's contract, kept here


@dataclass(frozen=True, slots=True)
class Runtime:
    """What the views need, kept on the app: runtime(app) finds it."""

    settings: Settings
    writer: Writer
    tokens: BearerTokens
    deadlines: ReadDeadlines


class RestOfPath(PathConverter):
    """The rest of the URL path, whatever it holds, so the stream name check sees it all."""

    regex = "(?s:.*)"  # newlines too ("%0A"): without the flag, such a name got a 404
    part_isolating = False  # may span "/": Werkzeug would guess otherwise from the regex


def create_app(settings: Settings, writer: Writer | None = None) -> Flask:
    """The Flask app for `settings`, with a Writer of its own unless one is given (tests).

    Nothing is started and no file is touched: the Gunicorn hooks (service.server) start and
    stop runtime(app).writer in each worker process.
    """
    app = Flask(__name__)
    # Whatever follows /v1/logs/ ("", "a/b", "/etc", "..") must reach the stream name check and
    # its 400, not a 404 or a redirect to a merged path.
    app.url_map.merge_slashes = False
    app.url_map.redirect_defaults = False  # POST /v1/logs/default is served, not redirected
    app.url_map.converters["rest"] = RestOfPath
    if writer is None:
        files = LogFiles(settings.dir, settings.file_template, settings.max_open_files)
        writer = Writer(files, settings.queue_bytes, nice=settings.writer_nice)
    app.extensions[_RUNTIME] = Runtime(
        settings, writer, BearerTokens(settings.tokens), ReadDeadlines(settings.body_timeout)
    )
    app.register_blueprint(api)
    return app


def runtime(app: Flask) -> Runtime:
    """The settings and parts create_app() gave `app`."""
    return app.extensions[_RUNTIME]


@api.post("/v1/logs", defaults={"stream": "default"})
@api.post("/v1/logs/<rest:stream>")
def post_logs(stream: str) -> Response:
    # Looked up once each: every access through Flask's context proxies is a lookup of its own.
    req: Request = request._get_current_object()  # type: ignore[attr-defined]
    parts = runtime(current_app)
    body = None
    try:
        _check_scope(_require_token(parts.tokens, req), [check_stream_name(stream)])
        ack = _ack_mode(_ack_parameter(req.query_string), parts.settings.ack)
        body = _read_request_body(parts, req)
        mimetype, charset = _media_type(req.environ.get("CONTENT_TYPE", ""))
        lines = parse_body(body, mimetype, charset, parts.settings.max_line_bytes)
        if lines.count == 0:
            return _accepted(0, 202 if ack == "queued" else 200)
        entry = Entry(stream, lines.data, lines.count, ack)
        _put(parts.writer, entry)
    except Rejected as exc:
        metrics.rejected_requests.labels(reason=exc.reason).inc()
        if body is not None:
            metrics.rejected_lines.labels(reason=exc.reason).inc(count_lines(body))
        raise
    if ack == "queued":
        return _accepted(lines.count, 202)
    _wait([entry])
    return _accepted(lines.count, 200)


@api.post("/otlp/v1/logs", defaults={"stream": None})
@api.post("/otlp/<stream>/v1/logs")
def post_otlp_logs(stream: str | None) -> Response:
    """OTLP/HTTP logs: every record of the request is queued, or none is; the answers are
    OTLP's, in the request's own encoding."""
    req: Request = request._get_current_object()  # type: ignore[attr-defined]
    parts = runtime(current_app)
    settings = parts.settings
    mimetype, _ = _media_type(req.environ.get("CONTENT_TYPE", ""))
    content_type = mimetype if mimetype in _OTLP_TYPES else otlp.JSON
    batch = None
    try:
        token = _require_token(parts.tokens, req)
        if stream is not None:
            _check_scope(token, [check_stream_name(stream)])
        if mimetype not in _OTLP_TYPES:
            raise Rejected(
                415,
                "bad_type",
                f"unsupported Content-Type {mimetype!r}: "
                "use application/x-protobuf or application/json",
            )
        ack = _ack_mode(_ack_parameter(req.query_string), settings.ack)
        batch = _otlp_batch(settings, _read_otlp_body(parts, req), content_type, stream)
        _check_scope(token, batch.streams)  # the whole request, or nothing of it
        entries = [
            Entry(name, lines.data, lines.count, ack) for name, lines in batch.streams.items()
        ]
        _put(parts.writer, *entries)
        if ack != "queued":
            _wait(entries)
    except Rejected as exc:
        metrics.rejected_requests.labels(reason=exc.reason).inc()
        if batch is not None:
            metrics.otlp_records.labels(outcome=exc.reason).inc(batch.records + batch.refused)
        response = Response(otlp.status(content_type, exc.status, exc.message), exc.status)
        response.headers["Content-Type"] = content_type
        return _with_refusal_headers(response, exc.status)
    metrics.otlp_records.labels(outcome="accepted").inc(batch.records)
    message = ""
    if batch.refused:
        metrics.otlp_records.labels(outcome="too_large").inc(batch.refused)
        message = (
            f"{batch.refused} log records refused: each would be (or be in) a line over "
            f"LOGWRITER_MAX_LINE_BYTES ({settings.max_line_bytes} bytes)"
        )
    answer = otlp.export_response(content_type, batch.refused, message)
    return Response(answer, 200, content_type=content_type)


def _otlp_batch(
    settings: Settings, body: bytes, content_type: str, stream: str | None
) -> otlp.Batch:
    try:
        return otlp.to_lines(
            otlp.decode(body, content_type),
            stream,
            settings.otlp_stream,
            settings.otlp_format,
            time.time_ns(),
            settings.max_line_bytes,
        )
    except otlp.BadRequest as exc:
        raise Rejected(400, "bad_otlp", str(exc)) from None


def _read_otlp_body(parts: Runtime, req: Request) -> bytes:
    try:
        return _read_request_body(parts, req)
    except Rejected as exc:
        if exc.status != 408:
            raise
        # OTLP clients retry a 503 and drop the batch on a 408: this one may well pass.
        raise Rejected(503, exc.reason, exc.message) from None


def _accepted(count: int, status: int) -> Response:
    # Built by hand: for a body this simple, jsonify and make_response cost more than the view.
    return Response(b'{"accepted":%d}\n' % count, status, mimetype="application/json")


def _read_request_body(parts: Runtime, req: Request) -> bytes:
    """The body, decompressed. A client that does not send it whole within body_timeout
    seconds, stalling or trickling, gets a 408 and no longer holds a request thread.

    Reading a body and checking it are a request's long stretches of work: before each, the
    thread gives way to a writer working off a backlog.
    """
    settings = parts.settings
    environ = req.environ
    parts.writer.give_way()

    def read() -> bytes:
        return read_body(
            environ["wsgi.input"],
            req.content_length,
            environ.get("HTTP_CONTENT_ENCODING"),
            settings.max_body_bytes,
        )

    sock = environ.get("gunicorn.socket")
    if sock is None:  # not under Gunicorn: Flask's test client
        body = read()
    else:
        # The watchdog alone, not a socket timeout: a socket with a timeout polls before
        # every recv and send.
        deadlines = parts.deadlines
        deadlines.start(sock)
        try:
            body = read()
        except Rejected:
            if deadlines.expired(sock):
                message = f"the request body took longer than {settings.body_timeout:g} s"
                raise Rejected(408, "timeout", message) from None
            raise
        finally:
            deadlines.end(sock)
    parts.writer.give_way()
    return body


def _require_token(tokens: BearerTokens, req: Request) -> Token | None:
    """The request's token; None when no tokens are configured (anyone may write)."""
    if not tokens.required:
        return None
    token = tokens.find(req.headers.get("Authorization"))
    if token is None:
        raise Rejected(401, "unauthorized", "missing or invalid bearer token")
    return token


def _check_scope(token: Token | None, streams: Iterable[str]) -> None:
    refused = [stream for stream in streams if token is not None and not token.may_write(stream)]
    if refused:
        raise Rejected(403, "forbidden", f"this token may not write to {', '.join(refused)}")


def _put(writer: Writer, *entries: Entry) -> None:
    if not entries:
        return
    try:
        writer.put_all(list(entries), timeout=QUEUE_WAIT_SECONDS)
    except QueueFull:
        raise Rejected(503, "queue_full", "queue is full: retry later") from None
    except WriterStopped:
        raise Rejected(503, "stopping", "this worker is not taking lines: retry later") from None


def _wait(entries: list[Entry]) -> None:
    """Until every entry is written (or fsynced, as its ack asks)."""
    try:
        for entry in entries:
            entry.wait()
    except WriteFailed as exc:
        raise Rejected(503, "write_failed", f"lines were not made durable: {exc}") from None


# Each parsed once per distinct header or query string (a sender sends the same few): through
# Werkzeug's Request, parsing them costs more than the rest of a small request's checks.
@functools.lru_cache(maxsize=64)
def _media_type(content_type: str) -> tuple[str, str | None]:
    """The media type of a Content-Type header, lowercased, and its charset parameter."""
    mimetype, params = parse_options_header(content_type)
    return mimetype.lower(), params.get("charset")


@functools.lru_cache(maxsize=64)
def _ack_parameter(query_string: bytes) -> str | None:
    """The first "ack" of a query string, decoded as Werkzeug's Request.args does."""
    query = parse_qsl(query_string.decode(), keep_blank_values=True, errors="werkzeug.url_quote")
    return next((value for name, value in query if name == "ack"), None)


def _ack_mode(value: str | None, default: Ack) -> Ack:
    if value is None:
        return default
    try:
        return parse_ack(value)
    except ValueError as exc:
        raise Rejected(400, "bad_ack", f"ack {exc}") from None


@api.get("/healthz")
def healthz() -> tuple[dict[str, str], int]:
    if runtime(current_app).writer.alive:
        return {"status": "ok"}, 200
    return {"error": "writer thread is not running"}, 503


@api.get("/readyz")
def readyz() -> tuple[dict[str, str], int]:
    reason = runtime(current_app).writer.unready_reason()
    if reason is None:
        return {"status": "ready"}, 200
    return {"error": reason}, 503


@api.get("/metrics")
def metrics_view() -> Response:
    parts = runtime(current_app)
    if parts.settings.metrics_auth:
        token = _require_token(parts.tokens, request)
        if token is not None and token.streams:
            # A tenant's token, limited to some streams, may not see every stream's figures.
            raise Rejected(403, "forbidden", "a token limited to streams may not read metrics")
    page, content_type = metrics.page()
    return Response(page, content_type=content_type)


@api.get("/openapi.json")
def openapi() -> Response:
    return current_app.response_class(OPENAPI, mimetype="application/json")


@api.after_app_request
def count_response(response: Response) -> Response:
    _requests_answered(response.status_code).inc()
    return response


@functools.cache
def _requests_answered(status: int) -> Counter:
    # The child of each status code, looked up once: labels() takes a lock and checks names.
    return metrics.http_requests.labels(code=str(status))


@api.app_errorhandler(Rejected)
def rejected(exc: Rejected) -> Response:
    return _with_refusal_headers(_error(exc.status, exc.message), exc.status)


def _with_refusal_headers(response: Response, status: int) -> Response:
    if status == 503:
        response.headers["Retry-After"] = RETRY_AFTER_SECONDS
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="logwriter"'
    return response


@api.app_errorhandler(HTTPException)
def http_error(exc: HTTPException) -> Response:
    response = _error(exc.code or 500, exc.description or exc.name)
    response.headers.extend(exc.get_headers())  # such as Allow on a 405
    response.headers["Content-Type"] = "application/json"
    return response


@api.app_errorhandler(Exception)
def internal_error(exc: Exception) -> Response:
    log.exception("unexpected error handling %s %s", request.method, request.path)
    return _error(500, "internal error: see the service log")


def _error(status: int, message: str) -> Response:
    response = jsonify(error=message)
    response.status_code = status
    return response
