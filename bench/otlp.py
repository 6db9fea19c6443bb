"""OTLP/HTTP logs in, against the same records sent as NDJSON, once per run.

The request is one ExportLogsServiceRequest of RECORDS records (the OpenTelemetry SDKs' batch
size): messages of MESSAGE_BYTES, three attributes (two strings and an int), trace and span ids,
flags, times; one resource (service.name=SERVICE and three more attributes) and one scope. It
is sent three ways, each the contender of its own measurement:
  ndjson     the baseline: the very lines logwriter writes for those records (service.otlp
             converts the request once, here), RECORDS to a request, posted to
             /v1/logs/<stream> as application/x-ndjson
  otlp       the request as protobuf, posted to /otlp/v1/logs as application/x-protobuf
  otlp-json  the same request as OTLP/JSON (application/json): reported beside the others,
             without a target
Each measurement starts a logwriter of its own (1 worker, THREADS request threads, ack=queued)
and runs wrk with DURABLE_CONNS connections for `seconds`; the three are interleaved in rounds,
each round starting with another, as the rest of the bench is. CPU is the server's processes'
(from /proc) over the wrk run. bench.targets sets the goal for otlp's records/s over ndjson's.

All three write the same bytes to the same stream's file. Afterwards each file must hold the
NDJSON body, whole and unchanged, once per answered request (or up to one more per connection:
a request in flight when wrk stops is written, unanswered): anything else is a problem, and
fails the bench.
"""

import base64
import json
import random
import statistics
import tempfile
from pathlib import Path
from typing import Any

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from bench.contenders import Contender, start, stop
from bench.measurement import cpu_seconds, peak_rss_mib, process_tree, wrk
from bench.targets import OTLP_RATIOS
from bench.workloads import DURABLE_CONNS, THREADS, Case

RECORDS = 512  # the BatchLogRecordProcessor's default batch
MESSAGE_BYTES = 200
SERVICE = "checkout"  # the resource's service.name, and so the stream
VARIANTS = ("ndjson", "otlp", "otlp-json")
NAMES = {"ndjson": "NDJSON (baseline)", "otlp": "OTLP protobuf", "otlp-json": "OTLP/JSON"}
ACK = "queued"
_START_NS = 1_796_106_471_123_456_789  # 2026-12-01T06:27:51.123456789Z


def build_request(records: int = RECORDS, seed: int = 1) -> ExportLogsServiceRequest:
    """The benchmark's request: the same records every time (seeded)."""
    rnd = random.Random(seed)
    request = ExportLogsServiceRequest()
    resource_logs = request.resource_logs.add()
    for key, value in (
        ("service.name", SERVICE),
        ("service.version", "1.4.2"),
        ("host.name", "web-7"),
        ("telemetry.sdk.language", "python"),
    ):
        resource_logs.resource.attributes.add(key=key, value=AnyValue(string_value=value))
    scope_logs = resource_logs.scope_logs.add()
    scope_logs.scope.name = "checkout.handlers"
    scope_logs.scope.version = "1.4.2"
    for i in range(records):
        record = scope_logs.log_records.add()
        record.time_unix_nano = _START_NS + i * 1_000_003
        record.observed_time_unix_nano = record.time_unix_nano + 517
        record.severity_number = 9
        record.severity_text = "INFO"
        message = f"order {i} placed by user-{rnd.randrange(10**6)}: "
        record.body.string_value = message + "x" * (MESSAGE_BYTES - len(message))
        record.attributes.add(key="http.method", value=AnyValue(string_value="POST"))
        record.attributes.add(key="http.status_code", value=AnyValue(int_value=201))
        user = AnyValue(string_value=f"u-{rnd.randrange(10**6)}")
        record.attributes.add(key="user.id", value=user)
        record.trace_id = rnd.randbytes(16)
        record.span_id = rnd.randbytes(8)
        record.flags = 1
    return request


def otlp_json(request: ExportLogsServiceRequest) -> bytes:
    """The request as OTLP/JSON: protobuf's JSON mapping (lowerCamelCase, 64-bit integers as
    strings), enums as numbers and ids in hex, as the spec has it."""
    from google.protobuf import json_format

    message = json_format.MessageToDict(request, use_integers_for_enums=True)
    for resource_logs in message["resourceLogs"]:
        for scope_logs in resource_logs["scopeLogs"]:
            for record in scope_logs["logRecords"]:
                for key in ("traceId", "spanId"):
                    record[key] = base64.b64decode(record[key]).hex()
    return json.dumps(message, separators=(",", ":")).encode()


