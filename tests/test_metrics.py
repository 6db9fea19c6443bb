"""The /metrics page in multiprocess mode, read from the workers' files as each worker serves
it."""

from pathlib import Path

import pytest
from prometheus_client.mmap_dict import MmapedDict, mmap_key

from service import metrics

pytestmark = pytest.mark.unit


def test_a_file_a_worker_has_only_just_created_does_not_fail_the_page(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    written = MmapedDict(str(tmp_path / "counter_101.db"))
    key = mmap_key("logwriter_lines_written", "logwriter_lines_written_total", [], [], "Lines.")
    written.write_value(key, 5.0, 0.0)
    written.close()
    (tmp_path / "counter_102.db").touch()  # as prometheus-client leaves it before sizing it
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    page, _ = metrics.page()
    assert b"logwriter_lines_written_total 5.0" in page
