"""Silent connections: TCP connections that send nothing (port scanners, load balancers' TCP
checks, browsers' preconnects), against logwriter's worker (service/worker.py) and the naive
app on stock gthread, which gives each new connection a request thread for up to 5 s waiting
for its first byte. Both with 1 worker and THREADS request threads.

Throughout, one client posts one line at a time, each on a new connection (so that it goes
through accept like the silent ones) and answered once written (ack=written; the naive app
always writes before it answers). Every request has CLIENT_TIMEOUT seconds in all, connecting
included: one that runs out is counted as timed out and enters the latencies at that time.

Part 1, for each contender, for `seconds`: with `silent` connections, each reopened as soon
as the server closes it, and with none, the baseline, measured in the same run because the
machine is noisy.

Part 2, for each contender, for `seconds`: `held` kept-alive connections (each has had a
request, then idles) and `held` silent ones, all open at once, with the timeouts raised past
the measurement (HELD_SETTINGS). The kept-alive ones are opened first: behind `held` silent
connections the naive app would not answer their requests for minutes.

Afterwards every line answered 2xx must be in the contender's file exactly once, and no line
twice: anything else is a problem, and fails the bench. The whole case is capped
(budget_seconds): a measurement that would start past the cap is skipped, and listed.
"""

import contextlib
import os
import resource
import selectors
import socket
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.contenders import Contender, start, stop
from bench.measurement import process_tree
from bench.workloads import THREADS

SILENT = 64  # part 1's silent connections
HELD = 1000  # part 2's kept-alive connections, and as many silent ones
CLIENT_TIMEOUT = 5.0  # seconds a request has in all
SLOW = 1.0  # seconds: a request that took longer is counted
SETUP_SECONDS = 60.0  # at most, to open a measurement's connections
OPEN_FILES = 8192  # this process's soft limit while it runs: it holds 2 x HELD sockets
CONTENDERS = ("logwriter", "naive")
HELD_TIMEOUT = 120  # seconds, past any measurement: no held connection is closed meanwhile
HELD_CONNECTIONS = 2500  # a worker's connections, more than 2 x HELD
HELD_SETTINGS = {
    "logwriter": {
        "LOGWRITER_MAX_CONNECTIONS": str(HELD_CONNECTIONS),
        "LOGWRITER_IDLE_TIMEOUT": str(HELD_TIMEOUT),
        "GUNICORN_CMD_ARGS": f"--keep-alive {HELD_TIMEOUT}",
    },
    # Stock gthread has no timeout of its own for a first byte: a connection silent for 5 s
    # in a request thread waits in the poller for the keep-alive timeout.
    "naive": {"--worker-connections": str(HELD_CONNECTIONS), "--keep-alive": str(HELD_TIMEOUT)},
}


def budget_seconds(seconds: float) -> float:
    """The cap on the whole case: its six measurements, each with a request's timeout after
    it, the setting up of part 2's connections, and the starting and stopping of servers."""
    return 6 * (seconds + CLIENT_TIMEOUT) + 2 * SETUP_SECONDS + 120


@contextlib.contextmanager
def many_descriptors() -> Iterator[None]:
    """This process's soft limit on open files raised to OPEN_FILES (or the hard limit), and
    the servers it starts meanwhile inherit it; restored afterwards."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = OPEN_FILES if hard == resource.RLIM_INFINITY else min(hard, OPEN_FILES)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


class SilentConnections:
    """`count` connections to `port` that never send a byte, each reopened as soon as the
    server closes it, from open() to close()."""

    def __init__(self, port: int, count: int) -> None:
        self.port = port
        self.count = count
        self.reopened = 0
        self.failed = 0  # connects refused or timed out
        self._selector = selectors.DefaultSelector()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._keep_open, daemon=True)

    def open(self, deadline: float) -> "SilentConnections":
        """Opens them, or as many as it can by `deadline`."""
        for _ in range(self.count):
            if time.monotonic() >= deadline:
                break
            self._open_one()
        self._thread.start()
        return self

    @property
    def open_now(self) -> int:
        return len(self._selector.get_map())

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)
        for key in list(self._selector.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]
        self._selector.close()

    def _open_one(self) -> bool:
        try:
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=CLIENT_TIMEOUT)
        except OSError:
            self.failed += 1
            return False
        sock.setblocking(False)
        self._selector.register(sock, selectors.EVENT_READ)
        return True

    def _keep_open(self) -> None:
        while not self._stop.is_set():
            for key, _ in self._selector.select(0.1):
                sock: socket.socket = key.fileobj  # type: ignore[assignment]
                try:
                    closed = not sock.recv(1)
                except BlockingIOError:
                    continue
                except OSError:
                    closed = True
                if closed:
                    self._selector.unregister(sock)
                    sock.close()
                    if not self._stop.is_set() and self._open_one():
                        self.reopened += 1


@dataclass
class Posts:
    """What the client's requests got."""

    latencies: list[float] = field(default_factory=list)  # seconds, a timed-out one's included
    answered: list[int] = field(default_factory=list)  # the numbers of the lines answered 2xx
    timeouts: int = 0
    errors: int = 0  # another answer, or a connection refused or reset


