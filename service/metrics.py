"""Every logwriter metric, declared once, and the /metrics page that shows them.

The service runs prometheus-client in multiprocess mode (the CLI sets PROMETHEUS_MULTIPROC_DIR
before this module is imported), so that counters add up across worker processes and the
gauges below sum over live workers only.
"""

import os
from collections.abc import Iterable
from pathlib import Path

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector

_SECONDS = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)

workers = Gauge(
    "logwriter_workers",
    "Live worker processes.",
    multiprocess_mode="livesum",
)
queue_depth = Gauge(
    "logwriter_queue_depth",
    "Lines accepted and not yet written to disk.",
    multiprocess_mode="livesum",
)
queue_bytes = Gauge(
    "logwriter_queue_bytes",
    "Bytes of lines accepted and not yet written to disk.",
    multiprocess_mode="livesum",
)
queue_limit_bytes = Gauge(
    "logwriter_queue_limit_bytes",
    "The bound on logwriter_queue_bytes (LOGWRITER_QUEUE_BYTES times live workers).",
    multiprocess_mode="livesum",
)
writer_alive = Gauge(
    "logwriter_writer_alive",
    "Writer threads running (one per healthy worker process).",
    multiprocess_mode="livesum",
)
writer_ready = Gauge(
    "logwriter_writer_ready",
    "Workers whose writer can take and write new lines now (what /readyz reports).",
    multiprocess_mode="livesum",
)
lines_received = Counter(
    "logwriter_lines_received",
    "Lines accepted into the queue.",
)
lines_written = Counter(
    "logwriter_lines_written",
    "Lines appended to stream files.",
)
bytes_written = Counter(
    "logwriter_bytes_written",
    "Bytes appended to stream files.",
)
http_requests = Counter(
    "logwriter_http_requests",
    "HTTP requests answered, by status code.",
    ["code"],
)
rejected_requests = Counter(
    "logwriter_rejected_requests",
    "Log requests refused, by reason; none of their lines was written.",
    ["reason"],
)
rejected_lines = Counter(
    "logwriter_rejected_lines",
    "Lines in refused log requests whose body could be read, by reason.",
    ["reason"],
)
otlp_records = Counter(
    "logwriter_otlp_records",
    "OTLP log records, by outcome: accepted, or the reason they were refused.",
    ["outcome"],
)
writer_errors = Counter(
    "logwriter_writer_errors",
    "Errors met by the writer thread, by kind (an errno name, or an exception class).",
    ["kind"],
)
write_seconds = Histogram(
    "logwriter_write_seconds",
    "Time to append one stream's share of a batch.",
    buckets=_SECONDS,
)
fsync_seconds = Histogram(
    "logwriter_fsync_seconds",
    "Time to fsync the files of one batch (one group commit).",
    buckets=_SECONDS,
)
batch_lines = Histogram(
    "logwriter_batch_lines",
    "Lines taken off the queue in one batch.",
    buckets=(1, 10, 100, 1000, 10_000, 100_000, 1_000_000),
)


def page() -> tuple[bytes, str]:
    """The /metrics page and its content type, for the whole service.

    In multiprocess mode each scrape reads every worker's files, so any worker can answer.
    """
    registry = REGISTRY
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        registry = CollectorRegistry()
        registry.register(_WorkerFiles(Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])))
    return generate_latest(registry), CONTENT_TYPE_LATEST


class _WorkerFiles:
    """prometheus-client's MultiProcessCollector, less the files still empty: a worker's file
    exists empty for a moment before prometheus-client sizes it, and reading one fails the
    whole scrape (prometheus/client_python issue 1199)."""

    def __init__(self, folder: Path) -> None:
        self._folder = folder

    def collect(self) -> Iterable[Metric]:
        files = [str(path) for path in self._folder.glob("*.db") if _size(path)]
        return MultiProcessCollector.merge(files, accumulate=True)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:  # a dead worker's live gauges, removed meanwhile
        return 0
