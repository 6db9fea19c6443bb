"""The writer: a queue bounded in bytes, and the one thread that appends what it holds to disk.

Its life reads like logging.handlers.QueueListener:
  start()  starts the consumer thread.
  put()    queues one request's lines (request threads); waits briefly while the queue is full.
  stop()   refuses further puts and queues the pill; the thread writes everything queued before
           the pill, fsyncs and closes every file, and ends; stop() joins it.

Each turn of the loop takes the waiting requests, up to a megabyte (ack=queued ones may gather
for up to 20 ms first), groups them by stream and appends each stream's share with one
writev. One fsync then serves every ack=fsync request of that batch (group commit); such a
batch waits first for up to as long as an fsync takes (at most 20 ms), so that the requests
the last fsync answered can join it. Queued bytes count against the bound until they are on
disk, so memory stays within it however slow the disk is.
"""

import errno
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Final

from service import metrics
from service.files import LogFiles
from service.settings import Ack

log = logging.getLogger("logwriter")

_PILL: Final = None  # queued by stop(): everything before it is written, then the thread ends
_RETRY_FIRST, _RETRY_MAX = 0.05, 2.0  # seconds between attempts at a failing disk
# How long the thread lets ack=queued requests gather before it takes them as one batch: one
# wake-up and one writev for many requests instead of one each. Nobody waits on such lines; a
# request that does wait (ack=written/fsync) ends the wait at once. Measured with 1-line
# requests: with no linger this thread cost 50 us of CPU per request, with 5 ms 15 us; with
# 2 workers a worker then spent 16 us per request more than one that queued nothing, and
# with 20 ms 6 us more. It also bounds the wait before an fsync batch (see _take).
_LINGER = 0.02
# At most this much is taken in one turn (a larger request alone is taken whole), and this much
# waiting ends the linger. Bodies reach the page cache while still in the CPU's cache: with
# 32 MiB batches of 1000-line bodies the writer cost 15% more CPU per line and p99 latency
# was 190 ms; with 1 MiB, 60 ms (measured, 2 workers; README, Speed).
_BATCH_BYTES = 1 << 20


class QueueFull(Exception):
    """The queue stayed full for the whole wait."""


class WriterStopped(Exception):
    """The writer takes no more lines: it is stopping, or its thread failed."""


class WriteFailed(Exception):
    """Lines an ack=written/fsync request waited for could not be made durable."""


@dataclass(eq=False, slots=True)
class Entry:
    """One request's lines, queued as one blob so that they are written contiguously."""

    stream: str
    data: bytes
    lines: int
    ack: Ack = "queued"
    finished: bool = field(init=False, default=False)
    error: str | None = field(init=False, default=None)
    # Held from creation until finish(). A bare lock, not an Event: a hand-off between two
    # threads costs 13.6 us of CPU against an Event's 21 (measured).
    _unfinished: "threading.Lock | None" = field(init=False, default=None)

    def __post_init__(self) -> None:
        if self.ack != "queued":
            self._unfinished = threading.Lock()
            self._unfinished.acquire()

    def wait(self) -> None:
        """Block until written (ack=written) or fsynced (ack=fsync)."""
        assert self._unfinished is not None
        with self._unfinished:  # free once finish() has run
            pass
        if self.error is not None:
            raise WriteFailed(self.error)

    def finish(self, error: str | None = None) -> None:
        assert self._unfinished is not None and not self.finished
        self.error = error
        self.finished = True
        self._unfinished.release()


