"""Overload: clients sending about twice what the disk path sustains, against a stalling disk.

The disk is a loop-mounted ext4 image, frozen with fsfreeze for FROZEN_S of every
FROZEN_S + THAWED_S seconds: writes block while it is frozen, as on a disk that stalls, and
nothing fails. A calibration run with clients sending flat out measures what this disk path
sustains (lines acknowledged per second beyond the queue's first filling); the overload run
then schedules twice that on CLIENT_THREADS connections. A connection whose request is held
waits, as a real client's would, so back-pressure lowers what is actually sent: the report
gives both. It checks:
  - the worker's peak RSS stays under the queue bound plus RSS_ALLOWANCE_MIB;
  - every request turned away gets 503 with Retry-After, and none gets anything else;
  - afterwards, every acknowledged line is in the file exactly once, and no line of a refused
    request is.
"""

import contextlib
import http.client
import json
import re
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.disks import loop_mounted_ext4

QUEUE_MIB = 16
RSS_ALLOWANCE_MIB = 64  # the interpreter, Flask, Gunicorn, and the bodies being read
LINES_PER_REQUEST = 1000
FROZEN_S, THAWED_S = 2.5, 0.25
LINE_BYTES = 200
CLIENT_THREADS = 128
_LINE = re.compile(rb"o(\d{7}) (\d{4}) x+")


@contextlib.contextmanager
def stalling_disk(tmp: Path) -> Iterator[tuple[Path, "Staller"]]:
    """A 2 GiB (sparse) ext4 image mounted under tmp, and the thread that stalls it."""
    with loop_mounted_ext4(tmp, "2G") as mount:
        staller = Staller(mount)
        try:
            yield mount, staller
        finally:
            staller.stop()


