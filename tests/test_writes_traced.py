"""The writes a stream file gets, as strace sees the syscalls."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

import service.files

pytestmark = [pytest.mark.process, pytest.mark.tools]


def test_a_large_append_goes_out_in_writes_of_at_most_write_bytes(tmp_path: Path):
    # As strace sees the syscalls: 1.4 MB, one request of 600 kB among them, goes out in
    # writev calls of at most WRITE_BYTES each, every byte once and in order.
    sizes = (200_000,) * 4 + (600_000, 9)
    script = f"""
from pathlib import Path
from service.files import LogFiles
files = LogFiles(Path({str(tmp_path)!r}))
files.lock("s")
files.append("s", [bytes([65 + i]) * n for i, n in enumerate({sizes!r})])
files.unlock("s")
files.close()
"""
    trace = tmp_path / "trace"
    command = ["strace", "-f", "-e", "trace=writev", "-o", str(trace), sys.executable, "-c"]
    subprocess.run([*command, script], check=True)
    writes = [int(n) for n in re.findall(r"writev\(.*\) = (\d+)$", trace.read_text(), re.M)]
    assert sum(writes) == sum(sizes)
    assert max(writes) == service.files.WRITE_BYTES
    assert (tmp_path / "s.log").read_bytes() == b"".join(
        bytes([65 + i]) * n for i, n in enumerate(sizes)
    )
