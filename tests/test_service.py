"""The real `logwriter` command under load: stopping it mid-load, on a fast and a stalled disk,
and its metrics afterwards."""

import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
from support import QUEUE_OF_64_KIB, Logwriters, Service, frozen, stop_service, wait_until
from traffic import Load, check_files

pytestmark = pytest.mark.service

STOPS = [
    pytest.param(signal.SIGTERM, False, id="SIGTERM-to-arbiter"),
    pytest.param(signal.SIGINT, True, id="SIGINT-to-group"),  # a terminal's Ctrl-C
]


def drained_counts(service: Service) -> list[int]:
    return [int(n) for n in re.findall(r"drained (\d+) queued lines", service.log_text())]


@pytest.mark.parametrize(("sig", "group"), STOPS)
def test_stop_mid_load_keeps_every_acknowledged_line(
    start_logwriter: Logwriters, sig: int, group: bool
):
    service = start_logwriter(workers=2)
    load = Load(service.port).start()
    try:
        wait_until(lambda: load.acked_lines() > 20_000, 60, "20,000 acknowledged lines")
        service.signal(sig, group)
        assert service.wait(60) == 0, service.log_text()
    finally:
        load.stop()
    check_files(service.dir.glob("*.log"), load.acked)
    assert len(drained_counts(service)) == 2, service.log_text()
    assert "Traceback" not in service.log_text()


def test_large_requests_from_two_workers_stay_whole(start_logwriter: Logwriters):
    # Requests of up to 500 kB take several writev calls each (service.files.WRITE_BYTES):
    # the file's lock keeps the other worker's lines from landing between them.
    service = start_logwriter(workers=2)
    load = Load(service.port, clients=12, max_lines=6000).start()
    try:
        wait_until(lambda: load.acked_lines() > 600_000, 60, "600,000 acknowledged lines")
    finally:
        load.stop()
    wait_until(lambda: service.metric("logwriter_queue_depth") == 0, 30, "an empty queue")
    check_files(service.dir.glob("*.log"), load.acked)


@pytest.mark.root
@pytest.mark.parametrize(("sig", "group"), STOPS)
def test_stop_while_the_disk_stalls_drains_once_it_recovers(
    ext4_disk: Path, start_logwriter: Logwriters, sig: int, group: bool
):
    service = start_logwriter(
        workers=2,
        log_dir=ext4_disk / "logs",
        env={"LOGWRITER_QUEUE_BYTES": "2MiB", "LOGWRITER_MAX_BODY_BYTES": "1MiB"},
    )
    load = Load(service.port).start()
    try:
        wait_until(lambda: load.acked_lines() > 5_000, 60, "5,000 acknowledged lines")
        with frozen(ext4_disk):
            # The disk takes nothing: the queues fill, readiness drops and requests get 503.
            wait_until(lambda: load.statuses.get(503, 0) > 0, 30, "a 503 from a full queue")
            wait_until(
                lambda: b"queue is full" in service.request("GET", "/readyz").body,
                30,
                "/readyz to report the full queue",
            )
            service.signal(sig, group)
            time.sleep(2)
            assert service.proc.poll() is None, "exited before its queue reached the disk"
        assert service.wait(60) == 0, service.log_text()
    finally:
        load.stop()
    check_files(service.dir.glob("*.log"), load.acked)
    drained = drained_counts(service)
    assert len(drained) == 2 and sum(drained) > 0, service.log_text()


@pytest.mark.root
def test_a_worker_whose_writer_waits_on_a_frozen_disk_still_answers(
    ext4_disk: Path, start_logwriter: Logwriters
):
    # The writer gives up the GIL for each write: one that kept it would stop every thread of
    # its worker until the thaw (docs/performance.md, "The writer's hold and its own GIL").
    service = start_logwriter(log_dir=ext4_disk / "logs", env=QUEUE_OF_64_KIB)
    filler = b"".join(b"%063d\n" % i for i in range(1024))  # 64 KiB: the whole queue
    # The file is opened before the freeze: the write, not the open, is what waits.
    assert service.request("POST", "/v1/logs/filler?ack=written", b"first\n").status == 200
    with frozen(ext4_disk):
        assert service.request("POST", "/v1/logs/filler", filler).status == 202
        time.sleep(1)  # the writer has taken it and waits inside its first write
        ready = service.request("GET", "/readyz")  # a stopped worker would time out here
        assert ready.status == 503 and b"queue is full" in ready.body
        assert service.request("POST", "/v1/logs/other", b"one line\n").status == 503
    wait_until(lambda: service.metric("logwriter_queue_bytes") == 0, 30, "the write after the thaw")
    assert (service.dir / "filler.log").read_bytes() == b"first\n" + filler
    assert not (service.dir / "other.log").exists()


@pytest.mark.tools
def test_metrics_add_up_across_workers_after_load(start_logwriter: Logwriters):
    service = start_logwriter(workers=2)
    load = Load(service.port, clients=6).start()
    time.sleep(3)
    load.stop()
    wait_until(lambda: service.metric("logwriter_queue_depth") == 0, 30, "an empty queue")
    on_disk = check_files(service.dir.glob("*.log"), load.acked)
    assert on_disk == load.acked_lines() > 0
    assert service.metric("logwriter_lines_written_total") == on_disk
    assert service.metric("logwriter_lines_received_total") == on_disk
    assert service.metric("logwriter_queue_bytes") == 0
    assert service.metric("logwriter_writer_alive") == 2
    total_bytes = sum(path.stat().st_size for path in service.dir.glob("*.log"))
    assert service.metric("logwriter_bytes_written_total") == total_bytes
    exposition = service.request("GET", "/metrics").body
    lint = subprocess.run(["promtool", "check", "metrics"], input=exposition, capture_output=True)
    assert (lint.returncode, lint.stdout + lint.stderr) == (0, b"")


def test_hup_restarts_workers_gracefully_without_losing_a_line(start_logwriter: Logwriters):
    service = start_logwriter(workers=2)
    load = Load(service.port, clients=6).start()
    try:
        wait_until(lambda: load.acked_lines() > 5_000, 60, "5,000 acknowledged lines")
        service.signal(signal.SIGHUP)
        wait_until(lambda: len(drained_counts(service)) == 2, 60, "the old workers to drain")
        wait_until(lambda: service.metric("logwriter_writer_alive") == 2, 30, "new workers")
        acked_before = load.acked_lines()
        wait_until(lambda: load.acked_lines() > acked_before + 2_000, 60, "lines after HUP")
    finally:
        load.stop()
    wait_until(lambda: service.metric("logwriter_queue_depth") == 0, 30, "an empty queue")
    # child_exit retires the old workers' live gauges once the arbiter has reaped them.
    wait_until(lambda: service.metric("logwriter_workers") == 2, 30, "2 live workers")
    stop_service(service)
    check_files(service.dir.glob("*.log"), load.acked)
