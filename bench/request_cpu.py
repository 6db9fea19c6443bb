"""Where a request's CPU goes, in-process: logwriter's view and writer against the naive app.

Both Flask apps run in this one process, called through WSGI with each body from memory (no
Gunicorn, no sockets), in interleaved trials. It prints each app's CPU per request (the
minimum over the trials: the least disturbed), how much of logwriter's its writer thread
spent, and a cProfile of logwriter's request thread: by own time, then its own functions by
cumulative time. Under Gunicorn a request costs several times more (its gthread loop and the
GIL hand-offs between threads, shared by both apps: docs/performance.md); what this shows is the
part that is the apps' own.

    python -m bench.request_cpu [--lines N] [--body text|ndjson] [--top K]
"""

import argparse
import cProfile
import io
import os
import pstats
import socket
import tempfile
import time
from collections.abc import Callable, Iterable
from typing import Any

TRIALS = 9
WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.request_cpu", description=__doc__)
    parser.add_argument("--lines", type=int, default=1, help="lines per body (default 1)")
    parser.add_argument("--body", choices=("text", "ndjson"), default="text")
    parser.add_argument("--top", type=int, default=25, help="functions listed (default 25)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="logwriter-request-cpu-") as tmp:
        # As under logwriter's Gunicorn: metrics in multiprocess files. Set before the imports
        # in measure(), which read these.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tmp
        os.environ["LOGWRITER_DIR"] = tmp
        os.environ["NAIVE_FILE"] = os.path.join(tmp, "naive.log")
        measure(args.lines, args.body, args.top)


def measure(lines: int, body_kind: str, top: int) -> None:
    from werkzeug.test import EnvironBuilder

    from bench.naive import app as naive
    from bench.workloads import Case, make_body
    from service.app import create_app, runtime
    from service.settings import Settings

    logwriter = create_app(Settings.from_env())
    writer = runtime(logwriter).writer
    case = Case(lines, conns=1, workers=1, body=body_kind)  # only lines and body matter here
    body = make_body(case)
    environ = EnvironBuilder(
        path="/v1/logs/bench", method="POST", data=body, content_type=case.content_type
    ).get_environ()
    count = max(200, 4000 // max(1, lines // 10))
    # One end of a socket pair stands for the client's connection, so that the body deadline
    # is kept as under Gunicorn; the other end only keeps it open.
    connection, peer = socket.socketpair()
    environ["gunicorn.socket"] = connection
    writer.start()
    try:

        def post(app: WSGIApp, times: int) -> None:
            statuses = set()
            for _ in range(times):
                request = {**environ, "wsgi.input": io.BytesIO(body)}
                for _chunk in app(request, lambda status, *_: statuses.add(status)):
                    pass
            if statuses - {"202 ACCEPTED"}:  # an error answer would be timed as a request
                raise SystemExit(f"unexpected answers: {statuses}")

        cpu: dict[str, list[float]] = {"naive": [], "logwriter": []}
        writer_share: list[float] = []
        post(naive, count)  # warm both up
        post(logwriter, count)
        for _ in range(TRIALS):
            for name, app in (("naive", naive), ("logwriter", logwriter)):
                process, thread = time.process_time(), time.thread_time()
                post(app, count)
                thread = time.thread_time() - thread
                time.sleep(0.05)  # the writer's linger ends and it writes what was queued
                process = time.process_time() - process
                cpu[name].append(process / count * 1e6)
                if name == "logwriter":  # its other threads: the writer, the body watchdog
                    writer_share.append((process - thread) / count * 1e6)
        best = {name: min(trials) for name, trials in cpu.items()}
        print(
            f"{body_kind}, {lines} lines per request, CPU per request (min of {TRIALS} trials "
            f"of {count}): naive app {best['naive']:.1f} us; logwriter {best['logwriter']:.1f} "
            f"us ({best['logwriter'] / best['naive']:.2f}x), of which its writer thread "
            f"{sorted(writer_share)[TRIALS // 2]:.1f} us (median)\n"
        )
        profile = cProfile.Profile()
        profile.runcall(post, logwriter, count)
        out = io.StringIO()
        stats = pstats.Stats(profile, stream=out)
        stats.sort_stats("tottime").print_stats(top)
        stats.sort_stats("cumulative").print_stats(r"service[/\\]", top)  # its own parts
        print(f"cProfile of logwriter's request thread, {count} requests (times inflated by it):")
        print(out.getvalue())
    finally:
        writer.stop()
        connection.close()
        peer.close()


if __name__ == "__main__":
    main()
