"""Following files like `tail -F`, for logwriter-ship: through rotation, with a checkpoint.

Each followed path has at most one current file, the one it names now, and any number of
rotated ones still being read. A file is known by its device and inode and checked by a
fingerprint, a hash of the bytes just before the offset reached: that tells a file cut short
(logrotate's copytruncate) or an inode reused by a new file.

- create (rename, then a new file): the path names another inode. The renamed file stays open
  and is read to its end; it is closed once it has kept its size for rotate_wait seconds, since
  an app may write to it for a moment after the rename. The new file is read from its start.
- copytruncate: the current file no longer holds the bytes before the offset. What had not
  been read yet is in the copy, found among the path's siblings (`app.log.1`, `app.log-2024...`)
  by that fingerprint and read from the same offset; the file itself is read again from 0.
- A restart finds each file of the checkpoint the same way: by its inode under the path or a
  sibling's name, else (cut short while the shipper was down) by the fingerprint alone.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from stat import S_ISREG
from typing import Any

from logwriter_client.client import report

FINGERPRINT_BYTES = 64


def fingerprint(recent: bytes) -> str:
    return hashlib.blake2b(recent, digest_size=8).hexdigest()


def valid_utf8(data: bytes) -> bytes:
    """`data`, with any byte that is not UTF-8 as a `\\xNN` escape: the service refuses a body
    that is not UTF-8, which would lose its good lines with the bad one."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("utf-8", "backslashreplace").encode("utf-8")
    return data


@dataclass
class Chunk:
    """Whole lines read from one file, to be sent in one batch."""

    tail: Tail
    end: int  # the file's offset after them
    fingerprint: str  # of the file's bytes before `end`
    data: bytes  # as sent: each line ends in a newline, all of it UTF-8


class Tail:
    """One open file of a followed path: how far it is read, and acknowledged."""

    def __init__(self, path: str, fd: int, offset: int, rotated: bool) -> None:
        stat = os.fstat(fd)
        self.path = path  # the followed name, which may not be this file's any more
        self.fd = fd
        self.id = (stat.st_dev, stat.st_ino)
        self.rotated = rotated  # the path names another file now: read to the end, then close
        self.offset = offset  # read this far
        start = max(0, offset - FINGERPRINT_BYTES)
        self._recent = os.pread(fd, offset - start, start)  # the bytes before offset
        self.acked = offset  # the service has acknowledged this far
        self.acked_fingerprint = self.mark()
        self.head = os.pread(fd, FINGERPRINT_BYTES, 0)  # a copy of this file starts the same
        self._size = stat.st_size
        self._grew_at = time.monotonic()

    def cut_short(self) -> bool:
        """Whether the bytes before `offset` are no longer those read (copytruncate)."""
        start = self.offset - len(self._recent)
        return os.pread(self.fd, len(self._recent), start) != self._recent

    def mark(self) -> str:
        """The fingerprint at `offset`."""
        return fingerprint(self._recent)

    def restart(self) -> None:
        """Read the file again from its start: it was truncated, and holds new lines only."""
        self.offset = self.acked = 0
        self._recent = self.head = b""
        self.acked_fingerprint = fingerprint(b"")

    def quiet_for(self) -> float:
        """Seconds since the file last changed size, as seen now."""
        size = os.fstat(self.fd).st_size
        if size != self._size:
            self._size = size
            self._grew_at = time.monotonic()
        return time.monotonic() - self._grew_at

    def read_to_end(self) -> bool:
        return self.offset >= os.fstat(self.fd).st_size

    def read(self, budget: int, *, cut: bool, final: bool) -> Chunk | None:
        """Up to `budget` bytes of whole lines from `offset`. With `cut`, a line longer than
        `budget` goes in pieces; with `final`, a last line with no newline goes as it is."""
        data = os.pread(self.fd, budget, self.offset)
        if len(self.head) < FINGERPRINT_BYTES:
            self.head = os.pread(self.fd, FINGERPRINT_BYTES, 0)
        end = data.rfind(b"\n") + 1
        if not end:
            if not data or not (final or (cut and len(data) == budget)):
                return None  # the rest of the line is yet to come
            end = len(data)
        source = data[:end]
        self.offset += end
        if len(source) >= FINGERPRINT_BYTES:
            self._recent = source[-FINGERPRINT_BYTES:]
        else:
            self._recent = (self._recent + source)[-FINGERPRINT_BYTES:]
        lines = source if source.endswith(b"\n") else source + b"\n"
        return Chunk(self, self.offset, self.mark(), valid_utf8(lines))

    def close(self) -> None:
        os.close(self.fd)


