"""The writer: a queue bounded in bytes, and the one thread that appends what it holds to disk.

Its life reads like logging.handlers.QueueListener:
  start()  starts the consumer thread, at a raised priority where the process may (below).
  put()    queues one request's lines (request threads); waits briefly while the queue is full.
           put_all() queues a request's lines for several streams, all or none.
  stop()   refuses further puts and queues the pill; the thread writes everything queued before
           the pill, fsyncs and closes every file, and ends; stop() joins it.
  give_way()  request threads wait briefly while the thread writes a backlog (below).

Each turn of the loop (_run) takes a batch (_take): the waiting requests, up to a megabyte;
ack=queued ones may gather for up to 20 ms first, and a batch with ack=fsync requests waits
as GroupCommit says. It appends each stream's share under its file's lock (_write, _append),
frees the queue room and acknowledges ack=written requests (_release), then one fsync serves
every ack=fsync request of the batch (_fsync). Queued bytes count against the bound until
they are on disk, so memory stays within it however slow the disk is. An append that fails is
kept and retried on a backoff, in order, while the other streams go on.

The thread runs at its worker's nice value plus `nice` (a negative increment raises it) where
the process may: it is the one stage every line goes through, and while it holds a file's lock
the other workers' writers wait for it, so a core should go to it first. For the same reason,
while it writes with over half the queue's bound waiting, its worker's request threads give
way to it, for at most 2 ms at a time: it gives the GIL up for each writev and must win it
back, and the fewer threads it must win it from, the sooner.
"""

import errno
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Final, Literal

from service import metrics
from service.files import LogFiles
from service.priority import renice

log = logging.getLogger("logwriter")

Ack = Literal["queued", "written", "fsync"]
ACK_MODES: tuple[Ack, ...] = ("queued", "written", "fsync")

_PILL: Final = None  # queued by stop(): everything before it is written, then the thread ends
# How long ack=queued requests may gather before they are taken as one batch: one wake-up and
# one writev for many. A request that waits for its lines, or a batch's worth, ends it at once.
_LINGER = 0.02
# At most this much is taken in one turn (a larger request alone is taken whole): bodies reach
# the page cache while still in the CPU's cache, and queue room comes back sooner.
_BATCH_BYTES = 1 << 20
# The longest a request thread gives way to the writer (give_way()): a batch's writes take far
# less, and a writer stuck in a write (a frozen disk) must not hold the worker's answers up.
_GIVE_WAY_SECONDS = 0.002