def post_lines(port: int, path: str, seconds: float) -> Posts:
    """One line a request, each on a new connection, until `seconds` have passed."""
    posts = Posts()
    deadline = time.monotonic() + seconds
    number = 0
    while time.monotonic() < deadline:
        started = time.monotonic()
        status = post(port, path, b"line %d\n" % number, started + CLIENT_TIMEOUT)
        if status is None:
            posts.timeouts += 1
            posts.latencies.append(CLIENT_TIMEOUT)
        else:
            posts.latencies.append(time.monotonic() - started)
            if 200 <= status < 300:
                posts.answered.append(number)
            else:
                posts.errors += 1
        number += 1
    return posts


def post(port: int, path: str, body: bytes, deadline: float) -> int | None:
    """POST `body` on a new connection: the answer's status, 0 if the connection failed, None
    if no answer came by `deadline`."""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/plain\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return exchange(port, head.encode() + body, deadline)


def exchange(
    port: int, request: bytes, deadline: float, sock: socket.socket | None = None
) -> int | None:
    """Send `request` (on a new connection unless `sock` is given, which is left open) and
    read its answer whole: its status, 0 if the connection failed, None on a timeout."""
    own = sock is None
    try:
        if sock is None:
            sock = socket.create_connection(
                ("127.0.0.1", port), timeout=max(deadline - time.monotonic(), 0.001)
            )
        sock.sendall(request)
        return _read_answer(sock, deadline)
    except TimeoutError:
        return None
    except (OSError, ValueError, IndexError):
        return 0
    finally:
        if own and sock is not None:
            sock.close()


def _read_answer(sock: socket.socket, deadline: float) -> int:
    data = b""
    while b"\r\n\r\n" not in data:
        data += _receive(sock, deadline)
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *headers = head.split(b"\r\n")
    length = next(
        (int(h.split(b":", 1)[1]) for h in headers if h.lower().startswith(b"content-length:")),
        0,
    )
    while len(body) < length:
        body += _receive(sock, deadline)
    return int(status_line.split()[1])


def _receive(sock: socket.socket, deadline: float) -> bytes:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError
    sock.settimeout(remaining)
    chunk = sock.recv(65536)
    if not chunk:
        raise ConnectionError("closed before the whole answer")
    return chunk


def kept_alive_connections(port: int, count: int, deadline: float) -> list[socket.socket]:
    """`count` connections (as many as `deadline` allows) that have each had a request answered
    and now idle, kept alive."""
    kept = []
    request = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"  # a 404 from the naive app
    while len(kept) < count and time.monotonic() < deadline:
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=CLIENT_TIMEOUT)
        except OSError:
            time.sleep(0.05)  # refused: try again, until the deadline
            continue
        answer_by = min(time.monotonic() + CLIENT_TIMEOUT, deadline)
        if exchange(port, request, answer_by, sock):
            kept.append(sock)
        else:
            sock.close()
    return kept


def latency_figures(posts: Posts) -> dict[str, Any]:
    latencies = sorted(posts.latencies)

    def at(quantile: float) -> float | None:  # as tests/test_connections.py's p99
        if not latencies:
            return None
        return latencies[min(len(latencies) - 1, int(len(latencies) * quantile))] * 1000

    return {
        "requests": len(latencies),
        "answered": len(posts.answered),
        "timeouts": posts.timeouts,
        "errors": posts.errors,
        "p50_ms": at(0.5),
        "p99_ms": at(0.99),
        "max_ms": latencies[-1] * 1000 if latencies else None,
        "over_1s": sum(latency > SLOW for latency in latencies),
    }


def check_lines(path: Path, answered: list[int]) -> list[str]:
    """What is wrong with the client's lines in `path`: [] when every answered one is there
    once and none twice (a timed-out request may have been written, or not)."""
    counts = Counter(path.read_bytes().splitlines() if path.exists() else [])
    problems = [f"{path.name}: {line!r} {n} times" for line, n in counts.items() if n > 1]
    missing = [number for number in answered if not counts[b"line %d" % number]]
    if missing:
        problems.append(f"{path.name}: {len(missing)} answered lines missing, first {missing[0]}")
    return problems


def worker_sockets(pid: int) -> int:
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            count += os.readlink(fd).startswith("socket:")
    return count