def bodies(records: int = RECORDS) -> tuple[dict[str, bytes], str]:
    """Each variant's request body, and the stream they all write to. The NDJSON body is what
    service.otlp makes of the protobuf request with logwriter's default settings; the JSON
    request must come to the very same lines."""
    # Here, not at the top: the bench's own process need not import the service's settings
    # (and its metrics) unless it measures this.
    from service import otlp
    from service.settings import Settings

    defaults = Settings()
    request = build_request(records)
    sent = {"otlp": request.SerializeToString(), "otlp-json": otlp_json(request)}
    converted = {
        variant: otlp.to_lines(
            otlp.decode(body, otlp.PROTOBUF if variant == "otlp" else otlp.JSON),
            None,
            defaults.otlp_stream,
            defaults.otlp_format,
            0,
            defaults.max_line_bytes,
        )
        for variant, body in sent.items()
    }
    ((stream, lines),) = converted["otlp"].streams.items()
    if lines.count != records or converted["otlp-json"].streams != {stream: lines}:
        raise RuntimeError("the OTLP/JSON request does not come to the protobuf request's lines")
    return {"ndjson": lines.data, **sent}, stream


def path(variant: str, stream: str) -> str:
    route = f"/v1/logs/{stream}" if variant == "ndjson" else "/otlp/v1/logs"
    return f"{route}?ack={ACK}"


def measure(variant: str, body: bytes, lines: bytes, stream: str, seconds: float) -> dict[str, Any]:
    """One variant against a logwriter of its own; `lines` is what each request must write."""
    case = Case(RECORDS, DURABLE_CONNS, 1, body=variant)  # wrk takes its conns and type
    with tempfile.TemporaryDirectory(prefix="logwriter-bench-") as tmp_name:
        tmp = Path(tmp_name)
        body_file = tmp / "body"
        body_file.write_bytes(body)
        proc, port = start(Contender("logwriter", "logwriter"), 1, tmp)
        try:
            pids = process_tree(proc.pid)
            cpu_before = cpu_seconds(pids)
            summary = wrk(port, path(variant, stream), body_file, case, seconds)
            cpu = cpu_seconds(pids) - cpu_before
            rss = peak_rss_mib(pids)
        finally:
            stop(proc)  # the worker writes what it has queued before it exits
        ok = summary["requests"] - summary["non2xx"]
        problems = check_file(tmp / "logs" / f"{stream}.log", lines, ok)
    elapsed = summary["duration_us"] / 1e6
    records = ok * RECORDS
    if not ok:
        problems.append("no request was answered 2xx")
    return {
        "records_per_s": records / elapsed,
        "requests_per_s": ok / elapsed,
        "mb_per_s": ok * len(lines) / elapsed / 1e6,  # written
        "p50_ms": summary["p50_us"] / 1000,
        "p99_ms": summary["p99_us"] / 1000,
        "cpu_us_per_record": cpu / records * 1e6 if records else float("nan"),
        "cpu_cores": cpu / elapsed,  # 1.0: the one worker's core, all of it
        "peak_rss_mib": rss,
        "refused": summary["non2xx"] + summary["socket_errors"],
        "problems": problems,
    }


def check_file(file: Path, lines: bytes, answered: int) -> list[str]:
    """What is wrong with the stream's file: [] if it holds `lines` whole, once per answered
    request and at most once more per connection."""
    size = file.stat().st_size if file.exists() else 0
    count, rest = divmod(size, len(lines))
    if rest:
        return [f"{file.name}: {size:,} bytes, not a whole number of requests' lines"]
    if not answered <= count <= answered + DURABLE_CONNS:
        return [f"{file.name}: the lines of {count:,} requests, for {answered:,} answered"]
    with file.open("rb") as f:
        for i in range(count):
            if f.read(len(lines)) != lines:
                return [f"{file.name}: request {i + 1}'s lines are not the NDJSON body's"]
    return []


def run(seconds: float, rounds: int) -> dict[str, Any]:
    """Every variant once per round; the figures for the report. `problems` lists each failed
    check, empty when every one held."""
    sent, stream = bodies()
    lines = sent["ndjson"]
    runs: dict[str, list[dict[str, Any]]] = {variant: [] for variant in VARIANTS}
    for round_ in range(1, rounds + 1):
        shift = (round_ - 1) % len(VARIANTS)
        for variant in VARIANTS[shift:] + VARIANTS[:shift]:
            figures = measure(variant, sent[variant], lines, stream, seconds)
            runs[variant].append(figures)
            print(
                f"otlp round {round_}/{rounds} | {variant}: {figures['records_per_s']:,.0f} "
                f"records/s, {figures['cpu_us_per_record']:.1f} CPU us/record",
                flush=True,
            )
    result: dict[str, Any] = {
        "seconds": seconds,
        "rounds": rounds,
        "records_per_request": RECORDS,
        "message_bytes": MESSAGE_BYTES,
        "stream": stream,
        "conns": DURABLE_CONNS,
        "threads": THREADS,
        "ack": ACK,
        "body_bytes": {variant: len(body) for variant, body in sent.items()},
        "line_bytes": len(lines) / RECORDS,
        "runs": runs,
    }
    result["against_ndjson"] = {
        variant: {
            "records_per_s": ratio(result, variant, "records_per_s"),
            "cpu_us_per_record": ratio(result, variant, "cpu_us_per_record"),
            "records_per_s_by_round": [
                run["records_per_s"] / base["records_per_s"] if base["records_per_s"] else None
                for run, base in zip(runs[variant], runs["ndjson"], strict=True)
            ],
        }
        for variant in VARIANTS[1:]
    }
    result["targets"] = [
        {
            "what": target.what,
            "numerator": target.numerator,
            "denominator": target.denominator,
            "ratio": ratio(result, target.numerator, "records_per_s", target.denominator),
            "goal": target.goal,
            "aim": target.aim,
        }
        for target in OTLP_RATIOS
    ]
    result["problems"] = [
        f"{variant}, round {i}: {problem}"
        for variant in VARIANTS
        for i, figures in enumerate(runs[variant], start=1)
        for problem in figures["problems"]
    ]
    return result


