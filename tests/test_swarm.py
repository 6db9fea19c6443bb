"""deploy/swarm/stack.yml on a real one-node Docker Swarm: lines in through HAProxy while every
replica is restarted (`docker service update --force`), scaled to 5 and back to 2, and one is
killed; each replica's volume read afterwards; the stack's Prometheus asked over its API.

The swarm is initialised here (`docker swarm init --advertise-addr 127.0.0.1`) when the engine is
in none, and left at the end; the stack, its volumes and configs and the image tag built for it
are removed whatever happens. ../shared/bin/docker-here starts the engine and builds the local
stand-ins for haproxy and prom/prometheus: no registry is reachable.
"""

import contextlib
import http.client
import io
import json
import os
import random
import re
import ssl
import subprocess
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from support import ROOT, docker, docker_here, free_port, http_get, wait_until
from traffic import ClientThreads, check_files, request_body

pytestmark = pytest.mark.docker

STACK_FILE = ROOT / "deploy" / "swarm" / "stack.yml"
SECURE_FILE = ROOT / "deploy" / "swarm" / "secure.yml"
FIRST_LINE = re.compile(rb"^c(\d{2}) r(\d{5}) l0000 ", re.MULTILINE)


@dataclass
class Swarm:
    """The stack deployed under a name of this test's own."""

    name: str
    image: str
    logwriter_port: int
    prometheus_port: int

    @property
    def service(self) -> str:
        return f"{self.name}_logwriter"

    def volumes(self) -> list[str]:
        names = docker("volume", "ls", "-q", "--filter", f"name={self.service}-").split()
        return sorted(name for name in names if re.fullmatch(rf"{self.service}-\d+", name))

    def read_volumes(self, dest: Path) -> dict[str, Path]:
        """Copy each replica's volume into dest/<volume>; returns the folders by volume."""
        copies = {}
        for volume in self.volumes():
            command = ["docker", "run", "--rm", "-v", f"{volume}:/data:ro", self.image]
            tar = subprocess.run(
                [*command, "tar", "-C", "/data", "-c", "."],
                capture_output=True,
                timeout=60,
                check=True,
            ).stdout
            copies[volume] = dest / volume
            with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
                archive.extractall(copies[volume], filter="data")
        return copies

    def running(self) -> dict[int, str]:
        """The running replicas' containers, by task slot."""
        lines = docker(
            "ps",
            "--filter",
            f"label=com.docker.swarm.service.name={self.service}",
            "--format",
            '{{.ID}} {{.Label "com.docker.swarm.task.name"}}',
        ).split("\n")
        return {int(task.rsplit(".", 2)[1]): cid for cid, task in (x.split() for x in lines if x)}

    def exited(self) -> list[dict]:
        """The State of every replica container that has stopped (swarm keeps a few per slot)."""
        ids = docker(
            "ps",
            "-aq",
            "--filter",
            f"label=com.docker.swarm.service.name={self.service}",
            "--filter",
            "status=exited",
        ).split()
        return [json.loads(docker("inspect", "-f", "{{json .State}}", cid)) for cid in ids]

    def prometheus(self, expr: str) -> list[dict]:
        query = urllib.parse.urlencode({"query": expr})
        status, body = http_get(f"http://127.0.0.1:{self.prometheus_port}/api/v1/query?{query}")
        assert status == 200, body
        return json.loads(body)["data"]["result"]

    def prometheus_value(self, expr: str) -> float | None:
        result = self.prometheus(expr)
        return float(result[0]["value"][1]) if result else None

    def alert_states(self, group: str) -> dict[str, tuple[str, str]]:
        """Each alerting rule of a group Prometheus loaded: its (health, state)."""
        status, body = http_get(f"http://127.0.0.1:{self.prometheus_port}/api/v1/rules")
        assert status == 200, body
        groups = json.loads(body)["data"]["groups"]
        rules = [rule for g in groups if g["name"] == group for rule in g["rules"]]
        return {rule["name"]: (rule["health"], rule["state"]) for rule in rules}


FLEET_ALERTS = re.findall(  # every alert the file declares
    r"^\s+- alert: (\w+)$", (ROOT / "deploy" / "swarm" / "fleet-alerts.yml").read_text(), re.M
)


