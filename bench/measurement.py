"""How the figures are taken: wrk runs, the CPU seconds and peak RSS of a server's processes,
measure() for one case and contender, the raw disk's rates, the load generator's own capacity
and the overload run."""

import contextlib
import json
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench import disks, overload
from bench.contenders import Contender, start, stop
from bench.workloads import LINE_BYTES, Case, make_body

WRK_SCRIPT = Path(__file__).with_name("wrk.lua")


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


def lowest_nice(pids: list[int]) -> int:
    """The lowest nice value of any thread of these processes: logwriter's writer threads'."""
    tids = [int(task.name) for pid in pids for task in Path(f"/proc/{pid}/task").iterdir()]
    return min(os.getpriority(os.PRIO_PROCESS, tid) for tid in tids)


def wrk(port: int, path: str, body_file: Path, case: Case, seconds: float) -> dict[str, int]:
    command = [
        "wrk",
        f"-t{min(2, case.conns)}",
        f"-c{case.conns}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "10s",
        "-s",
        str(WRK_SCRIPT),
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
    # Every contender starts on the same disk: the folder of the one before is gone (with its
    # dirty pages), and nothing is left for writeback to do meanwhile.
    os.sync()
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
            nice = lowest_nice(pids)
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
        "lowest_nice": nice,
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
