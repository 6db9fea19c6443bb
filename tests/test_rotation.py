"""Rotation with Debian's real logrotate while lines keep arriving at 2 workers."""

import subprocess
import time
from pathlib import Path

import pytest
from support import Logwriters, Service, stop_service, wait_until
from traffic import Load, check_files, request_body

pytestmark = [pytest.mark.service, pytest.mark.tools]

ROTATIONS = 6


def rotate_under_load(
    start_logwriter: Logwriters, tmp_path: Path, mode: str
) -> tuple[Path, Load, list[str]]:
    service = start_logwriter(workers=2)
    conf = tmp_path / "logrotate.conf"
    conf.write_text(
        f"{service.dir}/*.log {{\n  {mode}\n  rotate 1000\n  missingok\n  nocompress\n}}\n"
    )
    outputs = []
    load = Load(service.port, clients=6).start()
    try:
        wait_until(lambda: load.acked_lines() > 2_000, 60, "2,000 acknowledged lines")
        for _ in range(ROTATIONS):
            result = subprocess.run(
                ["logrotate", "--force", "--state", str(tmp_path / "state"), str(conf)],
                capture_output=True,
                text=True,
            )
            assert result.returncode == 0, result.stderr
            outputs.append(result.stderr)
            time.sleep(0.3)
    finally:
        load.stop()
    # Writing goes on into the live file after the last rotation. The load's lines go first:
    # the other worker may still hold some, and workers keep no order between them.
    wait_until(lambda: service.metric("logwriter_queue_depth") == 0, 30, "an empty queue")
    last = request_body(99, 0, 3)
    answer = service.request("POST", "/v1/logs/load?ack=written", last)
    assert answer.status == 200
    load.acked[(99, 0)] = 3
    stop_service(service)
    assert service.dir.joinpath("load.log").read_bytes().endswith(last)
    return service.dir, load, outputs


def test_create_mode_loses_and_doubles_nothing(tmp_path: Path, start_logwriter: Logwriters):
    logs, load, _ = rotate_under_load(start_logwriter, tmp_path, "create")
    files = sorted(logs.glob("load.log*"))
    assert len(files) > ROTATIONS  # load.log, load.log.1..6, and any -YYYYMMDDHH.backup
    check_files(files, load.acked)


def test_copytruncate_mode_tears_and_doubles_nothing(tmp_path: Path, start_logwriter: Logwriters):
    logs, load, _ = rotate_under_load(start_logwriter, tmp_path, "copytruncate")
    live = logs / "load.log"
    copies = sorted(set(logs.glob("load.log*")) - {live})
    assert len(copies) == ROTATIONS
    # logrotate itself loses what is written between its copy and its truncate, and a copy may
    # end inside a request; logwriter adds nothing to that: no NUL hole, no torn line in the
    # live file, no line twice.
    check_files([*copies, live], load.acked, allow_loss=True, cut_tails=copies)


@pytest.mark.parametrize("mode", ["create", "copytruncate"])
def test_rotated_files_are_not_written_after_rotation(tmp_path: Path, service: Service, mode: str):
    assert service.request("POST", "/v1/logs/r?ack=written", b"before\n").status == 200
    conf = tmp_path / "logrotate.conf"
    conf.write_text(f"{service.dir}/r.log {{\n  {mode}\n  rotate 5\n}}\n")
    subprocess.run(
        ["logrotate", "--force", "--state", str(tmp_path / "state"), str(conf)], check=True
    )
    assert service.request("POST", "/v1/logs/r?ack=written", b"after\n").status == 200
    stop_service(service)
    assert (service.dir / "r.log.1").read_bytes() == b"before\n"
    assert (service.dir / "r.log").read_bytes() == b"after\n"
