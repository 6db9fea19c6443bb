"""logwriter's Gunicorn worker: gthread, but a connection holds a request thread only while it
has a request to serve.

Stock gthread (Gunicorn 27) hands every new connection to the thread pool at once, where a
thread waits up to 5 s for the first byte; so as many silent connections as there are threads
(a port scan, a load balancer's TCP check, a browser's preconnect) stall every real request.
And when it closes a connection it lingers for the client's FIN on the main loop, up to 2 s
per connection, while nothing else is served. Here:

- A new connection waits in the worker's poller, as gthread already parks a connection it
  gave up waiting on (`pending_conns`), with a deadline of LOGWRITER_IDLE_TIMEOUT seconds. It
  goes to the pool once it is readable (a request, or a TLS ClientHello: the handshake is done
  in the pool thread); if it stays silent it is closed in the sweep that closes idle
  keep-alive connections.
- A request's head (and, with TLS, the handshake before it) must arrive in whole within
  LOGWRITER_BODY_TIMEOUT of a thread taking it, as its body must then (service.deadlines): a
  client that sends part of a head and stalls would otherwise hold its thread for as long as
  it likes.
- A closing connection lingers in the poller too: its write side is shut, what the client
  still sends is drained as it comes, and it is closed at the client's FIN or after 2 s.
- A worker that holds as many connections as it has threads leaves the listener to the other
  workers for 0.5 ms after each connection it takes: the workers all wait on the one listener,
  and the first to wake would otherwise take most of a burst, up to every connection, and
  serve them all with one GIL while the others idle (docs/design.md, Connections).

Everything else is gthread's own: keep-alive, TLS, HTTP/2, the graceful stop.
"""

import errno
import os
import resource
import selectors
import socket
import time
from collections import deque
from functools import partial
from typing import Any

import gunicorn
from gunicorn.workers import gthread

from service.app import runtime

LINGER_SECONDS = 2.0  # as gunicorn.util.close_graceful: how long a closing connection drains
_FD_MARGIN = 64  # descriptors of Gunicorn and Python themselves: streams, listeners, pipes
ACCEPT_PAUSE_SECONDS = 0.0005  # a worker with a connection per thread leaves the listener this long


