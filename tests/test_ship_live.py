"""logwriter-ship against the real service: a pipe of a million lines, files rotated by
Debian's real logrotate while a writer appends to them and the shipper is killed and
restarted, and a clean stop on SIGTERM."""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from support import Service, wait_until

SHIP = Path(sys.executable).parent / "logwriter-ship"
PAD = b"x" * 50
_LINE = re.compile(rb"w(\d{8}) x{50}")


def ship(service: Service, *args: str, **popen: object) -> "subprocess.Popen[str]":
    return subprocess.Popen(
        [str(SHIP), f"http://127.0.0.1:{service.port}", *args],
        stderr=subprocess.PIPE,
        text=True,
        **popen,  # type: ignore[call-overload]
    )


@pytest.mark.service
@pytest.mark.process
def test_a_pipe_of_a_million_lines_arrives_whole(service: Service):
    """`seq 1000000 | logwriter-ship ...` exits 0, and every number is on disk exactly once
    (in order, too: one connection to one worker)."""
    pipeline = (
        f"set -o pipefail; seq 1000000 | {SHIP} http://127.0.0.1:{service.port} --stream nums"
    )
    done = subprocess.run(
        ["bash", "-c", pipeline],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    expected = subprocess.run(["seq", "1000000"], capture_output=True, check=True).stdout
    assert (service.dir / "nums.log").read_bytes() == expected


@pytest.mark.process
def test_a_pipe_it_cannot_deliver_exits_1_saying_so(tmp_path: Path):
    done = subprocess.run(
        [str(SHIP), "http://127.0.0.1:9", "--timeout", "1"],
        input="a\nb\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "2 of 2 lines were not delivered" in done.stderr


class Writer(threading.Thread):
    """An app appending `rate` numbered lines a second to `path`, in bursts every 10 ms. Like
    an app that reopens its log when told to, it notices a rename only every 0.1 s, so it
    writes to the renamed file for a moment."""

    def __init__(self, path: Path, rate: int) -> None:
        super().__init__(daemon=True)
        self.path = path
        self.burst = rate // 100
        self.written = 0
        self.stop = threading.Event()

    def run(self) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        started = time.monotonic()
        bursts = 0
        while not self.stop.is_set():
            first = self.written
            lines = b"".join(b"w%08d %s\n" % (first + i, PAD) for i in range(self.burst))
            os.write(fd, lines)
            self.written += self.burst
            bursts += 1
            if bursts % 10 == 0:
                fd = self._reopened(fd)
            time.sleep(max(0.0, started + bursts / 100 - time.monotonic()))
        os.close(fd)

    def _reopened(self, fd: int) -> int:
        try:
            now = os.stat(self.path).st_ino
        except FileNotFoundError:
            return fd  # renamed, and not created again yet
        if now == os.fstat(fd).st_ino:
            return fd
        os.close(fd)
        return os.open(self.path, os.O_WRONLY | os.O_APPEND)  # logrotate creates it, not us


def numbers(data: bytes, where: str, torn_tail: bool = False) -> list[int]:
    """The line numbers in `data`; with `torn_tail`, an unfinished last line is left out (a
    copytruncate copy can end in the middle of a write, as logrotate documents)."""
    if torn_tail and not data.endswith(b"\n"):
        data = data[: data.rfind(b"\n") + 1]
    found = []
    for line in data.splitlines():
        match = _LINE.fullmatch(line)
        assert match, f"{where}: a torn or foreign line {line[:80]!r}"
        found.append(int(match[1]))
    return found


@pytest.mark.service
@pytest.mark.process
@pytest.mark.tools  # logrotate
@pytest.mark.parametrize("mode", ["create", "copytruncate"])
def test_files_rotated_by_logrotate_with_the_shipper_killed_once(
    service: Service, tmp_path: Path, mode: str
):
    """A writer appends 20,000 lines/s to app.log while logrotate rotates it five times; the
    shipper is killed (SIGKILL) once and restarted with its --state, and a rotation happens
    while it is down. Every line in the files arrives; a line arrives twice only within one
    batch, the one that was not acknowledged (or not checkpointed) when it was killed. With
    copytruncate, logrotate itself loses what is written between its copy and its truncate:
    those lines are in no file, and may or may not have been read before."""
    log, state = tmp_path / "app.log", tmp_path / "ship.json"
    conf = tmp_path / "logrotate.conf"
    conf.write_text(f"{log} {{\n  {mode}\n  rotate 10\n  missingok\n  nocompress\n}}\n")
    writer = Writer(log, rate=20_000)
    writer.start()
    command = ("--stream", "app", "--state", str(state), str(log))
    shipper = ship(service, *command)
    outputs = []

    def rotate() -> None:
        result = subprocess.run(
            ["logrotate", "--force", "--state", str(tmp_path / "logrotate.state"), str(conf)],
            capture_output=True,
            text=True,
        )
        assert result.returncode == 0, result.stderr

    for step in ("rotate", "rotate", "kill", "rotate", "restart", "rotate", "rotate"):
        time.sleep(0.7)
        if step == "rotate":
            rotate()
        elif step == "kill":
            shipper.kill()
            shipper.wait()
            outputs.append(shipper.stderr.read())  # type: ignore[union-attr]
        else:
            shipper = ship(service, *command)
    time.sleep(0.7)
    writer.stop.set()
    writer.join()

    files = sorted(tmp_path.glob("app.log*"))
    assert len(files) == 6  # app.log and the five rotated ones
    copies = mode == "copytruncate"
    in_files = Counter(
        n for path in files for n in numbers(path.read_bytes(), path.name, copies and path != log)
    )
    assert max(in_files.values()) == 1
    arrived = service.dir / "app.log"
    wait_until(
        lambda: set(in_files) <= set(numbers(arrived.read_bytes(), "arrived")),
        60,
        lambda: f"{len(in_files)} lines at the service",
    )
    shipper.send_signal(signal.SIGTERM)
    assert shipper.wait(30) == 0
    outputs.append(shipper.stderr.read())  # type: ignore[union-attr]

    received = Counter(numbers(arrived.read_bytes(), "arrived"))
    assert set(received) <= set(range(writer.written))  # nothing foreign
    twice = sorted(n for n, times in received.items() if times > 1)
    assert max(received.values()) <= 2
    # One batch: contiguous lines of one file, at most --batch-bytes (1 MiB) of them.
    if twice:
        assert twice == list(range(twice[0], twice[-1] + 1)), twice[:10]
        assert len(twice) * (len(PAD) + 11) <= 1 << 20
    lost_by_logrotate = writer.written - len(in_files)
    if mode == "create":
        assert lost_by_logrotate == 0
    assert "not shipped" not in "".join(outputs), outputs
    print(
        f"{mode}: written {writer.written}, in the files {len(in_files)} (logrotate lost "
        f"{lost_by_logrotate}), arrived {len(received)}, twice {len(twice)}"
    )


@pytest.mark.service
@pytest.mark.process
def test_sigterm_finishes_the_batch_in_flight_and_saves_the_checkpoint(
    service: Service, tmp_path: Path
):
    """SIGTERM in the middle of a large file: the shipper exits 0, its checkpoint says exactly
    how much of the file the service has; started again, it sends the rest, and no line
    twice."""
    log, state = tmp_path / "big.log", tmp_path / "ship.json"
    log.write_bytes(b"".join(b"w%08d %s\n" % (i, PAD) for i in range(400_000)))  # 24 MB
    # Small batches, so that it takes a few seconds and a SIGTERM finds it under way.
    command = ("--stream", "big", "--state", str(state), "--batch-bytes", "16K", str(log))
    shipper = ship(service, *command)
    arrived = service.dir / "big.log"
    wait_until(lambda: arrived.exists() and arrived.stat().st_size > 1 << 20, 30, "a batch")
    shipper.send_signal(signal.SIGTERM)
    assert shipper.wait(30) == 0, shipper.stderr.read()  # type: ignore[union-attr]
    offset = checkpoint_offset(state)
    assert 0 < offset < log.stat().st_size  # stopped part way
    assert arrived.stat().st_size == offset  # the lines are sent unchanged, byte for byte
    shipper = ship(service, *command)
    wait_until(lambda: arrived.stat().st_size == log.stat().st_size, 60, "the whole file")
    shipper.send_signal(signal.SIGTERM)
    assert shipper.wait(30) == 0
    assert arrived.read_bytes() == log.read_bytes()


def checkpoint_offset(state: Path) -> int:
    (entry,) = json.loads(state.read_text())["files"]
    return int(entry["offset"])
