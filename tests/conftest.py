"""Fixtures, and the check that every test says what it needs.

Every test carries `unit` or one or more of the others (pyproject.toml registers them, and
--strict-markers refuses any other name):

- unit: in this process only: no root, no mount, no Docker, no process of its own, no tool
  outside the venv. `pytest -m unit` runs them in seconds on any machine, as any user.
- service: starts the real `logwriter` command (Gunicorn, its workers) as a subprocess.
- process: starts a Python process of its own that is not the service.
- root: needs root: a loop-mounted ext4 or a tmpfs, fsfreeze.
- tools: runs Debian tools (.ci/install-tools installs them): promtool, prometheus,
  logrotate, curl.
- docker: needs a Docker engine and Compose (../shared/bin/docker-here).

The helpers these fixtures use are in support.py.
"""

import os
import subprocess
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest
from support import Logwriters, Service, loop_mounted_ext4, unfreeze

UNIT = "unit"
NEEDS = ("service", "process", "root", "tools", "docker")

_REPORTS = pytest.StashKey[dict[str, pytest.TestReport]]()


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Refuse a test that says nothing of what it needs, or claims `unit` and a need."""
    wrong = []
    for item in items:
        marks = {mark.name for mark in item.iter_markers()} & {UNIT, *NEEDS}
        if not marks or (UNIT in marks and len(marks) > 1):
            wrong.append(f"{item.nodeid}: {sorted(marks) or 'no marker'}")
    if wrong:
        raise pytest.UsageError(
            f"each test is marked {UNIT}, or by what it needs ({', '.join(NEEDS)}):\n  "
            + "\n  ".join(wrong)
        )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item,
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    # Kept for start_logwriter, which prints its services' logs after a failed test.
    report = yield
    item.stash.setdefault(_REPORTS, {})[report.when] = report
    return report


@pytest.fixture(autouse=True)
def _unit_tests_start_no_process(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A test marked unit that starts a process fails, rather than run where it cannot."""
    if request.node.get_closest_marker(UNIT) is None:
        return

    def refused(*args: object, **kwargs: object) -> None:
        raise AssertionError("a unit test may not start a process: mark it by what it needs")

    monkeypatch.setattr(subprocess, "Popen", refused)
    for name in ("fork", "system", "posix_spawn", "posix_spawnp"):
        monkeypatch.setattr(os, name, refused)


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
