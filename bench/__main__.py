"""python -m bench: logwriter side by side with what users would run instead, in one run.

Contenders: logwriter (ack=queued, written, fsync); the naive Flask app under the same Gunicorn
settings (and its fsync-per-request variant); nginx writing $request_body to its access log
(the ceiling: no Python at all); and the raw append rate of the disk for the same bytes.
Group commit is also measured where an fsync costs what it does on a hard disk: ack=fsync
and the naive fsync-per-request app on a disk capped at --iops write IOPS (bench.disks).
Every case runs each contender once per round, rounds interleaved and each starting with
another contender, so that the noise of a shared machine hits all of them alike. Each figure
is the median of the rounds, with its spread (min-max). Results go to bench/results/
(Markdown, JSON, plots).
"""

import argparse
import contextlib
import itertools
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench import disks, overload

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
LINE_BYTES = 200
THREADS = 8  # request threads per worker, the same for logwriter and the naive app
# The workloads issue 5 names; the default run crosses only some of them (full_cases).
BODIES = ("text", "ndjson")
SIZES = (1, 100, 1000)  # lines per body
CONNECTIONS = (1, 8, 32, 128)
WORKERS = (1, 2, 4)


@dataclass(frozen=True)
class Case:
    lines: int  # lines per request body
    conns: int  # keep-alive connections
    workers: int
    body: str = "text"  # or "ndjson"
    threads: int = THREADS  # request threads per worker
    iops: int = 0  # writes to the log folder's disk capped at this many a second; 0: no cap

    @property
    def content_type(self) -> str:
        return "application/x-ndjson" if self.body == "ndjson" else "text/plain"

    def __str__(self) -> str:
        text = f"{self.body} {self.lines} lines/req, {self.conns} conns, {self.workers} workers"
        if self.threads != THREADS:
            text += f", {self.threads} threads"
        if self.iops:
            text += f", disk capped at {self.iops} write IOPS"
        return text


@dataclass(frozen=True)
class Contender:
    name: str
    server: str  # logwriter | naive | nginx
    ack: str = "queued"
    fsync: bool = False


CONTENDERS = [
    Contender("logwriter", "logwriter"),
    Contender("logwriter-written", "logwriter", ack="written"),
    Contender("logwriter-fsync", "logwriter", ack="fsync"),
    Contender("naive", "naive"),
    Contender("naive-fsync", "naive", fsync=True),
    Contender("nginx", "nginx"),
]
DURABLE = {"logwriter-written", "logwriter-fsync", "naive-fsync"}
DURABLE_CONNS = 32  # the ack and fsync comparisons run at this many connections


def full_cases() -> list[Case]:
    """Text bodies at every connection count; NDJSON and more workers at 32 connections."""
    cases = [Case(lines, conns, 1) for lines in SIZES for conns in CONNECTIONS]
    cases += [Case(lines, 32, 1, "ndjson") for lines in SIZES]
    cases += [Case(lines, 32, workers) for workers in WORKERS[1:] for lines in SIZES]
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


def contenders_for(case: Case) -> list[Contender]:
    if case.iops:
        return [c for c in CONTENDERS if c.name in ("logwriter-fsync", "naive-fsync")]
    return [c for c in CONTENDERS if c.name not in DURABLE or case.conns == DURABLE_CONNS]


def make_body(case: Case) -> bytes:
    if case.body == "ndjson":
        head = '{"level":"info","service":"bench","msg":"'
        line = head + "x" * (LINE_BYTES - len(head) - 3) + '"}\n'
    else:
        line = "bench " + "x" * (LINE_BYTES - 7) + "\n"
    return line.encode() * case.lines


# --- servers -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError("server did not listen in time")