def swarm_state() -> str:
    return docker("info", "-f", "{{.Swarm.LocalNodeState}}").strip()


def remove_stack(name: str) -> None:
    """docker stack rm, then wait for its containers and network to go, then its volumes."""
    subprocess.run(["docker", "stack", "rm", name], capture_output=True, timeout=60)
    label = f"label=com.docker.stack.namespace={name}"

    def gone() -> bool:
        containers = docker("ps", "-aq", "--filter", label).split()
        networks = docker("network", "ls", "-q", "--filter", label).split()
        return not containers and not networks

    try:
        wait_until(gone, 90, f"stack {name}'s containers and network to go", interval=1)
    finally:
        volumes = [v for v in docker("volume", "ls", "-q").split() if v.startswith(f"{name}_")]
        if volumes:
            subprocess.run(["docker", "volume", "rm", *volumes], capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def image() -> Iterator[str]:
    """An engine in a swarm, and the project's image built under a tag of this run's own."""
    docker_here()
    joined = swarm_state() == "inactive"
    if joined:
        docker("swarm", "init", "--advertise-addr", "127.0.0.1")
    tag = f"logwriter:lwswarm{os.getpid()}"
    try:
        docker("build", "-q", "-t", tag, str(ROOT), timeout=600)
        yield tag
    finally:
        subprocess.run(["docker", "rmi", tag], capture_output=True, timeout=60)
        # Left only if nothing else came to run in it meanwhile (a second run of this test).
        if joined and not docker("service", "ls", "-q").split():
            subprocess.run(["docker", "swarm", "leave", "--force"], timeout=60)


@contextlib.contextmanager
def deployed(image: str, name: str, *files: Path, env: dict[str, str] | None = None):
    """`docker stack deploy -c stack.yml [-c FILE...] NAME` on free ports; removed at the end."""
    started = Swarm(name, image, free_port(), free_port())
    environment = {
        **os.environ,
        "LOGWRITER_IMAGE": image,
        "LOGWRITER_PORT": str(started.logwriter_port),
        "PROMETHEUS_PORT": str(started.prometheus_port),
        **(env or {}),
    }
    try:
        compose_files = [arg for f in (STACK_FILE, *files) for arg in ("-c", str(f))]
        docker("stack", "deploy", *compose_files, name, env=environment)
        yield started
    finally:
        remove_stack(name)


@pytest.fixture
def swarm(image: str) -> Iterator[Swarm]:
    """deploy/swarm/stack.yml as it is."""
    with deployed(image, f"lwswarm{os.getpid()}") as started:
        yield started


@dataclass
class Outcome:
    stream: str
    lines: int
    status: int  # 0: no answer (refused, reset or cut off)
    retry_after: str | None
    body: bytes
    at: float  # time.monotonic() of the answer


@dataclass
class Posters(ClientThreads):
    """Clients posting `ack=written` bodies of 1..max_lines lines through the balancer, with
    `pause` seconds between requests, each request's outcome recorded; `stream` may be changed
    on the go. Clients of an even number keep their connection alive; the others open one per
    request (a request HAProxy cannot deliver is a 502 on a first request, a dropped connection
    on a kept-alive one). A request is never sent twice: a failed one is counted, and the
    client goes on to the next.
    """

    port: int
    stream: str
    first_client: int
    clients: int = 6
    max_lines: int = 100
    pause: float = 0.02
    outcomes: dict[tuple[int, int], Outcome] = field(default_factory=dict)

    def client_numbers(self) -> range:
        return range(self.first_client, self.first_client + self.clients)

    def _snapshot(self) -> dict[tuple[int, int], Outcome]:
        with self._lock:
            return dict(self.outcomes)

    def acked(self, stream: str) -> dict[tuple[int, int], int]:
        return {
            key: o.lines
            for key, o in self._snapshot().items()
            if o.stream == stream and o.status == 200
        }

    def acked_lines(self) -> int:
        return sum(o.lines for o in self._snapshot().values() if o.status == 200)

    def refused(self) -> set[tuple[int, int]]:
        """Requests answered with a status other than 200: none of their lines was written."""
        return {key for key, o in self._snapshot().items() if o.status not in (0, 200)}

    def statuses(self) -> dict[int, int]:
        counts: dict[int, int] = {}
        for o in self._snapshot().values():
            counts[o.status] = counts.get(o.status, 0) + 1
        return counts

    def _client(self, client: int) -> None:
        rng = random.Random(client)
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=20)
        request = 0
        while not self._stop.is_set():
            stream, count = self.stream, rng.randint(1, self.max_lines)
            body = request_body(client, request, count)
            retry_after, answer_body = None, b""
            try:
                conn.request(
                    "POST",
                    f"/v1/logs/{stream}?ack=written",
                    body,
                    {"Content-Type": "text/plain"},
                )
                answer = conn.getresponse()
                answer_body = answer.read()
                status, retry_after = answer.status, answer.getheader("Retry-After")
                if client % 2:
                    conn.close()
            except (OSError, http.client.HTTPException):
                status = 0
                conn.close()  # the next request opens a new connection
            with self._lock:
                self.outcomes[(client, request)] = Outcome(
                    stream, count, status, retry_after, answer_body, time.monotonic()
                )
            time.sleep(self.pause if status == 200 else 0.1)
            request += 1
        conn.close()