class Worker(gthread.ThreadWorker):  # type: ignore[misc]
    # The gthread internals this class builds on (with them, `pending_conns`): Gunicorn 27's.
    _NEEDS = (
        "on_pending_socket_readable",
        "murder_pending",
        "_cap_keepalive",
        "set_accept_enabled",
    )

    @classmethod
    def check_config(cls, cfg: Any, log: Any) -> None:
        # Run by the arbiter before it forks any worker: fail at start, not on first use.
        super().check_config(cfg, log)
        missing = [name for name in cls._NEEDS if not hasattr(gthread.ThreadWorker, name)]
        if missing:
            raise RuntimeError(
                f"logwriter's worker needs Gunicorn 27's gthread; Gunicorn "
                f"{gunicorn.__version__} lacks {', '.join(missing)}"
            )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.idle_timeout: float = self.app.settings.idle_timeout
        self.lingering: deque[_Lingering] = deque()  # by deadline: every one gets the same
        self.accept_paused_until = 0.0

    def accept(self, listener: socket.socket) -> None:
        try:
            client, address = listener.accept()
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        self.nr_conns += 1
        conn = _Connection(self, self.cfg, client, address, listener.getsockname())
        # gthread's own parking of a connection that has sent nothing yet: every one gets the
        # same timeout, so pending_conns stays in deadline order as murder_pending() needs.
        conn.timeout = time.monotonic() + self.idle_timeout
        self.pending_conns.append(conn)
        self.poller.register(
            client, selectors.EVENT_READ, partial(self.on_pending_socket_readable, conn)
        )
        if self.cfg.workers > 1 and self.nr_conns >= self.cfg.threads:
            # Time for an idle worker to wake and take the next one, while this one is busy.
            self.accept_paused_until = time.monotonic() + ACCEPT_PAUSE_SECONDS
            self.set_accept_enabled(False)

    def set_accept_enabled(self, enabled: bool) -> None:
        # gthread's loop turns accepting back on at each turn: not before the pause is over.
        if enabled and time.monotonic() < self.accept_paused_until:
            return
        super().set_accept_enabled(enabled)

    def handle(self, conn: "_Connection") -> Any:
        # In a request thread. The deadline for the TLS handshake and the head, on the
        # descriptor: under TLS, handle() replaces conn.sock with its wrapper. It ends in
        # handle_request(), once the head is in.
        conn.reading = _Descriptor(conn.sock.fileno())
        deadlines = runtime(self.wsgi).deadlines
        deadlines.start(conn.reading)
        try:
            return super().handle(conn)
        finally:
            deadlines.end(conn.reading)

    def handle_request(self, req: Any, conn: "_Connection") -> bool:
        # The head is in; the app watches the body with a deadline of its own.
        runtime(self.wsgi).deadlines.end(conn.reading)
        return super().handle_request(req, conn)

    def murder_pending(self) -> None:
        # gthread's loop calls this each turn: closing connections are swept here too.
        super().murder_pending()
        now = time.monotonic()
        while self.lingering and self.lingering[0].deadline <= now:
            self._close_lingering(self.lingering[0])

    def wait_for_and_dispatch_events(self, timeout: float) -> None:
        # Wake for the first deadline, not up to a second after it.
        now = time.monotonic()
        if self.pending_conns:
            timeout = min(timeout, max(self.pending_conns[0].timeout - now, 0.0))
        if self.lingering:
            timeout = min(timeout, max(self.lingering[0].deadline - now, 0.0))
        if self.accept_paused_until > now:
            timeout = min(timeout, self.accept_paused_until - now)
        super().wait_for_and_dispatch_events(timeout)

    def _cap_keepalive(self, deadline: float) -> None:
        # At the start of a graceful stop: connections that have sent nothing yet get as long
        # as kept-alive ones (a request that arrives meanwhile is served, with
        # "Connection: close"), not their whole idle timeout.
        super()._cap_keepalive(deadline)
        for conn in self.pending_conns:
            conn.timeout = min(conn.timeout, deadline)

    def linger(self, sock: socket.socket) -> None:
        """Close `sock` as RFC 9112 section 9.6 asks, without blocking the main loop."""
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            sock.close()
            return
        sock.setblocking(False)
        entry = _Lingering(sock, time.monotonic() + LINGER_SECONDS)
        self.nr_conns += 1  # it still holds a descriptor: counted until closed
        self.lingering.append(entry)
        self.poller.register(sock, selectors.EVENT_READ, partial(self._drain, entry))

    def _drain(self, entry: "_Lingering", _: socket.socket) -> None:
        try:
            if entry.sock.recv(65536):
                return  # more to drain: wait for the rest, or the deadline
        except BlockingIOError:
            return
        except OSError:
            pass
        self._close_lingering(entry)

    def _close_lingering(self, entry: "_Lingering") -> None:
        self.lingering.remove(entry)
        self.poller.unregister(entry.sock)
        entry.sock.close()
        self.nr_conns -= 1


class _Connection(gthread.TConn):  # type: ignore[misc]
    """gthread's connection, whose graceful close lingers in the worker's poller."""

    def __init__(self, worker: Worker, *args: Any) -> None:
        super().__init__(*args)
        self._worker = worker
        self.reading: _Descriptor | None = None  # what the read deadline watches

    def close(self, graceful: bool = False) -> None:
        if graceful:  # only ever on the main loop, from finish_request()
            self._worker.linger(self.sock)
        else:
            super().close()


class _Descriptor:
    """A socket's descriptor, for the read deadline to shut, whatever object wraps it."""

    __slots__ = ("fd",)

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def shutdown(self, how: int) -> None:
        # On a duplicate: shutdown() acts on the connection, close() only on the duplicate.
        with socket.socket(fileno=os.dup(self.fd)) as duplicate:
            duplicate.shutdown(how)


class _Lingering:
    """A closing connection: its write side shut, drained until the client's FIN."""

    __slots__ = ("deadline", "sock")

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.deadline = deadline


def ensure_open_files(worker_connections: int, log_files: int) -> None:
    """Raise this process's soft limit on open files to what one worker may need (the workers
    inherit it), or say why that cannot be done: a worker out of descriptors fails in accept()
    and drops every connection it holds."""
    needed = worker_connections + log_files + _FD_MARGIN
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise RuntimeError(
            f"each worker may need {needed} open files ({worker_connections} connections, "
            f"{log_files} log files, {_FD_MARGIN} of its own), but the limit is {soft} (hard "
            f"limit {hard}): raise it (ulimit -n {needed}, systemd's LimitNOFILE, docker run "
            f"--ulimit nofile={needed}) or lower LOGWRITER_MAX_CONNECTIONS or "
            f"LOGWRITER_MAX_OPEN_FILES"
        )
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
