"""Settings: the environment read into one validated object, with a clear message on a bad value."""

from pathlib import Path

import pytest

from service.settings import Settings, SettingsError

pytestmark = pytest.mark.unit


def test_defaults():
    settings = Settings.from_env({})
    assert settings == Settings(
        dir=Path("logs"),
        bind="127.0.0.1:8080",
        workers=1,
        threads=8,
        queue_bytes=64 << 20,
        max_body_bytes=8 << 20,
        max_line_bytes=1 << 20,
        ack="queued",
        writer_nice=-10,
        file_template="{stream}.log",
        max_open_files=256,
        idle_timeout=5.0,
        max_connections=1000,
    )


def test_values_and_sizes_with_units():
    settings = Settings.from_env(
        {
            "LOGWRITER_DIR": "/data",
            "LOGWRITER_BIND": "0.0.0.0:9000",
            "LOGWRITER_WORKERS": "4",
            "LOGWRITER_THREADS": " 16 ",
            "LOGWRITER_QUEUE_BYTES": "1GiB",
            "LOGWRITER_MAX_BODY_BYTES": "512K",
            "LOGWRITER_MAX_LINE_BYTES": "1024",
            "LOGWRITER_ACK": "fsync",
            "LOGWRITER_WRITER_NICE": "-20",
            "LOGWRITER_IDLE_TIMEOUT": "0.5",
            "LOGWRITER_MAX_CONNECTIONS": "5000",
        }
    )
    assert settings.dir == Path("/data")
    assert (settings.workers, settings.threads) == (4, 16)
    assert (settings.queue_bytes, settings.max_body_bytes, settings.max_line_bytes) == (
        1 << 30,
        512 << 10,
        1024,
    )
    assert settings.ack == "fsync"
    assert settings.writer_nice == -20
    assert Settings.from_env({"LOGWRITER_WRITER_NICE": "0"}).writer_nice == 0
    assert (settings.idle_timeout, settings.max_connections) == (0.5, 5000)


def test_empty_means_default():
    assert Settings.from_env({"LOGWRITER_WORKERS": ""}).workers == 1


@pytest.mark.parametrize(
    ("name", "value", "words"),
    [
        ("LOGWRITER_WORKERS", "0", "LOGWRITER_WORKERS must be a whole number"),
        ("LOGWRITER_WORKERS", "\u00b2", "LOGWRITER_WORKERS must be a whole number"),
        ("LOGWRITER_THREADS", "eight", "LOGWRITER_THREADS must be a whole number"),
        ("LOGWRITER_QUEUE_BYTES", "lots", "LOGWRITER_QUEUE_BYTES must be a size"),
        ("LOGWRITER_MAX_BODY_BYTES", "100MiB", "must not exceed LOGWRITER_QUEUE_BYTES"),
        ("LOGWRITER_MAX_LINE_BYTES", "9MiB", "must not exceed LOGWRITER_MAX_BODY_BYTES"),
        ("LOGWRITER_ACK", "maybe", "LOGWRITER_ACK must be one of queued, written, fsync"),
        ("LOGWRITER_WRITER_NICE", "5", "LOGWRITER_WRITER_NICE must be a whole number from -20"),
        ("LOGWRITER_WRITER_NICE", "-21", "LOGWRITER_WRITER_NICE must be a whole number from -20"),
        ("LOGWRITER_BIND", "8080", "LOGWRITER_BIND must be HOST:PORT"),
        ("LOGWRITER_FILE_TEMPLATE", "all.log", "must hold {stream}"),
        ("LOGWRITER_FILE_TEMPLATE", "../{stream}.log", "must name a file inside"),
        ("LOGWRITER_FILE_TEMPLATE", "/var/log/{stream}.log", "must name a file inside"),
        ("LOGWRITER_FILE_TEMPLATE", "{stream}/{user}.log", "only {stream}, {host} and strftime"),
        ("LOGWRITER_MAX_OPEN_FILES", "0", "LOGWRITER_MAX_OPEN_FILES must be a whole number"),
        ("LOGWRITER_IDLE_TIMEOUT", "0", "LOGWRITER_IDLE_TIMEOUT must be a number of seconds"),
        ("LOGWRITER_TLS_CERT", "/nonexistent/cert.pem", "LOGWRITER_TLS_CERT: cannot read"),
        ("LOGWRITER_TLS_KEY", __file__, "LOGWRITER_TLS_CERT and LOGWRITER_TLS_KEY go together"),
        ("LOGWRITER_MAX_CONNECTIONS", "-1", "LOGWRITER_MAX_CONNECTIONS must be a whole number"),
    ],
)
def test_bad_values_are_named(name: str, value: str, words: str):
    with pytest.raises(SettingsError, match=words):
        Settings.from_env({name: value})
