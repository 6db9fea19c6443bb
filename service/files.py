"""Stream files: where each stream's lines go, and the O_APPEND descriptors that put them there.

Only the writer thread uses a LogFiles, so it needs no lock of its own. What it does for the
operator's sake:
- Rotation: before each batch it checks that a stream's path still names the file it holds
  open (same device and inode). logrotate's `create` renames the file away; the next batch
  then opens (creates) a new one, and nothing is lost or doubled: what was written before
  the check went to the renamed file. `copytruncate` needs nothing: with O_APPEND every write
  lands at the current end of the truncated file, never past it (no hole of NUL bytes).
- LOGWRITER_FILE_TEMPLATE may hold strftime fields (UTC), so files roll by time by themselves,
  and {host}, this host's name, so replicas sharing a volume write a file each.
- At most `max_open` descriptors stay open; the least recently used is closed first.
- Worker processes share a stream's file: lock() and unlock() around each append hold off the
  others' appends to that file (and only that file) with an flock on its descriptor.
"""

import fcntl
import os
import re
import socket
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

# writev takes at most IOV_MAX buffers a call (1024 on Linux).
_IOV_MAX = os.sysconf("SC_IOV_MAX")
# One writev writes at most this much: the kernel caches a larger write in larger folios, which
# cost several times more to fill where freed memory goes back to a VM's host (performance.md).
WRITE_BYTES = 192 << 10
# Up to the last newline: the greedy match scans back from its end, in C, on bytes and
# memoryviews alike (no copy).
_WHOLE_LINES = re.compile(rb".*\n", re.DOTALL)
_OPEN_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC


@dataclass(frozen=True, slots=True)
class _Open:
    path: str
    fd: int
    inode: tuple[int, int]  # (st_dev, st_ino): which file `path` named when it was opened


