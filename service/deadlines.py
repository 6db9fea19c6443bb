"""Deadlines for reading a request: its head (service.worker), then its body (service.app).

A socket timeout would stop a client that stalls, but not one that trickles a byte every few
seconds: each read then succeeds in time, and the request thread is held for as long as the
client likes. One watchdog thread per worker shuts the reading side of a socket that is not
read by its deadline, stalled or trickling, so the blocked read ends: a body gets a 408, a
head that never ends closes the connection."""

import contextlib
import socket
import threading
import time
from typing import Protocol

_TICK = 0.25  # how often the watchdog looks, in seconds


class Readable(Protocol):
    """A socket, or what stands for one: shutdown(SHUT_RD) ends a read blocked on it."""

    def shutdown(self, how: int, /) -> None: ...


class ReadDeadlines:
    """The watchdog of one worker: from start(sock) to end(sock), what is read from `sock`
    has `seconds` to arrive in whole."""

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds
        self._lock = threading.Lock()
        self._watched: dict[int, tuple[float, Readable]] = {}
        self._expired: set[int] = set()
        self._thread: threading.Thread | None = None

    def start(self, sock: Readable) -> None:
        """From now, `sock` is cut off in `seconds`, unless end(sock) comes first."""
        with self._lock:
            if self._thread is None:  # started in the worker, at its first request
                self._thread = threading.Thread(
                    target=self._run, name="read-deadlines", daemon=True
                )
                self._thread.start()
            self._watched[id(sock)] = (time.monotonic() + self._seconds, sock)

    def end(self, sock: Readable) -> None:
        """No more deadline for `sock` (none may be left: the watchdog cut it off)."""
        with self._lock:
            self._watched.pop(id(sock), None)
            self._expired.discard(id(sock))

    def expired(self, sock: Readable) -> bool:
        with self._lock:
            return id(sock) in self._expired

    def _run(self) -> None:
        while True:
            time.sleep(_TICK)
            now = time.monotonic()
            # Under the lock, so that a socket is only ever cut off between its start() and end(),
            # never once its request has moved on.
            with self._lock:
                late = [(key, sock) for key, (end, sock) in self._watched.items() if end < now]
                for key, sock in late:
                    del self._watched[key]
                    self._expired.add(key)
                    # The blocked read returns; the answer still goes out. OSError: closed.
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RD)
