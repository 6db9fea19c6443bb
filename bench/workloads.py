"""What the bench sends: the Case type, the lists of cases each kind of run measures, and the
request body of a case."""

from dataclasses import dataclass

LINE_BYTES = 200
THREADS = 8  # request threads per worker, the same for logwriter and the naive app
# The workloads the targets are set on; the default run crosses only some of them (full_cases).
BODIES = ("text", "ndjson")
SIZES = (1, 100, 1000)  # lines per body
CONNECTIONS = (1, 8, 32, 128)
WORKERS = (1, 2, 4)
DURABLE_CONNS = 32  # the ack and fsync comparisons run at this many connections
CONTENT_TYPES = {  # by body kind: BODIES', then bench.otlp's requests
    "text": "text/plain",
    "ndjson": "application/x-ndjson",
    "otlp": "application/x-protobuf",
    "otlp-json": "application/json",
}


@dataclass(frozen=True)
class Case:
    lines: int  # lines per request body
    conns: int  # keep-alive connections
    workers: int
    body: str = "text"  # or "ndjson"; the OTLP kinds of CONTENT_TYPES are bench.otlp's
    threads: int = THREADS  # request threads per worker
    iops: int = 0  # writes to the log folder's disk capped at this many a second; 0: no cap

    @property
    def content_type(self) -> str:
        return CONTENT_TYPES[self.body]

    def __str__(self) -> str:
        text = f"{self.body} {self.lines} lines/req, {self.conns} conns, {self.workers} workers"
        if self.threads != THREADS:
            text += f", {self.threads} threads"
        if self.iops:
            text += f", disk capped at {self.iops} write IOPS"
        return text


def full_cases() -> list[Case]:
    """Text bodies at every connection count; NDJSON and more workers at 32 connections, and
    the largest bodies with more workers at 128 too (what log shippers send)."""
    cases = [Case(lines, conns, 1) for lines in SIZES for conns in CONNECTIONS]
    cases += [Case(lines, 32, 1, "ndjson") for lines in SIZES]
    cases += [Case(lines, 32, workers) for workers in WORKERS[1:] for lines in SIZES]
    cases += [Case(SIZES[-1], 128, workers) for workers in WORKERS[1:]]
    return cases


def every_case() -> list[Case]:
    """Every combination of body, size, connections and workers: 72 cases."""
    return [
        Case(lines, conns, workers, body)
        for body in BODIES
        for workers in WORKERS
        for conns in CONNECTIONS
        for lines in SIZES
    ]


def capped_disk_cases(iops: int) -> list[Case]:
    """ack=fsync where an fsync costs a turn at `iops`: one client alone; 32 with the usual 8
    request threads, and with one per connection, since a request waiting for its fsync
    holds its thread."""
    return [
        Case(1, 1, 1, iops=iops),
        Case(1, DURABLE_CONNS, 1, iops=iops),
        Case(1, DURABLE_CONNS, 1, threads=DURABLE_CONNS, iops=iops),
        Case(100, DURABLE_CONNS, 1, threads=DURABLE_CONNS, iops=iops),
    ]


def make_body(case: Case) -> bytes:
    if case.body == "ndjson":
        head = '{"level":"info","service":"bench","msg":"'
        line = head + "x" * (LINE_BYTES - len(head) - 3) + '"}\n'
    else:
        line = "bench " + "x" * (LINE_BYTES - 7) + "\n"
    return line.encode() * case.lines