class Files:
    """The files that logwriter-ship follows: read() gives the next batch of whole lines from
    all of them, acknowledge() records that the service has it, entries() is the checkpoint."""

    def __init__(
        self,
        paths: list[str],
        checkpoint: list[dict[str, Any]],
        *,
        from_end: bool,
        rotate_wait: float,
        batch_bytes: int,
    ) -> None:
        self._paths = [os.path.abspath(path) for path in paths]
        self._rotate_wait = rotate_wait
        self._batch_bytes = batch_bytes
        self._current: dict[str, Tail] = {}
        self._rotated: list[Tail] = []  # oldest first
        self._turn = 0  # which path's current file is read first: each has its turn
        self._problems: set[str] = set()  # said once each
        resumed = self._resume(checkpoint)
        for path in self._paths:
            if path not in self._current:
                self._open_current(path, at_end=from_end and path not in resumed)

    def read(self) -> list[Chunk]:
        """Up to batch_bytes of whole lines, rotated files first, after looking for rotation
        and new files."""
        self._look()
        currents = [self._current[path] for path in self._paths if path in self._current]
        self._turn = (self._turn + 1) % max(1, len(currents))
        chunks = []
        budget = self._batch_bytes
        for tail in self._rotated + currents[self._turn :] + currents[: self._turn]:
            final = tail.rotated and tail.quiet_for() >= self._rotate_wait
            chunk = tail.read(budget, cut=budget == self._batch_bytes, final=final)
            if chunk is not None:
                chunks.append(chunk)
                budget -= len(chunk.data)
                if budget <= 0:
                    break
        return chunks

    def acknowledge(self, chunks: list[Chunk]) -> None:
        for chunk in chunks:
            chunk.tail.acked = chunk.end
            chunk.tail.acked_fingerprint = chunk.fingerprint

    def entries(self) -> list[dict[str, Any]]:
        """The checkpoint: per open file, its path, device, inode, acknowledged offset and the
        fingerprint there."""
        return [
            {
                "path": tail.path,
                "dev": tail.id[0],
                "ino": tail.id[1],
                "offset": tail.acked,
                "fingerprint": tail.acked_fingerprint,
            }
            for tail in [*self._rotated, *self._current.values()]
        ]

    def close(self) -> None:
        for tail in [*self._rotated, *self._current.values()]:
            tail.close()

    def _resume(self, checkpoint: list[dict[str, Any]]) -> set[str]:
        """Reopen the checkpoint's files where the service last acknowledged; the paths that
        had an entry."""
        resumed = set()
        for entry in checkpoint:
            path = str(entry["path"])
            if path not in self._paths:
                continue  # no longer asked for
            resumed.add(path)
            offset = int(entry["offset"])
            found = self._find(
                path, (int(entry["dev"]), int(entry["ino"])), offset, str(entry["fingerprint"])
            )
            if found is None:
                self._problem(
                    f"{path}: its file (inode {entry['ino']}) read to byte {offset} is gone: "
                    "anything after that in it was not shipped"
                )
                continue
            name, fd = found
            tail = Tail(path, fd, offset, rotated=name != path)
            if tail.rotated:
                self._rotated.append(tail)
            else:
                self._current[path] = tail
        return resumed

    def _look(self) -> None:
        for path in self._paths:
            tail = self._current.get(path)
            if tail is not None and self._id(path) != tail.id:
                del self._current[path]  # renamed or removed: read what is left of it
                tail.rotated = True
                self._rotated.append(tail)
            elif tail is not None and tail.cut_short():
                found = self._find(path, None, tail.offset, tail.mark())
                if found is not None:
                    self._rotated.append(Tail(path, found[1], tail.offset, rotated=True))
                elif not self._read_whole_already(path, tail):
                    self._problem(
                        f"{path} was truncated and its copy is not found: what was written to "
                        f"it after byte {tail.offset}, before the truncation, was not shipped"
                    )
                tail.restart()
            if path not in self._current:
                self._open_current(path, at_end=False)
        for tail in list(self._rotated):
            if tail.quiet_for() >= self._rotate_wait and tail.read_to_end():
                tail.close()
                self._rotated.remove(tail)

    def _open_current(self, path: str, *, at_end: bool) -> None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return  # it may appear later
        except OSError as exc:
            self._problem(f"{path}: {exc.strerror}; trying again")
            return
        if _fd_id(fd) in {tail.id for tail in [*self._rotated, *self._current.values()]}:
            os.close(fd)  # followed already (renamed back, or a second name of it)
            return
        self._current[path] = Tail(path, fd, _last_line_end(fd) if at_end else 0, rotated=False)

    def _find(
        self, path: str, file_id: tuple[int, int] | None, offset: int, mark: str
    ) -> tuple[str, int] | None:
        """The file, under `path` or a sibling's name (`app.log.1`, `app.log-2024...`), whose
        bytes before `offset` have the fingerprint `mark`: the one of inode `file_id` if it is
        there, else the newest (by ctime) that is not followed yet, which is how copytruncate's
        copy is found. Its name and an open descriptor, or None."""
        folder, base = os.path.split(path)
        try:
            names = [name for name in os.listdir(folder) if name.startswith(base)]
        except OSError:
            return None
        followed = {tail.id for tail in [*self._rotated, *self._current.values()]}
        best: tuple[tuple[bool, float], str, int] | None = None
        for name in names:
            try:
                fd = os.open(os.path.join(folder, name), os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                continue
            stat = os.fstat(fd)
            if not S_ISREG(stat.st_mode):  # a folder or a pipe of a similar name
                os.close(fd)
                continue
            same = (stat.st_dev, stat.st_ino) == file_id
            # At offset 0 every file matches the fingerprint: only the inode can tell.
            candidate = same or ((stat.st_dev, stat.st_ino) not in followed and offset > 0)
            rank = (same, stat.st_ctime)
            if candidate and (best is None or rank > best[0]) and _mark(fd, offset) == mark:
                if best is not None:
                    os.close(best[2])
                best = (rank, os.path.join(folder, name), fd)
            else:
                os.close(fd)
        return None if best is None else (best[1], best[2])

    def _read_whole_already(self, path: str, tail: Tail) -> bool:
        """Whether a sibling starts like `tail`'s file and is no longer than what was read of
        it: a copy made before lines that were read came (between copy and truncate)."""
        folder, base = os.path.split(path)
        for name in os.listdir(folder):
            sibling = os.path.join(folder, name)
            if not name.startswith(base) or name == base:
                continue
            try:
                with open(sibling, "rb") as file:
                    starts = file.read(len(tail.head))
                    size = os.fstat(file.fileno()).st_size
            except OSError:
                continue
            if starts and tail.head.startswith(starts) and size <= tail.offset:
                return True
        return False

    def _id(self, path: str) -> tuple[int, int] | None:
        try:
            stat = os.stat(path)
        except FileNotFoundError:
            return None
        return (stat.st_dev, stat.st_ino)

    def _problem(self, message: str) -> None:
        if message not in self._problems:
            self._problems.add(message)
            report(message)


def _fd_id(fd: int) -> tuple[int, int]:
    stat = os.fstat(fd)
    return (stat.st_dev, stat.st_ino)


def _mark(fd: int, offset: int) -> str:
    start = max(0, offset - FINGERPRINT_BYTES)
    return fingerprint(os.pread(fd, offset - start, start))


def _last_line_end(fd: int) -> int:
    """Where --from-end starts: after the last newline, so that no line is sent in part."""
    size = os.fstat(fd).st_size
    start = max(0, size - (1 << 16))
    return start + os.pread(fd, size - start, start).rfind(b"\n") + 1


class Checkpoint:
    """The state file: Files.entries() as JSON, replaced atomically after each acknowledged
    batch, so that a restart resumes where the service last acknowledged."""

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)

    def load(self) -> list[dict[str, Any]]:
        try:
            with open(self.path, encoding="utf-8") as file:
                return list(json.load(file)["files"])
        except FileNotFoundError:
            return []

    def save(self, entries: list[dict[str, Any]]) -> None:
        temporary = f"{self.path}.tmp"
        with open(temporary, "w", encoding="utf-8") as file:
            json.dump({"files": entries}, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, self.path)
        folder = os.open(os.path.dirname(self.path), os.O_RDONLY)
        try:
            os.fsync(folder)  # the rename itself is durable only once its folder is
        finally:
            os.close(folder)
