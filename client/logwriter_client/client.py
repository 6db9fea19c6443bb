"""Client: one kept-alive connection to a logwriter, and the POST that retries what is worth it.

Client.post() is the sending that the handler's thread and logwriter-ship share: it retries
503, 429, 408, any other 5xx and connection errors with jittered exponential backoff, waiting
at least what Retry-After says, until the service acknowledges or the client gives up; any
other 4xx raises Refused at once, since sending the same request again cannot help.
"""

from __future__ import annotations

import gzip
import http.client
import json
import logging
import math
import random
import re
import ssl
import threading
import time
import urllib.parse
from collections.abc import Iterable

__all__ = ["ACKS", "Client", "Refused", "Undelivered", "report"]

ACKS = ("queued", "written", "fsync")
TEXT = "text/plain; charset=utf-8"
NDJSON = "application/x-ndjson"
# The service's rule for stream names: checked here so that a typo fails at once, not per batch.
_STREAM = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# 4xx answers that say "later", not "never": too many requests, and a body that came too slowly.
_RETRIED_4XX = (408, 429)
_FIRST_BACKOFF = 0.1
# A cut connection on a kept-alive socket, before any answer: most often the service closed it
# while idle, which says nothing about the service, so the request goes again at once.
_STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)


def report(message: str) -> None:
    """Tell the app's operator, on stderr through logging.lastResort (never through a handler of
    ours, which may be what failed); nothing if the app has set lastResort to None."""
    handler = logging.lastResort
    if handler is not None:
        record = logging.makeLogRecord(
            {"name": "logwriter_client", "levelno": logging.ERROR, "levelname": "ERROR"}
        )
        record.msg = f"logwriter_client: {message}"
        handler.handle(record)


class Refused(Exception):
    """The service refused the request with an answer that retrying cannot mend (a bad token,
    a body too large, a redirect...): nothing of it was written."""

    def __init__(self, status: int, error: str) -> None:
        super().__init__(f"{status}: {error}")
        self.status = status
        self.error = error


class Undelivered(Exception):
    """Retrying stopped (the deadline passed, or stop_retrying() said so) before the service
    acknowledged the request. It may or may not have been written."""


