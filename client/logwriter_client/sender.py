"""Sender: lines waiting in one buffer behind a lock, bounded in bytes, and the one thread that
posts them in batches. Its life reads like logging.handlers.QueueListener, and like the
service's own writer:

  put()    appends encoded lines; when the buffer is full it drops and counts them (the
           handler: the app must not wait) or waits for room (logwriter-ship's stdin: the pipe
           waits instead).
  flush()  waits until everything put before it is delivered or given up.
  close()  puts the pill: the thread sends everything before it, then ends; close() joins it.

Each turn the thread takes a batch, once batch_bytes are waiting or batch_seconds after the
oldest line came (a flush or the pill ends that wait), and posts it with Client.post, which
retries until the service acknowledges it. Bytes count against the bound until delivered, so
memory stays within it however long the service is away. After os.fork() the child starts
afresh: an empty buffer, a thread of its own, no connection of its parent's.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from typing import Final

from logwriter_client.client import Client, Refused, Undelivered, report

_PILL: Final = None  # put by close(): what is before it is sent, then the thread ends

# How a drop notice is made: (records dropped, first and last drop's time.time()) -> a line.
Notice = Callable[[int, float, float], bytes]


class Sender:
    """The buffer and its thread. `drop_when_full` chooses what put() does when the buffer is
    full; `notice`, if given, makes the line that goes first after records were dropped."""

    def __init__(
        self,
        client: Client,
        *,
        ack: str,
        content_type: str,
        buffer_bytes: int,
        batch_bytes: int,
        batch_seconds: float,
        drop_when_full: bool,
        notice: Notice | None = None,
    ) -> None:
        self.client = client
        self.ack = ack
        self.content_type = content_type  # read per batch: the handler's formatter may change
        self._limit = buffer_bytes
        self._batch_bytes = batch_bytes
        self._batch_seconds = batch_seconds
        self._drop_when_full = drop_when_full
        self._notice = notice
        self._closed = False
        self._start_afresh()
        _SENDERS.add(self)

    def _start_afresh(self) -> None:
        self._lock = threading.Lock()
        self._has_items = threading.Condition(self._lock)  # the thread waits on it
        self._progress = threading.Condition(self._lock)  # put() waiting for room, and flush()
        self._items: deque[bytes | None] = deque()
        self._held = 0  # bytes put and not yet delivered (or given up): what the bound applies to
        self._waiting = 0  # bytes put and not yet taken into a batch
        self._oldest = 0.0  # monotonic time the oldest waiting item came
        self._put = self._taken = self._finished = 0  # items, for flush()
        self._flush_to = 0  # a flush waits for this many items: take them without lingering
        self.delivered = 0  # lines the service acknowledged
        self.dropped = 0  # items refused by put() because the buffer was full
        self.lost = 0  # items in batches the service refused, or that were given up
        self._unnoticed = 0  # drops not yet told in a notice, and their first and last times
        self._first_drop = self._last_drop = 0.0
        self.problem: str | None = None  # why the last batch failed, if it did
        self._thread: threading.Thread | None = None  # started by the first put()

    def put(self, data: bytes) -> bool:
        """Buffer `data` (whole lines, each ending in a newline); False if it was dropped
        (buffer full, with drop_when_full) or the sender is closed."""
        size = len(data)
        with self._lock:
            if not self._drop_when_full:
                # A line always fits an empty buffer, so a large one cannot wait forever.
                self._progress.wait_for(
                    lambda: self._closed or not self._held or self._held + size <= self._limit
                )
            if self._closed:
                return False
            if self._held and self._held + size > self._limit:
                self.dropped += 1
                self._last_drop = time.time()
                if not self._unnoticed:
                    self._first_drop = self._last_drop
                self._unnoticed += 1
                return False
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="logwriter-client-sender", daemon=True
                )
                self._thread.start()
            if not self._items:
                self._oldest = time.monotonic()
                self._has_items.notify()
            self._items.append(data)
            self._held += size
            self._waiting += size
            self._put += 1
            if self._waiting >= self._batch_bytes and self._waiting - size < self._batch_bytes:
                self._has_items.notify()  # a batch is full: end the linger, once
        return True

    def flush(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds until what was put before is delivered or given up;
        False if some is still on its way."""
        with self._lock:
            self._flush_to = target = self._put
            self._has_items.notify()
            return self._progress.wait_for(lambda: self._finished >= target, timeout)

    def close(self, timeout: float) -> int:
        """Send what is buffered, giving up on what is not delivered within `timeout` seconds,
        and end the thread. How many items were not delivered (`problem` says why)."""
        with self._lock:
            if self._closed:
                return 0
            self._closed = True
            lost_before = self.lost
            self._items.append(_PILL)
            self._has_items.notify()
            self._progress.notify_all()  # put()s waiting for room return False
            thread = self._thread
        if thread is None:
            return 0
        self.client.stop_retrying(after=timeout)
        thread.join(timeout + 1)  # a request under way may need its socket timeout
        self.client.close()
        with self._lock:
            return self._put - self._finished + self.lost - lost_before

    def _urgent(self) -> bool:
        return (
            self._waiting >= self._batch_bytes
            or self._flush_to > self._taken
            or self._items[-1] is _PILL
        )

    def _run(self) -> None:
        while True:
            batch, size, notice, last = self._take()
            if batch:
                self._send(batch, size, notice)
            if last:
                return

    def _take(self) -> tuple[list[bytes], int, bytes | None, bool]:
        """The next batch, its size, the drop notice to send before it, and whether the pill
        came."""
        with self._lock:
            self._has_items.wait_for(lambda: self._items)
            linger = self._oldest + self._batch_seconds - time.monotonic()
            if linger > 0:
                self._has_items.wait_for(self._urgent, linger)
            batch: list[bytes] = []
            size = 0
            while self._items:
                data = self._items[0]
                if data is None or (batch and size + len(data) > self._batch_bytes):
                    break  # the pill, or a full batch
                batch.append(data)
                self._items.popleft()
                size += len(data)
            last = bool(self._items) and self._items[0] is _PILL
            self._waiting -= size
            self._taken += len(batch)
            self._oldest = 0.0  # what is left has waited already: no linger for it
            dropped = self._unnoticed if batch else 0  # told with the next batch there is
            first, latest = self._first_drop, self._last_drop
            self._unnoticed -= dropped
        notice = self._notice(dropped, first, latest) if dropped and self._notice else None
        return batch, size, notice, last

    def _send(self, batch: list[bytes], size: int, notice: bytes | None) -> None:
        body = b"".join(batch if notice is None else [notice, *batch])
        accepted = None
        try:
            accepted = self.client.post(body, ack=self.ack, content_type=self.content_type)
        except Refused as exc:
            # Reported once while the service keeps refusing for the same reason.
            if str(exc) != self.problem:
                report(f"the service refused {_lines(body)}, which are dropped: {exc}")
            self.problem = str(exc)
        except Undelivered as exc:  # only once closing: the closer says so
            self.problem = str(exc)
        except Exception as exc:  # the thread must outlive any one batch
            report(f"could not send {_lines(body)}, which are dropped: {exc!r}")
            self.problem = repr(exc)
        else:
            self.problem = None
        with self._lock:
            self._held -= size
            self._finished += len(batch)
            if accepted is None:
                self.lost += len(batch)
            else:
                self.delivered += accepted
            self._progress.notify_all()

    def _after_fork_in_child(self) -> None:
        # The parent's records are the parent's to send: the child keeps none of them.
        self._start_afresh()
        self.client.forget_connection()


def _lines(body: bytes) -> str:
    count = body.count(b"\n")
    return f"{count} line{'s' if count != 1 else ''}"


_SENDERS: weakref.WeakSet[Sender] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for sender in list(_SENDERS):
        sender._after_fork_in_child()


if hasattr(os, "register_at_fork"):  # not on Windows
    os.register_at_fork(after_in_child=_after_fork_in_child)
