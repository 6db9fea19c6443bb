"""Test helpers: the real `logwriter` command started as a subprocess on a free port, the one
wait_until, real files whose appends wait on demand (GatedFiles), the disks the root tests
stall, and the Docker engine and commands of the Docker tests. The fixtures built on them are
in conftest.py."""

import contextlib
import http.client
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from service.files import LogFiles

LOGWRITER = Path(sys.executable).parent / "logwriter"
ROOT = Path(__file__).resolve().parent.parent
DOCKER_HERE = ROOT.parent / "shared" / "bin" / "docker-here"


def wait_until(
    condition: Callable[[], object],
    timeout: float,
    what: str | Callable[[], str],
    *,
    interval: float = 0.05,
) -> None:
    """Call `condition` every `interval` seconds until it returns something true; fail with
    "timed out waiting for <what>" after `timeout` seconds (`what` may be a function, called
    then, to say what was seen).

    An OSError from `condition` counts as "not yet": what it asks may not be listening yet (a
    container starting, a Prometheus not up). The last one is named if the wait times out.
    Any other exception ends the wait at once.
    """
    deadline = time.monotonic() + timeout
    last_error: OSError | None = None
    while True:
        try:
            if condition():
                return
        except OSError as exc:
            last_error = exc
        if time.monotonic() >= deadline:
            described = what() if callable(what) else what
            error = f" (last error: {last_error!r})" if last_error is not None else ""
            raise AssertionError(f"timed out waiting for {described}{error}")
        time.sleep(interval)


@contextlib.contextmanager
def loop_mounted_ext4(tmp_path: Path) -> Iterator[Path]:
    """A small ext4 file system of our own, which fsfreeze can stall. Needs root."""
    image, mount = tmp_path / "disk.img", tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["truncate", "-s", "256M", str(image)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(mount)], check=True)
    try:
        yield mount
    finally:
        unfreeze(mount)
        subprocess.run(["umount", str(mount)], check=True)


class GatedFiles(LogFiles):
    """Real files whose appends wait at a gate: the disk taking nothing, on demand."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.gate = threading.Event()
        self.gate.set()
        self.at_gate = threading.Event()  # an append has come to the gate
        self.fsyncs: list[list[str]] = []

    def append(self, stream: str, buffers: list[bytes | memoryview]) -> None:
        self.at_gate.set()
        self.gate.wait()
        super().append(stream, buffers)

    def fsync(self, streams) -> None:  # type: ignore[no-untyped-def]
        self.fsyncs.append(list(streams))
        super().fsync(streams)


# Settings for a queue that one 64 KiB request fills (the body and line limits must allow it).
QUEUE_OF_64_KIB = {
    "LOGWRITER_QUEUE_BYTES": "64KiB",
    "LOGWRITER_MAX_BODY_BYTES": "64KiB",
    "LOGWRITER_MAX_LINE_BYTES": "16KiB",
}


@contextlib.contextmanager
def frozen(mount: Path) -> Iterator[None]:
    """The file system at `mount` frozen (fsfreeze): every write to it waits until the block
    ends. Needs root."""
    subprocess.run(["fsfreeze", "--freeze", str(mount)], check=True)
    try:
        yield
    finally:
        subprocess.run(["fsfreeze", "--unfreeze", str(mount)], check=True)


def unfreeze(mount: Path) -> None:
    """Thaw `mount` if it is frozen; nothing if it is not."""
    subprocess.run(["fsfreeze", "--unfreeze", str(mount)], capture_output=True)


def peak_rss_mib(pid: int) -> float:
    """The most memory the process has held (VmHWM), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmHWM for {pid}")


def docker_here() -> None:
    """A Docker engine with Compose, and the local stand-ins for every image the project's
    files name: ../shared/bin/docker-here, which does only what is missing. Not skipped when
    it fails: a machine like CI's can run the Docker tests, so failing to is a failure."""
    subprocess.run([str(DOCKER_HERE)], cwd=ROOT, check=True, timeout=600)


def docker(*args: str, timeout: float = 120, env: dict[str, str] | None = None) -> str:
    """`docker ARGS...`'s output; an assertion error with its output if it fails."""
    result = subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=timeout, env=env
    )
    assert result.returncode == 0, f"docker {' '.join(args)}:\n{result.stdout}{result.stderr}"
    return result.stdout


def http_get(url: str) -> tuple[int, bytes]:
    """The status and body of a GET, errors (4xx, 5xx) included."""
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


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
    tls: Path | None = None  # the certificate it serves HTTPS with, trusted by connection()

    def connection(self, timeout: float = 10) -> http.client.HTTPConnection:
        if self.tls is not None:
            context = ssl.create_default_context(cafile=str(self.tls))
            return http.client.HTTPSConnection(
                "127.0.0.1", self.port, timeout=timeout, context=context
            )
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
    tmp_path: Path,
    workers: int = 1,
    env: dict[str, str] | None = None,
    log_dir: Path | None = None,
    tls: Path | None = None,
    wrapper: Sequence[str] = (),
) -> Service:
    """Start `logwriter` in `tmp_path` (its cwd and its output file, service.out), under the
    `wrapper` command if one is given (setpriv, say), and return once each of its `workers`
    has a writer running. Tests use the start_logwriter fixture, which stops what it started;
    this is for fixtures of a wider scope."""
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
            [*wrapper, str(LOGWRITER)],
            env=environment,
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, for group signals
        )
    service = Service(proc, port, log_dir, output, tls)
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
    """Stop a service this test started, if it still runs, by its PID: SIGTERM, and after 30 s
    SIGKILL to its process group."""
    if service.proc.poll() is None:
        service.proc.send_signal(signal.SIGTERM)
        try:
            service.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(service.proc.pid, signal.SIGKILL)
            service.proc.wait()


@dataclass
class Logwriters:
    """What the start_logwriter fixture gives a test: call it to start a service in the test's
    folder; stop_all() stops, by PID, every one that still runs."""

    folder: Path
    started: list[Service] = field(default_factory=list)

    def __call__(
        self,
        workers: int = 1,
        env: dict[str, str] | None = None,
        log_dir: Path | None = None,
        tls: Path | None = None,
        wrapper: Sequence[str] = (),
    ) -> Service:
        folder = self.folder
        if self.started:  # a second service in one test: a folder of its own
            folder = self.folder / f"logwriter-{len(self.started) + 1}"
            folder.mkdir()
        service = start_service(
            folder, workers=workers, env=env, log_dir=log_dir, tls=tls, wrapper=wrapper
        )
        self.started.append(service)
        return service

    def stop_all(self) -> None:
        for service in self.started:
            stop_service(service)
