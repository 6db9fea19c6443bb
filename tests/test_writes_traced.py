"""The writes a stream file gets, as strace sees the syscalls."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

import service.files

pytestmark = [pytest.mark.process, pytest.mark.tools]


def test_a_large_append_goes_out_in_whole_requests_and_lines(tmp_path: Path):
    # As strace sees the syscalls: writev calls of at most WRITE_BYTES, each of whole requests
    # while one fits, a larger request cut after a line (mid-line only where a line is longer
    # than WRITE_BYTES), every byte once and in order.
    requests = [b"%099d\n" % i * 1_500 for i in range(4)]  # 150 kB: one a call
    requests += [b"%0999d\n" % 7 * 600, b"%0299999d\n" % 8, b"last one\n"]  # 600 kB, 300 kB
    bodies = tmp_path / "bodies"
    bodies.mkdir()
    for i, request in enumerate(requests):
        (bodies / str(i)).write_bytes(request)
    script = f"""
from pathlib import Path
from service.files import LogFiles
files = LogFiles(Path({str(tmp_path)!r}))
files.lock("s")
files.append("s", [path.read_bytes() for path in sorted(Path({str(bodies)!r}).iterdir())])
files.unlock("s")
files.close()
"""
    trace = tmp_path / "trace"
    command = ["strace", "-f", "-e", "trace=writev", "-o", str(trace), sys.executable, "-c"]
    subprocess.run([*command, script], check=True)
    writes = [int(n) for n in re.findall(r"writev\(.*\) = (\d+)$", trace.read_text(), re.M)]
    assert service.files.WRITE_BYTES == 196_608
    assert writes == [150_000] * 4 + [196_000] * 3 + [12_000, 196_608, 103_401]
    assert (tmp_path / "s.log").read_bytes() == b"".join(requests)
