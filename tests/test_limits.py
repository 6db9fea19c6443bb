"""Limits that hold under abuse: slow and idle clients, Gunicorn's request line and header
limits, and memory while a client floods a service whose disk has stalled."""

import http.client
import socket
import threading
import time
from pathlib import Path

import pytest
from support import Logwriters, frozen, peak_rss_mib, stop_service, wait_until
from traffic import check_files, request_body

pytestmark = pytest.mark.service


def test_stalled_bodies_get_408_and_do_not_starve_others(start_logwriter: Logwriters):
    service = start_logwriter(env={"LOGWRITER_BODY_TIMEOUT": "1"})
    stalled = []
    try:
        for _ in range(12):  # more than the 8 request threads
            sock = socket.create_connection(("127.0.0.1", service.port))
            sock.sendall(b"POST /v1/logs/slow HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\nab")
            stalled.append(sock)
        started = time.monotonic()
        answer = service.request("POST", "/v1/logs/ok", b"fine\n")
        assert answer.status == 202
        assert time.monotonic() - started < 5
        for sock in stalled:
            sock.settimeout(10)
            assert sock.recv(4096).startswith(b"HTTP/1.1 408")
    finally:
        for sock in stalled:
            sock.close()
    stop_service(service)
    assert not (service.dir / "slow.log").exists()


def test_gunicorn_request_line_and_header_limits(start_logwriter: Logwriters):
    service = start_logwriter()
    long_path = "/v1/logs/" + "a" * 5000
    assert service.request("POST", long_path, b"x\n").status == 414
    big_header = {"X-Big": "b" * 9000}
    assert service.request("POST", "/v1/logs/h", b"x\n", big_header).status == 431
    many = {f"X-H{i}": "v" for i in range(120)}
    assert service.request("POST", "/v1/logs/h", b"x\n", many).status == 431
    assert service.request("GET", "/healthz").status == 200
    stop_service(service)
    assert not (service.dir / "h.log").exists()


QUEUE_MIB, BODY_MIB, THREADS = 4, 1, 8
# The stated bound (README): the queue, plus up to three copies of a body per request thread.
BOUND_MIB = QUEUE_MIB + THREADS * 3 * BODY_MIB


@pytest.mark.root
def test_memory_stays_bounded_while_a_flood_meets_a_stalled_disk(
    ext4_disk: Path, start_logwriter: Logwriters
):
    disk = ext4_disk
    service = start_logwriter(
        log_dir=disk / "logs",
        env={"LOGWRITER_QUEUE_BYTES": f"{QUEUE_MIB}MiB", "LOGWRITER_MAX_BODY_BYTES": "1MiB"},
    )
    (worker,) = service.worker_pids()
    acked: dict[tuple[int, int], int] = {}
    statuses: list[int] = []
    stop = threading.Event()

    def flood(client: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", service.port, timeout=30)
        for request in range(10_000):
            if stop.is_set():
                break
            body = request_body(client, request, 9_000)  # about 0.8 MiB
            conn.request("POST", "/v1/logs/flood", body)
            answer = conn.getresponse()
            answer.read()
            statuses.append(answer.status)
            if answer.status == 202:
                acked[(client, request)] = 9_000
        conn.close()

    try:
        warm = request_body(98, 0, 9_000)
        assert service.request("POST", "/v1/logs/warm?ack=written", warm).status == 200
        before = peak_rss_mib(worker)
        with frozen(disk):
            clients = [threading.Thread(target=flood, args=(c,)) for c in range(10)]
            for client in clients:
                client.start()
            time.sleep(6)
            stop.set()
            for client in clients:
                client.join(60)
            grown = peak_rss_mib(worker) - before
        print(f"peak RSS grew {grown:.1f} MiB (bound {BOUND_MIB} MiB)")
        assert 503 in statuses and 202 in statuses
        assert grown < BOUND_MIB + 16, f"peak RSS grew {grown:.0f} MiB, bound {BOUND_MIB}"
        wait_until(lambda: service.metric("logwriter_queue_depth") == 0, 60, "the drain")
    finally:
        stop.set()  # the flood's threads end whatever failed
    stop_service(service)
    check_files([service.dir / "flood.log"], acked)
