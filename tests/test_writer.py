"""The writer on real files: order, the bound, group commit, the pill, retries and failure."""

import errno
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from support import GatedFiles, wait_until

from service import writer as writer_module
from service.files import LogFiles
from service.writer import Ack, Entry, QueueFull, WriteFailed, Writer, WriterStopped

pytestmark = pytest.mark.unit


@pytest.fixture
def files(tmp_path: Path) -> GatedFiles:
    return GatedFiles(tmp_path)


@pytest.fixture
def writer(files: GatedFiles) -> Iterator[Writer]:
    started = Writer(files, limit_bytes=1000)
    started.start()
    yield started
    files.gate.set()
    started.stop()


def entry(stream: str, *lines: str, ack: Ack = "queued") -> Entry:
    data = "".join(f"{line}\n" for line in lines).encode()
    return Entry(stream, data, len(lines), ack)


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_lines_land_in_order_per_stream(tmp_path: Path, writer: Writer):
    for i in range(50):
        writer.put(entry("a" if i % 3 else "b", f"{i}-1", f"{i}-2"), timeout=1)
    writer.stop()
    assert (tmp_path / "a.log").read_text().split() == [
        f"{i}-{j}" for i in range(50) if i % 3 for j in (1, 2)
    ]
    assert (tmp_path / "b.log").read_text().split() == [
        f"{i}-{j}" for i in range(50) if not i % 3 for j in (1, 2)
    ]


def test_stop_drains_everything_queued_before_the_pill(tmp_path: Path, files: GatedFiles):
    writer = Writer(files, limit_bytes=1 << 20)
    writer.start()
    files.gate.clear()  # the disk stalls; everything stays queued
    for i in range(100):
        writer.put(entry("s", str(i)), timeout=1)
    stopper = threading.Thread(target=writer.stop)
    stopper.start()
    stopper.join(0.2)
    assert stopper.is_alive(), "stop() must wait for the drain"
    files.gate.set()
    stopper.join(5)
    assert not writer.alive
    assert (tmp_path / "s.log").read_text().split() == [str(i) for i in range(100)]
    with pytest.raises(WriterStopped):
        writer.put(entry("s", "late"), timeout=1)


def test_full_queue_refuses_after_the_wait_and_readiness_drops(files: GatedFiles, writer: Writer):
    files.gate.clear()
    writer.put(entry("s", "x" * 600), timeout=1)  # taken by the writer, held at the gate
    writer.put(entry("s", "y" * 300), timeout=1)
    with pytest.raises(QueueFull):
        writer.put(entry("s", "z" * 300), timeout=0.1)
    assert writer.unready_reason() == "queue is full"
    files.gate.set()
    writer.put(entry("s", "z" * 300), timeout=5)  # room again once the disk takes the lines


