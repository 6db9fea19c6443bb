"""Handler: a logging.Handler whose emit() only formats the record and buffers it; one thread
of its own (a Sender) posts the buffer to logwriter in batches."""

from __future__ import annotations

import functools
import json
import logging
import ssl
import time

from logwriter_client.client import NDJSON, TEXT, Client, report
from logwriter_client.sender import Sender

# A record's own attributes; any other is an `extra` field, sent with it.
# (message and asctime are set by a Formatter, if another handler's formatted the record first.)
_RECORD_ATTRIBUTES = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


# The names this formatter sends; an extra field of one of these names is left out.
_OWN_FIELDS = frozenset({"time", "level", "logger", "message", "exc", "stack", "thread", "process"})
_quote = json.encoder.encode_basestring  # a str as a JSON string, in C: the common case
# Made once: json.dumps() with options builds an encoder per call.
_ENCODER = json.JSONEncoder(
    ensure_ascii=False, separators=(",", ":"), default=repr, allow_nan=False
)


def rfc3339(timestamp: float) -> str:
    """`timestamp` (seconds since the epoch) in RFC 3339, UTC, to the microsecond."""
    return f"{_second(int(timestamp))}.{int(timestamp % 1 * 1e6):06d}Z"


@functools.lru_cache(maxsize=4)  # records come in order: one strftime per second, not per record
def _second(seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))


def _json(value: object) -> str:
    """`value` as JSON text; what JSON cannot hold (NaN, a cycle, an object) as its repr."""
    if type(value) is str:
        return _quote(value)
    if type(value) is int:  # a process id, a count: the encoder takes far longer for these
        return str(value)
    try:
        return _ENCODER.encode(value)
    except (TypeError, ValueError):
        return _quote(repr(value))


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (RFC 3339, UTC), level, logger, message, exc (the
    traceback, if any), stack (if stack_info), thread (its name), process, then the record's
    extra fields; a value JSON cannot hold is sent as its repr, and an extra field named like
    one of the first is left out."""

    def format(self, record: logging.LogRecord) -> str:
        # Put together by hand, each string through json's C quoter: a dict through the
        # encoder costs the app's thread far more (docs/client.md).
        parts = [
            '{"time":"', rfc3339(record.created),
            '","level":', _json(record.levelname),
            ',"logger":', _json(record.name),
            ',"message":', _json(record.getMessage()),
        ]  # fmt: skip
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)  # as Formatter caches it
        if record.exc_text:
            parts += (',"exc":', _json(record.exc_text))
        if record.stack_info:
            parts += (',"stack":', _json(self.formatStack(record.stack_info)))
        parts += (',"thread":', _json(record.threadName), ',"process":', _json(record.process))
        extra = record.__dict__.keys() - _RECORD_ATTRIBUTES - _OWN_FIELDS  # most often none
        for key, value in record.__dict__.items() if extra else ():
            if key in extra:  # in the order they were given
                parts += (",", _quote(key), ":", _json(value))
        parts.append("}")
        return "".join(parts)


class Handler(logging.Handler):
    """Sends records to logwriter's stream `stream` at `url` (the service's base URL, such as
    `http://host:8080`), batched, from a thread of its own.

    emit() formats the record (JSON, or text lines with a plain logging.Formatter) into a
    buffer of `buffer_bytes` and returns: it does no I/O. A batch goes once `batch_bytes` are
    waiting or `batch_seconds` after its first record; bodies of `gzip_bytes` or more are
    gzipped. Retries are as Client's. While the buffer is full new records are dropped and
    counted, and a line saying so goes first once sending works again. flush() and close()
    wait for delivery up to `close_timeout` seconds; logging.shutdown() does both at exit.
    A record larger than `batch_bytes` (at most the service's LOGWRITER_MAX_LINE_BYTES, 1 MiB
    by default) cannot be sent and goes to handleError().
    """

    def __init__(
        self,
        url: str,
        stream: str = "default",
        *,
        token: str | None = None,
        level: int | str = logging.NOTSET,
        ack: str = "written",
        buffer_bytes: int = 8 << 20,
        batch_bytes: int = 1 << 20,
        batch_seconds: float = 0.2,
        gzip_bytes: int | None = 64 << 10,
        timeout: float = 30.0,
        max_backoff: float = 5.0,
        close_timeout: float = 5.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__(level)
        client = Client(
            url,
            stream,
            token=token,
            timeout=timeout,
            gzip_bytes=gzip_bytes,
            max_backoff=max_backoff,
            ssl_context=ssl_context,
        )
        self._sender = Sender(
            client,
            ack=ack,
            content_type=NDJSON,
            buffer_bytes=buffer_bytes,
            batch_bytes=batch_bytes,
            batch_seconds=batch_seconds,
            drop_when_full=True,
            notice=self._drop_notice,
        )
        self._batch_bytes = batch_bytes
        self._close_timeout = close_timeout
        self.setFormatter(JsonFormatter())

    @property
    def delivered(self) -> int:
        """Lines the service has acknowledged (one per record, in the JSON format)."""
        return self._sender.delivered

    @property
    def dropped(self) -> int:
        """Records dropped because the buffer was full."""
        return self._sender.dropped

    @property
    def lost(self) -> int:
        """Records in batches the service refused, or that were given up at close."""
        return self._sender.lost

    def setFormatter(self, fmt: logging.Formatter | None) -> None:
        super().setFormatter(fmt)
        self._sender.content_type = NDJSON if isinstance(fmt, JsonFormatter) else TEXT

    def emit(self, record: logging.LogRecord) -> None:
        try:
            data = self.format(record).encode("utf-8", "backslashreplace") + b"\n"
            if len(data) > self._batch_bytes:
                raise ValueError(f"a record of {len(data)} bytes is over batch_bytes")
        except Exception:
            self.handleError(record)
            return
        self._sender.put(data)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until the records emitted so far are delivered (or given up), for at most
        `timeout` seconds (default close_timeout); False if some are still on their way."""
        return self._sender.flush(self._close_timeout if timeout is None else timeout)

    def close(self, timeout: float | None = None) -> None:
        """Send what is buffered, for at most `timeout` seconds (default close_timeout), and
        stop the thread; what is still undelivered then is reported on stderr."""
        timeout = self._close_timeout if timeout is None else timeout
        failed = self._sender.close(timeout)
        if failed:
            report(f"closing: {failed} records not delivered within {timeout} s: "
                   f"{self._sender.problem}")  # fmt: skip
        super().close()

    def _drop_notice(self, count: int, first: float, last: float) -> bytes:
        record = logging.makeLogRecord(
            {
                "name": "logwriter_client",
                "levelno": logging.WARNING,
                "levelname": "WARNING",
                "msg": "dropped %d records from %s to %s: the buffer was full (the service was "
                "unreachable or slow)",
                "args": (count, rfc3339(first), rfc3339(last)),
                "dropped": count,
            }
        )
        return self.format(record).encode("utf-8", "backslashreplace") + b"\n"
