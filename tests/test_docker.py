"""End to end with a real Docker engine: `docker-compose up -d --build`, lines in through the
published port, seen by the stack's own Prometheus, then `docker-compose stop` under load.

../shared/bin/docker-here (run by .ci/run) installs and starts the engine and Compose v1 and
builds local stand-ins for the python and prom/prometheus images: no registry is reachable.
"""

import json
import os
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support import ROOT, docker_here, free_port, http_get, wait_until
from traffic import Load, check_files, request_body

pytestmark = pytest.mark.docker


@dataclass
class Stack:
    env: dict[str, str]
    logwriter_port: int
    prometheus_port: int

    def compose(self, *args: str, check: bool = True) -> str:
        result = subprocess.run(
            ["docker-compose", *args], cwd=ROOT, env=self.env, capture_output=True, text=True
        )
        assert not check or result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    def container(self, service: str) -> str:
        return self.compose("ps", "-q", service).strip()


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    docker_here()
    ports = free_port(), free_port()
    env = {
        **os.environ,
        "COMPOSE_PROJECT_NAME": f"logwritertest{os.getpid()}",
        "LOGWRITER_PORT": str(ports[0]),
        "PROMETHEUS_PORT": str(ports[1]),
    }
    started = Stack(env, *ports)
    try:
        started.compose("up", "-d", "--build")
        yield started
    finally:
        started.compose("down", "-v", "--remove-orphans", check=False)


def inspect(container: str, template: str) -> str:
    result = subprocess.run(
        ["docker", "inspect", "-f", template, container], capture_output=True, text=True, check=True
    )
    return result.stdout.strip()


def prometheus_value(stack: Stack, expr: str) -> float | None:
    query = urllib.parse.urlencode({"query": expr})
    status, body = http_get(f"http://127.0.0.1:{stack.prometheus_port}/api/v1/query?{query}")
    result = json.loads(body)["data"]["result"] if status == 200 else []
    return float(result[0]["value"][1]) if result else None


def test_compose_stack_end_to_end(stack: Stack, tmp_path: Path):
    base = f"http://127.0.0.1:{stack.logwriter_port}"
    wait_until(
        lambda: http_get(f"{base}/readyz")[0] == 200,
        120,
        "logwriter in its container",
        interval=0.5,
    )

    body = request_body(99, 0, 500)
    request = urllib.request.Request(
        f"{base}/v1/logs/docker?ack=written", data=body, headers={"Content-Type": "text/plain"}
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert json.load(answer) == {"accepted": 500}

    # The stack's own Prometheus scrapes logwriter every 5 s and sees those lines.
    wait_until(
        lambda: (prometheus_value(stack, "sum(logwriter_lines_written_total)") or 0) >= 500,
        120,
        "Prometheus to report the lines written",
        interval=0.5,
    )
    assert prometheus_value(stack, 'up{job="logwriter"}') == 1
    container = stack.container("logwriter")
    wait_until(
        lambda: inspect(container, "{{.State.Health.Status}}") == "healthy",
        60,
        "the image's HEALTHCHECK to pass",
        interval=0.5,
    )
    assert inspect(container, "{{.Config.User}}") == "logwriter"

    # Stop while clients are still posting: the drain must keep every acknowledged line.
    load = Load(stack.logwriter_port, clients=6).start()
    try:
        wait_until(lambda: load.acked_lines() > 5_000, 60, "5,000 acknowledged lines", interval=0.5)
        stopping = time.monotonic()
        stack.compose("stop")
        stop_seconds = time.monotonic() - stopping
    finally:
        load.stop()
    state = json.loads(inspect(container, "{{json .State}}"))
    assert (state["Status"], state["ExitCode"], state["OOMKilled"]) == ("exited", 0, False)
    assert stop_seconds < 30, f"stop took {stop_seconds:.0f}s of the 45s grace period"

    subprocess.run(["docker", "cp", f"{container}:/data", str(tmp_path)], check=True)
    assert (tmp_path / "data" / "docker.log").read_bytes() == body
    check_files([tmp_path / "data" / "load.log"], load.acked)

    logs = stack.compose("logs", "--no-color", "logwriter")
    assert "drained" in logs, logs
    for bad in ("ERROR", "Traceback", "CRITICAL"):
        assert bad not in logs, logs
