"""A real full disk: a small tmpfs filled up under load, then freed. The writer keeps what it
could not write, retries, and resumes by itself; nothing acknowledged is lost or doubled."""

import errno
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import Logwriters, Response, Service, stop_service, wait_until
from traffic import Load, check_files

pytestmark = [pytest.mark.service, pytest.mark.root]


@pytest.fixture
def small_tmpfs(tmp_path: Path, start_logwriter: Logwriters) -> Iterator[Path]:
    """A 64 MiB tmpfs, unmounted at teardown once the services that may write to it are
    stopped (it depends on start_logwriter, whose teardown comes after its own)."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)], check=True)
    yield mount
    start_logwriter.stop_all()
    subprocess.run(["umount", str(mount)], check=True)


def fill(path: Path) -> None:
    """Write zeros until the file system says ENOSPC."""
    with path.open("wb", buffering=0) as filler:
        try:
            while True:
                filler.write(bytes(4096))
        except OSError as exc:
            assert exc.errno == errno.ENOSPC


def errors(service: Service, kind: str) -> float:
    text = service.request("GET", "/metrics").body.decode()
    match = re.search(rf'^logwriter_writer_errors_total{{kind="{kind}"}} (\S+)$', text, re.M)
    return float(match[1]) if match else 0.0


def test_full_disk_loses_nothing_and_recovers_by_itself(
    small_tmpfs: Path, start_logwriter: Logwriters
):
    disk = small_tmpfs
    service = start_logwriter(
        workers=2,
        log_dir=disk / "logs",
        env={"LOGWRITER_QUEUE_BYTES": "2MiB", "LOGWRITER_MAX_BODY_BYTES": "1MiB"},
    )
    load = Load(service.port, clients=4, max_lines=100).start()
    # Requests of up to 500 kB, most of them more than one writev (service.files.WRITE_BYTES).
    big = Load(service.port, clients=2, max_lines=6000, path="/v1/logs/big").start()
    fsync_answer: list[Response] = []
    try:
        wait_until(lambda: load.acked_lines() > 1_000, 60, "1,000 acknowledged lines")
        fill(disk / "filler")
        wait_until(lambda: errors(service, "ENOSPC") > 0, 30, "the writer to meet ENOSPC")
        wait_until(
            lambda: b"ENOSPC" in service.request("GET", "/readyz").body,
            30,
            "/readyz to report the full disk",
        )
        waiter = threading.Thread(
            target=lambda: fsync_answer.append(
                service.request("POST", "/v1/logs/fsynced?ack=fsync", b"durable\n")
            )
        )
        waiter.start()
        wait_until(lambda: load.statuses.get(503, 0) > 0, 30, "503s once the queue is full")
        assert not fsync_answer, "an ack=fsync request returned while the disk was full"
        (disk / "filler").unlink()
        freed = time.monotonic()
        wait_until(lambda: service.request("GET", "/readyz").status == 200, 30, "readiness again")
        assert time.monotonic() - freed < 5, "took more than 5 s to resume"
        waiter.join(30)
        assert [answer.status for answer in fsync_answer] == [200]
        acked_before, big_before = load.acked_lines(), big.acked_lines()
        wait_until(lambda: load.acked_lines() > acked_before + 1_000, 30, "lines accepted")
        wait_until(lambda: big.acked_lines() > big_before, 30, "large requests accepted")
    finally:
        load.stop()
        big.stop()
    wait_until(lambda: service.metric("logwriter_queue_depth") == 0, 30, "an empty queue")
    stop_service(service)
    check_files([service.dir / "load.log"], load.acked)
    check_files([service.dir / "big.log"], big.acked)
    assert (service.dir / "fsynced.log").read_bytes() == b"durable\n"
