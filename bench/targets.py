"""The speed targets, as data: which two medians of lines/s each one compares, and the
ratio between them it sets as the goal. bench.report evaluates them (bench.otlp works out the
ratios of its own case)."""

from dataclasses import dataclass

from bench.workloads import DURABLE_CONNS, WORKERS, Case


@dataclass(frozen=True)
class ContenderRatio:
    """In each case whose fields have the values in `where`: `numerator`'s lines/s over
    `denominator`'s."""

    what: str  # as the report names it, after the case
    where: dict[str, int]  # Case field: value
    numerator: str  # contender names
    denominator: str
    goal: float  # the least ratio that meets the target
    group_commit: bool = False  # followed by the numerator's requests per fsync

    def applies(self, case: Case) -> bool:
        return all(getattr(case, field) == value for field, value in self.where.items())


@dataclass(frozen=True)
class WorkerScaling:
    """`contender`'s lines/s at `conns` connections with each step up bench.workloads.WORKERS,
    over the step before, for every body size: checked while the workers fit the usable cores,
    since the target is that throughput grows with workers up to the core count."""

    contender: str
    conns: int
    goal: float


CONTENDER_RATIOS = [
    ContenderRatio("logwriter / nginx ceiling", {"lines": 1000}, "logwriter", "nginx", 0.5),
    ContenderRatio("logwriter / naive", {"lines": 1000}, "logwriter", "naive", 1.0),
    ContenderRatio(
        "logwriter / naive", {"lines": 1, "conns": 32, "workers": 1}, "logwriter", "naive", 1.0
    ),
    *(
        ContenderRatio(
            "logwriter / naive",
            {"lines": 1, "conns": 32, "workers": workers},
            "logwriter",
            "naive",
            0.95,
        )
        for workers in WORKERS[1:]
    ),
    ContenderRatio(
        "logwriter ack=fsync / naive fsync",
        {"conns": DURABLE_CONNS},
        "logwriter-fsync",
        "naive-fsync",
        10,
        group_commit=True,
    ),
    ContenderRatio(
        "logwriter ack=written / ack=queued",
        {"conns": DURABLE_CONNS},
        "logwriter-written",
        "logwriter",
        0.8,
    ),
]
WORKER_SCALING = [WorkerScaling("logwriter", 32, 1.0)]


@dataclass(frozen=True)
class VariantRatio:
    """In bench.otlp's case: the records/s of the same records sent as `numerator` over those
    sent as `denominator` (bench.otlp.VARIANTS)."""

    what: str
    numerator: str
    denominator: str
    goal: float  # the least ratio that meets the target
    aim: float | None = None  # what it aims for beyond that


OTLP_RATIOS = [
    VariantRatio("OTLP protobuf / NDJSON of the same records", "otlp", "ndjson", 0.3, aim=0.5)
]
