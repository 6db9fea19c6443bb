"""python -m bench: logwriter side by side with what users would run instead, in one run.

Contenders: logwriter (ack=queued, written, fsync); the naive Flask app under the same Gunicorn
settings (and its fsync-per-request variant); nginx writing $request_body to its access log
(the ceiling: no Python at all); and the raw append rate of the disk for the same bytes.
Group commit is also measured where an fsync costs what it does on a hard disk: ack=fsync
and the naive fsync-per-request app on a disk capped at --iops write IOPS (bench.disks).
Once per run, bench.silent measures a client's latency against silent connections (TCP
connections that send nothing), logwriter against the naive app's stock gthread worker, and
bench.otlp measures OTLP/HTTP logs in (protobuf and OTLP/JSON) against the same records sent
as NDJSON.
Every case runs each contender once per round, rounds interleaved and each starting with
another contender, so that the noise of a shared machine hits all of them alike. Each figure
is the median of the rounds, with its spread (min-max). Results go to bench/results/
(Markdown, JSON, plots).

This module reads the command line and runs the rounds; bench.workloads holds the cases,
bench.contenders the servers, bench.measurement the measuring, bench.report the results.
"""

import argparse
import sys
import tempfile
from pathlib import Path

from bench import client as bench_client
from bench import measurement, otlp, report, silent
from bench.contenders import RAW_DISK, contenders_for, ensure_tools
from bench.workloads import DURABLE_CONNS, Case, capped_disk_cases, every_case, full_cases

RESULTS = Path(__file__).with_name("results")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="one short case per contender")
    parser.add_argument(
        "--all", action="store_true", help="every combination of the workloads (about 80 min)"
    )
    parser.add_argument(
        "--case",
        action="append",
        type=parse_case,
        metavar="LINES/CONNS/WORKERS[/ndjson]",
        help="only this case, instead of the default run's (repeatable)",
    )
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--seconds", type=float, default=3, help="per measurement (default 3)")
    parser.add_argument("--out", type=Path, default=None, help="default bench/results")
    parser.add_argument(
        "--overload", type=float, default=30, help="seconds of overload (default 30; 0: none)"
    )
    parser.add_argument(
        "--silent",
        type=float,
        default=15,
        help="seconds of each silent-connections measurement (default 15; 0: none)",
    )
    parser.add_argument(
        "--otlp",
        type=float,
        default=5,
        help="seconds of each OTLP measurement, --rounds rounds of them (default 5; 0: none)",
    )
    parser.add_argument(
        "--no-client",
        action="store_true",
        help="skip bench.client (the Python logging handler against HTTPHandler), run last",
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
    elif args.case:
        cases = args.case
    else:
        cases = every_case() if args.all else full_cases()
    if args.iops:
        capped = capped_disk_cases(args.iops)
        cases += [capped[2]] if args.smoke else capped  # smoke: 1 line, 32 threads
    rounds, seconds = (1, 1.0) if args.smoke else (args.rounds, args.seconds)
    out = args.out or (Path(tempfile.mkdtemp(prefix="bench-smoke-")) if args.smoke else RESULTS)
    out.mkdir(parents=True, exist_ok=True)

    results: report.Results = {}
    for round_ in range(1, rounds + 1):
        for case in cases:
            contenders = contenders_for(case)
            # Each round starts with another contender, so that none always runs right after
            # the disk-heavy one before it.
            shift = (round_ - 1) % len(contenders)
            for contender in contenders[shift:] + contenders[:shift]:
                run = measurement.measure(case, contender, seconds)
                results.setdefault((case, contender.name), []).append(run)
                print(
                    f"round {round_}/{rounds} | {case} | {contender.name}: "
                    f"{run['lines_per_s']:,.0f} lines/s",
                    flush=True,
                )
            if not case.iops:
                raw = measurement.raw_disk(case, min(seconds, 2))
                results.setdefault((case, RAW_DISK), []).append(raw)
    capacity = measurement.load_generator_capacity(Case(100, DURABLE_CONNS, 1), seconds)
    disk_bytes = 256 << 20 if args.smoke else 2 << 30
    sustained = measurement.disk_sustained_mb_per_s(disk_bytes)
    overload_seconds = min(args.overload, 3) if args.smoke else args.overload
    overloaded = measurement.overload_run(overload_seconds) if overload_seconds else None
    silent_seconds = min(args.silent, 3) if args.smoke else args.silent
    silenced = silent.run(silent_seconds) if silent_seconds else None
    # The full time even for --smoke: OTLP/JSON's first answers take 1-2 s to come.
    otlp_result = otlp.run(args.otlp, rounds) if args.otlp else None

    text = report.write(
        out,
        results,
        rounds=rounds,
        seconds=seconds,
        iops=args.iops,
        disk_bytes=disk_bytes,
        disk_sustained_mb_per_s=sustained,
        load_generator_requests_per_s=capacity,
        overloaded=overloaded,
        silenced=silenced,
        otlp_result=otlp_result,
        with_plots=not args.smoke,
    )
    print(text)
    print(f"\nwritten to {out}")
    failed = [
        name
        for name, result in (
            ("overload", overloaded),
            ("silent connections", silenced),
            ("otlp", otlp_result),
        )
        if result and result["problems"]
    ]
    if failed:
        sys.exit(f"{' and '.join(failed)}: a check failed (see above)")
    if not args.no_client:
        print()
        bench_client.main(["--smoke"] if args.smoke else ["--rounds", str(rounds)])


def parse_case(text: str) -> Case:
    """A Case from "1000/128/2" (lines per body, connections, workers) or "1/32/1/ndjson"."""
    lines, conns, workers, *body = text.split("/")
    if body and body != ["ndjson"]:
        raise argparse.ArgumentTypeError(f"the body is text (the default) or ndjson: {text!r}")
    return Case(int(lines), int(conns), int(workers), *body)


if __name__ == "__main__":
    main()
