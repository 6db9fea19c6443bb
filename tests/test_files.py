"""Stream files: rotation by rename, truncation, time-based templates, the open-file bound."""

import fcntl
import os
import socket
import time
from pathlib import Path

import pytest

import service.files
from service.files import LogFiles, host_name

pytestmark = pytest.mark.unit


def append(files: LogFiles, stream: str, data: bytes) -> None:
    files.lock(stream)
    files.append(stream, [data])
    files.unlock(stream)
    files.end_batch()


def test_a_renamed_file_is_followed_by_a_new_one(tmp_path: Path):
    files = LogFiles(tmp_path)
    append(files, "s", b"one\n")
    (tmp_path / "s.log").rename(tmp_path / "s.log.1")
    append(files, "s", b"two\n")
    files.close()
    assert (tmp_path / "s.log.1").read_bytes() == b"one\n"
    assert (tmp_path / "s.log").read_bytes() == b"two\n"


def test_a_truncated_file_is_appended_at_its_new_end(tmp_path: Path):
    files = LogFiles(tmp_path)
    append(files, "s", b"x" * 1000 + b"\n")
    os.truncate(tmp_path / "s.log", 0)
    append(files, "s", b"after\n")
    files.close()
    assert (tmp_path / "s.log").read_bytes() == b"after\n"  # no hole of NUL bytes


def test_template_with_time_fields_makes_folders(tmp_path: Path):
    files = LogFiles(tmp_path, "{stream}/%Y/%m-%d.log")
    append(files, "web", b"hit\n")
    files.lock("web")
    files.append("web", [b"sync me\n"])
    files.unlock("web")
    files.fsync(["web"])
    files.end_batch()
    files.close()
    today = time.strftime("%Y/%m-%d", time.gmtime())
    assert (tmp_path / "web" / f"{today}.log").read_bytes() == b"hit\nsync me\n"


def test_least_recently_used_files_are_closed_beyond_the_bound(tmp_path: Path):
    files = LogFiles(tmp_path, max_open=2)
    before = len(os.listdir("/proc/self/fd"))
    for name in ("a", "b", "c", "a", "d"):
        append(files, name, f"{name}\n".encode())
    assert len(os.listdir("/proc/self/fd")) - before <= 2
    files.close()
    assert (tmp_path / "a.log").read_bytes() == b"a\na\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.log", "b.log", "c.log", "d.log"]


def test_short_writes_are_finished_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    real_writev = service.files.os.writev

    def writev_at_most_3_bytes(fd: int, buffers: list[bytes]) -> int:
        return real_writev(fd, [bytes(b"".join(buffers)[:3])])

    monkeypatch.setattr(service.files.os, "writev", writev_at_most_3_bytes)
    files = LogFiles(tmp_path)
    files.lock("s")
    files.append("s", [b"abcd\n", b"ef\n", b"ghijklm\n"])
    files.unlock("s")
    files.close()
    assert (tmp_path / "s.log").read_bytes() == b"abcd\nef\nghijklm\n"


def test_the_lock_holds_off_appends_to_that_file_only(tmp_path: Path):
    files = LogFiles(tmp_path)
    append(files, "other", b"created\n")
    files.lock("app")

    def free(name: str) -> bool:  # as another worker's writer would find it
        fd = os.open(tmp_path / name, os.O_WRONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False
        finally:
            os.close(fd)

    assert not free("app.log")
    assert free("other.log")
    files.unlock("app")
    assert free("app.log")
    files.close()


def test_host_in_the_template_names_this_hosts_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(socket, "gethostname", lambda: "web-1.example")
    files = LogFiles(tmp_path, "{stream}/{host}.log")
    assert files.path("app") == str(tmp_path / "app" / "web-1.example.log")
    append(files, "app", b"one\n")
    files.close()
    assert (tmp_path / "app" / "web-1.example.log").read_bytes() == b"one\n"


@pytest.mark.parametrize(
    ("name", "file_name"), [("../../etc", "_.._etc"), ("a/b c", "a_b_c"), ("...", "host")]
)
def test_a_host_name_cannot_leave_the_folder(
    name: str, file_name: str, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(socket, "gethostname", lambda: name)
    assert host_name() == file_name
