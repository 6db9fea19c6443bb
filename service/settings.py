"""The service's settings: the environment, read once into one typed, validated object."""

import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from service.auth import Token
from service.parsing import STREAM_NAME
from service.writer import Ack, parse_ack

OTLP_FORMATS = ("records", "otlp")  # one JSON line per record; one OTLP/JSON LogsData per line

_SIZE = re.compile(r"(\d+)\s*([KMG]i?B?|B)?", re.IGNORECASE)
_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


class SettingsError(ValueError):
    """A setting has a value the service cannot run with; the message names it."""


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the service is configured with; the defaults are the README's."""

    dir: Path = Path("logs")
    bind: str = "127.0.0.1:8080"
    workers: int = 1
    threads: int = 8
    queue_bytes: int = 64 << 20
    max_body_bytes: int = 8 << 20
    max_line_bytes: int = 1 << 20
    ack: Ack = "queued"
    writer_nice: int = -10  # relative to the worker; applied where the process may
    file_template: str = "{stream}.log"
    max_open_files: int = 256
    body_timeout: float = 10.0
    idle_timeout: float = 5.0
    max_connections: int = 1000
    otlp_stream: str = "unknown_service"  # what the OTel SDKs call a service left unnamed
    otlp_format: str = "records"
    tls_cert: Path | None = None  # with tls_key: serve HTTPS only
    tls_key: Path | None = None
    tokens: tuple[Token, ...] = field(default=(), repr=False)  # never printed or logged
    metrics_auth: bool = False

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> "Settings":
        """Settings from LOGWRITER_* variables (unset or empty means the default), validated."""
        d = cls()

        def read(name: str, parse: Callable[[str, str], Any], default: Any) -> Any:
            key = f"LOGWRITER_{name}"
            text = env.get(key, "").strip()
            return parse(key, text) if text else default

        settings = cls(
            dir=read("DIR", lambda _, text: Path(text), d.dir),
            bind=read("BIND", lambda _, text: text, d.bind),
            workers=read("WORKERS", _positive_int, d.workers),
            threads=read("THREADS", _positive_int, d.threads),
            queue_bytes=read("QUEUE_BYTES", _size, d.queue_bytes),
            max_body_bytes=read("MAX_BODY_BYTES", _size, d.max_body_bytes),
            max_line_bytes=read("MAX_LINE_BYTES", _size, d.max_line_bytes),
            ack=read("ACK", _ack, d.ack),
            writer_nice=read("WRITER_NICE", _nice_increment, d.writer_nice),
            file_template=read("FILE_TEMPLATE", lambda _, text: text, d.file_template),
            max_open_files=read("MAX_OPEN_FILES", _positive_int, d.max_open_files),
            body_timeout=read("BODY_TIMEOUT", _seconds, d.body_timeout),
            idle_timeout=read("IDLE_TIMEOUT", _seconds, d.idle_timeout),
            max_connections=read("MAX_CONNECTIONS", _positive_int, d.max_connections),
            otlp_stream=read("OTLP_STREAM", _stream_name, d.otlp_stream),
            otlp_format=read("OTLP_FORMAT", _one_of(OTLP_FORMATS), d.otlp_format),
            tls_cert=read("TLS_CERT", _readable_file, None),
            tls_key=read("TLS_KEY", _readable_file, None),
            tokens=read("TOKENS", _token_list, ()) + read("TOKENS_FILE", _token_file, ()),
            metrics_auth=read("METRICS_AUTH", _boolean, d.metrics_auth),
        )
        settings.validate()
        return settings

    def validate(self) -> None:
        if self.max_line_bytes > self.max_body_bytes:
            raise SettingsError(
                f"LOGWRITER_MAX_LINE_BYTES ({self.max_line_bytes}) must not exceed "
                f"LOGWRITER_MAX_BODY_BYTES ({self.max_body_bytes})"
            )
        # A request larger than the whole queue could never be taken.
        if self.max_body_bytes > self.queue_bytes:
            raise SettingsError(
                f"LOGWRITER_MAX_BODY_BYTES ({self.max_body_bytes}) must not exceed "
                f"LOGWRITER_QUEUE_BYTES ({self.queue_bytes})"
            )
        _check_template(self.file_template)
        if (self.tls_cert is None) != (self.tls_key is None):
            raise SettingsError("LOGWRITER_TLS_CERT and LOGWRITER_TLS_KEY go together: set both")
        if self.metrics_auth and not self.tokens:
            raise SettingsError(
                "LOGWRITER_METRICS_AUTH needs tokens: set LOGWRITER_TOKENS or LOGWRITER_TOKENS_FILE"
            )
        if not re.fullmatch(r"unix:.+|fd://\d+|\[[0-9A-Fa-f:.]+\]:\d+|[^:\s\[\]]*:\d+", self.bind):
            raise SettingsError(
                f"LOGWRITER_BIND must be HOST:PORT, [IPV6]:PORT or unix:PATH, got {self.bind!r}"
            )