def files_of(copies: dict[str, Path], stream: str) -> dict[str, Path]:
    return {vol: d / f"{stream}.log" for vol, d in copies.items() if (d / f"{stream}.log").exists()}


def requests_in(path: Path) -> set[tuple[int, int]]:
    return {(int(c), int(r)) for c, r in FIRST_LINE.findall(path.read_bytes())}


def test_swarm_stack(swarm: Swarm, tmp_path: Path):
    began = time.monotonic()
    base = f"http://127.0.0.1:{swarm.logwriter_port}"
    wait_until(lambda: http_get(f"{base}/readyz")[0] == 200, 120, "the balancer to answer /readyz")
    wait_until(
        lambda: swarm.prometheus_value('haproxy_backend_active_servers{proxy="logwriter"}') == 3,
        90,
        "HAProxy to send to 3 replicas (as its own metrics say)",
        interval=1,
    )
    # The fleet's alerts (deploy/swarm/fleet-alerts.yml) are loaded and, with every replica
    # ready and in HAProxy's rotation, evaluate without error and fall quiet (HAProxy had none
    # while the stack came up); the ready replicas their rule counts are the 3 that run.
    quiet = {name: ("ok", "inactive") for name in FLEET_ALERTS}
    wait_until(
        lambda: swarm.alert_states("logwriter-fleet") == quiet,
        60,
        lambda: (
            f"the fleet's alerts to be loaded and quiet: {swarm.alert_states('logwriter-fleet')}"
        ),
        interval=1,
    )
    ready = (
        "count(sum by (instance) (logwriter_writer_ready) >= sum by (instance) (logwriter_workers))"
    )
    # Each replica is found and scraped on its own schedule (5 s each): HAProxy's checks can
    # count 3 in rotation before Prometheus has every replica's latest sample.
    wait_until(
        lambda: swarm.prometheus_value(ready) == 3,
        30,
        lambda: f"Prometheus to count 3 ready replicas: {swarm.prometheus_value(ready)}",
        interval=1,
    )

    # The defaults: plain HTTP (the posts below), no tokens, no secrets.
    spec = json.loads(
        docker(
            "service", "inspect", "-f", "{{json .Spec.TaskTemplate.ContainerSpec}}", swarm.service
        )
    )
    assert not [e for e in spec.get("Env", []) if e.startswith(("LOGWRITER_TLS", "LOGWRITER_TOK"))]
    assert not spec.get("Secrets"), spec["Secrets"]

    # --- Before any restart: Prometheus sees each replica, and counts what is on disk. ---
    for request in range(30):  # one connection each: HAProxy spreads them round robin
        conn = http.client.HTTPConnection("127.0.0.1", swarm.logwriter_port, timeout=20)
        conn.request("POST", "/v1/logs/metrics?ack=written", request_body(90, request, 100))
        answer = conn.getresponse()
        assert (answer.status, json.loads(answer.read())) == (200, {"accepted": 100})
        conn.close()
    copies = swarm.read_volumes(tmp_path / "before")
    assert len(copies) == 3, copies
    files = files_of(copies, "metrics")
    assert len(files) == 3, f"not every replica took lines: {sorted(files)}"
    on_disk = check_files(files.values(), {(90, r): 100 for r in range(30)})
    assert on_disk == 3000
    wait_until(
        lambda: swarm.prometheus_value("sum(logwriter_lines_written_total)") == on_disk,
        30,
        lambda: (
            f"Prometheus to count {on_disk} lines written "
            f"(it says {swarm.prometheus_value('sum(logwriter_lines_written_total)')})"
        ),
        interval=1,
    )
    up = swarm.prometheus('up{job="logwriter"}')
    assert len(up) == 3 and all(s["value"][1] == "1" for s in up), up
    per_replica = swarm.prometheus('logwriter_lines_written_total{job="logwriter"}')
    assert sorted(float(s["value"][1]) for s in per_replica if float(s["value"][1])) == sorted(
        float(len(p.read_bytes().splitlines())) for p in files.values()
    ), per_replica

    # --- A rolling restart of every replica, then scale to 5 and back to 2, under load. ---
    roll = Posters(swarm.logwriter_port, "roll", first_client=10).start()
    steps: list[tuple[str, float, int]] = []
    try:
        wait_until(lambda: roll.acked_lines() > 3000, 60, "3,000 lines acknowledged")
        for what, args in (
            ("update --force", ["update", "--force", swarm.service]),
            ("scale to 5", ["scale", f"{swarm.service}=5"]),
            ("scale to 2", ["scale", f"{swarm.service}=2"]),
        ):
            before, started = roll.acked_lines(), time.monotonic()
            docker("service", *args, "--detach=false", timeout=180)
            acked_at_end = roll.acked_lines()
            wait_until(
                lambda mark=acked_at_end: roll.acked_lines() > mark + 500, 30, f"lines after {what}"
            )
            steps.append((what, time.monotonic() - started, roll.acked_lines() - before))
    finally:
        roll.stop()
    # `scale --detach=false` returns once the tasks are told to stop, not once they have.
    wait_until(lambda: len(swarm.running()) == 2, 60, lambda: f"2 replicas: {swarm.running()}")

    # Every stopped replica drained and exited 0: 3 by the update, 3 by the scale down.
    stopped = swarm.exited()
    assert len(stopped) >= 6, stopped
    assert all((s["ExitCode"], s["OOMKilled"]) == (0, False) for s in stopped), stopped

    # --- docker kill of one replica while clients post. ---
    slot, container = sorted(swarm.running().items())[0]
    kill = Posters(swarm.logwriter_port, "kill", first_client=20).start()
    try:
        wait_until(lambda: len(kill.acked("kill")) > 30, 30, "lines before the kill")
        killed_at = time.monotonic()
        docker("kill", container)
        kill.stream = "after"  # the killed replica's kill.log gets nothing more, even restarted
        wait_until(lambda: time.monotonic() > killed_at + 8, 10, "8 s of posting")
    finally:
        kill.stop()
    failures = [o for o in kill.outcomes.values() if o.status != 200]
    assert all(o.status in (0, 503) for o in failures), kill.statuses()
    assert all(o.retry_after == "1" for o in failures if o.status == 503), failures
    last_failure = max((o.at - killed_at for o in failures), default=0.0)
    assert last_failure < 5, f"clients still failed {last_failure:.1f}s after the kill"
    answered_late = [o for o in kill.outcomes.values() if o.at > killed_at + 5]
    assert answered_late and all(o.status == 200 for o in answered_late)

    # --- Every volume, read at the end. ---
    copies = swarm.read_volumes(tmp_path / "after")
    assert len(copies) == 5, sorted(copies)  # slots 1-5 each had one
    # Rolled and scaled: every acknowledged line in exactly one replica's volume, once, and no
    # line of a refused request anywhere (a dropped connection's may be: at-least-once).
    roll_files = files_of(copies, "roll")
    roll_lines = check_files(roll_files.values(), roll.acked("roll"))
    written = set().union(*(requests_in(p) for p in roll_files.values()))
    assert not written & roll.refused(), sorted(written & roll.refused())[:5]
    # Killed: what it acknowledged is in its volume (each replica writes only to its own); its
    # last request may have been cut mid-write by SIGKILL, which nobody was told was written.
    killed_volume = f"{swarm.service}-{slot}"
    kill_files = files_of(copies, "kill")
    killed_file = kill_files[killed_volume]
    check_files(kill_files.values(), kill.acked("kill"), cut_tails=[killed_file])
    kept = requests_in(killed_file) & set(kill.acked("kill"))
    assert kept, "the killed replica had acknowledged nothing"
    check_files(files_of(copies, "after").values(), kill.acked("after"))

    elapsed = time.monotonic() - began
    print(
        f"swarm: {on_disk} lines counted by Prometheus; roll: {roll_lines} lines of "
        f"{len(roll.acked('roll'))} acknowledged requests, statuses {roll.statuses()}, "
        + ", ".join(f"{w} {s:.0f}s/{n} lines" for w, s, n in steps)
        + f"; {len(stopped)} replicas stopped with exit 0; kill of slot {slot}: statuses "
        f"{kill.statuses()} ({sum(b'closed the connection' in o.body for o in failures)} of the "
        f"503s HAProxy's mapped 502), {len(kept)} requests it acknowledged in its volume, last "
        f"failure {last_failure:.2f}s after the kill; {elapsed:.0f}s in all"
    )
    assert elapsed < 240, f"the test took {elapsed:.0f}s"