class Client:
    """Sends lines to one stream of a logwriter over one kept-alive connection.

    `url` is the service's base URL (`http://host:8080`, `https://logs.example.com/prefix`);
    `token` goes in an `Authorization: Bearer` header; bodies of `gzip_bytes` or more are sent
    gzipped (0: always, None: never); `timeout` bounds each socket operation; retries wait up
    to `max_backoff` seconds (more if Retry-After says so); `ssl_context` for https (default:
    the system's CAs). A Client is used by one thread at a time.
    """

    def __init__(
        self,
        url: str,
        stream: str = "default",
        *,
        token: str | None = None,
        timeout: float = 30.0,
        gzip_bytes: int | None = 64 << 10,
        max_backoff: float = 5.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"url must be http://HOST[:PORT] or https://..., got {url!r}")
        if not _STREAM.fullmatch(stream):
            raise ValueError(f"stream must match {_STREAM.pattern}, got {stream!r}")
        self._scheme = parts.scheme
        self._host = parts.hostname
        self._port = parts.port
        self._path = f"{parts.path.rstrip('/')}/v1/logs/{stream}"
        self._timeout = timeout
        self._gzip_bytes = gzip_bytes
        self._max_backoff = max_backoff
        self._ssl_context = ssl_context
        self._headers = {"User-Agent": "logwriter-client/0.1"}
        if token is not None:
            self._headers["Authorization"] = f"Bearer {token}"
        self._conn: http.client.HTTPConnection | None = None
        self._give_up_at = math.inf  # monotonic; lowered by stop_retrying()
        self._wake = threading.Event()  # ends a backoff's sleep early

    def send(
        self, lines: Iterable[str | bytes], ack: str = "written", *, timeout: float = 60.0
    ) -> int:
        """Post `lines` (each without its newline) as one request and return how many the
        service accepted. Retries for up to `timeout` seconds, then raises Undelivered; raises
        Refused if the service refuses them."""
        body = b"".join(_line(line) for line in lines)
        return self.post(body, ack=ack, deadline=time.monotonic() + timeout)

    def post(
        self,
        body: bytes,
        *,
        ack: str = "written",
        content_type: str = TEXT,
        deadline: float = math.inf,
    ) -> int:
        """Post one body of lines until the service acknowledges it; return its `accepted`.

        Retries until the monotonic `deadline` (or stop_retrying's), then raises Undelivered;
        raises Refused for a 4xx other than 408 and 429.
        """
        if ack not in ACKS:
            raise ValueError(f"ack must be one of {', '.join(ACKS)}, got {ack!r}")
        headers = {**self._headers, "Content-Type": content_type}
        if self._gzip_bytes is not None and len(body) >= self._gzip_bytes:
            body = gzip.compress(body, compresslevel=1)  # logs shrink well even at level 1
            headers["Content-Encoding"] = "gzip"
        target = f"{self._path}?ack={ack}"
        attempt = 0
        while True:
            retry_after = 0.0
            try:
                status, answer, retry_after_header = self._exchange(target, body, headers)
            except (OSError, http.client.HTTPException) as exc:
                problem = f"cannot reach {self._host}: {exc!r}"
            else:
                if status in (200, 202):
                    return int(json.loads(answer)["accepted"])
                error = _error_text(answer)
                if status < 500 and status not in _RETRIED_4XX:
                    raise Refused(status, error)  # a redirect too: the URL is wrong
                problem = f"{status}: {error}"
                retry_after = _seconds(retry_after_header)
            attempt += 1
            now = time.monotonic()
            give_up_at = min(deadline, self._give_up_at)
            if now >= give_up_at:
                raise Undelivered(problem)
            if attempt == 1:
                report(f"{problem}; retrying")
            self._wake.wait(min(self._backoff(attempt, retry_after), give_up_at - now))
            self._wake.clear()

    def stop_retrying(self, after: float = 0.0) -> None:
        """Give up, `after` seconds from now, on whatever has not been delivered by then; a
        backoff sleeping now wakes to try once more. Safe from another thread."""
        self._give_up_at = time.monotonic() + after
        self._wake.set()

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def forget_connection(self) -> None:
        """In a forked child: drop the parent's connection without touching it, since the
        parent may be using it."""
        self._conn = None
        self._wake = threading.Event()

    def _exchange(
        self, target: str, body: bytes, headers: dict[str, str]
    ) -> tuple[int, bytes, str | None]:
        reused = self._conn is not None
        try:
            return self._request(target, body, headers)
        except _STALE:
            if not reused:
                raise
            return self._request(target, body, headers)

    def _request(
        self, target: str, body: bytes, headers: dict[str, str]
    ) -> tuple[int, bytes, str | None]:
        if self._conn is None:
            if self._scheme == "https":
                context = self._ssl_context or ssl.create_default_context()
                self._conn = http.client.HTTPSConnection(
                    self._host, self._port, timeout=self._timeout, context=context
                )
            else:
                self._conn = http.client.HTTPConnection(
                    self._host, self._port, timeout=self._timeout
                )
        try:
            self._conn.request("POST", target, body, headers)
            answer = self._conn.getresponse()
            return answer.status, answer.read(), answer.getheader("Retry-After")
        except BaseException:
            self.close()  # a half-used connection cannot carry the next request
            raise

    def _backoff(self, attempt: int, retry_after: float) -> float:
        # Jittered, so that the clients of a restarted service do not all come back at once.
        ceiling = min(self._max_backoff, _FIRST_BACKOFF * 2 ** (attempt - 1))
        return max(random.uniform(ceiling / 2, ceiling), retry_after)


def _line(line: str | bytes) -> bytes:
    data = line.encode("utf-8", "backslashreplace") if isinstance(line, str) else line
    if b"\n" in data:
        raise ValueError(f"a line holds a newline, which would make it two: {data[:80]!r}")
    return data + b"\n"


def _error_text(answer: bytes) -> str:
    try:
        return str(json.loads(answer)["error"])
    except (ValueError, KeyError, TypeError):
        return answer[:200].decode("utf-8", "replace") or "(no body)"


def _seconds(retry_after: str | None) -> float:
    """Retry-After's delay-seconds; an HTTP date, which logwriter never sends, counts as none."""
    if retry_after is not None and retry_after.strip().isdigit():
        return float(retry_after)
    return 0.0
