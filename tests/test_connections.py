"""Connections that send nothing, or never close, against the real service: they must not hold
its request threads (service/worker.py), and a stop still drains; connections opened at once
spread over the workers. One worker, 8 threads, unless a test says otherwise."""

import http.client
import os
import resource
import selectors
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from support import LOGWRITER, Logwriters, Service, free_port, wait_until
from traffic import Load, check_files

pytestmark = pytest.mark.service


@pytest.fixture(autouse=True)
def _many_descriptors() -> Iterator[None]:
    """This test process holds thousands of sockets (the service raises its own limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8192)), hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@contextmanager
def silent_connections(port: int, count: int) -> Iterator[list[int]]:
    """`count` connections that never send a byte, each reopened as soon as the service closes
    it; yields a one-item list counting the reopenings."""
    reopened = [0]
    stop = threading.Event()
    selector = selectors.DefaultSelector()

    def open_one() -> None:
        selector.register(socket.create_connection(("127.0.0.1", port)), selectors.EVENT_READ)

    def keep_open() -> None:
        while not stop.is_set():
            for key, _ in selector.select(0.1):
                sock: socket.socket = key.fileobj  # type: ignore[assignment]
                try:
                    closed = not sock.recv(1)
                except ConnectionError:
                    closed = True
                if closed:
                    selector.unregister(sock)
                    sock.close()
                    try:
                        open_one()
                    except ConnectionError:  # refused or reset: the service is stopping
                        return
                    reopened[0] += 1

    for _ in range(count):
        open_one()
    thread = threading.Thread(target=keep_open, daemon=True)
    thread.start()
    try:
        yield reopened
    finally:
        stop.set()
        thread.join(10)
        for key in list(selector.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]
        selector.close()


def post_one_line_at_a_time(service: Service, seconds: float) -> list[float]:
    """One line a request, each on a new connection (so it goes through accept like the
    silent ones) and answered once written, for `seconds`; the time each answer took."""
    latencies = []
    deadline = time.monotonic() + seconds
    number = 0
    while time.monotonic() < deadline:
        started = time.monotonic()
        conn = http.client.HTTPConnection("127.0.0.1", service.port, timeout=10)
        conn.request("POST", "/v1/logs/real?ack=written", b"line %d\n" % number)
        answer = conn.getresponse()
        answer.read()
        conn.close()
        latencies.append(time.monotonic() - started)
        assert answer.status == 200, answer.status
        number += 1
    return latencies


def p99(latencies: list[float]) -> float:
    return sorted(latencies)[int(len(latencies) * 0.99)]


def epoll_waiting_threads(pid: int) -> int:
    """How many of the process's threads wait in epoll: its main loop only, unless request
    threads wait for a connection's first byte (stock gthread does, in a selector of its own)."""
    tasks = Path(f"/proc/{pid}/task").iterdir()
    return sum((task / "wchan").read_text() == "do_epoll_wait" for task in tasks)


def test_silent_connections_reopened_do_not_delay_real_requests(start_logwriter: Logwriters):
    service = start_logwriter()
    with silent_connections(service.port, 64) as reopened:
        latencies = post_one_line_at_a_time(service, seconds=15)
    assert reopened[0] >= 64, "the idle timeout (5 s) should have closed every silent one"
    print(f"{len(latencies)} requests, p99 {p99(latencies) * 1000:.1f} ms")
    assert p99(latencies) < 0.1
    assert max(latencies) < 1.0
    lines = (service.dir / "real.log").read_bytes().splitlines()
    assert lines == [b"line %d" % n for n in range(len(latencies))]


def test_two_thousand_open_connections_leave_the_threads_free(start_logwriter: Logwriters):
    service = start_logwriter(
        env={
            "LOGWRITER_MAX_CONNECTIONS": "2500",
            "LOGWRITER_IDLE_TIMEOUT": "120",
            "GUNICORN_CMD_ARGS": "--keep-alive 120",
        }
    )
    kept_alive = []
    with silent_connections(service.port, 1000):
        for _ in range(1000):  # each has had a request, and now idles
            conn = service.connection()
            conn.request("GET", "/healthz")
            conn.getresponse().read()
            kept_alive.append(conn)
        (worker,) = service.worker_pids()
        open_sockets = sum(
            fd.resolve().name.startswith("socket:") for fd in Path(f"/proc/{worker}/fd").iterdir()
        )
        assert open_sockets >= 2000
        latencies = post_one_line_at_a_time(service, seconds=3)
        waiting = []  # sampled: the main loop is not always in epoll at the instant one looks
        for _ in range(20):
            waiting.append(epoll_waiting_threads(worker))
            time.sleep(0.05)
    for conn in kept_alive:
        conn.close()
    print(f"{open_sockets} sockets, {len(latencies)} requests, p99 {p99(latencies) * 1000:.1f} ms")
    assert p99(latencies) < 0.1
    assert max(waiting) == 1, f"threads in epoll, by sample: {waiting} (the main loop's alone: 1)"