class LogFiles:
    """The stream files of one log folder, as the writer thread appends to them.

    Per batch: lock(), append() and unlock() per stream, fsync() for the streams whose
    requests wait for it, then end_batch(); close() at the end.
    """

    def __init__(self, directory: Path, template: str = "{stream}.log", max_open: int = 256):
        self._dir = directory
        self._template = template.replace("{host}", host_name())
        self._timed = "%" in template  # else a stream's path never changes: no strftime
        self._max_open = max_open
        self._open: OrderedDict[str, _Open] = OrderedDict()  # least recently used first
        self._written: dict[str, int] = {}  # this batch: stream -> the descriptor it went to
        self._retired: list[int] = []  # replaced descriptors, closed once the batch is synced
        # Folders whose entries changed (a file opened or created in them) since the last
        # fsync: a file's name is durable only once its folder is synced. Opened counts too,
        # since another worker may have created the file.
        self._dirs_to_sync: set[Path] = set()

    def path(self, stream: str) -> str:
        """Where the stream's lines go now: the template, its strftime fields in UTC.

        A str, not a Path: this runs for every stream of every batch.
        """
        name = self._template.format(stream=stream)
        if self._timed:
            name = time.strftime(name, time.gmtime())
        return os.path.join(self._dir, name)

    def lock(self, stream: str) -> None:
        """Open the stream's file if need be, and hold off the other worker processes' appends
        to it until unlock(stream).

        A request larger than one writev (WRITE_BYTES) takes several, and a write may stop
        short (a full disk) and its remainder be written later: no other worker's lines may
        land in between. Held on the file, not its folder, so that other streams' appends
        never wait for it.
        """
        fd = self._written.get(stream)
        if fd is None:  # a retry in this batch continues in the same file
            fd = self._written[stream] = self._current(stream)
        fcntl.flock(fd, fcntl.LOCK_EX)

    def unlock(self, stream: str) -> None:
        fcntl.flock(self._written[stream], fcntl.LOCK_UN)

    def append(self, stream: str, buffers: list[bytes | memoryview]) -> None:
        """Append the buffers in order, finishing short writes; between lock() and unlock().

        O_APPEND makes each writev land at the current end of the file in one piece. After an
        error, `buffers` holds exactly what is still unwritten, so the caller can retry without
        doubling a byte.
        """
        fd = self._written[stream]
        while buffers:
            taken, size = _one_write(buffers)
            written = os.writev(fd, taken)
            if taken is buffers and written == size:
                buffers.clear()  # the common case, all in one writev: no buffer-by-buffer count
                return
            done = 0
            while done < len(buffers) and written >= len(buffers[done]):
                written -= len(buffers[done])
                done += 1
            del buffers[:done]
            if written:
                buffers[0] = memoryview(buffers[0])[written:]

    def fsync(self, streams: Iterable[str]) -> None:
        """Sync the files this batch wrote for these streams, and any folder that needs it."""
        for stream in streams:
            os.fdatasync(self._written[stream])
        for folder in sorted(self._dirs_to_sync):
            dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        self._dirs_to_sync.clear()

    def end_batch(self) -> None:
        self._written.clear()
        for fd in self._retired:
            os.close(fd)
        self._retired.clear()

    def close(self) -> None:
        """Sync and close every file."""
        self._written = {stream: handle.fd for stream, handle in self._open.items()}
        self.fsync(list(self._written))
        self._retired.extend(self._written.values())
        self._open.clear()
        self.end_batch()

    def _current(self, stream: str) -> int:
        path = self.path(stream)
        handle = self._open.get(stream)
        if handle is not None and handle.path == path and _inode(path) == handle.inode:
            self._open.move_to_end(stream)
            return handle.fd
        if handle is not None:  # rotated away, or the template moved on to a new file
            self._retire(stream)
        parent = Path(path).parent
        if not parent.is_dir():
            parent.mkdir(parents=True, exist_ok=True)
            folder = parent
            while folder != self._dir:  # each new folder's name lives in its parent
                folder = folder.parent
                self._dirs_to_sync.add(folder)
        fd = os.open(path, _OPEN_FLAGS, 0o644)
        stat = os.fstat(fd)
        self._open[stream] = _Open(path, fd, (stat.st_dev, stat.st_ino))
        self._dirs_to_sync.add(parent)
        if len(self._open) > self._max_open:
            self._retire(next(iter(self._open)))
        return fd

    def _retire(self, stream: str) -> None:
        self._retired.append(self._open.pop(stream).fd)


def _one_write(buffers: list[bytes | memoryview]) -> tuple[list[bytes | memoryview], int]:
    """What one writev takes from the start of `buffers`, and its size: at most IOV_MAX of
    them and WRITE_BYTES bytes, in whole buffers (requests), so that a logrotate copytruncate
    between two writes never cuts a request in two; a first buffer larger than WRITE_BYTES is
    cut after its last newline that fits (mid-line only if a line is longer). `buffers`
    itself when it fits whole."""
    if len(buffers) <= _IOV_MAX and (size := sum(map(len, buffers))) <= WRITE_BYTES:
        return buffers, size
    first = buffers[0]
    if len(first) > WRITE_BYTES:
        lines = _WHOLE_LINES.match(first, 0, WRITE_BYTES)
        end = lines.end() if lines else WRITE_BYTES
        return [memoryview(first)[:end]], end
    taken: list[bytes | memoryview] = []
    room = WRITE_BYTES
    for buffer in buffers[:_IOV_MAX]:
        if len(buffer) > room:
            break
        taken.append(buffer)
        room -= len(buffer)
    return taken, WRITE_BYTES - room


def host_name() -> str:
    """This host's (a container's, a pod's) name, as a file name: characters outside
    [A-Za-z0-9._-] become "_", and it never starts with a dot."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname()).lstrip(".") or "host"


def _inode(path: str) -> tuple[int, int] | None:
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return None
    return stat.st_dev, stat.st_ino
