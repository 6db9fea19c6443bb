"""The writer thread's raised priority (LOGWRITER_WRITER_NICE): on a thread of this process,
and on the real service with and without CAP_SYS_NICE."""

import os
import signal
import threading
from pathlib import Path

import pytest
from support import Logwriters, Service

from service.priority import renice

# Runs logwriter with CAP_SYS_NICE dropped from its capabilities, root otherwise.
WITHOUT_CAP_SYS_NICE = ("setpriv", "--inh-caps=-sys_nice", "--bounding-set=-sys_nice")


def thread_nices(pid: int) -> dict[int, int]:
    """Each thread of a process: its id and nice value."""
    tids = [int(task.name) for task in Path(f"/proc/{pid}/task").iterdir()]
    return {tid: os.getpriority(os.PRIO_PROCESS, tid) for tid in tids}


def worker_thread_nices(service: Service) -> list[list[int]]:
    """Per worker, its threads' nice values, lowest first."""
    return [sorted(thread_nices(pid).values()) for pid in service.worker_pids()]


@pytest.mark.unit
def test_moves_only_the_thread_it_names():
    # Lowering a priority needs no privilege, so this runs anywhere.
    result: list[tuple[int, int]] = []
    nices: list[dict[int, int]] = []

    def in_thread() -> None:
        result.append(renice(threading.get_native_id(), 3))
        nices.append(thread_nices(os.getpid()))

    thread = threading.Thread(target=in_thread)
    thread.start()
    thread.join()
    assert result == [(3, 3)]
    assert nices[0][thread.native_id] == 3
    assert nices[0][threading.get_native_id()] == 0


@pytest.mark.service
@pytest.mark.root
def test_each_workers_writer_thread_runs_ten_levels_above_it(start_logwriter: Logwriters):
    service = start_logwriter(workers=2)
    # gthread starts request threads as requests come: have some.
    for _ in range(20):
        assert service.request("POST", "/v1/logs/app", b"a line\n").status == 202
    for nices in worker_thread_nices(service):
        assert nices[0] == -10 and nices[1:] == [0] * (len(nices) - 1), nices
    assert set(thread_nices(service.proc.pid).values()) == {0}  # the arbiter's
    assert service.log_text().count("writer thread runs at nice -10\n") == 2


@pytest.mark.service
@pytest.mark.root
def test_zero_leaves_the_writer_thread_where_its_worker_is(start_logwriter: Logwriters):
    service = start_logwriter(env={"LOGWRITER_WRITER_NICE": "0"})
    assert worker_thread_nices(service) == [[0] * len(worker_thread_nices(service)[0])]
    assert "writer thread runs at nice" not in service.log_text()


@pytest.mark.service
@pytest.mark.root
def test_without_the_privilege_the_writer_runs_as_its_worker_and_says_why(
    start_logwriter: Logwriters,
):
    service = start_logwriter(wrapper=WITHOUT_CAP_SYS_NICE)
    assert service.request("POST", "/v1/logs/app", b"a line\n").status == 202
    [nices] = worker_thread_nices(service)
    assert set(nices) == {0}
    assert (
        "writer thread runs at nice 0, not -10: that needs CAP_SYS_NICE or an RLIMIT_NICE of 30"
        in service.log_text()
    )
    service.signal(signal.SIGTERM)
    assert service.wait() == 0
    assert (service.dir / "app.log").read_bytes() == b"a line\n"
