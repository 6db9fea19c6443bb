"""Where a request's CPU goes, in-process: logwriter's view and writer against the naive app.

Both Flask apps run in this one process, called through WSGI with each body from memory (no
Gunicorn, no sockets), in interleaved trials. It prints each app's CPU per request (the
minimum over the trials: the least disturbed), how much of logwriter's its writer thread
spent, and a cProfile of logwriter's request thread: by own time, then its own functions by
cumulative time. Under Gunicorn a request costs several times more (its gthread loop and the
GIL hand-offs between threads, shared by both apps: docs/performance.md); what this shows is the
part that is the apps' own.

With --body otlp or otlp-json, --lines is the records of bench.otlp's request (512 there), and
the comparison is logwriter's own: the request posted to /otlp/v1/logs (as protobuf or
OTLP/JSON) against the same records as the NDJSON lines it writes for them, posted to
/v1/logs/<stream>. The writer thread's share shows that decoding stays on the request thread:
both write the same bytes.

    python -m bench.request_cpu [--lines N] [--body text|ndjson|otlp|otlp-json] [--top K]
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
from dataclasses import dataclass
from typing import Any

TRIALS = 9
WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
OTLP_BODIES = ("otlp", "otlp-json")


@dataclass(frozen=True)
class Subject:
    """What one trial posts, and the answer each post must get."""

    name: str
    app: WSGIApp
    environ: dict[str, Any]
    body: bytes
    status: str
    logwriter: bool = True  # its other threads' CPU is logwriter's writer's


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.request_cpu", description=__doc__)
    parser.add_argument(
        "--lines", type=int, default=1, help="lines (OTLP: records) per body (default 1)"
    )
    parser.add_argument("--body", choices=("text", "ndjson", *OTLP_BODIES), default="text")
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
    # One end of a socket pair stands for the client's connection, so that the body deadline
    # is kept as under Gunicorn; the other end only keeps it open.
    connection, peer = socket.socketpair()

    def environ(path: str, body: bytes, content_type: str) -> dict[str, Any]:
        built = EnvironBuilder(
            path=path, method="POST", data=body, content_type=content_type
        ).get_environ()
        built["gunicorn.socket"] = connection
        return built

    if body_kind in OTLP_BODIES:
        from bench import otlp

        sent, stream = otlp.bodies(lines)
        ndjson = sent["ndjson"]
        subjects = [
            Subject(
                "NDJSON",
                logwriter,
                environ(f"/v1/logs/{stream}", ndjson, Case(lines, 1, 1, "ndjson").content_type),
                ndjson,
                "202 ACCEPTED",
            ),
            Subject(
                otlp.NAMES[body_kind],
                logwriter,
                environ("/otlp/v1/logs", sent[body_kind], case.content_type),
                sent[body_kind],
                "200 OK",
            ),
        ]
        count = max(20, 50_000 // max(1, lines))
    else:
        body = make_body(case)
        request = environ("/v1/logs/bench", body, case.content_type)
        subjects = [
            Subject("naive", naive, request, body, "202 ACCEPTED", logwriter=False),
            Subject("logwriter", logwriter, request, body, "202 ACCEPTED"),
        ]
        count = max(200, 4000 // max(1, lines // 10))
    writer.start()
    try:

        def post(subject: Subject, times: int) -> None:
            statuses = set()
            for _ in range(times):
                request = {**subject.environ, "wsgi.input": io.BytesIO(subject.body)}
                for _chunk in subject.app(request, lambda status, *_: statuses.add(status)):
                    pass
            if statuses - {subject.status}:  # an error answer would be timed as a request
                raise SystemExit(f"{subject.name}: unexpected answers: {statuses}")

        cpu: dict[str, list[float]] = {subject.name: [] for subject in subjects}
        writer_share: dict[str, list[float]] = {subject.name: [] for subject in subjects}
        for subject in subjects:  # warm them up
            post(subject, count)
        for _ in range(TRIALS):
            for subject in subjects:
                process, thread = time.process_time(), time.thread_time()
                post(subject, count)
                thread = time.thread_time() - thread
                time.sleep(0.05)  # the writer's linger ends and it writes what was queued
                process = time.process_time() - process
                cpu[subject.name].append(process / count * 1e6)
                if subject.logwriter:  # its other threads: the writer, the body watchdog
                    writer_share[subject.name].append((process - thread) / count * 1e6)
        best = {name: min(trials) for name, trials in cpu.items()}
        share = {name: sorted(t)[TRIALS // 2] for name, t in writer_share.items() if t}
        heading = f"CPU per request (min of {TRIALS} trials of {count})"
        if body_kind in OTLP_BODIES:
            base, contender = (subject.name for subject in subjects)
            times = best[contender] / best[base]
            print(
                f"{body_kind}, {lines} records per request, {heading}, logwriter: the same "
                f"records as NDJSON {best[base]:.1f} us ({best[base] / lines:.2f} us/record); "
                f"as {contender} {best[contender]:.1f} us ({best[contender] / lines:.2f} "
                f"us/record, {times:.2f}x the NDJSON's: {1 / times:.2f}x its records/s where "
                f"CPU sets the pace). Of which the writer thread (median): {share[base]:.1f} us "
                f"for NDJSON, {share[contender]:.1f} us for {contender}\n"
            )
        else:
            print(
                f"{body_kind}, {lines} lines per request, {heading}: naive app "
                f"{best['naive']:.1f} us; logwriter {best['logwriter']:.1f} us "
                f"({best['logwriter'] / best['naive']:.2f}x), of which its writer thread "
                f"{share['logwriter']:.1f} us (median)\n"
            )
        profile = cProfile.Profile()
        profile.runcall(post, subjects[-1], count)
        out = io.StringIO()
        stats = pstats.Stats(profile, stream=out)
        stats.sort_stats("tottime").print_stats(top)
        stats.sort_stats("cumulative").print_stats(r"service[/\\]", top)  # its own parts
        posted = f" ({subjects[-1].name})" if body_kind in OTLP_BODIES else ""
        print(
            f"cProfile of logwriter's request thread{posted}, {count} requests (times "
            "inflated by it):"
        )
        print(out.getvalue())
    finally:
        writer.stop()
        connection.close()
        peer.close()


if __name__ == "__main__":
    main()
