"""Instructions per request under Gunicorn, counted by Valgrind's callgrind: logwriter against
the naive app, the same count run after run, where the wall clock on these shared machines
swings by a tenth.

Each contender is served twice under `valgrind --tool=callgrind` (1 worker, 8 threads), once
taking --requests requests and once five times as many, posted from this process over --conns
keep-alive connections; the difference between the two runs' instructions, over the
difference in requests, is what one request costs, start and stop cancelled out. It counts
every thread of the arbiter and the worker. Under callgrind a request takes some 50 times
longer, so a 20 ms linger gathers fewer of them: the writer thread's share of the count is
larger than at full speed.

    python -m bench.instructions [--lines N] [--body text|ndjson] [--conns C] [--requests N]
"""

import argparse
import http.client
import re
import tempfile
import threading
from pathlib import Path

from bench.contenders import CONTENDERS, Contender, ensure_tools, start, stop
from bench.workloads import Case, make_body

VALGRIND = ["valgrind", "--tool=callgrind", "--dump-instr=no"]
START_SECONDS = 300  # the arbiter's imports under callgrind take a minute on a busy machine
_TOTAL = re.compile(rb"^(?:summary|totals): (\d+)$", re.M)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.instructions", description=__doc__)
    parser.add_argument("--lines", type=int, default=1, help="lines per body (default 1)")
    parser.add_argument("--body", choices=("text", "ndjson"), default="text")
    parser.add_argument("--conns", type=int, default=8, help="connections (default 8)")
    parser.add_argument(
        "--requests", type=int, default=400, help="requests of the shorter run (default 400)"
    )
    args = parser.parse_args(argv)
    ensure_tools(("valgrind",))
    case = Case(args.lines, args.conns, workers=1, body=args.body)
    few, many = args.requests, 5 * args.requests
    counts = {}
    for name in ("naive", "logwriter"):
        contender = next(c for c in CONTENDERS if c.name == name)
        counts[name] = (
            instructions(contender, case, many) - instructions(contender, case, few)
        ) / (many - few)
    print(
        f"{case}, instructions per request under callgrind ({few} and {many} requests): "
        f"naive app {counts['naive']:,.0f}; logwriter {counts['logwriter']:,.0f} "
        f"({counts['logwriter'] / counts['naive']:.3f}x)"
    )


def instructions(contender: Contender, case: Case, requests: int) -> int:
    """Every instruction of the contender's processes, from start to stop, serving `requests`."""
    with tempfile.TemporaryDirectory(prefix="logwriter-instructions-") as tmp:
        folder = Path(tmp)
        prefix = [*VALGRIND, f"--callgrind-out-file={folder}/callgrind.%p"]
        proc, port = start(contender, 1, folder, prefix=prefix, ready_seconds=START_SECONDS)
        try:
            post_all(port, f"/v1/logs/bench?ack={contender.ack}", case, requests)
        finally:
            stop(proc)
        # One file per process, written as it exits: a process that did not exit cleanly
        # (or was killed) leaves an empty one, and a count without it would be too low.
        totals = [_TOTAL.search(out.read_bytes()) for out in folder.glob("callgrind.*")]
        if len(totals) < 2 or not all(totals):
            raise SystemExit(f"{contender.name}: callgrind did not count every process")
        return sum(int(total.group(1)) for total in totals if total)


def post_all(port: int, path: str, case: Case, requests: int) -> None:
    """`requests` posts of the case's body, spread over its connections, each answered 2xx."""
    body = make_body(case)
    headers = {"Content-Type": case.content_type}
    failures: list[str] = []

    def post(count: int) -> None:
        # Long timeouts: the worker is still starting when the first posts arrive.
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=START_SECONDS)
        try:
            for _ in range(count):
                connection.request("POST", path, body, headers)
                answer = connection.getresponse()
                answer.read()
                if answer.status >= 300:
                    failures.append(f"{answer.status} {answer.reason}")
        except OSError as exc:
            failures.append(repr(exc))
        finally:
            connection.close()

    share, extra = divmod(requests, case.conns)
    senders = [
        threading.Thread(target=post, args=(share + (i < extra),)) for i in range(case.conns)
    ]
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join()
    if failures:
        raise SystemExit(f"{len(failures)} posts failed, the first: {failures[0]}")


if __name__ == "__main__":
    main()