class Writer:
    def __init__(self, files: LogFiles, limit_bytes: int) -> None:
        self._files = files
        self._limit = limit_bytes
        self._lock = threading.Lock()
        self._not_empty = threading.Condition(self._lock)
        self._not_full = threading.Condition(self._lock)
        self._queue: deque[Entry | None] = deque()
        self._pending_bytes = 0  # queued or being written: what the bound applies to
        self._pending_lines = 0
        self._closed = False
        self._hurry = False  # someone waits on what is queued: take it without lingering
        self._fsyncs_queued = 0  # ack=fsync requests in the queue
        # The writer thread's alone: what an fsync takes (a moving average), and how many
        # requests the last one served.
        self._fsync_seconds = 0.0
        self._fsync_served = 0
        # Set when a put gave up for want of room, cleared once the queue is half empty again:
        # readiness drops while a worker turns requests away, and does not flap at the edge.
        self._overloaded = False
        self._disk_error: str | None = None  # the last append failed with this; retrying
        self._unwritten: dict[str, _Share] = {}  # streams whose append failed, kept in order
        self._retry_delay = _RETRY_FIRST
        self._retry_at = 0.0  # monotonic time of the next attempt at what is unwritten
        self._thread: threading.Thread | None = None

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def unready_reason(self) -> str | None:
        """Why new lines cannot be taken and written right now, or None if they can."""
        if not self.alive:
            return "writer thread is not running"
        if self._closed:
            return "writer is stopping"
        if self._disk_error is not None:
            return f"writing to disk fails: {self._disk_error}"
        if self._overloaded or self._pending_bytes >= self._limit:
            return "queue is full"
        return None

    def _publish_readiness(self) -> None:
        metrics.writer_ready.set(self.unready_reason() is None)

    def start(self) -> None:
        metrics.queue_limit_bytes.set(self._limit)
        self._thread = threading.Thread(target=self._run, name="logwriter-writer", daemon=True)
        self._thread.start()

    def put(self, entry: Entry, timeout: float) -> None:
        """Queue a request's lines; QueueFull if no room comes within `timeout` seconds."""
        size = len(entry.data)
        with self._lock:
            # A request always fits an empty queue, so a large one cannot wait forever.
            has_room = self._not_full.wait_for(
                lambda: (
                    self._closed
                    or self._pending_bytes == 0
                    or self._pending_bytes + size <= self._limit
                ),
                timeout,
            )
            if self._closed:
                raise WriterStopped
            if not has_room:
                self._overloaded = True
                metrics.writer_ready.set(0)
                raise QueueFull
            was_empty = not self._queue
            self._queue.append(entry)
            self._pending_bytes += size
            self._pending_lines += entry.lines
            if entry.ack == "fsync":
                self._fsyncs_queued += 1
            urgent = entry.ack != "queued" or self._pending_bytes >= min(
                _BATCH_BYTES, self._limit // 2
            )
            # The thread is woken once: for the first request, or the first that ends its
            # linger. More would only interrupt a wait for an fsync batch (see _take).
            if was_empty or (urgent and not self._hurry):
                self._not_empty.notify()
            self._hurry = self._hurry or urgent
        metrics.lines_received.inc(entry.lines)
        metrics.queue_depth.inc(entry.lines)
        metrics.queue_bytes.inc(size)

    def stop(self) -> None:
        """Write everything queued so far, sync and close the files, and end the thread."""
        with self._lock:
            self._closed = True
            self._hurry = True
            queued = self._pending_lines
            self._queue.append(_PILL)
            self._not_empty.notify()
            self._not_full.notify_all()  # waiting producers get WriterStopped
        metrics.writer_ready.set(0)
        if self._thread is not None:
            self._thread.join()
        log.info("writer stopped: drained %d queued lines, files synced and closed", queued)

    def _run(self) -> None:
        metrics.writer_alive.set(1)
        self._publish_readiness()
        batch: list[Entry | None] = []
        stopping = False
        try:
            # After the pill nothing more is queued; what a failing disk left over is retried
            # until it is written (or Gunicorn's graceful timeout ends the process).
            while not (stopping and not self._unwritten):
                retry_in = max(0.0, self._retry_at - time.monotonic())
                batch = self._take(timeout=retry_in if self._unwritten else None)
                stopping = stopping or _PILL in batch
                self._write([entry for entry in batch if entry is not _PILL])
            self._files.close()
        except BaseException as exc:
            self._fail(exc, batch)
        finally:
            metrics.writer_alive.set(0)
            metrics.writer_ready.set(0)

    def _take(self, timeout: float | None) -> list[Entry | None]:
        with self._lock:
            if self._not_empty.wait_for(lambda: self._queue, timeout):
                self._not_empty.wait_for(lambda: self._hurry, _LINGER)
                if self._fsyncs_queued and self._fsync_served > 1:
                    # Up to as long as an fsync takes: the requests the last one answered come
                    # back meanwhile and share the next. Taking each batch at once, batches
                    # alternated between those and the requests that arrived during an fsync,
                    # so one fsync served about half the request threads. Measured, 1-line
                    # requests, 32 connections and threads, a disk capped at 100 write IOPS:
                    # 7.3 -> 18.5 requests per fsync (5.9x -> 11x the naive app's fsync per
                    # request); on this machine's disk, 0.2 ms fsyncs: 2.8 -> 4.5. Where the
                    # last fsync served one request, no one else is likely to come: a lone
                    # client's request is not held up. The other requests of the batch
                    # (ack=written too) wait with it.
                    gather = min(self._fsync_seconds, _LINGER)
                    self._not_empty.wait_for(lambda: self._closed, gather)
            batch: list[Entry | None] = []
            size = 0
            while self._queue and size < _BATCH_BYTES:
                entry = self._queue.popleft()
                batch.append(entry)
                if entry is not _PILL:
                    size += len(entry.data)
                    if entry.ack == "fsync":
                        self._fsyncs_queued -= 1
            self._hurry = bool(self._queue)  # what is left has waited already: no linger
        return batch

    def _write(self, entries: list[Entry]) -> None:
        # What failed before goes first, so that each stream's lines keep their order.
        shares, self._unwritten = self._unwritten, {}
        for entry in entries:
            shares.setdefault(entry.stream, _Share()).add(entry)
        retry_now = time.monotonic() >= self._retry_at
        written: dict[str, _Share] = {}
        try:
            with self._files.exclusive():
                for stream, share in shares.items():
                    if (share.failed and not retry_now) or not self._append(stream, share):
                        self._unwritten[stream] = share
                    else:
                        written[stream] = share
        except OSError as exc:  # the log folder itself could not be opened, locked or unlocked
            self._record_error("the log folder", exc)
            for stream, share in shares.items():
                if stream not in written:  # never write a share twice
                    share.failed = True
                    self._unwritten[stream] = share
        if self._unwritten and retry_now:
            self._retry_at = time.monotonic() + self._retry_delay
            self._retry_delay = min(self._retry_delay * 2, _RETRY_MAX)
        elif not self._unwritten:
            self._retry_delay = _RETRY_FIRST
            self._disk_error = None
        if entries:
            metrics.batch_lines.observe(sum(entry.lines for entry in entries))
        self._fsync(
            {stream: group for stream, share in written.items() if (group := _fsync_entries(share))}
        )
        self._files.end_batch()
        self._publish_readiness()

    def _append(self, stream: str, share: "_Share") -> bool:
        """Append a stream's share of the batch; False if it must wait for a later batch.

        A failed append is retried right here, holding the folder lock, only when it cut a
        request in two: its rest must follow before any other worker writes to the file.
        Otherwise the share waits and the other streams go on.
        """
        started = time.perf_counter()
        delay = _RETRY_FIRST
        while True:
            try:
                self._files.append(stream, share.buffers)  # on error, only the rest remains
                break
            except OSError as exc:
                self._record_error(stream, exc)
                share.failed = True
                if not isinstance(share.buffers[0], memoryview):
                    return False  # no request is half-written
                time.sleep(delay)
                delay = min(delay * 2, _RETRY_MAX)
        size = sum(len(entry.data) for entry in share.entries)
        lines = sum(entry.lines for entry in share.entries)
        # Bookkeeping and acks first: the lines are on disk whatever happens next.
        with self._lock:
            self._pending_bytes -= size
            self._pending_lines -= lines
            if self._pending_bytes <= self._limit // 2:
                self._overloaded = False
            self._not_full.notify_all()
        for entry in share.entries:
            if entry.ack == "written":
                entry.finish()
        metrics.write_seconds.observe(time.perf_counter() - started)
        metrics.lines_written.inc(lines)
        metrics.bytes_written.inc(size)
        metrics.queue_depth.dec(lines)
        metrics.queue_bytes.dec(size)
        return True

    def _record_error(self, where: str, exc: OSError) -> None:
        # The disk is full or failing: the lines stay queued and are tried again.
        self._disk_error = _describe(exc)
        metrics.writer_ready.set(0)
        metrics.writer_errors.labels(kind=_kind(exc)).inc()
        log.error("appending to %s failed, will retry: %s", where, exc)

    def _fsync(self, waiting: dict[str, list[Entry]]) -> None:
        """One fsync per stream file for all the ack=fsync requests of a batch."""
        if not waiting:
            return
        started = time.perf_counter()
        error = None
        try:
            self._files.fsync(waiting)
        except OSError as exc:
            # Not retried: after a failed fsync Linux may already have dropped the dirty pages,
            # so a second fsync could succeed without the data being on disk.
            error = f"fsync failed: {_describe(exc)}; the lines may be in the file"
            self._disk_error = error
            metrics.writer_ready.set(0)
            metrics.writer_errors.labels(kind=_kind(exc)).inc()
            log.error("fsync of %s failed: %s", ", ".join(waiting), exc)
        took = time.perf_counter() - started
        # Over the last ten or so: a disk's fsyncs can take 0.2 ms one time and 100 the next.
        # Not clamped: counting each as at most 20 ms made the wait too short on such a disk
        # (bench, capped disk: 12x -> 9.8x the naive app). After a stall of seconds the wait
        # stays at its 20 ms cap for some fifteen fsyncs; that is the price.
        self._fsync_seconds += (took - self._fsync_seconds) * 0.2
        self._fsync_served = sum(len(group) for group in waiting.values())
        metrics.fsync_seconds.observe(took)
        for group in waiting.values():
            for entry in group:
                entry.finish(error)

    def _fail(self, exc: BaseException, batch: list[Entry | None]) -> None:
        """The thread cannot go on: say so loudly, and release everyone who waits on it."""
        log.critical("writer thread failed; this worker takes no more lines", exc_info=exc)
        metrics.writer_errors.labels(kind=type(exc).__name__).inc()
        unwritten = [entry for share in self._unwritten.values() for entry in share.entries]
        with self._lock:
            self._closed = True
            abandoned = [e for e in (*unwritten, *batch, *self._queue) if e is not _PILL]
            self._queue.clear()
            self._not_full.notify_all()
        for entry in abandoned:
            if entry.ack != "queued" and not entry.finished:
                entry.finish(f"writer failed: {exc!r}")


@dataclass(eq=False, slots=True)
class _Share:
    """One stream's part of a batch: its requests, and what of their bytes is unwritten."""

    entries: list[Entry] = field(default_factory=list)
    buffers: list[bytes | memoryview] = field(default_factory=list)
    failed: bool = False  # an append of it failed: it is retried on the writer's backoff

    def add(self, entry: Entry) -> None:
        self.entries.append(entry)
        self.buffers.append(entry.data)


def _fsync_entries(share: _Share) -> list[Entry]:
    return [entry for entry in share.entries if entry.ack == "fsync"]


def _kind(exc: OSError) -> str:
    return errno.errorcode.get(exc.errno or 0, type(exc).__name__)


def _describe(exc: OSError) -> str:
    return f"{_kind(exc)} ({exc.strerror})"
