"""Stream files: one O_APPEND descriptor per stream, appended to with writev, fsynced on demand.

Only the writer thread uses a LogFiles, so it needs no lock.
"""

import os
from collections.abc import Iterable
from pathlib import Path

# writev takes at most IOV_MAX buffers a call (1024 on Linux).
_IOV_MAX = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024
_OPEN_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC


class LogFiles:
    def __init__(self, directory: Path) -> None:
        self._dir = directory
        self._fds: dict[str, int] = {}
        # A file was opened since the folder was last fsynced. Opened, not only created: another
        # worker may have created it, and its name is durable only once the folder is synced.
        self._dir_needs_fsync = False

    def path(self, stream: str) -> Path:
        return self._dir / f"{stream}.log"

    def append(self, stream: str, buffers: list[bytes | memoryview]) -> None:
        """Append the buffers in order, finishing short writes.

        O_APPEND makes each writev land at the current end of file in one piece, so worker
        processes sharing a file never tear each other's lines. After an error, `buffers`
        holds exactly what is still unwritten, so the caller can retry without doubling a byte.
        """
        fd = self._fd(stream)
        while buffers:
            written = os.writev(fd, buffers[:_IOV_MAX])
            done = 0
            while done < len(buffers) and written >= len(buffers[done]):
                written -= len(buffers[done])
                done += 1
            del buffers[:done]
            if written:
                buffers[0] = memoryview(buffers[0])[written:]

    def fsync(self, streams: Iterable[str]) -> None:
        for stream in streams:
            os.fdatasync(self._fd(stream))
        if self._dir_needs_fsync:
            dir_fd = os.open(self._dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
            self._dir_needs_fsync = False

    def close(self) -> None:
        """Sync and close every file."""
        self.fsync(list(self._fds))
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def _fd(self, stream: str) -> int:
        fd = self._fds.get(stream)
        if fd is None:
            path = self.path(stream)
            fd = os.open(path, _OPEN_FLAGS | os.O_CREAT, 0o644)
            self._dir_needs_fsync = True
            self._fds[stream] = fd
        return fd