NGINX_CONF = """daemon off;
worker_processes {workers};
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_buffer_size 16m;
    client_max_body_size 16m;
    keepalive_requests 1000000;
    log_format body escape=none $request_body;
    server {{
        listen 127.0.0.1:{port};
        # proxy_pass makes nginx read the body, so that $request_body can be logged.
        location /v1/logs/ {{
            access_log {tmp}/logs/nginx.log body;
            proxy_pass http://127.0.0.1:{port}/sink/;
        }}
        location /sink/ {{ access_log off; return 202; }}
        location = /null {{ return 202; }}
    }}
}}
"""


def start(
    contender: Contender,
    workers: int,
    tmp: Path,
    logs: Path | None = None,
    logwriter_env: dict[str, str] | None = None,
    threads: int = THREADS,
    prefix: list[str] | None = None,
) -> tuple[subprocess.Popen[bytes], int]:
    """Start a contender; `prefix` goes before its command (such as disks.write_iops_cap's)."""
    port = free_port()
    logs = logs or tmp / "logs"
    logs.mkdir(exist_ok=True)
    env = dict(os.environ)
    if contender.server == "logwriter":
        env |= {
            "LOGWRITER_DIR": str(logs),
            "LOGWRITER_BIND": f"127.0.0.1:{port}",
            "LOGWRITER_WORKERS": str(workers),
            "LOGWRITER_THREADS": str(threads),
            **(logwriter_env or {}),
        }
        command = [str(Path(sys.executable).parent / "logwriter")]
    elif contender.server == "naive":
        env |= {"NAIVE_FILE": str(logs / "naive.log"), "NAIVE_FSYNC": str(int(contender.fsync))}
        command = [
            sys.executable,
            "-m",
            "gunicorn",
            "--worker-class",
            "gthread",
            "--workers",
            str(workers),
            "--threads",
            str(threads),
            "--keep-alive",
            "5",
            "--bind",
            f"127.0.0.1:{port}",
            "--no-control-socket",
            "bench.naive:app",
        ]
    else:
        conf = tmp / "nginx.conf"
        conf.write_text(NGINX_CONF.format(workers=workers, port=port, tmp=tmp))
        command = ["nginx", "-p", str(tmp), "-c", str(conf)]
    out = (tmp / f"{contender.server}.out").open("wb")
    proc = subprocess.Popen(
        [*(prefix or []), *command], env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT
    )
    try:
        wait_for_port(port, proc)
    except RuntimeError:
        proc.kill()
        proc.wait()
        raise
    time.sleep(0.5 if contender.server != "nginx" else 0.1)  # every worker up
    return proc, port


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM if "nginx" not in proc.args else signal.SIGQUIT)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def process_tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        current = todo.pop()
        pids.append(current)
        for task in Path(f"/proc/{current}/task").glob("*/children"):
            todo += [int(child) for child in task.read_text().split()]
    return pids


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


def peak_rss_mib(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM"):
                total += int(line.split()[1])
    return total / 1024


# --- measuring -----------------------------------------------------------------------------


def wrk(port: int, path: str, body_file: Path, case: Case, seconds: float) -> dict[str, int]:
    command = [
        "wrk",
        f"-t{min(2, case.conns)}",
        f"-c{case.conns}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "10s",
        "-s",
        str(BENCH / "wrk.lua"),
        f"http://127.0.0.1:{port}{path}",
    ]
    env = {**os.environ, "BENCH_BODY": str(body_file), "BENCH_TYPE": case.content_type}
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"wrk failed: {result.stdout}{result.stderr}")
    line = next(x for x in result.stdout.splitlines() if x.startswith("BENCH "))
    return json.loads(line[len("BENCH ") :])


@contextlib.contextmanager
def log_folder(case: Case, tmp: Path) -> Iterator[tuple[Path, list[str]]]:
    """Where the contender writes, and the prefix of its command: on the machine's disk, or on
    a loop-mounted one that it may write to only case.iops times a second."""
    if not case.iops:
        yield tmp / "logs", []
        return
    with (
        disks.loop_mounted_ext4(tmp, "1G") as mount,
        disks.write_iops_cap(mount, case.iops) as prefix,
    ):
        yield mount / "logs", prefix