def test_request_threads_give_way_while_the_writer_writes_a_backlog(
    files: GatedFiles, writer: Writer, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(writer_module, "_GIVE_WAY_SECONDS", 0.5)
    files.gate.clear()
    backlog = entry("s", "x" * 600, ack="written")  # over half the bound: a backlog
    writer.put(backlog, timeout=1)
    assert files.at_gate.wait(5)
    started = time.monotonic()
    writer.give_way()
    assert time.monotonic() - started >= 0.45, "gave no way to the writer's writes"
    files.gate.set()
    backlog.wait()
    started = time.monotonic()
    writer.give_way()
    assert time.monotonic() - started < 0.25, "gave way once the writes were done"


def test_request_threads_need_not_give_way_without_a_backlog(
    files: GatedFiles, writer: Writer, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(writer_module, "_GIVE_WAY_SECONDS", 5.0)
    files.gate.clear()
    writer.put(entry("s", "x" * 100), timeout=1)
    assert files.at_gate.wait(5)
    started = time.monotonic()
    writer.give_way()
    assert time.monotonic() - started < 1


def test_a_request_larger_than_the_bound_fits_an_empty_queue(tmp_path: Path, writer: Writer):
    writer.put(entry("s", "x" * 5000), timeout=1)
    writer.stop()
    assert (tmp_path / "s.log").stat().st_size == 5001


def test_producers_waiting_for_room_are_refused_when_the_writer_stops(
    files: GatedFiles, writer: Writer
):
    files.gate.clear()
    writer.put(entry("s", "x" * 600), timeout=1)
    writer.put(entry("s", "x" * 300), timeout=1)
    outcome: list[BaseException] = []

    def produce() -> None:
        try:
            writer.put(entry("s", "y" * 200), timeout=30)
        except (QueueFull, WriterStopped) as exc:
            outcome.append(exc)

    producer = threading.Thread(target=produce)
    producer.start()
    stopper = threading.Thread(target=writer.stop)
    stopper.start()
    producer.join(5)
    assert [type(exc) for exc in outcome] == [WriterStopped]
    files.gate.set()
    stopper.join(5)


def test_ack_written_returns_once_the_lines_are_in_the_file(tmp_path: Path, writer: Writer):
    item = entry("s", "durable-ish", ack="written")
    writer.put(item, timeout=1)
    item.wait()
    assert (tmp_path / "s.log").read_text() == "durable-ish\n"


def test_queued_requests_gather_into_one_batch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(writer_module, "_LINGER", 1.0)  # no scheduler delay can split the batch
    writer = Writer(LogFiles(tmp_path), limit_bytes=10_000)
    writer.start()
    before = sample("logwriter_batch_lines_count")
    for i in range(10):
        writer.put(entry("s", f"line {i}"), timeout=1)
        time.sleep(0.02)  # the writer could run between requests, and would without the linger
    writer.stop()  # ends the linger at once
    assert sample("logwriter_batch_lines_count") == before + 1
    assert (tmp_path / "s.log").read_text().split("\n")[:-1] == [f"line {i}" for i in range(10)]


def test_a_request_that_waits_ends_the_linger(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(writer_module, "_LINGER", 60.0)
    writer = Writer(LogFiles(tmp_path), limit_bytes=10_000)
    writer.start()
    writer.put(entry("s", "queued"), timeout=1)
    waiting = entry("s", "written", ack="written")
    started = time.monotonic()
    writer.put(waiting, timeout=1)
    waiting.wait()
    assert time.monotonic() - started < 30
    assert (tmp_path / "s.log").read_text() == "queued\nwritten\n"
    writer.stop()


def test_a_turn_takes_at_most_a_batch_and_a_larger_request_whole(
    tmp_path: Path, files: GatedFiles, writer: Writer, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(writer_module, "_BATCH_BYTES", 100)
    files.gate.clear()
    writer.put(entry("s", "warmup"), timeout=1)
    assert files.at_gate.wait(10)  # the writer took it alone and waits at the gate
    before = sample("logwriter_batch_lines_count")
    lines = [f"{i:038d}" for i in range(7)]  # 39 bytes each: three make a batch
    for line in lines:
        writer.put(entry("s", line), timeout=1)
    writer.put(entry("s", "x" * 300), timeout=1)  # alone larger than a batch
    files.gate.set()
    writer.stop()
    # The warmup's batch ends, then [0-2], [3-5], [6, the large one].
    assert sample("logwriter_batch_lines_count") == before + 4
    assert (tmp_path / "s.log").read_text().split("\n")[:-1] == ["warmup", *lines, "x" * 300]


def test_a_batchs_worth_of_lines_ends_the_linger(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(writer_module, "_LINGER", 60.0)
    monkeypatch.setattr(writer_module, "_BATCH_BYTES", 100)
    writer = Writer(LogFiles(tmp_path), limit_bytes=10_000)
    writer.start()
    writer.put(entry("s", "first"), timeout=1)  # the writer lingers for more
    writer.put(entry("s", "x" * 100), timeout=1)  # a batch's worth: the linger ends
    wait_until((tmp_path / "s.log").exists, 30, "the batch's worth to be written")
    assert (tmp_path / "s.log").read_text() == "first\n" + "x" * 100 + "\n"
    writer.stop()


def test_one_fsync_serves_every_fsync_request_of_a_batch(files: GatedFiles, writer: Writer):
    files.gate.clear()
    writer.put(entry("warmup", "w"), timeout=1)  # the writer takes this and waits at the gate
    waiting = [entry("s", f"line {i}", ack="fsync") for i in range(20)]
    for item in waiting:
        writer.put(item, timeout=1)
    files.gate.set()
    for item in waiting:
        item.wait()
    assert files.fsyncs == [["s"]]


class SlowFsyncFiles(LogFiles):
    """Real files whose every fsync takes `seconds` more, as on a hard disk; each fsync's start
    is recorded."""

    def __init__(self, directory: Path, seconds: float) -> None:
        super().__init__(directory)
        self.seconds = seconds
        self.started: list[float] = []  # time.monotonic() as each fsync began

    def fsync(self, streams: Iterable[str]) -> None:
        self.started.append(time.monotonic())
        time.sleep(self.seconds)
        super().fsync(streams)


def test_requests_answered_by_an_fsync_share_the_next_one(tmp_path: Path):
    files = SlowFsyncFiles(tmp_path, 0.03)
    writer = Writer(files, limit_bytes=1 << 20)
    writer.start()

    def request_thread(n: int) -> None:  # a request, its wait, 2 ms until the next one
        for i in range(10):
            item = entry("s", f"{n} {i}", ack="fsync")
            writer.put(item, timeout=5)
            item.wait()
            time.sleep(0.002)

    threads = [threading.Thread(target=request_thread, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    fsyncs = len(files.started)
    writer.stop()
    assert len((tmp_path / "s.log").read_text().splitlines()) == 80
    # Taking each batch at once, the writer's batches alternate between the requests that
    # came during an fsync and those it answered: about 4 requests per fsync, not 8.
    assert 80 / fsyncs >= 6, f"{fsyncs} fsyncs for 80 requests"


def test_a_lone_clients_fsync_is_not_held_for_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(writer_module, "_LINGER", 10.0)  # a wait would last a whole fsync
    files = SlowFsyncFiles(tmp_path, 0.4)
    writer = Writer(files, limit_bytes=1 << 20)
    writer.start()
    for i in range(5):  # one request at a time; the writer learns an fsync takes 0.4 s
        item = entry("s", str(i), ack="fsync")
        put_at = time.monotonic()
        writer.put(item, timeout=5)
        item.wait()
    writer.stop()
    # Waiting as long as fsyncs have taken (0.24 s by the last) would be for no one.
    assert files.started[4] - put_at < 0.12


def test_append_errors_are_retried_without_doubling(tmp_path: Path):
    class FailingTwice(LogFiles):
        failures = 2

        def append(self, stream: str, buffers: list[bytes | memoryview]) -> None:
            if self.failures:
                self.failures -= 1
                raise OSError(errno.ENOSPC, "No space left on device")
            super().append(stream, buffers)

    before = sample("logwriter_writer_errors_total", kind="ENOSPC")
    writer = Writer(FailingTwice(tmp_path), limit_bytes=1000)
    writer.start()
    item = entry("s", "kept", ack="written")
    writer.put(item, timeout=1)
    item.wait()
    writer.stop()
    assert (tmp_path / "s.log").read_text() == "kept\n"
    assert sample("logwriter_writer_errors_total", kind="ENOSPC") == before + 2


def test_an_unexpected_error_is_loud_and_releases_everyone(tmp_path: Path):
    class Broken(LogFiles):
        def append(self, stream: str, buffers: list[bytes | memoryview]) -> None:
            raise RuntimeError("bug")

    writer = Writer(Broken(tmp_path), limit_bytes=1000)
    writer.start()
    item = entry("s", "x", ack="written")
    writer.put(item, timeout=1)
    with pytest.raises(WriteFailed, match="bug"):
        item.wait()
    assert not writer.alive
    assert writer.unready_reason() == "writer thread is not running"
    assert sample("logwriter_writer_errors_total", kind="RuntimeError") >= 1
    with pytest.raises(WriterStopped):
        writer.put(entry("s", "y"), timeout=1)
    writer.stop()


def test_a_stream_that_keeps_failing_does_not_hold_up_the_others(tmp_path: Path):
    (tmp_path / "bad.log").mkdir()  # opening it for appending fails with EISDIR, again and again
    writer = Writer(LogFiles(tmp_path), limit_bytes=10_000)
    writer.start()
    stuck = entry("bad", "kept for later", ack="written")
    writer.put(stuck, timeout=1)
    for i in range(5):
        good = entry("good", f"line {i}", ack="written")
        writer.put(good, timeout=1)
        good.wait()  # written although "bad" is failing
    assert "EISDIR" in (writer.unready_reason() or "")
    assert not stuck.finished
    (tmp_path / "bad.log").rmdir()  # the operator fixes it: the writer resumes by itself
    stuck.wait()
    writer.stop()
    assert (tmp_path / "bad.log").read_text() == "kept for later\n"
    assert (tmp_path / "good.log").read_text().split("\n")[:-1] == [f"line {i}" for i in range(5)]
    assert writer.unready_reason() == "writer thread is not running"
