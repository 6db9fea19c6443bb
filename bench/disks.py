"""Disks of the bench's own: a loop-mounted ext4 image, and a cap on how often it may be written.

The cap is the kernel's block-layer throttle (cgroup v1 blkio), applied to the processes
started inside its cgroup. Their buffered writes still land in the page cache at once (the
kernel's flusher threads write them back outside the cgroup); what waits is the writing an
fsync does itself. So each fsync costs about one turn at the capped rate, as on a hard disk
or a small cloud volume, while the rest of the machine runs as it is.
"""

import contextlib
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

BLKIO = Path("/sys/fs/cgroup/blkio")


@contextlib.contextmanager
def loop_mounted_ext4(tmp: Path, size: str) -> Iterator[Path]:
    """A sparse ext4 image of `size` (as truncate takes it), mounted under tmp."""
    image, mount = tmp / "disk.img", tmp / "disk"
    mount.mkdir()
    subprocess.run(["truncate", "-s", size, str(image)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


@contextlib.contextmanager
def write_iops_cap(mount: Path, iops: int) -> Iterator[list[str]]:
    """A cgroup whose processes may write to `mount`'s device `iops` times a second.

    Yields the command prefix that runs a program inside it. Whatever still runs in the group
    when the block ends is killed: a cgroup with members cannot be removed, and its files
    would keep the disk from being unmounted.
    """
    limits = BLKIO / "blkio.throttle.write_iops_device"
    if not limits.exists():
        raise RuntimeError(
            f"capping a disk's IOPS needs cgroup v1's blkio controller ({limits}); "
            "--iops 0 skips the capped-disk cases"
        )
    device = mount.stat().st_dev
    group = Path(tempfile.mkdtemp(prefix="logwriter-bench-", dir=BLKIO))
    try:
        limit = f"{os.major(device)}:{os.minor(device)} {iops}\n"
        (group / "blkio.throttle.write_iops_device").write_text(limit)
        # The shell moves itself into the group, then becomes the program: nothing it starts
        # can run outside the group, not even for a moment.
        yield ["sh", "-c", 'echo $$ > "$0" && exec "$@"', str(group / "cgroup.procs")]
    finally:
        _empty(group)
        group.rmdir()


def _empty(group: Path) -> None:
    """Kill what is left in the group (a server that did not stop), and wait until it is gone."""
    deadline = time.monotonic() + 10
    while pids := (group / "cgroup.procs").read_text().split():
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
        if time.monotonic() > deadline:
            raise RuntimeError(f"processes {pids} outlived SIGKILL in {group}")
        time.sleep(0.05)