def measure(case: Case, contender: Contender, seconds: float) -> dict[str, float]:
    with (
        tempfile.TemporaryDirectory(prefix="logwriter-bench-") as tmp_name,
        log_folder(case, Path(tmp_name)) as (logs, prefix),
    ):
        tmp = Path(tmp_name)
        body_file = tmp / "body"
        body_file.write_bytes(make_body(case))
        proc, port = start(contender, case.workers, tmp, logs, threads=case.threads, prefix=prefix)
        try:
            pids = process_tree(proc.pid)
            cpu_before = cpu_seconds(pids)
            path = f"/v1/logs/bench?ack={contender.ack}"
            summary = wrk(port, path, body_file, case, seconds)
            cpu = cpu_seconds(pids) - cpu_before
            rss = peak_rss_mib(pids)
            fsyncs = (  # group commits so far: the count of logwriter's fsync histogram
                overload.metric_total(port, "logwriter_fsync_seconds_count")
                if contender.ack == "fsync"
                else None
            )
        finally:
            stop(proc)
    elapsed = summary["duration_us"] / 1e6
    ok = summary["requests"] - summary["non2xx"]
    lines = ok * case.lines
    if contender.fsync:
        fsyncs = ok  # the naive app's one per request
    return {
        **({"requests_per_fsync": ok / fsyncs} if fsyncs else {}),
        "lines_per_s": lines / elapsed,
        "mb_per_s": ok * len(make_body(case)) / elapsed / 1e6,
        "p50_ms": summary["p50_us"] / 1000,
        "p99_ms": summary["p99_us"] / 1000,
        "cpu_s_per_m_lines": cpu / lines * 1e6 if lines else float("nan"),
        "peak_rss_mib": rss,
        "refused": summary["non2xx"] + summary["socket_errors"],
    }