def parse_ack(text: str) -> Ack:
    """The ack mode `text` names; ValueError saying what is allowed if it names none."""
    for mode in ACK_MODES:
        if mode == text:
            return mode
    raise ValueError(f"must be one of {', '.join(ACK_MODES)}, got {text!r}")


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
    # Held from creation until finish(): a bare lock hands off between threads more cheaply
    # than an Event.
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
    """One worker process's queue of requests and the thread that writes them to LogFiles.

    Request threads put() entries; the writer thread alone touches the files. `limit_bytes`
    bounds what is queued or being written, so a stalled disk makes put() wait, then refuse.
    """

    def __init__(self, files: LogFiles, limit_bytes: int, nice: int = 0) -> None:
        self._files = files
        self._limit = limit_bytes
        self._nice = nice
        self._lock = threading.Lock()
        self._not_empty = threading.Condition(self._lock)
        self._not_full = threading.Condition(self._lock)
        self._queue: deque[Entry | None] = deque()
        self._pending_bytes = 0  # queued or being written: what the bound applies to
        self._pending_lines = 0
        self._urgent = False  # something queued ends the linger: take it at once
        self._stopped = False  # set with the pill (or when the thread fails): puts are refused
        # Set when a put gave up for want of room, cleared once the queue is half empty again:
        # readiness drops while a worker turns requests away, and does not flap at the edge.
        self._overloaded = False
        self._group_commit = GroupCommit()
        # The writer thread's alone: what could not be written yet, per stream in order.
        self._unwritten: dict[str, _Share] = {}
        self._retry = Backoff()
        self._disk_error: str | None = None  # the last append failed with this; retrying
        # Held while the thread writes to a locked file with a backlog queued: give_way().
        self._writing = threading.Lock()
        self._thread: threading.Thread | None = None

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def unready_reason(self) -> str | None:
        """Why new lines cannot be taken and written right now, or None if they can."""
        if not self.alive:
            return "writer thread is not running"
        if self._stopped:
            return "writer is stopping"
        if self._disk_error is not None:
            return f"writing to disk fails: {self._disk_error}"
        if self._overloaded or self._pending_bytes >= self._limit:
            return "queue is full"
        return None

    def start(self) -> None:
        metrics.queue_limit_bytes.set(self._limit)
        self._thread = threading.Thread(target=self._run, name="logwriter-writer", daemon=True)
        self._thread.start()
        if self._nice:
            assert self._thread.native_id is not None  # set once started
            wanted, nice = renice(self._thread.native_id, self._nice)
            if nice == wanted:
                log.info("writer thread runs at nice %d", nice)
            else:
                log.info(
                    "writer thread runs at nice %d, not %d: that needs CAP_SYS_NICE or an "
                    "RLIMIT_NICE of %d (LOGWRITER_WRITER_NICE, docs/operations.md)",
                    nice,
                    wanted,
                    20 - wanted,
                )

    def put(self, entry: Entry, timeout: float) -> None:
        """Queue a request's lines; QueueFull if no room comes within `timeout` seconds."""
        self.put_all([entry], timeout)

    def put_all(self, entries: list[Entry], timeout: float) -> None:
        """Queue a request's entries (one per stream it writes to) all together, or none:
        QueueFull if no room for all of them comes within `timeout` seconds."""
        size = sum(len(entry.data) for entry in entries)
        lines = sum(entry.lines for entry in entries)
        with self._lock:
            # A request always fits an empty queue, so a large one cannot wait forever.
            has_room = self._not_full.wait_for(
                lambda: (
                    self._stopped
                    or self._pending_bytes == 0
                    or self._pending_bytes + size <= self._limit
                ),
                timeout,
            )
            if self._stopped:
                raise WriterStopped
            if not has_room:
                self._overloaded = True
                self._publish_readiness()
                raise QueueFull
            self._pending_bytes += size
            self._pending_lines += lines
            if self._pending_bytes < self._limit:
                self._not_full.notify()  # pass the wake-up on: the next may fit too
            for entry in entries:
                if entry.ack == "fsync":
                    self._group_commit.queued += 1
                urgent = entry.ack != "queued" or self._pending_bytes >= min(
                    _BATCH_BYTES, self._limit // 2
                )
                self._enqueue(entry, urgent)
        metrics.lines_received.inc(lines)
        metrics.queue_depth.inc(lines)
        metrics.queue_bytes.inc(size)

    def give_way(self) -> None:
        """Wait while the writer thread writes a backlog to a locked file, at most
        _GIVE_WAY_SECONDS; request threads call it before each long stretch of their work.

        The writer gives the GIL up for each writev and must win it back before the next,
        from this worker's request threads, while the other workers' writers wait for the
        file. With a backlog queued, the writes are what the clients wait for.
        """
        if self._writing.acquire(timeout=_GIVE_WAY_SECONDS):
            self._writing.release()

    def stop(self) -> None:
        """Write everything queued so far, sync and close the files, and end the thread."""
        with self._lock:
            self._stopped = True
            queued = self._pending_lines
            self._enqueue(_PILL, urgent=True)
            self._not_empty.notify()  # the pill also ends a group commit's wait
            self._not_full.notify_all()  # waiting producers get WriterStopped
        self._publish_readiness()
        if self._thread is not None:
            self._thread.join()
        log.info("writer stopped: drained %d queued lines, files synced and closed", queued)

    def _enqueue(self, item: Entry | None, urgent: bool) -> None:
        """Append to the queue, holding the lock, and wake the thread if it must look."""
        was_empty = not self._queue
        self._queue.append(item)
        # Once: for the first item, or the first that ends the linger. More would only
        # interrupt a group commit's wait.
        if was_empty or (urgent and not self._urgent):
            self._not_empty.notify()
        self._urgent = self._urgent or urgent

    def _publish_readiness(self) -> None:
        metrics.writer_ready.set(self.unready_reason() is None)

    def _run(self) -> None:
        metrics.writer_alive.set(1)
        self._publish_readiness()
        batch: list[Entry | None] = []
        stopping = False
        try:
            # After the pill nothing more is queued; what a failing disk left over is retried
            # until it is written (or Gunicorn's graceful timeout ends the process).
            while not (stopping and not self._unwritten):
                batch = self._take(self._retry.seconds_left() if self._unwritten else None)
                stopping = stopping or _PILL in batch
                self._write([entry for entry in batch if entry is not _PILL])
            self._files.close()
        except BaseException as exc:
            self._fail(exc, batch)
        finally:
            metrics.writer_alive.set(0)
            self._publish_readiness()

    def _take(self, timeout: float | None) -> list[Entry | None]:
        """The next batch, once something is queued (or [] after `timeout` seconds)."""
        with self._lock:
            if self._not_empty.wait_for(lambda: self._queue, timeout):
                self._not_empty.wait_for(lambda: self._urgent, _LINGER)
                gather = self._group_commit.wait_seconds()
                if gather:
                    self._not_empty.wait_for(lambda: self._queue[-1] is _PILL, gather)
            batch: list[Entry | None] = []
            size = 0
            while self._queue and size < _BATCH_BYTES:
                entry = self._queue.popleft()
                batch.append(entry)
                if entry is not _PILL:
                    size += len(entry.data)
                    if entry.ack == "fsync":
                        self._group_commit.queued -= 1
            self._urgent = bool(self._queue)  # what is left has waited already: no linger
        return batch

    def _write(self, entries: list[Entry]) -> None:
        # What failed before goes first, so that each stream's lines keep their order.
        shares, self._unwritten = self._unwritten, {}
        for entry in entries:
            share = shares.get(entry.stream)
            if share is None:
                share = shares[entry.stream] = _Share()
            share.add(entry)
        retry_now = self._retry.due()
        written: dict[str, _Share] = {}
        for stream, share in shares.items():
            if (share.failed and not retry_now) or not self._append(stream, share):
                self._unwritten[stream] = share
            else:
                written[stream] = share
        if self._unwritten and retry_now:
            self._retry.failed()
        elif not self._unwritten:
            self._retry.reset()
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

        A failed append is retried right here, holding the file's lock, only when it cut a
        request in two: its rest must follow before any other worker writes to the file.
        Otherwise the share waits and the other streams go on.
        """
        started = time.perf_counter()
        try:
            self._files.lock(stream)
        except OSError as exc:  # the file could not be opened (or locked): nothing written
            self._record_error(stream, exc)
            share.failed = True
            return False
        backlog = self._pending_bytes > self._limit // 2
        if backlog:
            self._writing.acquire()
        try:
            cut_retry = Backoff()
            while True:
                try:
                    self._files.append(stream, share.buffers)  # on error, only the rest remains
                    break
                except OSError as exc:
                    self._record_error(stream, exc)
                    share.failed = True
                    if not isinstance(share.buffers[0], memoryview):
                        return False  # no request is half-written
                    time.sleep(cut_retry.failed())
        finally:
            if backlog:
                self._writing.release()
            self._files.unlock(stream)
        # Only once the file is unlocked: the request threads this wakes take the GIL, which
        # this thread needs back before it can unlock, while the other workers' writers wait.
        self._release(share)
        metrics.write_seconds.observe(time.perf_counter() - started)
        return True

    def _release(self, share: "_Share") -> None:
        """A share is in its file: free its queue room and answer its ack=written requests."""
        size, lines = share.size, share.lines
        with self._lock:
            self._pending_bytes -= size
            self._pending_lines -= lines
            if self._pending_bytes <= self._limit // 2:
                self._overloaded = False
            # One, not all: each waiter that gets in wakes the next while room is left, so a
            # freed megabyte does not wake eight threads to fight over it (and over the GIL).
            self._not_full.notify()
        # Counted before the answers go out, so a client's next scrape includes its lines.
        metrics.lines_written.inc(lines)
        metrics.bytes_written.inc(size)
        metrics.queue_depth.dec(lines)
        metrics.queue_bytes.dec(size)
        for entry in share.entries:
            if entry.ack == "written":
                entry.finish()

    def _record_error(self, where: str, exc: OSError) -> None:
        # The disk is full or failing: the lines stay queued and are tried again.
        self._disk_error = _describe(exc)
        self._publish_readiness()
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
            self._publish_readiness()
            metrics.writer_errors.labels(kind=_kind(exc)).inc()
            log.error("fsync of %s failed: %s", ", ".join(waiting), exc)
        took = time.perf_counter() - started
        self._group_commit.fsynced(took, served=sum(len(group) for group in waiting.values()))
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
            self._stopped = True
            abandoned = [e for e in (*unwritten, *batch, *self._queue) if e is not _PILL]
            self._queue.clear()
            self._not_full.notify_all()
        for entry in abandoned:
            if entry.ack != "queued" and not entry.finished:
                entry.finish(f"writer failed: {exc!r}")


@dataclass(slots=True)
class GroupCommit:
    """How long a batch with ack=fsync requests waits before it is taken.

    Taken at once, batches alternate between the requests that came during an fsync and those
    it just answered, so one fsync serves about half the waiting requests. So such a batch
    waits up to as long as an fsync takes (never past the linger) for those to come back and
    share the next. After an fsync that served one request nobody else is likely to come:
    a lone client is not held up. The batch's other requests wait with it.
    """

    queued: int = 0  # ack=fsync requests in the queue; kept under the writer's lock
    fsync_seconds: float = 0.0  # a moving average over about the last ten
    last_served: int = 0  # requests the last fsync answered

    def wait_seconds(self) -> float:
        if not self.queued or self.last_served <= 1:
            return 0.0
        return min(self.fsync_seconds, _LINGER)

    def fsynced(self, seconds: float, served: int) -> None:
        # Not clamped: a disk's fsync can take 0.2 ms one time and 100 the next, and the wait
        # must follow the slow ones too.
        self.fsync_seconds += (seconds - self.fsync_seconds) * 0.2
        self.last_served = served


class Backoff:
    """The spacing of attempts at a failing disk: from 50 ms, doubling, up to 2 s apart."""

    FIRST, MOST = 0.05, 2.0

    def __init__(self) -> None:
        self._delay = self.FIRST
        self._next_at = 0.0  # monotonic time of the next attempt

    def failed(self) -> float:
        """An attempt failed: the seconds until the next one, which is now due then."""
        delay = self._delay
        self._delay = min(delay * 2, self.MOST)
        self._next_at = time.monotonic() + delay
        return delay

    def reset(self) -> None:
        self._delay = self.FIRST
        self._next_at = 0.0

    def due(self) -> bool:
        return time.monotonic() >= self._next_at

    def seconds_left(self) -> float:
        return max(0.0, self._next_at - time.monotonic())


@dataclass(eq=False, slots=True)
class _Share:
    """One stream's part of a batch: its requests, and what of their bytes is unwritten."""

    entries: list[Entry] = field(default_factory=list)
    buffers: list[bytes | memoryview] = field(default_factory=list)
    size: int = 0  # bytes of its requests
    lines: int = 0
    failed: bool = False  # an append of it failed: it is retried on the writer's backoff

    def add(self, entry: Entry) -> None:
        self.entries.append(entry)
        self.buffers.append(entry.data)
        self.size += len(entry.data)
        self.lines += entry.lines


def _fsync_entries(share: _Share) -> list[Entry]:
    return [entry for entry in share.entries if entry.ack == "fsync"]


def _kind(exc: OSError) -> str:
    return errno.errorcode.get(exc.errno or 0, type(exc).__name__)


def _describe(exc: OSError) -> str:
    return f"{_kind(exc)} ({exc.strerror})"
