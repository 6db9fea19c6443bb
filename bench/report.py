"""What the bench writes: the table of every case, the target checks, the plots, and
results.md and results.json."""

import itertools
import json
import os
import statistics
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench import otlp, overload, silent
from bench.contenders import RAW_DISK
from bench.targets import CONTENDER_RATIOS, WORKER_SCALING
from bench.workloads import LINE_BYTES, SIZES, THREADS, WORKERS, Case

Runs = list[dict[str, float]]  # one measurement per round
Results = dict[tuple[Case, str], Runs]  # by case and contender name


def median(runs: Runs, key: str) -> float:
    return statistics.median(run[key] for run in runs)


def figure(runs: Runs, key: str, digits: int = 0) -> str:
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
        if name == RAW_DISK:
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
    """The targets of bench.targets, evaluated: a line with its verdict for each ratio this run
    measured."""
    checks = []
    for case in sorted({case for case, _ in results}, key=str):
        for target in CONTENDER_RATIOS:
            if target.applies(case):
                ratio = lines_ratio(results, (case, target.numerator), (case, target.denominator))
                checks += verdict(f"{case}: {target.what}", ratio, target.goal)
                if target.group_commit:
                    checks += group_commit(results.get((case, target.numerator), []))
    cores = usable_cores()
    for scaling in WORKER_SCALING:
        for lines in SIZES:
            for fewer, more in itertools.pairwise(WORKERS):
                if more <= cores:
                    ratio = lines_ratio(
                        results,
                        (Case(lines, scaling.conns, more), scaling.contender),
                        (Case(lines, scaling.conns, fewer), scaling.contender),
                    )
                    what = f"scaling, {lines} lines/req, {fewer} → {more} workers ({cores} cores)"
                    checks += verdict(f"{what}: {scaling.contender}", ratio, scaling.goal)
    return checks


def lines_ratio(
    results: Results, numerator: tuple[Case, str], denominator: tuple[Case, str]
) -> float | None:
    """Median lines/s of one case and contender over another's; None unless both ran and the
    second wrote anything."""
    above, below = results.get(numerator), results.get(denominator)
    if not above or not below or not median(below, "lines_per_s"):
        return None
    return median(above, "lines_per_s") / median(below, "lines_per_s")


def verdict(what: str, ratio: float | None, goal: float) -> list[str]:
    if ratio is None:
        return []
    met = "met" if ratio >= goal else f"MISSED by {(goal - ratio) / goal:.1%}"
    return [f"- {what}: {ratio:.2f}x (target >= {goal:g}x): {met}"]


def otlp_targets(result: dict[str, Any] | None) -> list[str]:
    """bench.otlp's targets (bench.targets.OTLP_RATIOS), with its verdict and whether each
    reached its aim; none if it did not run."""
    checks = []
    for target in result["targets"] if result else []:
        lines = verdict(
            f"{otlp.case_text(result)}: {target['what']}", target["ratio"], target["goal"]
        )
        aim, ratio = target["aim"], target["ratio"]
        if lines and aim:
            reached = "reached" if ratio >= aim else f"short by {(aim - ratio) / aim:.1%}"
            lines[0] += f"; aim {aim:g}x: {reached}"
        checks += lines
    return checks


def group_commit(runs: Runs) -> list[str]:
    """Requests per fsync, when every round counted them."""
    if not runs or not all("requests_per_fsync" in run for run in runs):
        return []
    return [
        f"  - group commit: {median(runs, 'requests_per_fsync'):.1f} requests per fsync for "
        "logwriter, 1 for the naive app"
    ]


def plots(results: Results, out: Path) -> list[str]:
    """The throughput and latency plots, saved into out; their file names (none without
    matplotlib)."""
    try:
        import matplotlib  # optional: the bench extra

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    made = []
    for lines in SIZES:
        curves = {
            name: sorted(
                (case.conns, median(runs, "lines_per_s"))
                for (case, n), runs in results.items()
                if n == name and case.lines == lines and case.workers == 1 and case.body == "text"
            )
            for name in ("logwriter", "naive", "nginx")
        }
        if not any(curves.values()):  # a run of chosen cases (--case) may have none
            continue
        fig, axes = plt.subplots(figsize=(7, 4))
        for name, points in curves.items():
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
        fig.savefig(out / name, dpi=100, bbox_inches="tight")
        plt.close(fig)
        made.append(name)
    latency = [
        (name, median(runs, "p50_ms"), median(runs, "p99_ms"))
        for (case, name), runs in results.items()
        if case == Case(100, 32, 1) and name != RAW_DISK
    ]
    if latency:
        fig, axes = plt.subplots(figsize=(8, 4))
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
        fig.savefig(out / "latency.png", dpi=100, bbox_inches="tight")
        plt.close(fig)
        made.append("latency.png")
    return made


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