def epoll_waiting_threads(pid: int) -> int:
    """How many of the process's threads wait in epoll: its main loop, and any request thread
    waiting for a connection's first byte (stock gthread's do, in a selector of their own)."""
    count = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            count += (task / "wchan").read_text() == "do_epoll_wait"
    return count


def threads_in_epoll(pid: int) -> int:
    """epoll_waiting_threads once the worker is idle: the most of a few looks, since its main
    loop may be busy at any one of them."""
    looks = []
    for _ in range(5):
        time.sleep(0.05)
        looks.append(epoll_waiting_threads(pid))
    return max(looks)


def client_file(name: str, tmp: Path) -> Path:
    return tmp / "logs" / ("silent.log" if name == "logwriter" else "naive.log")


PATH = "/v1/logs/silent?ack=written"


def measure_silent(name: str, count: int, seconds: float) -> dict[str, Any]:
    """Part 1: the client for `seconds` against `count` silent connections."""
    with tempfile.TemporaryDirectory(prefix="logwriter-bench-") as tmp_name:
        tmp = Path(tmp_name)
        proc, port = start(Contender(name, name), 1, tmp, threads=THREADS)
        try:
            silent = SilentConnections(port, count).open(time.monotonic() + SETUP_SECONDS)
            try:
                posts = post_lines(port, PATH, seconds)
            finally:
                silent.close()  # first: stock gthread's queued silent ones then end at once
        finally:
            stop(proc)
        problems = check_lines(client_file(name, tmp), posts.answered)
    return {
        "contender": name,
        "silent": count,
        **latency_figures(posts),
        "reopened": silent.reopened,
        "failed_to_open": silent.failed,
        "problems": problems,
    }


def measure_held(name: str, held: int, seconds: float) -> dict[str, Any]:
    """Part 2: the client for `seconds` against `held` kept-alive and `held` silent
    connections."""
    with tempfile.TemporaryDirectory(prefix="logwriter-bench-") as tmp_name:
        tmp = Path(tmp_name)
        settings = {
            "logwriter_env" if name == "logwriter" else "naive_options": HELD_SETTINGS[name]
        }
        proc, port = start(Contender(name, name), 1, tmp, threads=THREADS, **settings)
        try:
            (worker,) = process_tree(proc.pid)[1:]
            setup_ends = time.monotonic() + SETUP_SECONDS
            kept = kept_alive_connections(port, held, setup_ends)
            try:
                silent = SilentConnections(port, held).open(setup_ends)
                try:
                    time.sleep(0.5)  # the worker has accepted them all
                    sockets = worker_sockets(worker)
                    posts = post_lines(port, PATH, seconds)
                    waiting = threads_in_epoll(worker)
                    silent_open = silent.open_now
                finally:
                    silent.close()
            finally:
                for sock in kept:
                    sock.close()
        finally:
            stop(proc)
        problems = check_lines(client_file(name, tmp), posts.answered)
    return {
        "contender": name,
        "kept_alive": len(kept),
        "silent": silent_open,
        "worker_sockets": sockets,
        "threads_in_epoll": waiting,
        **latency_figures(posts),
        "reopened": silent.reopened,
        "problems": problems,
    }


def run(seconds: float, silent: int = SILENT, held: int = HELD) -> dict[str, Any]:
    """Both parts; the figures for the report. `problems` lists each failed check of the
    lines, empty when every one held; `skipped`, the measurements the cap left out."""
    ends = time.monotonic() + budget_seconds(seconds)
    result: dict[str, Any] = {
        "seconds": seconds,
        "silent": silent,
        "held": held,
        "threads": THREADS,
        "client_timeout_s": CLIENT_TIMEOUT,
        "budget_s": budget_seconds(seconds),
        "runs": [],
        "held_open": [],
        "skipped": [],
    }

    def fits(what: str) -> bool:
        # A measurement takes `seconds`, then at most a request's timeout, then a stop.
        if time.monotonic() + seconds + CLIENT_TIMEOUT + 30 <= ends:
            return True
        result["skipped"].append(what)
        print(f"silent connections: {what} skipped, past the case's cap", flush=True)
        return False

    started = time.monotonic()
    with many_descriptors():
        for count in (0, silent):
            for name in CONTENDERS:
                if fits(f"{name}, {count} silent"):
                    result["runs"].append(measure_silent(name, count, seconds))
                    print(f"silent connections | {summary_line(result['runs'][-1])}", flush=True)
        for name in CONTENDERS:
            if fits(f"{name}, {held} kept-alive + {held} silent"):
                result["held_open"].append(measure_held(name, held, seconds))
                print(f"held open | {summary_line(result['held_open'][-1])}", flush=True)
    result["took_s"] = time.monotonic() - started
    result["problems"] = [
        f"{run['contender']}: {problem}"
        for run in result["runs"] + result["held_open"]
        for problem in run["problems"]
    ]
    return result


