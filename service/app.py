"""The HTTP face of logwriter: a Flask app that validates bodies and queues them for the writer.

create_app() only builds objects: no thread is started, no file touched. The Gunicorn hooks
(service.server) start and stop the writer it holds, in each worker process.
"""

import functools
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from flask import Blueprint, Flask, Request, Response, current_app, jsonify, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector
from werkzeug.exceptions import HTTPException
from werkzeug.routing import PathConverter

from service import metrics
from service.auth import BearerTokens
from service.deadlines import BodyDeadlines
from service.files import LogFiles
from service.parsing import Rejected, check_stream_name, count_lines, parse_body, read_body
from service.settings import ACK_MODES, Ack, Settings, ack_mode
from service.writer import Entry, QueueFull, WriteFailed, Writer, WriterStopped

log = logging.getLogger("logwriter")

QUEUE_WAIT_SECONDS = 1.0  # how long a request waits for room in a full queue before a 503
RETRY_AFTER_SECONDS = "1"

api = Blueprint("logwriter", __name__)
OPENAPI = (Path(__file__).parent / "openapi.json").read_bytes()  # the API's contract, kept here


@dataclass(frozen=True, slots=True)
class Runtime:
    """What the views need, kept on the app as app.extensions["logwriter"]."""

    settings: Settings
    writer: Writer
    tokens: BearerTokens
    deadlines: BodyDeadlines


class RestOfPath(PathConverter):
    regex = "(?s:.*)"  # newlines too ("%0A"): without the flag, such a name got a 404
    part_isolating = False  # may span "/": Werkzeug would guess otherwise from the regex


def create_app(settings: Settings, writer: Writer | None = None) -> Flask:
    app = Flask(__name__)
    # Whatever follows /v1/logs/ ("", "a/b", "/etc", "..") must reach the stream name check and
    # its 400, not a 404 or a redirect to a merged path.
    app.url_map.merge_slashes = False
    app.url_map.redirect_defaults = False  # POST /v1/logs/default is served, not redirected
    app.url_map.converters["rest"] = RestOfPath
    if writer is None:
        files = LogFiles(settings.dir, settings.file_template, settings.max_open_files)
        writer = Writer(files, settings.queue_bytes)
    app.extensions["logwriter"] = Runtime(
        settings, writer, BearerTokens(settings.tokens), BodyDeadlines(settings.body_timeout)
    )
    app.register_blueprint(api)
    return app


def _runtime() -> Runtime:
    return current_app.extensions["logwriter"]


@api.post("/v1/logs", defaults={"stream": "default"})
@api.post("/v1/logs/<rest:stream>")
def post_logs(stream: str) -> Response:
    # The request object and the runtime are looked up once: every access through Flask's
    # context proxies is a lookup of its own, and this view made fifteen (profiled).
    req: Request = request._get_current_object()  # type: ignore[attr-defined]
    runtime = _runtime()
    body = None
    try:
        _require_token(runtime.tokens, req)
        check_stream_name(stream)
        ack = _ack_mode(req.args.get("ack"), runtime.settings.ack)
        body = _read_request_body(runtime, req)
        lines = parse_body(
            body, req.mimetype, req.mimetype_params.get("charset"), runtime.settings.max_line_bytes
        )
        if lines.count == 0:
            return _accepted(0, 202 if ack == "queued" else 200)
        entry = Entry(stream, lines.data, lines.count, ack)
        _put(runtime.writer, entry)
    except Rejected as exc:
        metrics.rejected_requests.labels(reason=exc.reason).inc()
        if body is not None:
            metrics.rejected_lines.labels(reason=exc.reason).inc(count_lines(body))
        raise
    if ack == "queued":
        return _accepted(lines.count, 202)
    try:
        entry.wait()
    except WriteFailed as exc:
        raise Rejected(503, "write_failed", f"lines were not made durable: {exc}") from None
    return _accepted(lines.count, 200)


def _accepted(count: int, status: int) -> Response:
    # Built by hand: for a body this simple, jsonify (Flask's JSON provider, then
    # make_response) was a large share of the request's time in the app (profiled).
    return Response(b'{"accepted":%d}\n' % count, status, mimetype="application/json")


def _read_request_body(runtime: Runtime, req: Request) -> bytes:
    """The body, decompressed. A client that does not send it whole within body_timeout
    seconds, stalling or trickling, gets a 408 and no longer holds a request thread."""
    settings = runtime.settings

    def read() -> bytes:
        return read_body(
            req.environ["wsgi.input"],
            req.content_length,
            req.headers.get("Content-Encoding"),
            settings.max_body_bytes,
        )

    sock = req.environ.get("gunicorn.socket")
    if sock is None:  # not under Gunicorn: Flask's test client
        return read()
    # The watchdog alone, not a socket timeout: a socket with a timeout polls before every
    # recv and send, which cost 45 us of a 1-line request's 640 (profiled; see README, Speed).
    with runtime.deadlines.watch(sock):
        try:
            return read()
        except Rejected:
            if runtime.deadlines.expired(sock):
                message = f"the request body took longer than {settings.body_timeout:g} s"
                raise Rejected(408, "timeout", message) from None
            raise


def _require_token(tokens: BearerTokens, req: Request) -> None:
    if tokens.required and not tokens.allows(req.headers.get("Authorization")):
        raise Rejected(401, "unauthorized", "missing or invalid bearer token")


def _put(writer: Writer, entry: Entry) -> None:
    try:
        writer.put(entry, timeout=QUEUE_WAIT_SECONDS)
    except QueueFull:
        raise Rejected(503, "queue_full", "queue is full: retry later") from None
    except WriterStopped:
        raise Rejected(503, "stopping", "this worker is not taking lines: retry later") from None


def _ack_mode(value: str | None, default: Ack) -> Ack:
    if value is None:
        return default
    mode = ack_mode(value)
    if mode is None:
        raise Rejected(400, "bad_ack", f"ack must be one of {', '.join(ACK_MODES)}, got {value!r}")
    return mode


@api.get("/healthz")
def healthz() -> tuple[dict[str, str], int]:
    if _runtime().writer.alive:
        return {"status": "ok"}, 200
    return {"error": "writer thread is not running"}, 503


@api.get("/readyz")
def readyz() -> tuple[dict[str, str], int]:
    reason = _runtime().writer.unready_reason()
    if reason is None:
        return {"status": "ready"}, 200
    return {"error": reason}, 503


@api.get("/metrics")
def metrics_view() -> Response:
    runtime = _runtime()
    if runtime.settings.metrics_auth:
        _require_token(runtime.tokens, request)
    registry = REGISTRY
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        # Each scrape reads every worker's files, so any worker can answer for the whole service.
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
    return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)


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
    response = _error(exc.status, exc.message)
    if exc.status == 503:
        response.headers["Retry-After"] = RETRY_AFTER_SECONDS
    if exc.status == 401:
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
