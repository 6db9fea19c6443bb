"""Where a request's CPU goes, in-process: logwriter's view and writer against the naive app.

Both Flask apps run in this one process, called through WSGI with each body from memory (no
Gunicorn, no sockets), in interleaved trials. It prints each app's CPU per request (the
minimum over the trials: the least disturbed), how much of logwriter's is its writer
thread's, and a cProfile of logwriter's request thread: by own time, then its own functions
by cumulative time. Under Gunicorn a
request costs several times more (its gthread loop and the GIL hand-offs between threads,
shared by both apps: README, Speed); what this shows is the part that is the apps' own.

    python -m bench.profile [--lines N] [--body text|ndjson] [--top K]
"""

import argparse
import cProfile
import io
import os
import pstats
import socket
import tempfile
import time
from collections.abc import Callable
from typing import Any

TRIALS = 9


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("--lines", type=int, default=1, help="lines per body (default 1)")
    parser.add_argument("--body", choices=("text", "ndjson"), default="text")
    parser.add_argument("--top", type=int, default=25, help="functions listed (default 25)")
    args = parser.parse_args(argv)

    tmp = tempfile.mkdtemp(prefix="logwriter-profile-")
    # As under logwriter's Gunicorn: metrics in multiprocess files. Set before the imports
    # below, which read these.
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tmp
    os.environ["LOGWRITER_DIR"] = tmp
    os.environ["NAIVE_FILE"] = os.path.join(tmp, "naive.log")
    from werkzeug.test import EnvironBuilder

    from bench.__main__ import Case, make_body
    from bench.naive import app as naive
    from service.app import create_app
    from service.settings import Settings

    logwriter = create_app(Settings.from_env())
    writer = logwriter.extensions["logwriter"].writer
    writer.start()
    body = make_body(Case(args.lines, 32, 1, args.body))
    content_type = "application/x-ndjson" if args.body == "ndjson" else "text/plain"
    environ = EnvironBuilder(
        path="/v1/logs/bench", method="POST", data=body, content_type=content_type
    ).get_environ()
    client_end, server_end = socket.socketpair()
    environ["gunicorn.socket"] = server_end  # so that the body deadline is kept, as in service

    def requests(app: Callable[..., Any], count: int) -> None:
        for _ in range(count):
            request = {**environ, "wsgi.input": io.BytesIO(body)}
            for _chunk in app(request, lambda status, headers, exc_info=None: None):
                pass

    count = max(200, 4000 // max(1, args.lines // 10))
    cpu: dict[str, list[float]] = {"naive": [], "logwriter": []}
    request_thread: list[float] = []
    requests(naive, count)  # warm both up
    requests(logwriter, count)
    for _ in range(TRIALS):
        for name, app in (("naive", naive), ("logwriter", logwriter)):
            started, started_here = time.process_time(), time.thread_time()
            requests(app, count)
            here = time.thread_time() - started_here
            time.sleep(0.05)  # the writer's linger ends and it writes what was queued
            cpu[name].append((time.process_time() - started) / count * 1e6)
            if name == "logwriter":
                request_thread.append(here / count * 1e6)
    best = {name: min(trials) for name, trials in cpu.items()}
    print(
        f"{args.body}, {args.lines} lines per request, CPU per request (min of {TRIALS} trials "
        f"of {count}): naive app {best['naive']:.1f} us; logwriter {best['logwriter']:.1f} us "
        f"({best['logwriter'] / best['naive']:.2f}x), of which its request thread "
        f"{min(request_thread):.1f} us and its writer thread the rest\n"
    )
    profile = cProfile.Profile()
    profile.runcall(requests, logwriter, count)
    out = io.StringIO()
    stats = pstats.Stats(profile, stream=out)
    stats.sort_stats("tottime").print_stats(args.top)
    stats.sort_stats("cumulative").print_stats(r"service[/\\]", args.top)  # its own parts
    print(f"cProfile of logwriter's request thread, {count} requests (times inflated by it):")
    print(out.getvalue())
    writer.stop()
    client_end.close()
    server_end.close()


if __name__ == "__main__":
    main()