class Staller:
    """Freezes and thaws a mounted file system in a fixed rhythm, between start() and stop()."""

    def __init__(self, mount: Path) -> None:
        self._mount = mount
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        subprocess.run(["fsfreeze", "--unfreeze", str(self._mount)], capture_output=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            subprocess.run(["fsfreeze", "--freeze", str(self._mount)], check=True)
            self._stop.wait(FROZEN_S)
            subprocess.run(["fsfreeze", "--unfreeze", str(self._mount)], check=True)
            self._stop.wait(THAWED_S)


# b"o1234567" + b" 0042 " + pad + b"\n" makes LINE_BYTES.
_TAILS = [b" %04d %s\n" % (i, b"x" * (LINE_BYTES - 15)) for i in range(LINES_PER_REQUEST)]


def body(request: int) -> bytes:
    """Lines that name their request and position: one C-level join, so that the client keeps
    up with its schedule."""
    head = b"o%07d" % request
    return head + head.join(_TAILS)


@dataclass
class Client:
    """CLIENT_THREADS keep-alive connections sending request n at start + n / rate (as fast as
    they can when rate is None) for `seconds`; each request's outcome is recorded."""

    port: int
    rate: float | None  # requests per second
    seconds: float
    first_request: int = 0
    outcomes: dict[int, int] = field(default_factory=dict)  # request -> status (0: no answer)
    without_retry_after: int = 0  # 503s lacking the header
    _next: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self) -> None:
        self._next = self.first_request
        self._started = time.monotonic()
        threads = [threading.Thread(target=self._send) for _ in range(CLIENT_THREADS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    def _send(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        while True:
            with self._lock:
                request = self._next
                self._next += 1
            due = 0.0 if self.rate is None else (request - self.first_request) / self.rate
            if due >= self.seconds or time.monotonic() - self._started >= self.seconds:
                break
            time.sleep(max(0.0, self._started + due - time.monotonic()))
            try:
                conn.request("POST", "/v1/logs/overload", body(request))
                answer = conn.getresponse()
                answer.read()
                status = answer.status
                missing_header = status == 503 and answer.getheader("Retry-After") is None
            except (OSError, http.client.HTTPException):
                conn.close()  # reconnects on the next request
                status, missing_header = 0, False
            with self._lock:
                self.outcomes[request] = status
                self.without_retry_after += missing_header
        conn.close()

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self._started


def metric_total(port: int, name: str) -> float:
    """The sum of a metric's samples in logwriter's /metrics (all labels, all workers); 0 if
    it has none yet."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith((f"{name} ", f"{name}{{"))
    )


def verify(path: Path, outcomes: dict[int, int]) -> list[str]:
    """What is wrong with the file, given each request's outcome: [] when nothing is."""
    counts: dict[int, int] = {}
    problems = []
    data = path.read_bytes() if path.exists() else b""
    for number, line in enumerate(data.splitlines(), start=1):
        match = _LINE.fullmatch(line)
        if not match:
            problems.append(f"line {number} is torn or foreign: {line[:40]!r}")
            continue
        request, position = int(match.group(1)), int(match.group(2))
        if position != counts.get(request, 0) % LINES_PER_REQUEST:
            problems.append(f"line {number}: request {request} out of order")
        counts[request] = counts.get(request, 0) + 1
    for request, status in outcomes.items():
        found = counts.get(request, 0)
        if status == 202 and found != LINES_PER_REQUEST:
            problems.append(f"acknowledged request {request}: {found} lines on disk")
        if status not in (202, 0) and found:
            problems.append(f"refused request {request} ({status}): {found} lines on disk")
        if status == 0 and found not in (0, LINES_PER_REQUEST):
            problems.append(f"unanswered request {request}: {found} lines on disk")
    return problems


Service = tuple[subprocess.Popen[bytes], int, int]  # the process, its port, its worker's PID


def run(
    tmp: Path,
    seconds: float,
    start_service: Callable[[Path, dict[str, str]], Service],
    stop_service: Callable[[subprocess.Popen[bytes]], None],
    peak_rss_mib: Callable[[list[int]], float],
) -> dict[str, Any]:
    """The whole experiment. Returns the figures for the report; `problems` lists each check
    that failed, empty when every one held."""
    with stalling_disk(tmp) as (mount, staller):
        env = {"LOGWRITER_QUEUE_BYTES": f"{QUEUE_MIB}MiB"}
        proc, port, worker = start_service(mount / "logs", env)
        try:
            warm = Client(port, rate=None, seconds=1)  # so that the baseline is steady-state
            warm.run()
            staller.start()
            calibration = Client(port, None, max(10.0, seconds / 3), first_request=1_000_000)
            calibration.run()
            # What the disk took beyond the queue's first filling, per second.
            queue_lines = QUEUE_MIB * 2**20 / LINE_BYTES
            sustained = (_acked_lines(calibration) - queue_lines) / calibration.elapsed
            offered = 2 * sustained / LINES_PER_REQUEST
            overload = Client(port, offered, seconds, first_request=2_000_000)
            overload.run()
            staller.stop()
            acked, deadline = _acked_lines(warm, calibration, overload), time.monotonic() + 120
            while (
                metric_total(port, "logwriter_lines_written_total") < acked
                and time.monotonic() < deadline
            ):
                time.sleep(0.2)  # the drain; what it leaves unwritten, verify() reports
            peak_rss = peak_rss_mib([worker])
        finally:
            staller.stop()
            stop_service(proc)
        outcomes = {**warm.outcomes, **calibration.outcomes, **overload.outcomes}
        problems = verify(mount / "logs" / "overload.log", outcomes)
    statuses = dict(Counter(overload.outcomes.values()))
    unexpected = {s: n for s, n in statuses.items() if s not in (202, 503)}
    if unexpected:
        problems.append(f"answers other than 202 and 503: {json.dumps(unexpected)}")
    if overload.without_retry_after:
        problems.append(f"{overload.without_retry_after} 503s without Retry-After")
    rss_bound = QUEUE_MIB + RSS_ALLOWANCE_MIB
    if peak_rss > rss_bound:
        problems.append(f"peak RSS {peak_rss:.0f} MiB over {rss_bound} MiB")
    sent = len(overload.outcomes)
    return {
        "seconds": seconds,
        "sustained_lines_per_s": sustained,
        "target_lines_per_s": 2 * sustained,
        "answered_lines_per_s": sent * LINES_PER_REQUEST / overload.elapsed,
        "acked_lines_per_s": statuses.get(202, 0) * LINES_PER_REQUEST / overload.elapsed,
        "statuses": statuses,
        "peak_rss_mib": peak_rss,
        "rss_bound_mib": rss_bound,
        "problems": problems,
    }


def report(result: dict[str, Any]) -> str:
    statuses = ", ".join(f"{n:,} x {s or 'no answer'}" for s, n in result["statuses"].items())
    verdict = "every check held" if not result["problems"] else "; ".join(result["problems"])
    return (
        f"Overload, {result['seconds']:g} s, 1 worker, {QUEUE_MIB} MiB queue, disk frozen "
        f"{FROZEN_S:g} s of every {FROZEN_S + THAWED_S:g} s: the disk path sustained "
        f"{result['sustained_lines_per_s']:,.0f} lines/s. {CLIENT_THREADS} connections were "
        f"scheduled to send twice that, {result['target_lines_per_s']:,.0f} lines/s; "
        "back-pressure (request threads held up to 1 s while the queue is full, and requests "
        f"waiting unread behind them) let {result['answered_lines_per_s']:,.0f} lines/s be "
        f"answered, {result['acked_lines_per_s']:,.0f} lines/s acknowledged. Answers: "
        f"{statuses}. Worker peak RSS "
        f"{result['peak_rss_mib']:.0f} MiB (bound: queue {QUEUE_MIB} + {RSS_ALLOWANCE_MIB} MiB "
        f"= {result['rss_bound_mib']} MiB). After the run: {verdict}."
    )


def _acked_lines(*clients: Client) -> int:
    return sum(
        LINES_PER_REQUEST for c in clients for status in c.outcomes.values() if status == 202
    )