def summary_line(run: dict[str, Any]) -> str:
    return (
        f"{run['contender']}, {run['silent']} silent: {run['answered']} answered, "
        f"{run['timeouts']} timed out, p99 {_ms(run['p99_ms'])} ms"
    )


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= CLIENT_TIMEOUT * 1000:
        return f"≥ {value:,.0f}"  # a timed-out request: it took at least this
    return f"{value:,.1f}"


def _ratio(value: float | None, base: float | None) -> str:
    if value is None or not base:
        return "-"
    prefix = "≥ " if value >= CLIENT_TIMEOUT * 1000 else ""
    ratio = value / base
    return f"{prefix}{ratio:,.{2 if ratio < 10 else 1 if ratio < 100 else 0}f}x"


def report(result: dict[str, Any]) -> str:
    seconds, timeout = result["seconds"], result["client_timeout_s"]
    baseline = {run["contender"]: run for run in result["runs"] if run["silent"] == 0}
    text = [
        f"1 worker x {result['threads']} request threads for both apps: logwriter's worker "
        "(service/worker.py), and the naive app on stock gthread, which gives each new "
        "connection a request thread for up to 5 s waiting for its first byte. One client posts "
        "one line at a time, each on a new connection, answered once written (ack=written), "
        f"for {seconds:g} s per row. Each request has {timeout:g} s in all: one that runs out "
        f"counts as timed out, at {timeout:g} s in the latencies (a figure marked ≥ is a "
        f"timeout). With {result['silent']} silent connections (they send nothing), each "
        "reopened as soon as the server closes it, and with none: the baseline, measured in the "
        "same run. Ratios are against the contender's baseline.\n",
        "| contender | silent conns | answered | timed out | p50 ms | p99 ms | max ms "
        f"| over {SLOW:g} s | silent reopened | answered / baseline | p99 / baseline |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run in result["runs"]:
        base = baseline.get(run["contender"])
        answered = (
            f"{run['answered'] / base['answered']:.2f}x"
            if base and base["answered"] and run is not base
            else "-"
        )
        p99 = _ratio(run["p99_ms"], base["p99_ms"]) if base and run is not base else "-"
        text.append(
            f"| {run['contender']} | {run['silent']} | {run['answered']:,} | {run['timeouts']} "
            f"| {_ms(run['p50_ms'])} | {_ms(run['p99_ms'])} | {_ms(run['max_ms'])} "
            f"| {run['over_1s']} | {run['reopened']} | {answered} | {p99} |"
        )
    held = result["held"]
    text += [
        f"\n{held} kept-alive connections (each has had a request, then idles) and {held} "
        f"silent ones, held open at once for {seconds:g} s while the same client posts; "
        f"timeouts raised past that: logwriter with LOGWRITER_MAX_CONNECTIONS={HELD_CONNECTIONS}, "
        f"LOGWRITER_IDLE_TIMEOUT={HELD_TIMEOUT} and --keep-alive {HELD_TIMEOUT}, the naive app "
        f"with --worker-connections {HELD_CONNECTIONS} and --keep-alive {HELD_TIMEOUT}. The "
        "kept-alive ones are opened first (behind the silent ones the naive app would not "
        "answer them for minutes). Threads in epoll_wait: the worker's main loop, plus each "
        "request thread waiting for a silent connection's first byte. p99 / baseline: against "
        "the baseline above.\n",
        "| contender | kept-alive | silent | worker's sockets | threads in epoll_wait "
        f"| answered | timed out | p50 ms | p99 ms | max ms | over {SLOW:g} s | p99 / baseline |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run in result["held_open"]:
        base = baseline.get(run["contender"])
        p99 = _ratio(run["p99_ms"], base["p99_ms"]) if base else "-"
        text.append(
            f"| {run['contender']} | {run['kept_alive']:,} | {run['silent']:,} "
            f"| {run['worker_sockets']:,} | {run['threads_in_epoll']} | {run['answered']:,} "
            f"| {run['timeouts']} | {_ms(run['p50_ms'])} | {_ms(run['p99_ms'])} "
            f"| {_ms(run['max_ms'])} | {run['over_1s']} | {p99} |"
        )
    verdict = (
        "Every answered line was in its file once, and none twice"
        if not result["problems"]
        else "Problems: " + "; ".join(result["problems"])
    )
    text.append(f"\nTook {result['took_s']:.0f} s (cap {result['budget_s']:.0f} s). {verdict}.")
    if result["skipped"]:
        text.append(f"Skipped, past the cap: {', '.join(result['skipped'])}.")
    return "\n".join(text)