def connections_by_worker(service: Service) -> list[int]:
    """How many of the service's TCP connections each worker process holds."""
    port = f"{service.port:04X}"
    established = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1].endswith(f":{port}") and fields[3] == "01":  # local port, ESTABLISHED
            established.add(fields[9])  # the socket's inode
    return [
        sum(
            fd.resolve().name.removeprefix("socket:[").rstrip("]") in established
            for fd in Path(f"/proc/{worker}/fd").iterdir()
        )
        for worker in service.worker_pids()
    ]


def test_connections_opened_at_once_spread_over_the_workers(start_logwriter: Logwriters):
    # 32 connections on 2 workers of 8 threads: the first worker to wake must not take them all
    # (what it did without service/worker.py's pause: docs/design.md, Connections).
    service = start_logwriter(workers=2)
    conns = [socket.create_connection(("127.0.0.1", service.port)) for _ in range(32)]
    try:
        wait_until(
            lambda: sum(connections_by_worker(service)) == 32, 10, "every connection accepted"
        )
        counts = connections_by_worker(service)
        for sock in conns:  # each one is served: a request on it is answered
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: logwriter\r\n\r\n")
        for sock in conns:
            assert sock.recv(4096).startswith(b"HTTP/1.1 200 ")
    finally:
        for sock in conns:
            sock.close()
    print(f"connections by worker: {counts}")
    assert max(counts) <= 20, f"connections by worker: {counts}"


def test_a_silent_connection_is_closed_at_its_deadline(start_logwriter: Logwriters):
    service = start_logwriter(env={"LOGWRITER_IDLE_TIMEOUT": "1"})
    silent = socket.create_connection(("127.0.0.1", service.port))
    late = socket.create_connection(("127.0.0.1", service.port))
    started = time.monotonic()
    silent.settimeout(5)
    time.sleep(0.5)
    late.sendall(b"POST /v1/logs/late HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nx\n")
    assert silent.recv(1) == b""
    closed_after = time.monotonic() - started
    assert 0.9 < closed_after < 1.5, closed_after
    late.settimeout(5)
    assert late.recv(100).startswith(b"HTTP/1.1 202")
    silent.close()
    late.close()


def test_clients_that_never_close_do_not_stall_the_worker(start_logwriter: Logwriters):
    service = start_logwriter()
    # Each asks for "Connection: close", reads nothing and never closes: stock gthread waits
    # for each one's FIN on its main loop, up to 2 s.
    stubborn = []
    for _ in range(16):
        sock = socket.create_connection(("127.0.0.1", service.port))
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        stubborn.append(sock)
    latencies = post_one_line_at_a_time(service, seconds=2)
    for sock in stubborn:
        sock.settimeout(5)
        assert sock.recv(100).startswith(b"HTTP/1.1 200")
        sock.close()
    assert max(latencies) < 0.5, max(latencies)


def test_a_head_that_stalls_is_cut_off_at_the_deadline(start_logwriter: Logwriters):
    service = start_logwriter(env={"LOGWRITER_BODY_TIMEOUT": "1"})
    stalled = []
    for _ in range(8):  # as many as there are threads: each holds one until its deadline
        sock = socket.create_connection(("127.0.0.1", service.port))
        sock.sendall(b"POST /v1/logs/x HTTP/1.1\r\nHost: x\r\nContent-Le")
        stalled.append(sock)
    started = time.monotonic()
    answer = service.request("POST", "/v1/logs/real?ack=written", b"after\n")
    assert answer.status == 200
    assert time.monotonic() - started < 2.5
    for sock in stalled:
        sock.settimeout(5)
        assert sock.recv(100) == b""  # closed, nothing written
        sock.close()
    assert not (service.dir / "x.log").exists()


def test_sigterm_with_500_silent_connections_drains_and_exits_0(start_logwriter: Logwriters):
    service = start_logwriter()
    load = Load(service.port, clients=4, max_lines=100, seconds=20).start()
    with silent_connections(service.port, 500):
        wait_until(lambda: load.acked_lines() > 2000, 20, "some acknowledged lines")
        started = time.monotonic()
        service.signal(signal.SIGTERM)
        assert service.wait(30) == 0
        took = time.monotonic() - started
    load.stop()
    print(f"exited 0 after {took:.1f} s")
    assert took < 10
    check_files([service.dir / "load.log"], load.acked)
    assert "writer stopped: drained" in service.log_text()


def test_too_low_an_open_file_limit_is_refused_at_start(tmp_path: Path):
    env = {
        **os.environ,
        "LOGWRITER_DIR": str(tmp_path / "logs"),
        "LOGWRITER_BIND": f"127.0.0.1:{free_port()}",
        "LOGWRITER_MAX_CONNECTIONS": "4000",
    }
    result = subprocess.run(
        ["prlimit", "--nofile=1024:1024", str(LOGWRITER)],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert "each worker may need 4320 open files" in result.stderr
    assert "ulimit -n 4320" in result.stderr


def test_a_low_soft_limit_is_raised_for_the_workers(start_logwriter: Logwriters):
    resource.setrlimit(
        resource.RLIMIT_NOFILE, (1024, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
    )
    service = start_logwriter()  # inherits the soft limit of 1024; needs 1000 + 256 + 64
    (worker,) = service.worker_pids()
    limits = Path(f"/proc/{worker}/limits").read_text()
    (line,) = [line for line in limits.splitlines() if line.startswith("Max open files")]
    assert line.split()[3] == "1320", line
