"""python -m bench.client: logwriter_client.Handler against logging.handlers.HTTPHandler.

Two figures, each against its target (bench.targets style, evaluated here):

- the handler's cost on the app's thread per record: Handler.handle() (format, encode, buffer)
  against HTTPHandler.handle() (one blocking POST of the form-encoded record), median and p99
  in µs; target: Handler median ≤ 10 µs. The whole logger.info() call is shown beside it.
- records/s delivered end to end into one logwriter worker (ack=written): records logged from
  one thread as fast as it can, until flush() returns with all of them acknowledged, against
  one request per record to the same worker (HTTPHandler, a new connection each, and a
  kept-alive Client.send() per record); target: ≥ 20x the kept-alive one.

Each contender runs once per round, rounds interleaved, against one logwriter (1 worker) that
this starts in a temporary folder; each figure is the median of the rounds, with its spread.
--smoke: one short round, which checks that everything runs and that every record arrived,
asserting no speed.

    python -m bench.client [--smoke] [--rounds N]
"""

import argparse
import http.client
import logging
import logging.handlers
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from logwriter_client import Client, Handler

TARGET_HANDLE_MEDIAN_US = 10.0
TARGET_SPEEDUP = 20.0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.client", description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="one short round, no speed asserted")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    args = parser.parse_args(argv)
    rounds, scale = (1, 0.1) if args.smoke else (args.rounds, 1.0)
    with tempfile.TemporaryDirectory(prefix="bench-client-") as tmp:
        service = _start_logwriter(Path(tmp))
        try:
            port = service[1]
            results: dict[str, list[float]] = {}
            for round_ in range(rounds):
                for name, measure in _measurements(port, scale, Path(tmp) / "logs"):
                    for key, value in measure().items():
                        results.setdefault(f"{name} {key}", []).append(value)
                print(f"round {round_ + 1}/{rounds} done", file=sys.stderr)
        finally:
            _stop(service[0])
    _report(results, args.smoke)


def _measurements(
    port: int, scale: float, logs: Path
) -> list[tuple[str, Callable[[], dict[str, float]]]]:
    url = f"http://127.0.0.1:{port}"
    per_record = int(2_000 * scale)
    batched = int(200_000 * scale)
    return [
        ("handler cost", lambda: _cost(Handler(url, "cost"), int(100_000 * scale))),
        ("HTTPHandler cost", lambda: _cost(_http_handler(port, "cost-http"), per_record)),
        ("handler", lambda: _throughput_handler(url, batched, logs / "rate.log")),
        (
            "HTTPHandler",
            lambda: _throughput_per_record(_http_handler(port, "rate-http"), per_record),
        ),
        ("kept-alive", lambda: _throughput_client(url, per_record)),
    ]


def _http_handler(port: int, stream: str) -> logging.Handler:
    return logging.handlers.HTTPHandler(
        f"127.0.0.1:{port}", f"/v1/logs/{stream}?ack=written", method="POST"
    )


def _record(i: int) -> logging.LogRecord:
    return logging.LogRecord(
        "app.requests", logging.INFO, __file__, 1, "request %d done in %d ms", (i, 12), None
    )


def _cost(handler: logging.Handler, count: int) -> dict[str, float]:
    """µs on the calling thread per handle() of a ready record, and per whole logger.info()."""
    handle, whole = [], []
    logger = logging.getLogger(f"bench.{id(handler)}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        for i in range(count):
            record = _record(i)
            started = time.perf_counter_ns()
            handler.handle(record)
            handle.append(time.perf_counter_ns() - started)
        for i in range(count):
            started = time.perf_counter_ns()
            logger.info("request %d done in %d ms", i, 12)
            whole.append(time.perf_counter_ns() - started)
    finally:
        logger.removeHandler(handler)
        handler.close()
    return {
        "handle median µs": _quantile(handle, 0.5) / 1000,
        "handle p99 µs": _quantile(handle, 0.99) / 1000,
        "logger.info median µs": _quantile(whole, 0.5) / 1000,
    }


def _throughput_handler(url: str, count: int, log_file: Path) -> dict[str, float]:
    handler = Handler(url, "rate", buffer_bytes=256 << 20)  # all of them fit: none dropped
    before = _lines(log_file)
    started = time.perf_counter()
    for i in range(count):
        handler.handle(_record(i))
    if not handler.flush(120):
        raise SystemExit("bench.client: the handler did not deliver within 120 s")
    took = time.perf_counter() - started
    handler.close()
    if handler.delivered != count or _lines(log_file) - before != count:
        raise SystemExit(f"bench.client: {handler.delivered} of {count} records delivered")
    return {"records/s": count / took}


def _throughput_per_record(handler: logging.Handler, count: int) -> dict[str, float]:
    started = time.perf_counter()
    for i in range(count):
        handler.handle(_record(i))
    took = time.perf_counter() - started
    handler.close()
    return {"records/s": count / took}


def _throughput_client(url: str, count: int) -> dict[str, float]:
    client = Client(url, "rate-client")
    started = time.perf_counter()
    for i in range(count):
        client.send([f"request {i} done in 12 ms"])
    took = time.perf_counter() - started
    client.close()
    return {"records/s": count / took}


def _report(results: dict[str, list[float]], smoke: bool) -> None:
    """Each figure's median over the rounds, with its spread (min-max), then the targets."""
    figures = {key: statistics.median(values) for key, values in results.items()}
    for key, value in figures.items():
        spread = f"({min(results[key]):,.1f}-{max(results[key]):,.1f})"
        print(f"{key:40} {value:12,.1f}  {spread}")
    for baseline in ("HTTPHandler", "kept-alive"):
        ratio = figures["handler records/s"] / figures[f"{baseline} records/s"]
        print(f"{'handler / ' + baseline + ' records/s':40} {ratio:11.1f}x")
    median = figures["handler cost handle median µs"]
    speedup = figures["handler records/s"] / figures["kept-alive records/s"]
    met = {True: "met", False: "MISSED"}
    handle_target = f"handle() median <= {TARGET_HANDLE_MEDIAN_US:g} µs"
    print(f"target: {handle_target}: {met[median <= TARGET_HANDLE_MEDIAN_US]}")
    speed_target = f">= {TARGET_SPEEDUP:g}x one kept-alive request per record"
    print(f"target: {speed_target}: {met[speedup >= TARGET_SPEEDUP]}")
    if smoke:
        print("(a smoke run: short, one round; not figures to quote)")


def _quantile(samples: list[int], q: float) -> float:
    ordered = sorted(samples)
    return float(ordered[min(len(ordered) - 1, int(q * len(ordered)))])


def _lines(path: Path) -> int:
    if not path.exists():
        return 0
    with path.open("rb") as file:
        return sum(block.count(b"\n") for block in iter(lambda: file.read(1 << 20), b""))


def _start_logwriter(tmp: Path) -> tuple[subprocess.Popen[bytes], int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {
        **os.environ,
        "LOGWRITER_DIR": str(tmp / "logs"),
        "LOGWRITER_BIND": f"127.0.0.1:{port}",
        "LOGWRITER_WORKERS": "1",
    }
    out = (tmp / "logwriter.out").open("wb")
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "logwriter")], env=env, stdout=out, stderr=out
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            conn.request("GET", "/readyz")
            if conn.getresponse().status == 200:
                return proc, port
        except OSError:
            time.sleep(0.1)
        if proc.poll() is not None:
            break
    _stop(proc)
    raise SystemExit(
        f"bench.client: logwriter did not come up: {(tmp / 'logwriter.out').read_text()}"
    )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


if __name__ == "__main__":
    main()