@pytest.mark.tools  # openssl, for the certificate
def test_swarm_stack_with_tokens_and_tls(image: str, tmp_path: Path):
    """stack.yml with secure.yml, as docs/fleet.md deploys them: HTTPS from the sender to
    HAProxy and from HAProxy to each replica, a bearer token, Prometheus scraping over HTTPS."""
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    cert, key = secrets / "logwriter.crt", secrets / "logwriter.key"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-subj", "/CN=logwriter", "-addext", "subjectAltName=DNS:logwriter,IP:127.0.0.1"),
            *("-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    (secrets / "haproxy.pem").write_bytes(cert.read_bytes() + key.read_bytes())
    (secrets / "tokens.txt").write_text("# the swarm test's\nswarm-s3cret\n")
    context = ssl.create_default_context(cafile=str(cert))

    env = {"LOGWRITER_SECRETS": str(secrets)}
    with deployed(image, f"lwswarmtls{os.getpid()}", SECURE_FILE, env=env) as swarm:

        def post(headers: dict[str, str]) -> tuple[int, bytes]:
            conn = http.client.HTTPSConnection(
                "127.0.0.1", swarm.logwriter_port, timeout=10, context=context
            )
            try:
                conn.request("POST", "/v1/logs/tls?ack=written", request_body(91, 0, 3), headers)
                answer = conn.getresponse()
                return answer.status, answer.read()
            finally:
                conn.close()

        def ready() -> bool:
            conn = http.client.HTTPSConnection(
                "127.0.0.1", swarm.logwriter_port, timeout=5, context=context
            )
            try:
                conn.request("GET", "/readyz")
                return conn.getresponse().status == 200
            except http.client.HTTPException:
                return False
            finally:
                conn.close()

        wait_until(ready, 120, "the balancer to answer /readyz over HTTPS", interval=0.5)
        wait_until(
            lambda: swarm.prometheus_value("count(up{job='logwriter'} == 1)") == 3,
            90,
            lambda: f"Prometheus to scrape 3 replicas over HTTPS: {swarm.prometheus('up')}",
            interval=1,
        )
        assert swarm.prometheus_value('haproxy_backend_active_servers{proxy="logwriter"}') == 3
        # prometheus-tls.yml loads the fleet's alerts too (a rule file it cannot find is no error).
        assert set(swarm.alert_states("logwriter-fleet")) == set(FLEET_ALERTS)

        assert post({})[0] == 401
        assert post({"Authorization": "Bearer wrong"})[0] == 401
        status, body = post({"Authorization": "Bearer swarm-s3cret"})
        assert (status, json.loads(body)) == (200, {"accepted": 3})
        plain = http.client.HTTPConnection("127.0.0.1", swarm.logwriter_port, timeout=5)
        with pytest.raises((OSError, http.client.HTTPException)):  # no HTTP answer at all
            plain.request("GET", "/readyz")
            plain.getresponse()
        plain.close()

        copies = swarm.read_volumes(tmp_path / "volumes")
        files = files_of(copies, "tls")
        assert len(files) == 1, files
        assert check_files(files.values(), {(91, 0): 3}) == 3