@contextlib.contextmanager
def scratch_file() -> Iterator[int]:
    """An O_APPEND descriptor to a new file, in a folder removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="logwriter-bench-") as tmp:
        fd = os.open(Path(tmp) / "raw.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            yield fd
        finally:
            os.close(fd)


def raw_disk(case: Case, seconds: float) -> dict[str, float]:
    """Appending the same bytes straight to a file: what the disk path allows at best."""
    chunk = make_body(case) * max(1, (1 << 20) // len(make_body(case)))
    with scratch_file() as fd:
        written, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            written += os.write(fd, chunk)
        elapsed = time.perf_counter() - started
    return {"lines_per_s": written / LINE_BYTES / elapsed, "mb_per_s": written / elapsed / 1e6}


def disk_sustained_mb_per_s(total: int) -> float:
    """What the disk takes to stable storage: `total` bytes appended, then fdatasynced. Past
    this rate a writer only fills the page cache, until the kernel's dirty-page throttling
    pauses it."""
    chunk = b"x" * (1 << 20)
    os.sync()  # start with no one else's dirty pages
    with scratch_file() as fd:
        started = time.perf_counter()
        for _ in range(total // len(chunk)):
            os.write(fd, chunk)
        os.fdatasync(fd)
        elapsed = time.perf_counter() - started
    return total / elapsed / 1e6


def load_generator_capacity(case: Case, seconds: float) -> float:
    """Requests/s wrk reaches against nginx answering without reading or logging: the most
    the load generator itself can drive here."""
    with tempfile.TemporaryDirectory(prefix="logwriter-bench-") as tmp_name:
        tmp = Path(tmp_name)
        body_file = tmp / "body"
        body_file.write_bytes(make_body(case))
        proc, port = start(Contender("nginx", "nginx"), case.workers, tmp)
        try:
            summary = wrk(port, "/null", body_file, case, seconds)
        finally:
            stop(proc)
    return summary["requests"] / (summary["duration_us"] / 1e6)


def overload_run(seconds: float) -> dict[str, Any]:
    """bench.overload against logwriter with its defaults and one worker."""

    def start_logwriter(logs: Path, env: dict[str, str]) -> overload.Service:
        proc, port = start(Contender("logwriter", "logwriter"), 1, tmp, logs, env)
        (worker,) = process_tree(proc.pid)[1:]
        return proc, port, worker

    with tempfile.TemporaryDirectory(prefix="logwriter-bench-") as tmp_name:
        tmp = Path(tmp_name)
        return overload.run(tmp, seconds, start_logwriter, stop, peak_rss_mib)


# --- reporting -----------------------------------------------------------------------------

Results = dict[tuple[Case, str], list[dict[str, float]]]


def median(runs: list[dict[str, float]], key: str) -> float:
    return statistics.median(run[key] for run in runs)


def figure(runs: list[dict[str, float]], key: str, digits: int = 0) -> str:
    """The median of the rounds, and their spread (min-max) when there are several."""
    values = [run[key] for run in runs]
    text = f"{statistics.median(values):,.{digits}f}"
    if len(values) > 1:
        text += f" ({min(values):,.{digits}f}-{max(values):,.{digits}f})"
    return text


def table(results: Results) -> str:
    rows = [
        "Each figure: median of the rounds (min-max).\n",
        "| case | contender | lines/s | MB/s | p50 ms | p99 ms | CPU s / M lines "
        "| peak RSS MiB | refused |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for (case, name), runs in results.items():
        if name == "raw disk":
            rows.append(
                f"| {case} | raw disk append | {figure(runs, 'lines_per_s')} "
                f"| {figure(runs, 'mb_per_s')} | | | | | |"
            )
            continue
        rows.append(
            f"| {case} | {name} | {figure(runs, 'lines_per_s')} | {figure(runs, 'mb_per_s', 1)} "
            f"| {figure(runs, 'p50_ms', 2)} | {figure(runs, 'p99_ms', 2)} "
            f"| {figure(runs, 'cpu_s_per_m_lines', 1)} | {figure(runs, 'peak_rss_mib')} "
            f"| {figure(runs, 'refused')} |"
        )
    return "\n".join(rows)


def targets(results: Results) -> list[str]:
    """Each target of issue 5 as a ratio between contenders of the same run."""

    def rate(case: Case, name: str) -> float | None:
        runs = results.get((case, name))
        return median(runs, "lines_per_s") if runs else None

    checks = []

    def check(what: str, ratio: float | None, goal: float) -> None:
        if ratio is None:
            return
        verdict = "met" if ratio >= goal else f"MISSED by {(goal - ratio) / goal:.1%}"
        checks.append(f"- {what}: {ratio:.2f}x (target >= {goal:g}x): {verdict}")

    def ratio(case: Case, a: str, b: str) -> float | None:
        x, y = rate(case, a), rate(case, b)
        return x / y if x is not None and y else None

    cases = {case for case, _ in results}
    for case in sorted(cases, key=str):
        if case.lines == 1000:
            check(f"{case}: logwriter / nginx ceiling", ratio(case, "logwriter", "nginx"), 0.5)
            check(f"{case}: logwriter / naive", ratio(case, "logwriter", "naive"), 1.0)
        if case.lines == 1 and case.conns == 32:
            check(f"{case}: logwriter / naive", ratio(case, "logwriter", "naive"), 1.0)
        if case.conns == DURABLE_CONNS:
            f = ratio(case, "logwriter-fsync", "naive-fsync")
            check(f"{case}: logwriter ack=fsync / naive fsync", f, 10)
            grouped = results.get((case, "logwriter-fsync"), [])
            if grouped and all("requests_per_fsync" in run for run in grouped):
                checks.append(
                    f"  - group commit: {median(grouped, 'requests_per_fsync'):.1f} requests "
                    "per fsync for logwriter, 1 for the naive app"
                )
            w = ratio(case, "logwriter-written", "logwriter")
            check(f"{case}: logwriter ack=written / ack=queued", w, 0.8)
    cores = usable_cores()
    for lines in SIZES:
        for fewer, more in itertools.pairwise(WORKERS):
            if more <= cores:  # "grows with workers up to the core count"
                scaling = ratio_across(results, Case(lines, 32, more), Case(lines, 32, fewer))
                what = f"scaling, {lines} lines/req, {fewer} → {more} workers ({cores} cores)"
                check(f"{what}: logwriter", scaling, 1.0)
    return checks


def ratio_across(results: Results, a: Case, b: Case) -> float | None:
    x, y = results.get((a, "logwriter")), results.get((b, "logwriter"))
    return median(x, "lines_per_s") / median(y, "lines_per_s") if x and y else None


def plots(results: Results, out: Path) -> list[str]:
    try:
        import matplotlib  # optional: the bench extra

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    made = []
    for lines in SIZES:
        figure, axes = plt.subplots(figsize=(7, 4))
        for name in ("logwriter", "naive", "nginx"):
            points = sorted(
                (case.conns, median(runs, "lines_per_s"))
                for (case, n), runs in results.items()
                if n == name and case.lines == lines and case.workers == 1 and case.body == "text"
            )
            if points:
                axes.plot(*zip(*points, strict=True), marker="o", label=name)
        axes.set(
            xscale="log",
            xlabel="keep-alive connections",
            ylabel="lines/s",
            title=f"{lines}-line bodies, 1 worker",
        )
        axes.legend()
        name = f"throughput-{lines}-lines.png"
        figure.savefig(out / name, dpi=100, bbox_inches="tight")
        plt.close(figure)
        made.append(name)
    latency = [
        (name, median(runs, "p50_ms"), median(runs, "p99_ms"))
        for (case, name), runs in results.items()
        if case == Case(100, 32, 1) and name != "raw disk"
    ]
    if latency:
        figure, axes = plt.subplots(figsize=(8, 4))
        names = [row[0] for row in latency]
        axes.bar(
            [i - 0.2 for i in range(len(names))], [row[1] for row in latency], 0.4, label="p50"
        )
        axes.bar(
            [i + 0.2 for i in range(len(names))], [row[2] for row in latency], 0.4, label="p99"
        )
        axes.set_xticks(range(len(names)), names, rotation=20)
        axes.set(yscale="log", ylabel="ms", title="latency, 100-line bodies, 32 connections")
        axes.legend()
        figure.savefig(out / "latency.png", dpi=100, bbox_inches="tight")
        plt.close(figure)
        made.append("latency.png")
    return made


def ensure_tools() -> None:
    """wrk and nginx, installed from Debian if missing by the script .ci/run installs with."""
    subprocess.run(["bash", str(ROOT / ".ci" / "install-tools"), "wrk", "nginx"], check=True)


def usable_cores() -> int:
    """The cores this process may run on (a container's cpuset), not the host's count."""
    return len(os.sched_getaffinity(0))


def machine() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "unknown CPU",
    )
    return f"{usable_cores()} cores ({cpu}), Python {sys.version.split()[0]}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="one short case per contender")
    parser.add_argument(
        "--all", action="store_true", help="every combination of the workloads (about 80 min)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--seconds", type=float, default=3, help="per measurement (default 3)")
    parser.add_argument("--out", type=Path, default=None, help="default bench/results")
    parser.add_argument(
        "--overload", type=float, default=30, help="seconds of overload (default 30; 0: none)"
    )
    parser.add_argument(
        "--iops",
        type=int,
        default=100,
        help="write IOPS of the capped disk for the group-commit cases (default 100, a hard "
        "disk's; 0: none)",
    )
    args = parser.parse_args(argv)
    ensure_tools()
    if args.smoke:
        cases = [Case(100, DURABLE_CONNS, 1)]
    else:
        cases = every_case() if args.all else full_cases()
    if args.iops:
        capped = capped_disk_cases(args.iops)
        cases += [capped[2]] if args.smoke else capped  # smoke: 1 line, 32 threads
    rounds, seconds = (1, 1.0) if args.smoke else (args.rounds, args.seconds)
    out = args.out or (
        Path(tempfile.mkdtemp(prefix="bench-smoke-")) if args.smoke else BENCH / "results"
    )
    out.mkdir(parents=True, exist_ok=True)

    results: Results = {}
    for round_ in range(1, rounds + 1):
        for case in cases:
            contenders = contenders_for(case)
            # Each round starts with another contender, so that none always runs right after
            # the disk-heavy one before it.
            shift = (round_ - 1) % len(contenders)
            for contender in contenders[shift:] + contenders[:shift]:
                run = measure(case, contender, seconds)
                results.setdefault((case, contender.name), []).append(run)
                print(
                    f"round {round_}/{rounds} | {case} | {contender.name}: "
                    f"{run['lines_per_s']:,.0f} lines/s",
                    flush=True,
                )
            if not case.iops:
                raw = raw_disk(case, min(seconds, 2))
                results.setdefault((case, "raw disk"), []).append(raw)
    capacity = load_generator_capacity(Case(100, DURABLE_CONNS, 1), seconds)
    disk_total = 256 << 20 if args.smoke else 2 << 30
    sustained = disk_sustained_mb_per_s(disk_total)
    overload_seconds = min(args.overload, 3) if args.smoke else args.overload
    overloaded = overload_run(overload_seconds) if overload_seconds else None
    busiest = max(
        median(runs, "lines_per_s") / case.lines
        for (case, name), runs in results.items()
        if name != "raw disk"
    )

    capped_note = []
    if args.iops:
        capped_note.append(
            f"\nCases on a disk capped at {args.iops} write IOPS: the log folder is a "
            "loop-mounted ext4 that the kernel's block-layer throttle (cgroup v1 blkio) lets the "
            f"contender's processes write only {args.iops} times a second. Buffered writes "
            "still reach the page cache at once; each fsync waits for its turn, as on a hard "
            "disk. Only logwriter ack=fsync and the naive fsync-per-request app run there: they "
            "show what group commit is for."
        )
    report = [
        f"# logwriter benchmark\n\nMachine: {machine()}. {rounds} interleaved rounds of "
        f"{seconds:g} s per measurement; medians, spread = min-max over rounds. Lines are "
        f"{LINE_BYTES} bytes. {THREADS} request threads per worker for logwriter and the naive "
        "app unless a case says otherwise. nginx logs `$request_body` (the ceiling); raw disk = "
        "`os.write` of 1 MiB chunks (into the page cache).",
        f"\nThe disk takes {sustained:,.0f} MB/s to stable storage ({disk_total >> 20} MiB "
        "appended, then fdatasynced). A case whose MB/s goes past that only fills the page "
        "cache until the kernel's dirty-page throttling pauses the writing threads: there the "
        "kernel, not the app, sets the pace.",
        f"\nLoad generator: wrk reached {capacity:,.0f} requests/s against an nginx endpoint that "
        f"does no work; the busiest contender here took {busiest:,.0f} requests/s "
        f"({busiest / capacity:.0%} of that), so wrk is not what limits the figures below.",
        *capped_note,
        "\n## Targets\n",
        *targets(results),
        "\n## All cases\n",
        table(results),
    ]
    if overloaded:
        report += ["\n## Overload\n", overload.report(overloaded)]
    made = [] if args.smoke else plots(results, out)
    report += [f"\n![{name}]({name})" for name in made]
    (out / "results.md").write_text("\n".join(report) + "\n")
    (out / "results.json").write_text(
        json.dumps(
            {
                "cases": [
                    {"case": asdict(case), "contender": name, "runs": runs}
                    for (case, name), runs in results.items()
                ],
                "disk_sustained_mb_per_s": sustained,
                "overload": overloaded,
            },
            indent=1,
        )
    )
    print("\n".join(report))
    print(f"\nwritten to {out}")
    if overloaded and overloaded["problems"]:
        sys.exit("overload: a check failed (see above)")


if __name__ == "__main__":
    main()
