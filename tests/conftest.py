"""Fixtures: the real service started and stopped for a test, and the disks the root tests
stall. The helpers they use are in support.py."""

from collections.abc import Generator, Iterator
from pathlib import Path

import pytest
from support import Logwriters, Service, loop_mounted_ext4, unfreeze

_REPORTS = pytest.StashKey[dict[str, pytest.TestReport]]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item,
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    # Kept for start_logwriter, which prints its services' logs after a failed test.
    report = yield
    item.stash.setdefault(_REPORTS, {})[report.when] = report
    return report


@pytest.fixture
def start_logwriter(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Logwriters]:
    """start_logwriter(workers=1, env=None, log_dir=None) starts the real service in this
    test's folder and returns its Service. Every one started is stopped by PID at teardown if
    it still runs (a test may stop one itself, with support.stop_service or a signal); after
    a failed test, the end of each one's log is printed."""
    logwriters = Logwriters(tmp_path)
    yield logwriters
    logwriters.stop_all()
    reports = request.node.stash.get(_REPORTS, {})
    if any(report.failed for report in reports.values()):
        for service in logwriters.started:
            print(f"--- the end of {service.output} ---\n{service.log_text()[-5000:]}")


@pytest.fixture
def service(start_logwriter: Logwriters) -> Service:
    """A logwriter with the default settings and one worker."""
    return start_logwriter()


@pytest.fixture
def ext4_disk(tmp_path: Path, start_logwriter: Logwriters) -> Iterator[Path]:
    """A small loop-mounted ext4 file system (support.loop_mounted_ext4), for fsfreeze. At
    teardown it is thawed and the services are stopped before it is unmounted, so that none
    holds it: it depends on start_logwriter, whose teardown comes after its own."""
    with loop_mounted_ext4(tmp_path) as disk:
        yield disk
        unfreeze(disk)
        start_logwriter.stop_all()