def _check_template(template: str) -> None:
    problem = f"LOGWRITER_FILE_TEMPLATE must name a file inside LOGWRITER_DIR, got {template!r}"
    if "{stream}" not in template:
        raise SettingsError(f"{problem}: it must hold {{stream}}")
    try:
        name = time.strftime(template.format(stream="s", host="h"), time.gmtime(0))
    except (KeyError, IndexError, ValueError):
        message = f"{problem}: only {{stream}}, {{host}} and strftime fields may appear"
        raise SettingsError(message) from None
    parts = PurePosixPath(name).parts
    if name.startswith("/") or name.endswith("/") or ".." in parts:
        raise SettingsError(problem)


def _token_list(name: str, text: str) -> tuple[Token, ...]:
    """Comma-separated tokens, each allowed any stream."""
    return tuple(_token(name, secret) for secret in text.split(",") if secret.strip())


def _token_file(name: str, text: str) -> tuple[Token, ...]:
    """A token a line, then, after white space, the stream patterns it is limited to,
    comma-separated (`s3cret app-*,web`); blank lines and lines starting with # are skipped."""
    try:
        lines = Path(text).read_text().splitlines()
    except OSError as exc:
        raise SettingsError(f"{name}: cannot read {text}: {exc.strerror}") from None
    tokens = []
    for number, line in enumerate(lines, start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        secret, _, scope = line.strip().replace("\t", " ").partition(" ")
        patterns = tuple(pattern.strip() for pattern in scope.split(",") if pattern.strip())
        if scope.strip() and len(patterns) != len(scope.split(",")):
            raise SettingsError(f"{name}, line {number}: an empty stream pattern")
        if any(char.isspace() for pattern in patterns for char in pattern):
            raise SettingsError(f"{name}, line {number}: stream patterns are comma-separated")
        tokens.append(_token(f"{name}, line {number}", secret, patterns))
    return tuple(tokens)


def _token(where: str, secret: str, streams: tuple[str, ...] = ()) -> Token:
    secret = secret.strip()
    if any(char.isspace() for char in secret) or not (secret.isascii() and secret.isprintable()):
        raise SettingsError(f"{where}: a token must be printable ASCII without spaces")
    return Token(secret, streams)


def _readable_file(name: str, text: str) -> Path:
    try:
        with open(text, "rb"):
            return Path(text)
    except OSError as exc:
        raise SettingsError(f"{name}: cannot read {text}: {exc.strerror}") from None


def _seconds(name: str, text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = 0.0
    if not 0 < seconds < 3600:
        raise SettingsError(f"{name} must be a number of seconds above 0, got {text!r}")
    return seconds


def _boolean(name: str, text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{name} must be true or false, got {text!r}")


def _positive_int(name: str, text: str) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise SettingsError(f"{name} must be a whole number of at least 1, got {text!r}")
    return int(text)


def _nice_increment(name: str, text: str) -> int:
    if not re.fullmatch(r"0|-([1-9]|1[0-9]|20)", text):
        raise SettingsError(
            f"{name} must be a whole number from -20 to 0 (nice levels above the worker's "
            f"request threads), got {text!r}"
        )
    return int(text)


def _size(name: str, text: str) -> int:
    """Bytes, with an optional binary unit: 65536, 64KiB, 64M, 1G."""
    match = _SIZE.fullmatch(text)
    if not match or int(match[1]) < 1:
        raise SettingsError(f"{name} must be a size in bytes such as 8388608 or 8MiB, got {text!r}")
    unit = (match[2] or "").upper().rstrip("B").rstrip("I") or ""
    return int(match[1]) * _UNITS[unit]


def _stream_name(name: str, text: str) -> str:
    if not STREAM_NAME.fullmatch(text):
        raise SettingsError(f"{name} must be a stream name ({STREAM_NAME.pattern}), got {text!r}")
    return text


def _one_of(choices: tuple[str, ...]) -> Callable[[str, str], str]:
    def parse(name: str, text: str) -> str:
        if text not in choices:
            raise SettingsError(f"{name} must be one of {', '.join(choices)}, got {text!r}")
        return text

    return parse


def _ack(name: str, text: str) -> Ack:
    try:
        return parse_ack(text)
    except ValueError as exc:
        raise SettingsError(f"{name} {exc}") from None
