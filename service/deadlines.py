"""A deadline for a whole request body.

A socket timeout would stop a client that stalls, but not one that trickles a byte every few
seconds: each read then succeeds in time, and the request thread is held for as long as the
client likes. One watchdog thread per worker shuts the reading side of a socket whose body is
not in by its deadline, stalled or trickling, so the blocked read ends and the request gets a
408."""

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

_TICK = 0.25  # how often the watchdog looks, in seconds


class BodyDeadlines:
    """The watchdog of one worker: watch(sock) gives a body `seconds` to arrive in whole."""

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds
        self._lock = threading.Lock()
        self._watched: dict[int, tuple[float, socket.socket]] = {}
        self._expired: set[int] = set()
        self._thread: threading.Thread | None = None

    @contextmanager
    def watch(self, sock: socket.socket) -> Iterator[None]:
        """Within this block, `sock` is cut off `seconds` after the block began."""
        key = id(sock)
        with self._lock:
            if self._thread is None:  # started in the worker, at its first request
                self._thread = threading.Thread(
                    target=self._run, name="body-deadlines", daemon=True
                )
                self._thread.start()
            self._watched[key] = (time.monotonic() + self._seconds, sock)
        try:
            yield
        finally:
            with self._lock:
                self._watched.pop(key, None)  # gone already if the watchdog cut it off
                self._expired.discard(key)

    def expired(self, sock: socket.socket) -> bool:
        with self._lock:
            return id(sock) in self._expired

    def _run(self) -> None:
        while True:
            time.sleep(_TICK)
            now = time.monotonic()
            # Under the lock, so that a socket is only ever cut off inside its watch() block,
            # never once its request has moved on.
            with self._lock:
                late = [(key, sock) for key, (end, sock) in self._watched.items() if end < now]
                for key, sock in late:
                    del self._watched[key]
                    self._expired.add(key)
                    # The blocked read returns; the answer still goes out. OSError: closed.
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RD)