def median(result: dict[str, Any], variant: str, key: str) -> float:
    return statistics.median(run[key] for run in result["runs"][variant])


def ratio(result: dict[str, Any], variant: str, key: str, base: str = "ndjson") -> float | None:
    """The median of `variant`'s figure over `base`'s; None when the base's is 0."""
    below = median(result, base, key)
    return median(result, variant, key) / below if below else None


def _figure(result: dict[str, Any], variant: str, key: str, digits: int = 0) -> str:
    values = [run[key] for run in result["runs"][variant]]
    text = f"{statistics.median(values):,.{digits}f}"
    if len(values) > 1:
        text += f" ({min(values):,.{digits}f}-{max(values):,.{digits}f})"
    return text


def _times(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def case_text(result: dict[str, Any]) -> str:
    return f"OTLP, {result['records_per_request']} records/req, {result['conns']} conns, 1 worker"


def report(result: dict[str, Any]) -> str:
    sizes = result["body_bytes"]
    text = [
        f"One ExportLogsServiceRequest of {result['records_per_request']} records (the SDKs' "
        f"batch size): {result['message_bytes']}-byte messages, three attributes (two strings, "
        "an int), trace and span ids, flags and times; one resource (service.name="
        f"{SERVICE} and three more attributes) and one scope. As protobuf it is "
        f"{sizes['otlp']:,} bytes, as OTLP/JSON {sizes['otlp-json']:,}. The NDJSON baseline is "
        f"the lines logwriter writes for these records ({result['line_bytes']:,.0f} bytes each, "
        f"{sizes['ndjson']:,} a request), posted to /v1/logs/{result['stream']}; the OTLP "
        f"requests go to /otlp/v1/logs, whose service.name routes them to the same stream. "
        f"Each row: a logwriter of its own, 1 worker x {result['threads']} request threads, "
        f"ack={result['ack']}, wrk with {result['conns']} connections for "
        f"{result['seconds']:g} s; {result['rounds']} interleaved round"
        f"{'s' if result['rounds'] != 1 else ''}, medians (min-max). "
        "CPU is the server's processes' over the run; CPU cores is that over the time (1.00: "
        "the worker's one core, all of it). MB/s written is the same lines' bytes for all "
        "three.\n",
        "| sent as | records/s | MB/s written | p50 ms | p99 ms | CPU µs / record | CPU cores "
        "| peak RSS MiB | refused | records/s / NDJSON | CPU / record / NDJSON |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for variant in VARIANTS:
        against = result["against_ndjson"].get(variant)
        text.append(
            f"| {NAMES[variant]} | {_figure(result, variant, 'records_per_s')} "
            f"| {_figure(result, variant, 'mb_per_s', 1)} "
            f"| {_figure(result, variant, 'p50_ms', 1)} | {_figure(result, variant, 'p99_ms', 1)} "
            f"| {_figure(result, variant, 'cpu_us_per_record', 1)} "
            f"| {_figure(result, variant, 'cpu_cores', 2)} "
            f"| {_figure(result, variant, 'peak_rss_mib')} "
            f"| {_figure(result, variant, 'refused')} "
            f"| {_times(against['records_per_s']) if against else '-'} "
            f"| {_times(against['cpu_us_per_record']) if against else '-'} |"
        )
    by_round = ", ".join(
        f"{NAMES[variant]} {'/'.join(_times(r) for r in against['records_per_s_by_round'])}"
        for variant, against in result["against_ndjson"].items()
    )
    verdict = (
        "Every file held the NDJSON body's lines, whole, once per answered request"
        if not result["problems"]
        else "Problems: " + "; ".join(result["problems"])
    )
    text.append(f"\nRecords/s over the NDJSON baseline's, round by round: {by_round}. {verdict}.")
    return "\n".join(text)
