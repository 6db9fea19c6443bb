"""Shared helpers: the real `logwriter` command started as a subprocess on a free port."""

import contextlib
import http.client
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

LOGWRITER = Path(sys.executable).parent / "logwriter"


def wait_until(condition, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@contextlib.contextmanager
def loop_mounted_ext4(tmp_path: Path) -> Iterator[Path]:
    """A small ext4 file system of our own, which fsfreeze can stall."""
    image, mount = tmp_path / "disk.img", tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["truncate", "-s", "256M", str(image)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["fsfreeze", "--unfreeze", str(mount)], capture_output=True)
        subprocess.run(["umount", str(mount)], check=True)


def peak_rss_mib(pid: int) -> float:
    """The most memory the process has held (VmHWM), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmHWM for {pid}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes


@dataclass
class Service:
    proc: subprocess.Popen[bytes]
    port: int
    dir: Path
    output: Path

    def connection(self, timeout: float = 10) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Response:
        conn = self.connection()
        try:
            conn.request(method, path, body=body, headers=headers or {})
            answer = conn.getresponse()
            return Response(answer.status, dict(answer.getheaders()), answer.read())
        finally:
            conn.close()

    def metric(self, name: str) -> float:
        """The value of one unlabelled sample in /metrics."""
        text = self.request("GET", "/metrics").body.decode()
        match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
        assert match, f"{name} not in /metrics:\n{text}"
        return float(match[1])

    def signal(self, sig: int, group: bool = False) -> None:
        if group:  # as a terminal's Ctrl-C does: the arbiter and every worker at once
            os.killpg(self.proc.pid, sig)
        else:
            self.proc.send_signal(sig)

    def wait(self, timeout: float = 60) -> int:
        return self.proc.wait(timeout)

    def worker_pids(self) -> list[int]:
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
        return [int(pid) for pid in children.split()]

    def log_text(self) -> str:
        return self.output.read_text(errors="replace")


def start_service(
    tmp_path: Path, workers: int = 1, env: dict[str, str] | None = None, log_dir: Path | None = None
) -> Service:
    port = free_port()
    log_dir = log_dir or tmp_path / "logs"
    output = tmp_path / "service.out"
    environment = {
        **os.environ,
        "LOGWRITER_DIR": str(log_dir),
        "LOGWRITER_BIND": f"127.0.0.1:{port}",
        "LOGWRITER_WORKERS": str(workers),
        **(env or {}),
    }
    with output.open("wb") as out:
        proc = subprocess.Popen(
            [str(LOGWRITER)],
            env=environment,
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, for group signals
        )
    service = Service(proc, port, log_dir, output)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"logwriter exited with {proc.returncode}:\n{service.log_text()}")
        try:
            if service.metric("logwriter_writer_alive") == workers:
                return service
        except (OSError, AssertionError, http.client.HTTPException):
            pass
        time.sleep(0.1)
    stop_service(service)
    raise AssertionError(f"logwriter did not come up:\n{service.log_text()}")


def stop_service(service: Service) -> None:
    """Stop a service this test started, if it still runs, by its PID."""
    if service.proc.poll() is None:
        service.proc.send_signal(signal.SIGTERM)
        try:
            service.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(service.proc.pid, signal.SIGKILL)
            service.proc.wait()


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    started = start_service(tmp_path)
    yield started
    stop_service(started)
