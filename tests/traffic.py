"""Bounded test traffic to a local logwriter, and the check that every acknowledged line landed.

Every line names its client, request and position ("c03 r00017 l0002 of 0150 xxxx..."), so the
files alone show whether a line was lost, doubled, torn, reordered or split from its request.
"""

import http.client
import random
import re
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

PAD = 60
_LINE = re.compile(rb"c(\d{2}) r(\d{5}) l(\d{4}) of (\d{4}) x{%d}" % PAD)


def request_body(client: int, request: int, count: int) -> bytes:
    pad = b"x" * PAD
    return b"".join(
        b"c%02d r%05d l%04d of %04d %s\n" % (client, request, i, count, pad) for i in range(count)
    )


class KeptAlive:
    """A keep-alive connection to the service on 127.0.0.1, opened again after a failure."""

    def __init__(self, port: int) -> None:
        self._port = port
        self._conn: http.client.HTTPConnection | None = None

    def post(self, path: str, body: bytes, headers: dict[str, str]) -> int:
        """The answer's status, or 0 when the request was refused, reset or cut off."""
        try:
            if self._conn is None:
                self._conn = http.client.HTTPConnection("127.0.0.1", self._port, timeout=10)
            self._conn.request("POST", path, body, headers)
            answer = self._conn.getresponse()
            answer.read()
            return answer.status
        except (OSError, http.client.HTTPException):
            self.close()
            return 0

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


@dataclass(kw_only=True)
class ClientThreads:
    """Load clients, one thread each: start() runs _client(number) for every number of
    client_numbers() (by default, range of the subclass's `clients` field); stop() tells them
    to end (_stop) and joins them. _lock guards what a subclass's clients record."""

    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _threads: list[threading.Thread] = field(default_factory=list)

    def client_numbers(self) -> range:
        return range(self.clients)  # type: ignore[attr-defined]  # a field of each subclass

    def start(self) -> Self:
        for client in self.client_numbers():
            thread = threading.Thread(target=self._client, args=(client,), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)
            assert not thread.is_alive(), "a load client did not stop"

    def _client(self, client: int) -> None:
        raise NotImplementedError


@dataclass
class Load(ClientThreads):
    """`clients` threads posting bodies of 1..`max_lines` lines on keep-alive connections until
    stop() or `seconds` pass, recording which requests were acknowledged."""

    port: int
    clients: int = 12
    max_lines: int = 300
    seconds: float = 30.0
    path: str = "/v1/logs/load"
    headers: dict[str, str] = field(default_factory=dict)
    acked: dict[tuple[int, int], int] = field(default_factory=dict)
    statuses: dict[int, int] = field(default_factory=dict)

    def acked_lines(self) -> int:
        with self._lock:
            return sum(self.acked.values())

    def _client(self, client: int) -> None:
        rng = random.Random(client)
        deadline = time.monotonic() + self.seconds
        conn = KeptAlive(self.port)
        failures = 0
        request = 0
        headers = {"Content-Type": "text/plain", **self.headers}
        while not self._stop.is_set() and time.monotonic() < deadline and failures < 50:
            count = rng.randint(1, self.max_lines)
            status = conn.post(self.path, request_body(client, request, count), headers)
            if status == 0:  # not acknowledged
                failures += 1
                time.sleep(0.05)
            with self._lock:
                self.statuses[status] = self.statuses.get(status, 0) + 1
                if status in (200, 202):
                    self.acked[(client, request)] = count
            request += 1
        conn.close()


def check_files(
    paths: Iterable[Path],
    acked: dict[tuple[int, int], int],
    *,
    allow_loss: bool = False,
    cut_tails: Iterable[Path] = (),
) -> int:
    """Assert that the files hold every acknowledged request exactly once, each request's lines
    contiguous and in order, and no torn, foreign or NUL-filled line. Returns the line count.

    allow_loss: acknowledged requests may be missing (logrotate's copytruncate loses what is
    written between its copy and its truncate). cut_tails: files whose last request may stop
    short, even mid-line (a copy taken while a write was under way).
    """
    cut = set(cut_tails)
    seen: set[tuple[int, int]] = set()
    total = 0
    for path in paths:
        data = path.read_bytes()
        assert b"\0" not in data, f"{path} holds NUL bytes"
        lines = data.split(b"\n")
        if path in cut:
            lines.pop()  # a partial last line, or b"" after a final newline
        else:
            assert lines.pop() == b"", f"{path} does not end with a newline"
        total += len(lines)
        i = 0
        while i < len(lines):
            match = _LINE.fullmatch(lines[i])
            assert match, f"{path}:{i + 1}: torn or foreign line {lines[i][:100]!r}"
            client, request, position, count = map(int, match.groups())
            assert position == 0, f"{path}:{i + 1}: request starts mid-way: {lines[i][:40]!r}"
            assert (client, request) not in seen, f"{path}:{i + 1}: c{client} r{request} twice"
            seen.add((client, request))
            expected = request_body(client, request, count).split(b"\n")[:-1]
            got = lines[i : i + count]
            if path in cut and i + count > len(lines):
                expected = expected[: len(got)]
            assert got == expected, f"{path}:{i + 1}: c{client} r{request} not contiguous"
            i += count
    missing = sorted(set(acked) - seen)
    assert allow_loss or not missing, f"{len(missing)} acknowledged requests missing: {missing[:5]}"
    return total