def write(
    out: Path,
    results: Results,
    *,
    rounds: int,
    seconds: float,
    iops: int,
    disk_bytes: int,
    disk_sustained_mb_per_s: float,
    load_generator_requests_per_s: float,
    overloaded: dict[str, Any] | None,
    silenced: dict[str, Any] | None = None,
    otlp_result: dict[str, Any] | None = None,
    with_plots: bool,
) -> str:
    """results.md, results.json and (with_plots) the plots, into out; returns results.md.

    `iops` is the capped disk's (0: no capped-disk cases); `disk_bytes` were appended to
    measure `disk_sustained_mb_per_s`; `overloaded` is overload.run's result, `silenced`
    silent.run's, `otlp_result` otlp.run's, if they ran."""
    capacity = load_generator_requests_per_s
    busiest = max(
        median(runs, "lines_per_s") / case.lines
        for (case, name), runs in results.items()
        if name != RAW_DISK
    )
    writer_nices = {
        run["lowest_nice"]
        for (_, name), runs in results.items()
        if name.startswith("logwriter")
        for run in runs
    }
    capped_note = []
    if iops:
        capped_note.append(
            f"\nCases on a disk capped at {iops} write IOPS: the log folder is a "
            "loop-mounted ext4 that the kernel's block-layer throttle (cgroup v1 blkio) lets the "
            f"contender's processes write only {iops} times a second. Buffered writes "
            "still reach the page cache at once; each fsync waits for its turn, as on a hard "
            "disk. Only logwriter ack=fsync and the naive fsync-per-request app run there: they "
            "show what group commit is for."
        )
    report = [
        f"# logwriter benchmark\n\nMachine: {machine()}. {rounds} interleaved rounds of "
        f"{seconds:g} s per measurement; medians, spread = min-max over rounds. Lines are "
        f"{LINE_BYTES} bytes. {THREADS} request threads per worker for logwriter and the naive "
        "app unless a case says otherwise. nginx logs `$request_body` (the ceiling); raw disk = "
        "`os.write` of 1 MiB chunks (into the page cache). logwriter's writer threads ran at "
        f"nice {', '.join(map(str, sorted(writer_nices)))} (`LOGWRITER_WRITER_NICE`, where the "
        "bench's user may raise a priority).",
        f"\nThe disk takes {disk_sustained_mb_per_s:,.0f} MB/s to stable storage "
        f"({disk_bytes >> 20} MiB appended, then fdatasynced). A case whose MB/s goes past that "
        "only fills the page cache until the kernel's dirty-page throttling pauses the writing "
        "threads: there the kernel, not the app, sets the pace.",
        f"\nLoad generator: wrk reached {capacity:,.0f} requests/s against an nginx endpoint that "
        f"does no work; the busiest contender here took {busiest:,.0f} requests/s "
        f"({busiest / capacity:.0%} of that), so wrk is not what limits the figures below.",
        *capped_note,
        "\n## Targets\n",
        *targets(results),
        *otlp_targets(otlp_result),
        "\n## All cases\n",
        table(results),
    ]
    if overloaded:
        report += ["\n## Overload\n", overload.report(overloaded)]
    if silenced:
        report += ["\n## Silent connections\n", silent.report(silenced)]
    if otlp_result:
        report += [
            "\n## OTLP/HTTP logs in\n",
            otlp.report(otlp_result),
            "",
            *otlp_targets(otlp_result),
        ]
    made = plots(results, out) if with_plots else []
    report += [f"\n![{name}]({name})" for name in made]
    text = "\n".join(report)
    (out / "results.md").write_text(text + "\n")
    (out / "results.json").write_text(
        json.dumps(
            {
                "cases": [
                    {"case": asdict(case), "contender": name, "runs": runs}
                    for (case, name), runs in results.items()
                ],
                "disk_sustained_mb_per_s": disk_sustained_mb_per_s,
                "overload": overloaded,
                "silent_connections": silenced,
                "otlp": otlp_result,
            },
            indent=1,
        )
    )
    return text
