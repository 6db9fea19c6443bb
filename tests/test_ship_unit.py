"""Unit tests of logwriter-ship's parts: following files (follow.Files) through rotation and
restarts, the checkpoint, the stdin reader, and the command's checks of its arguments. Files
are rotated here by hand as logrotate does it (rename and create; copy and truncate); the real
logrotate and the real service are in test_ship_live.py.

These also run on the client's oldest Python (3.9; .ci/run).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest
from logwriter_client import ship
from logwriter_client.follow import Checkpoint, Files

pytestmark = pytest.mark.unit

ROTATE_WAIT = 0.05


def follow(path: Path, checkpoint: list[dict[str, object]] | None = None, **options) -> Files:
    settings = {"from_end": False, "rotate_wait": ROTATE_WAIT, "batch_bytes": 1 << 20, **options}
    return Files([str(path)], checkpoint or [], **settings)  # type: ignore[arg-type]


def drain(files: Files) -> bytes:
    """Everything read() gives until it gives nothing, each batch acknowledged."""
    sent = b""
    while True:
        chunks = files.read()
        if not chunks:
            return sent
        files.acknowledge(chunks)
        sent += b"".join(chunk.data for chunk in chunks)


def append(path: Path, data: bytes) -> None:
    with path.open("ab") as file:
        file.write(data)


def followed(log: Path, content: bytes) -> Files:
    """Files following `log`, written with `content` (whole lines), that have read it all."""
    log.write_bytes(content)
    files = follow(log)
    assert drain(files) == content
    return files


def read_and_stop(log: Path, content: bytes) -> list[dict[str, object]]:
    """The checkpoint a shipper leaves when it stops after reading all of `content` in `log`."""
    first = followed(log, content)
    checkpoint = first.entries()
    first.close()
    return checkpoint


def test_only_whole_lines_are_read(tmp_path: Path):
    log = tmp_path / "app.log"
    log.write_bytes(b"a\nb\npart")
    files = follow(log)
    assert drain(files) == b"a\nb\n"
    append(log, b"ial\n")
    assert drain(files) == b"partial\n"


def test_create_rotation_reads_the_old_file_to_its_end_then_closes_it(tmp_path: Path):
    log = tmp_path / "app.log"
    files = followed(log, b"1\n")
    with log.open("ab") as app:  # the app's descriptor, kept across the rename
        log.rename(tmp_path / "app.log.1")
        log.write_bytes(b"new\n")
        app.write(b"late\n")  # written after the rename, before the app reopens
    assert drain(files) == b"late\nnew\n"  # the rotated file first
    assert len(files.entries()) == 2
    time.sleep(ROTATE_WAIT * 2)
    assert drain(files) == b""
    assert [entry["path"] for entry in files.entries()] == [str(log)]  # the old one closed


def test_a_rotated_files_last_line_without_newline_is_sent_once_it_is_quiet(tmp_path: Path):
    log = tmp_path / "app.log"
    log.write_bytes(b"1\ncut sho")
    files = follow(log)
    assert drain(files) == b"1\n"
    log.rename(tmp_path / "app.log.1")
    assert drain(files) == b""
    time.sleep(ROTATE_WAIT * 2)
    assert drain(files) == b"cut sho\n"


def test_copytruncate_reads_what_was_not_read_yet_from_the_copy(tmp_path: Path):
    log = tmp_path / "app.log"
    files = followed(log, b"read before\n")
    append(log, b"unread at the copy\n")
    shutil.copyfile(log, tmp_path / "app.log.1")
    os.truncate(log, 0)
    append(log, b"after the truncate\n")
    assert drain(files) == b"unread at the copy\nafter the truncate\n"


def test_a_copy_that_was_read_whole_already_is_no_loss(
    tmp_path: Path, capsys: pytest.CaptureFixture
):
    # Lines that came between logrotate's copy and its truncate were read from the file
    # itself: the copy has nothing more, and nothing is missing.
    log = tmp_path / "app.log"
    log.write_bytes(b"copied\n")
    shutil.copyfile(log, tmp_path / "app.log.1")
    append(log, b"after the copy\n")
    files = follow(log)
    assert drain(files) == b"copied\nafter the copy\n"
    os.truncate(log, 0)
    append(log, b"new\n")
    assert drain(files) == b"new\n"
    assert capsys.readouterr().err == ""


def test_copytruncate_is_seen_when_the_file_grew_past_the_offset_before_a_look(tmp_path: Path):
    log = tmp_path / "app.log"
    files = followed(log, b"read before\n")
    append(log, b"unread\n")
    shutil.copyfile(log, tmp_path / "app.log.1")
    os.truncate(log, 0)
    append(log, b"new lines, more of them than before\n")
    assert drain(files) == b"unread\nnew lines, more of them than before\n"


def test_a_folder_named_like_a_rotated_file_is_passed_over(tmp_path: Path):
    log = tmp_path / "app.log"
    files = followed(log, b"read before\n")
    append(log, b"unread\n")
    shutil.copyfile(log, tmp_path / "app.log.1")
    time.sleep(0.05)  # past the clock tick of file times
    (tmp_path / "app.log.d").mkdir()  # newer than the copy, so looked at first
    os.truncate(log, 0)
    assert drain(files) == b"unread\n"


def test_copytruncate_without_a_copy_is_reported(tmp_path: Path, capsys: pytest.CaptureFixture):
    log = tmp_path / "app.log"
    files = followed(log, b"read before\n")
    os.truncate(log, 0)
    append(log, b"new\n")
    assert drain(files) == b"new\n"
    assert "was truncated and its copy is not found" in capsys.readouterr().err


def test_a_restart_resumes_at_the_checkpoint(tmp_path: Path):
    log = tmp_path / "app.log"
    checkpoint = read_and_stop(log, b"a\nb\n")
    append(log, b"c\n")
    assert drain(follow(log, checkpoint)) == b"c\n"


def test_a_restart_finds_a_file_renamed_while_it_was_down(tmp_path: Path):
    log = tmp_path / "app.log"
    checkpoint = read_and_stop(log, b"a\n")
    append(log, b"b\n")
    log.rename(tmp_path / "app.log.1")
    log.write_bytes(b"c\n")
    assert drain(follow(log, checkpoint)) == b"b\nc\n"


def test_a_restart_finds_the_copy_of_a_file_truncated_while_it_was_down(tmp_path: Path):
    log = tmp_path / "app.log"
    checkpoint = read_and_stop(log, b"a\n")
    append(log, b"b\n")
    shutil.copyfile(log, tmp_path / "app.log.1")
    os.truncate(log, 0)
    append(log, b"longer than what was read\n")  # past the old offset: size alone cannot tell
    assert drain(follow(log, checkpoint)) == b"b\nlonger than what was read\n"


def test_a_file_rewritten_in_place_is_read_from_its_start(tmp_path: Path):
    log = tmp_path / "app.log"
    checkpoint = read_and_stop(log, b"old content\n")
    with log.open("r+b") as file:  # the same inode, other bytes
        file.write(b"new content\nmore\n")
    assert drain(follow(log, checkpoint)) == b"new content\nmore\n"


def test_an_empty_file_in_the_checkpoint_is_not_mistaken_for_a_sibling(tmp_path: Path):
    # At offset 0 every file has the same fingerprint: only the inode may find the file. Here
    # it was rotated away and removed while the shipper was down, and an older rotated file
    # (of another inode: made first) is still there.
    (tmp_path / "app.log.1").write_bytes(b"shipped long ago\n")
    log = tmp_path / "app.log"
    log.write_bytes(b"")
    first = follow(log)
    checkpoint = first.entries()
    first.close()
    log.unlink()
    assert drain(follow(log, checkpoint)) == b""


def test_a_file_that_appears_later_is_read_from_its_start(tmp_path: Path):
    log = tmp_path / "later.log"
    files = follow(log)
    assert drain(files) == b""
    log.write_bytes(b"first\nsecond\n")
    assert drain(files) == b"first\nsecond\n"


def test_from_end_skips_what_is_there_but_no_line_in_part(tmp_path: Path):
    log = tmp_path / "app.log"
    log.write_bytes(b"a\nb\npart")
    files = follow(log, from_end=True)
    append(log, b"ial\nc\n")
    assert drain(files) == b"partial\nc\n"


def test_from_end_does_not_apply_to_a_file_the_checkpoint_knows(tmp_path: Path):
    log = tmp_path / "app.log"
    log.write_bytes(b"a\n")
    first = follow(log)
    checkpoint = first.entries()  # read nothing yet: offset 0
    first.close()
    assert drain(follow(log, checkpoint, from_end=True)) == b"a\n"


def test_long_lines_go_in_pieces_and_bytes_that_are_not_utf8_as_escapes(tmp_path: Path):
    log = tmp_path / "app.log"
    log.write_bytes(b"x" * 25 + b"\n" + b"caf\xe9\n")
    files = follow(log, batch_bytes=10)
    assert drain(files) == b"xxxxxxxxxx\n" * 2 + b"xxxxx\n" + b"caf\\xe9\n"


def test_batches_hold_at_most_batch_bytes_and_take_turns(tmp_path: Path):
    one, two = tmp_path / "one.log", tmp_path / "two.log"
    one.write_bytes(b"1" * 9 + b"\n" + b"1" * 9 + b"\n")
    two.write_bytes(b"2" * 9 + b"\n" + b"2" * 9 + b"\n")
    files = Files([str(one), str(two)], [], from_end=False, rotate_wait=1, batch_bytes=10)
    batches = []
    while chunks := files.read():
        files.acknowledge(chunks)
        batches.append(b"".join(chunk.data for chunk in chunks))
    assert all(len(batch) <= 10 for batch in batches)
    assert sorted(batches) == sorted([b"1" * 9 + b"\n"] * 2 + [b"2" * 9 + b"\n"] * 2)
    assert batches[0][0] != batches[1][0]  # neither file waits for the other's backlog


def test_the_checkpoint_is_replaced_whole(tmp_path: Path):
    state = Checkpoint(str(tmp_path / "state.json"))
    assert state.load() == []
    entries = [{"path": "/var/log/a.log", "dev": 1, "ino": 2, "offset": 3, "fingerprint": "x"}]
    state.save(entries)
    state.save(entries)
    assert state.load() == entries
    assert json.loads((tmp_path / "state.json").read_text()) == {"files": entries}
    assert sorted(os.listdir(tmp_path)) == ["state.json"]  # no temporary left behind


class Collected:
    """Stands in for the Sender: what the stdin reader puts."""

    def __init__(self) -> None:
        self.puts: list[bytes] = []

    def put(self, data: bytes) -> bool:
        self.puts.append(data)
        return True


def test_the_stdin_reader_puts_whole_lines_and_ends_the_last(tmp_path: Path):
    read_end, write_end = os.pipe()
    os.write(write_end, b"a\nb\n" + b"x" * 25 + b"\nlast")
    os.close(write_end)
    collected = Collected()
    reader = ship._StdinReader(collected, read_end, batch_bytes=10)  # type: ignore[arg-type]
    reader.run()
    os.close(read_end)
    assert b"".join(collected.puts) == b"a\nb\n" + b"xxxxxxxxxx\n" * 2 + b"xxxxx\n" + b"last\n"
    assert reader.lines == 6


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["http://127.0.0.1:1", "app.log"], "--state PATH is needed"),
        (["127.0.0.1:8080"], "url must be"),
        (["http://127.0.0.1:1", "--stream", "a/b"], "stream must"),
    ],
)
def test_the_command_refuses_what_cannot_work(
    argv: list[str], says: str, capsys: pytest.CaptureFixture
):
    assert ship.main(argv) == 2
    assert says in capsys.readouterr().err


def test_a_state_file_that_is_not_a_checkpoint_is_not_overwritten(
    tmp_path: Path, capsys: pytest.CaptureFixture
):
    state = tmp_path / "state.json"
    state.write_text("not json")
    argv = ["http://127.0.0.1:1", "--state", str(state), str(tmp_path / "app.log")]
    assert ship.main(argv) == 2
    assert "is not a checkpoint" in capsys.readouterr().err
    assert state.read_text() == "not json"
